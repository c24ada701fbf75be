"""The Kubernetes manifests: they build, they validate offline, and they fit together."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.manifests import (
    ADAPTER_RULES,
    DASHBOARD,
    DEPLOY,
    K8S,
    all_builds,
    both_variants,
    container,
    env,
    find,
    kustomize,
    load_yaml,
    one,
    overlay,
    pod_labels,
    seconds,
    selects,
    validate,
)

VARIANTS = {"production": "zai-proxy", "canary": "zai-proxy-test"}
SPLIT_SERVICE = "zai-proxy-canary"
HEADLESS = {
    "production": "zai-proxy-production-headless",
    "canary": "zai-proxy-canary-headless",
}


def test_every_built_object_is_valid_against_the_kubernetes_schemas() -> None:
    checked = 0
    for source, doc in all_builds():
        try:
            validate(doc)
        except Exception as exc:  # re-raised with the object's name
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            raise AssertionError(f"{source}: {name} is invalid: {exc}") from exc
        checked += 1
    assert checked >= 14


def test_a_misspelt_field_is_caught_by_the_validation() -> None:
    deployment = one(list(overlay("production")), "Deployment", "zai-proxy")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(Exception, match="readinessprobe"):
        validate(broken)
    monitor = json.loads(
        json.dumps(one(list(overlay("production")), "ServiceMonitor", "zai-proxy"))
    )
    monitor["spec"]["endpoints"][0]["relabelings"][0]["source_labels"] = ["x"]
    with pytest.raises(Exception, match="source_labels"):
        validate(monitor)


def test_the_worker_utilization_component_adds_the_custom_metric(tmp_path: Path) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    mine = tree / "overlays" / "with-workers"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        "resources: [../production]\ncomponents: [../../optional/worker-utilization]\n"
    )
    docs = kustomize(mine)
    hpa = one(docs, "HorizontalPodAutoscaler", "zai-proxy")
    validate(hpa)
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "zai_proxy_worker_utilization_ratio"},
                "target": {"type": "AverageValue", "averageValue": "800m"},
            },
        }
    ]
    # The adapter rule serves exactly that metric.
    adapter = load_yaml(ADAPTER_RULES)[0]
    config = yaml.safe_load(adapter["data"]["config.yaml"])
    (rule,) = config["rules"]
    assert rule["seriesQuery"].startswith("zai_proxy_worker_utilization_ratio")
    assert rule["name"]["as"] == "zai_proxy_worker_utilization_ratio"
    assert "<<.LabelMatchers>>" in rule["metricsQuery"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_proxy_deployment_of_each_variant(variant: str) -> None:
    name = VARIANTS[variant]
    docs = list(overlay(variant))
    deployment = one(docs, "Deployment", name)
    labels = pod_labels(deployment)
    assert labels["app"] == "zai-proxy"
    assert labels["variant"] == variant
    assert labels["traffic"] == "zai-proxy"
    assert deployment["metadata"]["labels"]["variant"] == variant
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert deployment["spec"]["selector"]["matchLabels"]["variant"] == variant

    pod = deployment["spec"]["template"]["spec"]
    proxy = container(deployment, "proxy")
    assert proxy["args"] == ["serve"]
    variables = env(proxy)
    assert variables["DEPLOYMENT_VARIANT"]["value"] == variant
    assert variables["ZAI_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "zai-api-key", "key": "api-key"}
    }
    assert "value" not in variables["ZAI_API_KEY"]

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert proxy[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in proxy["ports"]

    # The kubelet's SIGKILL must come after the preStop pause and the whole drain.
    pause = float(proxy["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = seconds(variables["SHUTDOWN_TIMEOUT"]["value"])
    assert pod["terminationGracePeriodSeconds"] > pause + drain

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert proxy["securityContext"]["allowPrivilegeEscalation"] is False
    assert proxy["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in proxy["volumeMounts"]}
    assert "/tmp" in mounts  # the only writable place with a read-only root
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(proxy["resources"][kind])
    assert proxy["image"].startswith("zai-proxy:")


def test_production_scales_with_an_hpa_and_the_canary_has_a_fixed_size() -> None:
    production = list(overlay("production"))
    hpa = one(production, "HorizontalPodAutoscaler", "zai-proxy")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "zai-proxy",
    }
    assert "replicas" not in one(production, "Deployment", "zai-proxy")["spec"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Resource"
    }
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    up, down = hpa["spec"]["behavior"]["scaleUp"], hpa["spec"]["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 30
    assert up["selectPolicy"] == "Max"
    assert {(p["type"], p["value"]) for p in up["policies"]} == {("Percent", 100), ("Pods", 2)}
    assert down["stabilizationWindowSeconds"] == 300
    assert [(p["type"], p["value"]) for p in down["policies"]] == [("Percent", 25)]

    canary = list(overlay("canary"))
    assert find(canary, "HorizontalPodAutoscaler") == []
    assert one(canary, "Deployment", "zai-proxy-test")["spec"]["replicas"] == 1


def test_services_select_their_variant_and_the_split_service_selects_both() -> None:
    pods = {
        variant: pod_labels(one(list(overlay(variant)), "Deployment", name))
        for variant, name in VARIANTS.items()
    }
    for variant, name in VARIANTS.items():
        service = one(list(overlay(variant)), "Service", name)
        chosen = {v for v, labels in pods.items() if selects(service["spec"]["selector"], labels)}
        assert chosen == {variant}, name
        assert service["metadata"]["labels"]["variant"] == variant
        assert service["spec"]["ports"][0]["targetPort"] == "http"

    split = one(list(overlay("production")), "Service", SPLIT_SERVICE)
    assert split["spec"]["selector"] == {"traffic": "zai-proxy"}
    assert all(selects(split["spec"]["selector"], labels) for labels in pods.values())
    dashboard = one(list(overlay("production")), "Deployment", "zai-proxy-dashboard")
    assert not selects(split["spec"]["selector"], pod_labels(dashboard))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_service_monitor_scrapes_its_own_service_and_adds_deployment_variant(
    variant: str,
) -> None:
    docs = list(overlay(variant))
    monitor = one(docs, "ServiceMonitor", VARIANTS[variant])
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = find(list(overlay("production")) + list(overlay("canary")), "Service")
    scraped = [
        s["metadata"]["name"] for s in services if selects(selector, s["metadata"]["labels"])
    ]
    assert scraped == [VARIANTS[variant]]  # never the split Service: no double scrape

    service = one(docs, "Service", VARIANTS[variant])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_variant"],
        "targetLabel": "deployment_variant",
        "action": "replace",
    } in endpoint["relabelings"]


def test_the_network_policy_admits_only_clients_the_dashboard_and_monitoring() -> None:
    docs = list(overlay("production"))
    policy = one(docs, "NetworkPolicy", "zai-proxy")["spec"]
    canary = one(list(overlay("canary")), "Deployment", "zai-proxy-test")
    for deployment in (one(docs, "Deployment", "zai-proxy"), canary):
        assert selects(policy["podSelector"]["matchLabels"], pod_labels(deployment))
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}

    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    peers = rule["from"]
    assert {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"zai-proxy-client": "true"}},
    } in peers
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in peers
    dashboard = pod_labels(one(docs, "Deployment", "zai-proxy-dashboard"))
    assert any(
        set(peer) == {"podSelector"} and selects(peer["podSelector"]["matchLabels"], dashboard)
        for peer in peers
    )
    # No peer admits everyone.
    assert all(peer.get("podSelector") or peer.get("namespaceSelector") for peer in peers)
    # Anywhere only for DNS and HTTPS; the rule to Redis names its pods
    # (test_shared_limiter.py).
    open_out = {p["port"] for rule in policy["egress"] if "to" not in rule for p in rule["ports"]}
    assert open_out == {53, 443}


def test_the_dashboard_keeps_its_history_on_a_volume_claim() -> None:
    docs = list(overlay("production"))
    deployment = one(docs, "Deployment", "zai-proxy-dashboard")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    dashboard = container(deployment, "dashboard")
    assert dashboard["args"] == ["dashboard"]
    variables = {k: v["value"] for k, v in env(dashboard).items()}
    db_dir = str(Path(variables["DB_PATH"]).parent)
    mount = next(m for m in dashboard["volumeMounts"] if m["mountPath"] == db_dir)
    volume = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    claim = one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not any(
        "emptyDir" in v and v["name"] == mount["name"] for v in spec["template"]["spec"]["volumes"]
    )

    assert dashboard["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert dashboard["securityContext"]["readOnlyRootFilesystem"] is True

    service = one(docs, "Service", "zai-proxy-dashboard")
    assert selects(service["spec"]["selector"], pod_labels(deployment))


def test_each_variant_has_a_headless_service_selecting_only_its_pods() -> None:
    pods = {d["metadata"]["name"]: pod_labels(d) for d in find(both_variants(), "Deployment")}
    production = list(overlay("production"))
    for variant, name in VARIANTS.items():
        service = one(production, "Service", HEADLESS[variant])
        assert service["spec"]["clusterIP"] == "None"
        assert "type" not in service["spec"] or service["spec"]["type"] == "ClusterIP"
        chosen = {
            pod for pod, labels in pods.items() if selects(service["spec"]["selector"], labels)
        }
        assert chosen == {name}, HEADLESS[variant]
        (port,) = service["spec"]["ports"]
        proxy = container(one(both_variants(), "Deployment", name), "proxy")
        assert port["targetPort"] in {p["name"] for p in proxy["ports"]}
        # No `app`/`variant` label: no ServiceMonitor scrapes the pods through it again.
        assert not {"app", "variant"} & set(service["metadata"]["labels"])
    assert find(list(overlay("canary")), "Service", HEADLESS["canary"]) == []


def test_the_dashboard_scrapes_every_pod_through_the_headless_services() -> None:
    docs = list(overlay("production"))
    deployment = one(docs, "Deployment", "zai-proxy-dashboard")
    scrape = env(container(deployment, "dashboard"))["SCRAPE_TARGETS"]["value"]
    targets = [urlsplit(target) for target in scrape.split(",")]
    assert [t.hostname for t in targets] == [HEADLESS["production"], HEADLESS["canary"]]
    proxies = find(both_variants(), "Deployment")
    for target in targets:
        assert (target.scheme, target.path) == ("dns+http", "/metrics")
        # The name resolves to pod addresses, so the URL's port is the pods' own.
        headless = one(docs, "Service", target.hostname)
        (port,) = headless["spec"]["ports"]
        for proxy in proxies:
            if selects(headless["spec"]["selector"], pod_labels(proxy)):
                ports = container(proxy, "proxy")["ports"]
                numbers = {p["name"]: p["containerPort"] for p in ports}
                assert target.port == numbers[port["targetPort"]], target.geturl()

    # The pods' NetworkPolicy lets the dashboard in on the port it scrapes: with a headless
    # Service the dashboard connects to each pod's own address, so no Service port
    # translates it.
    policy = one(docs, "NetworkPolicy", "zai-proxy")["spec"]
    dashboard = pod_labels(deployment)
    (rule,) = policy["ingress"]
    assert any(
        selects(peer.get("podSelector", {}).get("matchLabels", {}), dashboard)
        and "namespaceSelector" not in peer
        for peer in rule["from"]
    )
    for name in VARIANTS.values():
        proxy = container(one(both_variants(), "Deployment", name), "proxy")
        numbers = {p["name"]: p["containerPort"] for p in proxy["ports"]}
        admitted = {numbers.get(p["port"], p["port"]) for p in rule["ports"]}
        assert {t.port for t in targets} <= admitted, name


def test_the_manifests_name_no_namespace() -> None:
    for source, doc in all_builds():
        if source == ADAPTER_RULES.name:
            continue  # the adapter's own config lives with the adapter
        assert "namespace" not in doc["metadata"], f"{source}: {doc['metadata']['name']}"


def test_the_grafana_config_map_carries_the_dashboard_file_verbatim() -> None:
    (config_map,) = kustomize(DEPLOY / "grafana")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"]["zai-proxy.json"] == DASHBOARD.read_text(encoding="utf-8")
