"""The targets: the fixed-answer upstream and the three proxies in front of it.

zai-proxy runs from this checkout's .venv with its limiter set high so it never
throttles; nginx is a plain reverse proxy; LiteLLM's proxy is installed on first use
into bench/.venv-litellm.  A peer that cannot be installed or started is `Unavailable`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .plan import HOST, KEY, Plan
from .service import Service, Unavailable, free_port, raise_fd_limit, spawn, wait_ready

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
LITELLM_VENV = BENCH / ".venv-litellm"
NGINX = "/usr/sbin/nginx"


def start_upstream(tmp: Path, plan: Plan) -> Service:
    port = free_port()
    log = tmp / "upstream.log"
    argv = [sys.executable, str(BENCH / "perf_upstream.py"), "--port", str(port)]
    argv += ["--events", str(plan.stream_events), "--interval-ms", str(plan.stream_interval_ms)]
    service = Service("upstream", port, spawn(argv, dict(os.environ), log), log)
    wait_ready(service, 15)
    return service


def start_zai(tmp: Path, upstream: Service) -> Service:
    port = free_port()
    env = dict(os.environ)
    env.update(
        ZAI_API_KEY=KEY,
        ZAI_TARGET_URL=f"http://{HOST}:{upstream.port}",
        LISTEN_ADDR=f"{HOST}:{port}",
        RATE_LIMIT_INITIAL="100000",
        RATE_LIMIT_MAX="100000",
        MAX_WORKERS="2000",
        LOG_LEVEL="warning",
    )
    log = tmp / "zai-proxy.log"
    service = Service("zai-proxy", port, spawn([str(BIN / "zai-proxy"), "serve"], env, log), log)
    service.version = importlib.metadata.version("zai-proxy") + _git_describe()
    wait_ready(service, 30)
    return service


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _git_describe() -> str:
    """` (git abc1234)`, with `+changes` when src/ differs from it: the editable install
    runs whatever src/ holds."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (git {head}{'+changes' if dirty else ''})"


_NGINX_CONF = """\
worker_processes auto;
worker_rlimit_nofile 16384;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
user root;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream bench {{
        server {host}:{upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {key}";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(tmp: Path, upstream: Service) -> Service:
    if not Path(NGINX).exists():
        raise Unavailable(f"{NGINX} is not installed")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(tmp=tmp, host=HOST, upstream=upstream.port, port=port, key=KEY)
    )
    version = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    argv = [NGINX, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    log = tmp / "nginx.log"
    service = Service("nginx", port, spawn(argv, dict(os.environ), log), log)
    service.version = version.rpartition("/")[2]
    wait_ready(service, 15)
    return service


def ensure_litellm() -> Path:
    """bench/.venv-litellm/bin/litellm, installed with pip on first use."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if litellm.exists():
        return litellm
    print("installing litellm[proxy] into bench/.venv-litellm ...", flush=True)
    try:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            + ["litellm[proxy]"],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise Unavailable(f"pip install litellm[proxy] failed: {exc}") from exc
    if not litellm.exists():
        raise Unavailable("pip install litellm[proxy] left no litellm command")
    return litellm


_LITELLM_CONF = """\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://{host}:{upstream}/v1
      api_key: {key}
  - model_name: bench-slow
    litellm_params:
      model: openai/bench-slow
      api_base: http://{host}:{upstream}/v1
      api_key: {key}
litellm_settings:
  telemetry: false
  set_verbose: false
"""


def start_litellm(tmp: Path, upstream: Service) -> Service:
    litellm = ensure_litellm()
    port = free_port()
    conf = tmp / "litellm.yaml"
    conf.write_text(_LITELLM_CONF.format(host=HOST, upstream=upstream.port, key=KEY))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    env.update(
        LITELLM_TELEMETRY="False",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        # No client keys, like zai-proxy and nginx: a master key would add a key check.
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        # Its upstream pool holds 500 connections per host by default; zai-proxy gets
        # MAX_WORKERS=2000 here, so LiteLLM gets as many for the 1,000 open streams.
        AIOHTTP_CONNECTOR_LIMIT="2000",
        AIOHTTP_CONNECTOR_LIMIT_PER_HOST="2000",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
    )
    argv = [str(litellm), "--config", str(conf), "--host", HOST, "--port", str(port)]
    argv += ["--num_workers", "1"]
    log = tmp / "litellm.log"
    service = Service("litellm", port, spawn(argv, env, log), log)
    python = LITELLM_VENV / "bin" / "python"
    service.version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    wait_ready(service, 180)
    return service


@contextlib.contextmanager
def services(
    plan: Plan, tmp: Path, with_litellm: bool
) -> Iterator[tuple[Service, list[Service], dict[str, str]]]:
    """The upstream, then each proxy that starts: (upstream, peers, {missing: reason}).
    All are stopped on the way out, last started first."""
    raise_fd_limit()
    upstream = start_upstream(tmp, plan)
    started: list[Service] = [upstream]
    missing: dict[str, str] = {}
    try:
        peers: list[Service] = []
        starters: list[tuple[str, Callable[[Path, Service], Service]]] = [
            ("zai-proxy", start_zai),
            ("nginx", start_nginx),
        ]
        if with_litellm:
            starters.append(("litellm", start_litellm))
        else:
            missing["litellm"] = "skipped (--no-litellm)"
        for name, start in starters:
            try:
                service = start(tmp, upstream)
            except Unavailable as exc:
                missing[name] = str(exc)
                continue
            started.append(service)
            peers.append(service)
        yield upstream, peers, missing
    finally:
        for service in reversed(started):
            service.stop()
