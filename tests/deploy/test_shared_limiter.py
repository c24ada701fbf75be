"""The shared rate limiter in the manifests: one Redis, in the production build; the proxies
of both variants pointed at it and the only pods let in; every autoscaled Deployment on it;
and the Redis container's own start script run for real against `redis-server`."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import require_tool
from tests.deploy.manifests import (
    Doc,
    both_variants,
    container,
    env,
    find,
    one,
    overlay,
    pod_labels,
    selects,
)

VARIANTS = {"production": "zai-proxy", "canary": "zai-proxy-test"}
REDIS = "zai-proxy-redis"
SECRET = {"name": "zai-proxy-redis", "key": "password", "optional": True}


def _proxy(variant: str) -> Doc:
    return container(one(list(overlay(variant)), "Deployment", VARIANTS[variant]), "proxy")


def _redis() -> Doc:
    return container(one(list(overlay("production")), "Deployment", REDIS), "redis")


def _pods() -> dict[str, dict[str, str]]:
    """The pod labels of every Deployment in the namespace, by Deployment name."""
    return {d["metadata"]["name"]: pod_labels(d) for d in find(both_variants(), "Deployment")}


def test_both_variants_point_at_the_one_redis_of_the_production_build() -> None:
    urls = {variant: env(_proxy(variant))["RATE_LIMIT_BACKEND"]["value"] for variant in VARIANTS}
    assert urls["production"] == urls["canary"]
    url = urlsplit(urls["production"])
    assert (url.scheme, url.path) == ("redis", "/0")
    assert url.password is None  # the password comes from the Secret, never the URL

    # Production owns the Redis; the canary's build only points at it.
    production = list(overlay("production"))
    service = one(production, "Service", str(url.hostname))
    assert find(list(overlay("canary")), "Service", url.hostname) == []
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    servers = [
        d
        for d in find(both_variants(), "Deployment")
        if selects(service["spec"]["selector"], pod_labels(d))
    ]
    assert [d["metadata"]["name"] for d in servers] == [REDIS]
    ports = {p["name"]: p["containerPort"] for p in _redis()["ports"]}
    assert ports[port["targetPort"]] == 6379


def test_redis_and_the_proxies_read_one_optional_password_secret() -> None:
    refs = [env(_proxy(variant))["RATE_LIMIT_BACKEND_PASSWORD"] for variant in VARIANTS]
    redis = env(_redis())
    refs += [redis["REDIS_PASSWORD"], redis["REDISCLI_AUTH"]]
    for ref in refs:
        assert ref == {"name": ref["name"], "valueFrom": {"secretKeyRef": SECRET}}
    # The secret itself is never in the manifests.
    assert find(both_variants(), "Secret") == []


def test_redis_is_one_locked_down_pod_that_keeps_nothing_on_disk() -> None:
    deployment = one(list(overlay("production")), "Deployment", REDIS)
    spec = deployment["spec"]
    # Two Redis pods at once, even during a rollout, would be two limiters.
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}

    redis = _redis()
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", redis["image"]), redis["image"]
    script = shlex.split(redis["args"][0].replace("\\\n", " "))
    assert script[:4] == ["set", "--", "redis-server", "--port"]
    assert ["--save", ""] == script[script.index("--save") : script.index("--save") + 2]
    assert ["--appendonly", "no"] == script[
        script.index("--appendonly") : script.index("--appendonly") + 2
    ]

    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert redis["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(redis["resources"][kind])
    assert redis["livenessProbe"]["tcpSocket"]["port"] in {p["name"] for p in redis["ports"]}
    assert "redis-cli ping" in redis["readinessProbe"]["exec"]["command"][-1]


def test_only_the_proxy_pods_of_both_variants_may_reach_redis() -> None:
    policy = one(list(overlay("production")), "NetworkPolicy", REDIS)["spec"]
    pods = _pods()
    guarded = {
        name
        for name, labels in pods.items()
        if selects(policy["podSelector"]["matchLabels"], labels)
    }
    assert guarded == {REDIS}

    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    # Pods of this namespace only: no namespaceSelector, no ipBlock.
    assert all(set(peer) == {"podSelector"} for peer in rule["from"])
    admitted = {
        name
        for name, labels in pods.items()
        for peer in rule["from"]
        if selects(peer["podSelector"]["matchLabels"], labels)
    }
    assert admitted == set(VARIANTS.values())  # not the dashboard, not Redis itself

    # Egress listed with no rule: Redis connects nowhere.
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert not policy.get("egress")


def test_the_proxies_may_connect_out_to_redis_and_to_no_other_pod() -> None:
    policy = one(list(overlay("production")), "NetworkPolicy", "zai-proxy")["spec"]
    pods = _pods()
    to_pods = [rule for rule in policy["egress"] if "to" in rule]
    (rule,) = to_pods
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    reached = {
        name
        for name, labels in pods.items()
        for peer in rule["to"]
        if set(peer) == {"podSelector"} and selects(peer["podSelector"]["matchLabels"], labels)
    }
    assert reached == {REDIS}
    for name in VARIANTS.values():
        assert selects(policy["podSelector"]["matchLabels"], pods[name])


@pytest.mark.parametrize("name", ["production", "canary"])
def test_every_autoscaled_deployment_runs_on_the_shared_limiter(name: str) -> None:
    """More than one replica on in-memory limiters would learn the limit once per replica."""
    docs = list(overlay(name))
    built = both_variants()  # the Redis of the production build serves the canary's too
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["maxReplicas"] <= 1:
            continue
        target = one(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        backend = urlsplit(env(container(target, "proxy"))["RATE_LIMIT_BACKEND"]["value"])
        assert backend.scheme in {"redis", "rediss"}, hpa["metadata"]["name"]
        assert find(built, "Service", backend.hostname), backend.geturl()
    if name == "production":
        assert find(docs, "HorizontalPodAutoscaler")  # the check above did run


# ---------------------------------------------------------------------- the start script


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stand_ins(bin_dir: Path, port: int) -> None:
    """`redis-server` and `redis-cli` as the image has them on PATH, moved to a free
    loopback port (a later --port wins; -p comes before the command)."""
    server = require_tool("redis-server")
    cli = require_tool("redis-cli")
    bin_dir.mkdir()
    for name, line in {
        "redis-server": f'exec {server} "$@" --port {port} --bind 127.0.0.1',
        "redis-cli": f'exec {cli} -p {port} "$@"',
    }.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(0o755)


def _cli(port: int, *args: str, password: str | None = None) -> str:
    environ = {"PATH": os.environ["PATH"]}
    if password is not None:
        environ["REDISCLI_AUTH"] = password
    done = subprocess.run(
        [require_tool("redis-cli"), "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        env=environ,
    )
    return done.stdout


@pytest.mark.parametrize("password", [None, 'two words, a "quote" and $HOME'])
def test_the_redis_container_starts_unsaved_with_a_password_only_from_the_secret(
    tmp_path: Path, password: str | None
) -> None:
    redis = _redis()
    port = _free_port()
    _stand_ins(tmp_path / "bin", port)
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    # What the kubelet gives the container: the Secret's key when it exists, else nothing.
    secret = {} if password is None else {"REDIS_PASSWORD": password, "REDISCLI_AUTH": password}
    probe = redis["readinessProbe"]["exec"]["command"]
    server = subprocess.Popen(
        [*redis["command"], *redis["args"]],
        env={"PATH": path, **secret},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Another process: poll its readiness probe until it passes.
        deadline = time.monotonic() + 10
        while subprocess.run(probe, env={"PATH": path, **secret}, timeout=10).returncode != 0:
            assert server.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "the readiness probe never passed"
            time.sleep(0.05)

        assert _cli(port, "config", "get", "save", password=password) == "save\n\n"
        assert _cli(port, "config", "get", "appendonly", password=password) == "appendonly\nno\n"
        required = _cli(port, "config", "get", "requirepass", password=password)
        assert required == f"requirepass\n{password or ''}\n"
        if password is not None:
            # Without the Secret's value the probe (and any other client) is refused.
            refused = subprocess.run(probe, env={"PATH": path}, timeout=10)
            assert refused.returncode != 0
            assert _cli(port, "ping").startswith("NOAUTH")
    finally:
        server.terminate()
        server.wait(timeout=10)
