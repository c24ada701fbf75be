"""Alert rules and dashboard queries: promtool accepts and tests them, and they name only
metrics and labels the proxy really exports."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool
from tests.deploy.manifests import DASHBOARD, RULE_TESTS, RULES, RULES_CRD, load_yaml
from zai_proxy.proxy import LiveState, ProxyMetrics

EXPECTED_ALERTS = {
    # seed 004
    "ZaiProxyHighErrorRate",
    "ZaiProxyHighUtilization",
    "ZaiProxyAtMaxCapacity",
    # seed 000's alerting targets
    "ZaiProxyErrorRateAboveTarget",
    "ZaiProxyUpstream429RateHigh",
    "ZaiProxyHighLatency",
    # seed 002's canary alerts
    "ZaiProxyCanaryHighErrorRate",
    "ZaiProxyCanaryHighLatency",
    "ZaiProxyCanaryCrashLooping",
    "ZaiProxyCanaryNotReady",
    "ZaiProxyCanaryDegradedVsProduction",
    "ZaiProxyCanarySlowerThanProduction",
    "ZaiProxyCanaryTokenCountingSlow",
    "ZaiProxyCanaryRateLimitAdjustingDown",
    # the shared rate limiter on Redis
    "ZaiProxyRateLimitBackendDown",
    "ZaiProxyRateLimitReplicasDisagree",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    done = _promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = _promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_accepts_the_groups_inside_the_prometheus_rule(tmp_path: Path) -> None:
    (crd,) = load_yaml(RULES_CRD)
    extracted = tmp_path / "from-crd.yml"
    extracted.write_text(yaml.safe_dump({"groups": crd["spec"]["groups"]}))
    done = _promtool("check", "rules", str(extracted))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_prometheus_rule_is_the_rules_file_verbatim() -> None:
    spec = importlib.util.spec_from_file_location("render_crd", RULES.parent / "render_crd.py")
    assert spec is not None and spec.loader is not None
    render_crd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_crd)
    source = RULES.read_text(encoding="utf-8")
    assert RULES_CRD.read_text(encoding="utf-8") == render_crd.render(source), (
        "prometheusrule.yaml is stale: run python deploy/prometheus/render_crd.py"
    )
    (crd,) = load_yaml(RULES_CRD)
    assert crd["spec"]["groups"] == yaml.safe_load(source)["groups"]


def test_every_alert_is_expected_and_carries_a_severity_and_a_summary() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


# --------------------------------------------------------------------------- names


def _exported() -> dict[str, set[str]]:
    """Every metric family the proxy exports, with its labels (histogram/counter suffixes
    included), read from a live registry rather than a list that could drift."""
    metrics = ProxyMetrics(variant="production", live=lambda: LiveState(1, 10, 5.0, 7.0))
    metrics.requests.labels("POST", "/v1/messages", "200", "production").inc()
    metrics.duration.labels("POST", "/v1/messages", "200", "production").observe(1)
    metrics.response_size.labels("POST", "/v1/messages", "200", "production").observe(1)
    metrics.tokens.labels("input", "glm-4", "production", "peak").inc()
    metrics.token_rate.labels("output", "glm-4", "production").observe(1)
    metrics.token_rate_seconds.labels("output", "glm-4", "production").observe(1)
    metrics.token_estimate_error.labels("input", "production").observe(1)
    metrics.task_restarts.labels("limiter", "production").inc()
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


_SELECTOR = re.compile(r"(zai_proxy_\w+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def _queries() -> list[tuple[str, str]]:
    found = [(f"rule {rule['alert']}", str(rule["expr"])) for rule in _rules()]
    for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    return found


@pytest.mark.parametrize("where,query", _queries())
def test_queries_name_only_exported_metrics_and_labels(where: str, query: str) -> None:
    exported = _exported()
    # Labels Prometheus or the ServiceMonitor add, and kube-state-metrics' own.
    added = {"le", "deployment_variant", "namespace", "pod", "container", "deployment", "job"}
    used: set[str] = set()
    for name, matchers in _SELECTOR.findall(query):
        assert name in exported, f"{where}: {name} is not exported by the proxy"
        for label in _MATCHER.findall(matchers):
            assert label in exported[name] | {"le"}, f"{where}: {name} has no label {label}"
        used |= exported[name]
    for group in _GROUPING.findall(query):
        for label in filter(None, (part.strip() for part in group.split(","))):
            assert label in used | added, f"{where}: grouping by unknown label {label}"
