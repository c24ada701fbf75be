"""The optional components (Tailscale ingress, ExternalSecret) and the operator's docs.

Each component is switched on the way deploy/README.md tells an operator to: added to an
overlay's own `components:` list, in a copy of deploy/k8s.  The build is then compared
with the overlay as shipped, so a component that touches anything beyond what it is for
fails here.

The docs half keeps the runbooks from rotting: their links resolve, and every metric,
alert and setting they name is one the code (or the rules file) defines, derived from
the code itself.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import (
    _METADATA,
    CRD_SCHEMAS,
    K8S,
    ROOT,
    RULES,
    Doc,
    container,
    env,
    find,
    kustomize,
    load_yaml,
    one,
    overlay,
    pod_labels,
    selects,
    validate,
)
from zai_proxy.proxy.metrics import LiveState, ProxyMetrics

VARIANTS = {"production": "zai-proxy", "canary": "zai-proxy-test"}
COMPONENTS = {"tailscale": {"Ingress"}, "external-secret": {"ExternalSecret"}}
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RUNBOOKS = ("troubleshooting.md", "canary.md", "limiter.md")
# The Tailscale operator's namespace (its default) and the labels it puts on the proxy
# pod of an Ingress (cmd/k8s-operator/sts.go: childResourceLabels).
TAILSCALE_NAMESPACE = {"kubernetes.io/metadata.name": "tailscale"}


def tailscale_proxy_pod(ingress: str) -> dict[str, str]:
    return {
        "tailscale.com/managed": "true",
        "tailscale.com/parent-resource": ingress,
        "tailscale.com/parent-resource-ns": "ai",
        "tailscale.com/parent-resource-type": "ingress",
    }


# ----------------------------------------------------------------------------- validation

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# external-secrets.io/v1 ExternalSecret, the fields we use with the CRD's own names,
# types and enums (config/crds/bases/external-secrets.io_externalsecrets.yaml); unknown
# fields fail, as in manifests.py's schemas.
EXTERNAL_SECRET_SCHEMA: Doc = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "external-secrets.io/v1"},
        "kind": {"const": "ExternalSecret"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretStoreRef", "target", "data"],
            "properties": {
                "refreshInterval": {
                    "type": "string",
                    "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
                },
                "secretStoreRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "kind": {"enum": ["SecretStore", "ClusterSecretStore"]},
                        "name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 253,
                            "pattern": _NAME,
                        },
                    },
                },
                "target": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 253,
                            "pattern": _NAME,
                        },
                        "creationPolicy": {"enum": ["Owner", "Orphan", "Merge", "None"]},
                        "deletionPolicy": {"enum": ["Delete", "Merge", "Retain"]},
                        "immutable": {"type": "boolean"},
                    },
                },
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["secretKey", "remoteRef"],
                        "properties": {
                            "secretKey": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 253,
                                "pattern": r"^[-._a-zA-Z0-9]+$",
                            },
                            "remoteRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["key"],
                                "properties": {
                                    "key": {"type": "string", "minLength": 1},
                                    "property": {"type": "string"},
                                    "version": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
_OWN_SCHEMAS = {("external-secrets.io/v1", "ExternalSecret"): EXTERNAL_SECRET_SCHEMA}
assert not set(_OWN_SCHEMAS) & set(CRD_SCHEMAS)


def validate_any(doc: Doc) -> None:
    """manifests.validate, plus the CRDs only these components bring."""
    schema = _OWN_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if schema is None:
        validate(doc)
        return
    jsonschema.Draft202012Validator(schema).validate(doc)


# ----------------------------------------------------------------------------- builds


@cache
def with_component(variant: str, component: str) -> tuple[Doc, ...]:
    """The overlay built with `component` added to its own `components:`, in a copy."""
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "k8s"
        shutil.copytree(K8S, tree)
        path = tree / "overlays" / variant / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
        kustomization.setdefault("components", []).append(f"../../components/{component}")
        path.write_text(yaml.safe_dump(kustomization), encoding="utf-8")
        return tuple(kustomize(path.parent))


def key(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


BUILDS = [(v, c) for v in VARIANTS for c in COMPONENTS]


@pytest.mark.parametrize(("variant", "component"), BUILDS)
def test_each_component_builds_and_validates_on_each_overlay(variant: str, component: str) -> None:
    docs = with_component(variant, component)
    for doc in docs:
        try:
            validate_any(doc)
        except Exception as exc:  # re-raised with the object's name
            raise AssertionError(f"{variant}+{component}: {key(doc)} is invalid: {exc}") from exc
    assert {doc["kind"] for doc in docs} >= COMPONENTS[component]


@pytest.mark.parametrize(("variant", "component"), BUILDS)
def test_a_component_adds_its_objects_and_changes_nothing_else(
    variant: str, component: str
) -> None:
    before = {key(doc): doc for doc in overlay(variant)}
    after = {key(doc): doc for doc in with_component(variant, component)}
    added = set(after) - set(before)
    assert set(before) <= set(after), "a component removed an object"
    assert {kind for kind, _ in added} == COMPONENTS[component]
    assert len(added) == 1
    changed = {k for k in before if before[k] != after[k]}
    if component == "tailscale" and variant == "production":
        # Its one edit elsewhere: a peer appended to the proxies' NetworkPolicy.
        assert changed == {("NetworkPolicy", "zai-proxy")}
        old, new = before[("NetworkPolicy", "zai-proxy")], after[("NetworkPolicy", "zai-proxy")]
        (old_rule,), (new_rule,) = old["spec"]["ingress"], new["spec"]["ingress"]
        assert new_rule["from"][:-1] == old_rule["from"]
        new_rule = {**new_rule, "from": old_rule["from"]}
        assert {**new, "spec": {**new["spec"], "ingress": [new_rule]}} == old
    else:
        assert changed == set()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_tailscale_ingress_routes_to_its_variants_proxy_service(variant: str) -> None:
    docs = list(with_component(variant, "tailscale"))
    (ingress,) = find(docs, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "tailscale"
    assert "rules" not in spec  # one backend for every path: the proxy's path rule decides
    assert "tailscale.com/funnel" not in ingress["metadata"].get("annotations", {})
    backend = spec["defaultBackend"]["service"]
    service = one(docs, "Service", backend["name"])
    # The operator proxies to the Service's cluster IP: a headless Service has none.
    assert service["spec"].get("clusterIP") != "None"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    port = ports[backend["port"]["name"]] if "name" in backend["port"] else None
    if port is None:
        numbers = {p["port"]: p for p in service["spec"]["ports"]}
        port = numbers[backend["port"]["number"]]
    # The Service reaches exactly this variant's proxy pods, on their HTTP port.
    deployment = one(docs, "Deployment", VARIANTS[variant])
    assert selects(service["spec"]["selector"], pod_labels(deployment))
    assert service["spec"]["selector"].get("variant") == variant
    proxy_ports = {p["name"] for p in container(deployment, "proxy")["ports"]}
    assert port["targetPort"] in proxy_ports
    # One tailnet device per variant, named like its Service.
    assert spec["tls"][0]["hosts"][0] == service["metadata"]["name"] == VARIANTS[variant]


def admits(peer: Doc, namespace: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy `from` peer admits a pod with `labels` in a namespace with
    labels `namespace` (None: the policy's own namespace)."""
    if "namespaceSelector" in peer:
        if namespace is None:
            namespace = {}
        if not selects(peer["namespaceSelector"].get("matchLabels", {}), namespace):
            return False
    elif namespace is not None:
        return False  # a podSelector alone means: in the policy's own namespace
    return selects(peer.get("podSelector", {}).get("matchLabels", {}), labels)


def test_the_network_policy_admits_the_tailscale_proxy_pods_of_both_variants() -> None:
    docs = list(with_component("production", "tailscale"))
    policy = one(docs, "NetworkPolicy", "zai-proxy")["spec"]
    (rule,) = policy["ingress"]
    # Without the component, the operator's proxy pod is refused.
    (plain,) = one(list(overlay("production")), "NetworkPolicy", "zai-proxy")["spec"]["ingress"]
    assert not any(
        admits(p, TAILSCALE_NAMESPACE, tailscale_proxy_pod("zai-proxy")) for p in plain["from"]
    )
    for variant, name in VARIANTS.items():
        deployment = one(docs + list(overlay("canary")), "Deployment", name)
        assert selects(policy["podSelector"]["matchLabels"], pod_labels(deployment)), variant
        assert any(admits(p, TAILSCALE_NAMESPACE, tailscale_proxy_pod(name)) for p in rule["from"])
        numbers = {p["name"]: p["containerPort"] for p in container(deployment, "proxy")["ports"]}
        assert numbers["http"] in {numbers.get(p["port"], p["port"]) for p in rule["ports"]}
    # Only the operator's ingress proxies: not its other pods, nor the same labels elsewhere.
    exposed_service = {**tailscale_proxy_pod("x"), "tailscale.com/parent-resource-type": "svc"}
    assert not any(admits(p, TAILSCALE_NAMESPACE, exposed_service) for p in rule["from"])
    assert not any(admits(p, TAILSCALE_NAMESPACE, {"app": "other"}) for p in rule["from"])
    elsewhere = {"kubernetes.io/metadata.name": "default"}
    assert not any(admits(p, elsewhere, tailscale_proxy_pod("zai-proxy")) for p in rule["from"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_external_secret_writes_the_secret_the_proxies_read(variant: str) -> None:
    docs = list(with_component(variant, "external-secret"))
    (secret,) = find(docs, "ExternalSecret")
    proxy = container(one(docs, "Deployment", VARIANTS[variant]), "proxy")
    ref = env(proxy)["ZAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    target = secret["spec"]["target"]
    assert target["name"] == ref["name"]
    assert ref["key"] in {item["secretKey"] for item in secret["spec"]["data"]}
    assert "optional" not in ref  # a proxy without its key must not start
    # It owns the Secret (adopting a hand-made one), and keeps the key if the store loses it.
    assert target["creationPolicy"] == "Owner"
    assert target["deletionPolicy"] == "Retain"
    # The key never sits in the manifests themselves.
    assert find(docs, "Secret") == []


def test_the_schemas_catch_a_misspelt_field_in_the_components_objects() -> None:
    secret = json.loads(
        json.dumps(find(list(with_component("production", "external-secret")), "ExternalSecret")[0])
    )
    secret["spec"]["target"]["creationpolicy"] = "Owner"
    with pytest.raises(jsonschema.ValidationError, match="creationpolicy"):
        validate_any(secret)
    ingress = json.loads(
        json.dumps(find(list(with_component("production", "tailscale")), "Ingress")[0])
    )
    ingress["spec"]["ingressclassName"] = "tailscale"
    with pytest.raises(Exception, match="ingressclassName"):
        validate_any(ingress)


# ----------------------------------------------------------------------------- the docs

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_METRIC = re.compile(r"\bzai_(?:proxy|dashboard)_[a-z0-9_]*[a-z0-9]")
_ALERT = re.compile(r"\bZaiProxy[A-Za-z0-9]+\b")
_SETTING = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`")


def proxy_metric_names() -> set[str]:
    """Every family and sample name the proxy's registry serves, from a real registry."""
    metrics = ProxyMetrics(
        variant="production",
        live=lambda: LiveState(
            concurrent=0, max_workers=1, rate_limit_rps=1.0, rate_limit_ceiling=1.0
        ),
    )
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_metric_names() -> set[str]:
    """The dashboard's own metrics: the families its collector yields, read from its source."""
    source = (ROOT / "src" / "zai_proxy" / "dashboard" / "app.py").read_text(encoding="utf-8")
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("CounterMetricFamily", "GaugeMetricFamily")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            name = str(node.args[0].value)
            names.add(name)
            if node.func.id == "CounterMetricFamily":
                names.add(name + "_total")
    return names


def alert_names() -> set[str]:
    (rules,) = load_yaml(RULES)
    return {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }


def setting_names() -> set[str]:
    """Every environment variable settings.py reads."""
    source = (ROOT / "src" / "zai_proxy" / "settings.py").read_text(encoding="utf-8")
    return set(re.findall(r"read\.\w+\(\s*\"([A-Z][A-Z0-9_]+)\"", source))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.M)
    return {slug(h) for h in headings}


def broken_links(path: Path) -> list[str]:
    broken = []
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http(s), mailto: not ours to check offline
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_file():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(target)
    return broken


def table_rows(path: Path) -> list[str]:
    """Body rows of every Markdown table in the file (no header, no separator)."""
    rows: list[str] = []
    block: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) > 2:
            rows.extend(block[2:])
        block = []
    return rows


def test_readme_links_the_operator_docs_and_each_docs_link_resolves() -> None:
    text = README.read_text(encoding="utf-8")
    linked = {t for t in _LINK.findall(text) if t.startswith("docs/")}
    for name in (*RUNBOOKS, "tools.md"):
        assert f"docs/{name}" in linked, f"README does not link docs/{name}"
    assert broken_links(README) == []


@pytest.mark.parametrize("name", RUNBOOKS)
def test_every_relative_link_in_the_docs_resolves(name: str) -> None:
    assert broken_links(DOCS / name) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Real heading\n", encoding="utf-8")
    page.write_text(
        "[a](other.md#real-heading) [b](missing.md) [c](other.md#nope) [d](#here)\n## Here\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.md", "other.md#nope"]


def test_every_runbook_row_names_a_metric_that_exists() -> None:
    known = proxy_metric_names() | dashboard_metric_names()
    rows = table_rows(DOCS / "troubleshooting.md") + table_rows(DOCS / "canary.md")
    assert len(rows) >= 10
    for row in rows:
        named = set(_METRIC.findall(row))
        assert named, f"this runbook row names no metric: {row}"
    for name in RUNBOOKS:
        text = (DOCS / name).read_text(encoding="utf-8")
        unknown = set(_METRIC.findall(text)) - known
        assert unknown == set(), f"docs/{name} names metrics the code does not serve: {unknown}"


def test_the_runbooks_name_only_real_alerts_and_settings() -> None:
    alerts, settings = alert_names(), setting_names()
    for name in RUNBOOKS:
        text = (DOCS / name).read_text(encoding="utf-8")
        assert set(_ALERT.findall(text)) <= alerts, name
        assert set(_SETTING.findall(text)) <= settings, name
    # The canary checklist names every canary alert.
    canary = set(_ALERT.findall((DOCS / "canary.md").read_text(encoding="utf-8")))
    assert {a for a in alerts if a.startswith("ZaiProxyCanary")} <= canary


def test_the_derived_name_sets_are_the_codes_own() -> None:
    proxy = proxy_metric_names()
    assert {"zai_proxy_requests_total", "zai_proxy_request_duration_seconds_bucket"} <= proxy
    assert "zai_proxy_rate_limit_ceiling_requests_per_second" in proxy
    assert "zai_proxy_requests_totally" not in proxy
    assert {"zai_dashboard_target_up", "zai_dashboard_scrapes_total"} <= dashboard_metric_names()
    assert {"RATE_LIMIT_MAX_WAIT", "MAX_WORKERS", "SCRAPE_INTERVAL"} <= setting_names()
    assert "ZaiProxyRateLimitBackendDown" in alert_names()
