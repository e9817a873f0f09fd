"""The rendered dashboards against Grafana's own dashboard JSON schema (vendored in
dashboards/schema/, see its README): Grafana cannot run in these tests, its schema can."""

from __future__ import annotations

import json

import jsonschema
import pytest

from dashboards.render import GENERATED_DIR, REPO_DIR

SCHEMA = json.loads((REPO_DIR / "dashboards" / "schema" / "dashboard.jsonschema.json").read_text())


def test_the_vendored_schema_is_itself_valid():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", sorted(GENERATED_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_dashboard_is_valid_against_grafanas_schema(path):
    errors = []
    for error in jsonschema.Draft7Validator(SCHEMA).iter_errors(json.loads(path.read_text())):
        # A panel that matches none of the panel kinds: name the fields inside it at fault.
        inner = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
        for e in inner or [error]:
            errors.append(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}")
    assert not errors, f"{len(errors)} schema errors:\n" + "\n".join(errors)
