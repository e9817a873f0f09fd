# One target per artifact or job. Every target uses the project's virtual environment.
PY := .venv/bin/python

.PHONY: help venv test test-quick lint format rules check dashboards kubernetes dashboards-preview backtest-example console-screenshots docs up down up-local bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

venv:  ## create .venv and install the package with its dev extra
	bash -c 'source scripts/lib.sh && ensure_venv'

test:  ## install what is missing, lint, run every test (same as .ci/run)
	./scripts/test

test-quick:  ## lint and the quick tier (unit tests, under 2 minutes): the edit loop
	./scripts/test -m quick

lint: venv  ## ruff lint and format check, jsonnetfmt check of alerts/*.libsonnet
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
	bash -c 'source scripts/lib.sh && jsonnet_fmt_check'

format: venv  ## apply ruff's fixes and formatting, and jsonnetfmt's
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .
	jsonnetfmt -i alerts/*.libsonnet

up:  ## bring up the stack (docker compose on Docker or Podman, else local processes)
	./scripts/up

down:  ## stop the compose stack, Docker or Podman (volumes kept; ARGS=-v deletes them)
	./scripts/down $(ARGS)

up-local:  ## the stack as local processes, for machines without Docker; Ctrl-C stops it
	./scripts/up --local $(ARGS)

bench: venv  ## run every benchmark in bench/ (prints ratios measured side by side)
	@for b in bench/bench_*.py; do echo "==> $$b"; $(PY) $$b || exit 1; done

dashboards: venv  ## render dashboards/*.dashboard.py into dashboards/generated/*.json
	$(PY) -m dashboards.render

dashboards-preview: venv  ## draw each dashboard from a short live run into docs/img/<uid>.png
	$(PY) -m stack.dashboard_preview

backtest-example: venv  ## record a named day, backtest it: docs/alerts.md "A real report" and docs/img/backtest-*.png
	$(PY) -m stack.backtest_example

console-screenshots: venv  ## run the console's browser tests, saving each page into docs/img/console-*.png
	CONSOLE_SCREENSHOTS=docs/img $(PY) -m pytest tests/test_console_browser.py -q -p no:cacheprovider

docs: venv  ## rewrite the generated reference tables in docs/*.md from the code
	$(PY) -m stack.reference

kubernetes: venv  ## render deploy/kubernetes/ (kustomize base, overlays) from the same sources
	$(PY) -m stack.kubernetes

rules: venv  ## render alerts/*.libsonnet into prometheus/rules/*.yml
	$(PY) -m alerts.render

check: venv  ## validate rules and configs with promtool/amtool, run the rule and route tests
	promtool check rules prometheus/rules/*.yml
	promtool check config prometheus/prometheus.yml
	promtool test rules prometheus/tests/*_test.yml
	amtool check-config alertmanager/alertmanager.yml
	$(PY) -m alerts.routes

