"""Reading deploy/: kustomize builds, the rule files, the dashboard, and offline schemas.

Core Kubernetes kinds are checked against the schemas bundled in `kubernetes-validate`
(no network); the Prometheus Operator's kinds against the structural schemas below,
which hold the fields we use with their real names and types and refuse unknown ones,
so a misspelt `sourceLabels` fails here rather than being dropped by the API server.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_CRD = DEPLOY / "prometheus" / "prometheusrule.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "zai-proxy.json"
ADAPTER_RULES = K8S / "optional" / "prometheus-adapter-rules.yaml"

# The oldest and newest Kubernetes the manifests promise to fit.
K8S_VERSIONS = ("1.29.0", "1.37.0")

Doc = dict[str, Any]


def kustomize(path: Path) -> list[Doc]:
    """`kubectl kustomize` (kustomize v5, built into kubectl) of one directory."""
    kubectl = require_tool("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kustomize build {path} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(deployment: Doc) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def container(deployment: Doc, name: str) -> Doc:
    for item in deployment["spec"]["template"]["spec"]["containers"]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no container {name!r} in {deployment['metadata']['name']}")


def env(item: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in item.get("env", [])}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """A Go-style duration (`30s`, `1m30s`) in seconds."""
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


# ----------------------------------------------------------------------------- validation

_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "hashmod",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
            ]
        },
    },
}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
_DURATION_PATTERN = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)

SERVICE_MONITOR_SCHEMA: Doc = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": _LABELS,
                        "matchExpressions": {"type": "array"},
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION_PATTERN},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION_PATTERN},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}

PROMETHEUS_RULE_SCHEMA: Doc = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": _DURATION_PATTERN},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [
                                        {"required": ["alert"]},
                                        {"required": ["record"]},
                                    ],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": _DURATION_PATTERN},
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SCHEMA,
}


def validate(doc: Doc) -> None:
    """Raise if `doc` is not a valid object of its kind (offline, strict)."""
    schema = CRD_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# ----------------------------------------------------------------------------- the overlays


@cache
def overlay(name: str) -> tuple[Doc, ...]:
    return tuple(kustomize(K8S / "overlays" / name))


def both_variants() -> list[Doc]:
    """What a namespace holds once both overlays are applied (production first)."""
    return list(overlay("production")) + list(overlay("canary"))


def all_builds() -> Iterator[tuple[str, Doc]]:
    for name in ("production", "canary"):
        for doc in overlay(name):
            yield f"overlays/{name}", doc
    for doc in kustomize(DEPLOY / "prometheus"):
        yield "deploy/prometheus", doc
    for doc in kustomize(DEPLOY / "grafana"):
        yield "deploy/grafana", doc
    for doc in load_yaml(ADAPTER_RULES):
        yield ADAPTER_RULES.name, doc
