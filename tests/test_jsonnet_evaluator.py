"""The mixin's evaluator: jrsonnet (rjsonnet) renders what the upstream jsonnet renders.

The rules, dashboards and docs are rendered with rjsonnet (about 10 ms for the mixin,
against 0.3 s for gojsonnet and 1.5 s for the C++ jsonnet: docs/testing.md). It is the
youngest of the three, so every configuration the project renders is also evaluated by
gojsonnet, Google's Go implementation (the one kube-prometheus and mixtool use), and the
two must agree value for value. The committed files are checked against rjsonnet's render
in test_alert_rules.py and test_dashboards.py.
"""

from __future__ import annotations

import json

import _gojsonnet
import pytest
import rjsonnet

from alerts.render import evaluate_mixin
from tests.support.e2e import ALERT_OVERRIDES, SLO_OVERRIDES

#: A user's own override file (docs/alerts.md), layered with ``+::`` and ``+:``.
USER_FILE = """
{ _config+:: { workerSelector: 'job="jobs"', minReplicas: 3,
               alerts+: { HighJobFailureRate+: { threshold: 0.25, 'for': '2m' } } } }
"""

CONFIGS = {
    "shipped": {},
    "e2e alert timings": ALERT_OVERRIDES,
    "e2e SLO timings": SLO_OVERRIDES,
    "a threshold changed": {"alerts": {"HighJobProcessingQueue": {"threshold": 1234567}}},
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_rjsonnet_and_gojsonnet_agree(overrides):
    as_json = json.dumps(overrides, sort_keys=True)
    ours = json.loads(evaluate_mixin(as_json, (), rjsonnet.evaluate_snippet))
    upstream = json.loads(evaluate_mixin(as_json, (), _gojsonnet.evaluate_snippet))
    assert ours["alerts"]["groups"], "the mixin rendered no alert group"
    assert ours == upstream


def test_they_agree_on_a_users_override_file(tmp_path):
    mine = tmp_path / "mine.libsonnet"
    mine.write_text(USER_FILE)
    files = ((str(mine), USER_FILE),)
    ours = json.loads(evaluate_mixin("{}", files, rjsonnet.evaluate_snippet))
    upstream = json.loads(evaluate_mixin("{}", files, _gojsonnet.evaluate_snippet))
    assert ours["config"]["alerts"]["HighJobFailureRate"]["threshold"] == 0.25
    assert ours == upstream


def test_an_evaluation_error_names_the_file_and_line_in_both(tmp_path):
    broken = tmp_path / "broken.libsonnet"
    text = "{ _config+:: { alerts+: { WorkerDown+: { 'for': } } } }"
    broken.write_text(text)
    for evaluate in (rjsonnet.evaluate_snippet, _gojsonnet.evaluate_snippet):
        with pytest.raises(RuntimeError, match=r"broken\.libsonnet:1:"):
            evaluate_mixin("{}", ((str(broken), text),), evaluate)
