"""`zai-proxy check URL`: is this deployed proxy (and its dashboard) working?

The checks seed 001's verify-monitoring script and canary checklist make by hand, made
once each against a live proxy: `/healthz` and its version, a real Messages request
and a real stream through it, `X-Token-Input` on both answers, every seed metric with
the `variant` label, the limiter's state, and (with `--dashboard`) the dashboard's
`/api/status` seeing production and canary.  With `--openai`, a chat completion and its
stream as well (only where the upstream serves OpenAI's paths).

The judges are pure functions of what came back; `run_checks` is the only network
code.  The tool holds no key: the proxy injects its own, whatever token we send.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from ..proxy.usage import SSEUsageTracker, usage_from_json

__all__ = [
    "SEED_METRICS",
    "Check",
    "format_checks",
    "judge_dashboard",
    "judge_health",
    "judge_limiter",
    "judge_message",
    "judge_metrics",
    "judge_stream",
    "judge_token_header",
    "run",
    "run_checks",
]

# Seed 000's "Telemetry & Metrics" and "Rate-limiter metrics" tables, as metric families
# (a counter's family drops `_total`, as Prometheus' parser names it).
SEED_METRICS: tuple[str, ...] = (
    "zai_proxy_requests",
    "zai_proxy_request_duration_seconds",
    "zai_proxy_request_size_bytes",
    "zai_proxy_response_size_bytes",
    "zai_proxy_tokens",
    "zai_proxy_token_count_duration_seconds",
    "zai_proxy_token_rate",
    "zai_proxy_token_rate_seconds",
    "zai_proxy_concurrent_requests",
    "zai_proxy_max_workers",
    "zai_proxy_worker_utilization_ratio",
    "zai_proxy_build_info",
    "zai_proxy_rate_limit_requests_per_second",
    "zai_proxy_rate_limit_wait_seconds",
    "zai_proxy_rate_limit_adjustments",
    "zai_proxy_rate_limit_rejections",
    "zai_proxy_retry_attempts",
    "zai_proxy_upstream_errors",
)
VARIANTS = ("production", "canary")
# Any token: the proxy replaces it with the key it holds.
CLIENT_TOKEN = "zai-proxy-check"
_DETAIL_MAX = 160


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


def _status_failure(name: str, status: int, body: bytes) -> Check:
    return Check(name, False, _short(f"HTTP {status}: {body.decode('utf-8', 'replace')}"))


# --------------------------------------------------------------------------- judges


def judge_health(status: int, body: bytes) -> tuple[Check, str | None]:
    """The proxy's /healthz; also the variant it reports, for the metrics check."""
    if status != 200:
        return _status_failure("health", status, body), None
    try:
        data = json.loads(body)
    except ValueError:
        return Check("health", False, "/healthz did not answer JSON"), None
    if not isinstance(data, dict) or data.get("status") != "ok":
        return Check("health", False, _short(f"/healthz says {data!r}")), None
    version, variant = data.get("version"), data.get("variant")
    if not isinstance(version, str) or not version:
        return Check("health", False, "/healthz names no version"), None
    variant = variant if isinstance(variant, str) else None
    detail = f"version {version}, variant {variant or '?'}"
    if isinstance(data.get("in_flight"), int) and isinstance(data.get("max_workers"), int):
        detail += f", {data['in_flight']}/{data['max_workers']} workers busy"
    return Check("health", True, detail), variant


def judge_message(name: str, status: int, body: bytes, style: str, elapsed: float) -> Check:
    """A non-streaming answer: 200, JSON in the wire's shape, with usage."""
    if status != 200:
        return _status_failure(name, status, body)
    try:
        data = json.loads(body)
    except ValueError:
        return Check(name, False, "200 but the body is not JSON")
    shaped = isinstance(data, dict) and (
        isinstance(data.get("content"), list)
        if style == "anthropic"
        else isinstance(data.get("choices"), list)
    )
    if not shaped:
        return Check(name, False, _short(f"200 but not a {style} answer: {data!r}"))
    usage = usage_from_json(body, "anthropic" if style == "anthropic" else "openai")
    if usage is None:
        return Check(name, False, "200 but the answer reports no usage")
    return Check(
        name,
        True,
        f"200 in {elapsed:.2f} s, {usage.prompt} input and {usage.output} output tokens",
    )


def judge_stream(
    name: str, status: int, content_type: str, body: bytes, style: str, elapsed: float
) -> Check:
    """A streamed answer: 200, an event stream that ends properly and carries no error."""
    if status != 200:
        return _status_failure(name, status, body)
    if not content_type.startswith("text/event-stream"):
        return Check(name, False, f"200 but content-type is {content_type or 'missing'}")
    tracker = SSEUsageTracker("anthropic" if style == "anthropic" else "openai")
    tracker.feed(body)
    tracker.finish()
    if tracker.error is not None:
        return Check(name, False, f"the stream carried an error event ({tracker.error})")
    if not tracker.complete:
        return Check(name, False, f"the stream ended after {tracker.events} events, unfinished")
    return Check(name, True, f"200 in {elapsed:.2f} s, {tracker.events} events, complete")


def judge_token_header(
    values: Mapping[str, str | None], sources: Mapping[str, str | None] | None = None
) -> Check:
    """`X-Token-Input` on every answer named in `values` (answer -> header or None);
    `sources` (answer -> X-Token-Input-Source, where the proxy sends it) for the detail."""
    if not values:
        return Check("x-token-input", False, "no answer to read it from")
    bad = []
    for answer, value in values.items():
        if value is None:
            bad.append(f"{answer}: missing")
        elif not value.strip().isdigit() or int(value) <= 0:
            bad.append(f"{answer}: {value!r}")
    if bad:
        return Check("x-token-input", False, "; ".join(bad))
    sources = sources or {}
    parts = [
        f"{answer} {value}" + (f" ({sources[answer]})" if sources.get(answer) else "")
        for answer, value in values.items()
    ]
    return Check("x-token-input", True, ", ".join(parts))


Series = list[tuple[Mapping[str, str], float]]


def _families(text: str) -> dict[str, Series]:
    """Family name -> its samples (labels, value); raises ValueError on bad text."""
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def judge_metrics(text: str, variant: str | None) -> Check:
    """Every seed metric present, each series labelled `variant` (= the proxy's own)."""
    try:
        families = _families(text)
    except ValueError as error:
        return Check("metrics", False, _short(f"/metrics is not Prometheus text: {error}"))
    missing = [name for name in SEED_METRICS if name not in families]
    empty = [name for name in SEED_METRICS if name in families and not families[name]]
    unlabelled = [
        name
        for name in SEED_METRICS
        if any("variant" not in labels for labels, _ in families.get(name, []))
    ]
    wrong = sorted(
        {
            labels["variant"]
            for name in SEED_METRICS
            for labels, _ in families.get(name, [])
            if variant is not None and labels.get("variant", variant) != variant
        }
    )
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if empty:
        problems.append("no series yet " + ", ".join(empty))
    if unlabelled:
        problems.append("without variant " + ", ".join(unlabelled))
    if wrong:
        problems.append(f"variant {', '.join(wrong)} where /healthz says {variant}")
    if problems:
        return Check("metrics", False, _short("; ".join(problems)))
    return Check(
        "metrics", True, f"all {len(SEED_METRICS)} seed metrics, variant={variant or 'any'}"
    )


def _first_value(families: Mapping[str, Series], name: str) -> float | None:
    series = families.get(name)
    return float(series[0][1]) if series else None


def judge_limiter(text: str) -> Check:
    """The limiter's rate is exported and sane; its backend and ceiling, if known."""
    try:
        families = _families(text)
    except ValueError:
        return Check("limiter", False, "/metrics is not Prometheus text")
    rate = _first_value(families, "zai_proxy_rate_limit_requests_per_second")
    if rate is None:
        return Check("limiter", False, "zai_proxy_rate_limit_requests_per_second is missing")
    if not math.isfinite(rate) or rate <= 0:
        return Check("limiter", False, f"rate is {rate} req/s")
    detail = f"rate {rate:.4g} req/s"
    ceiling = _first_value(families, "zai_proxy_rate_limit_ceiling_requests_per_second")
    detail += f", ceiling {ceiling:.4g}" if ceiling is not None else ", no ceiling learnt yet"
    for labels, up in families.get("zai_proxy_rate_limit_backend_up", [])[:1]:
        detail += f", backend {labels.get('backend', '?')} {'up' if up else 'DOWN'}"
        if not up:
            return Check("limiter", False, detail)
    return Check("limiter", True, detail)


def judge_dashboard(status: int, body: bytes, variants: Sequence[str] = VARIANTS) -> Check:
    """The dashboard's /api/status has a fresh snapshot of every variant."""
    if status != 200:
        return _status_failure("dashboard", status, body)
    try:
        data = json.loads(body)
        seen = data["variants"]
        if not isinstance(seen, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return Check("dashboard", False, "/api/status has no variants object")
    parts, ok = [], True
    for variant in variants:
        entry = seen.get(variant)
        if not isinstance(entry, dict) or entry.get("snapshot") is None:
            parts.append(f"{variant} not seen")
            ok = False
            continue
        snapshot = entry["snapshot"]
        targets = f"{snapshot.get('targets_up')}/{snapshot.get('targets_total')} targets up"
        if entry.get("stale"):
            parts.append(f"{variant} stale ({targets})")
            ok = False
        else:
            parts.append(f"{variant} fresh ({targets})")
    return Check("dashboard", ok, ", ".join(parts))


def format_checks(checks: Sequence[Check]) -> str:
    """One line per check (ok or FAIL, name, detail), then the count."""
    lines = [f"{'ok' if c.ok else 'FAIL':<4}  {c.name:<14}  {c.detail}" for c in checks]
    passed = sum(c.ok for c in checks)
    lines.append(f"{passed} of {len(checks)} checks passed")
    return "\n".join(lines)


# --------------------------------------------------------------------------- network


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    elapsed: float


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _answer(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> _Answer:
    started = time.monotonic()
    async with client.stream(method, url, **kwargs) as response:
        body = await response.aread()
    return _Answer(response.status_code, response.headers, body, time.monotonic() - started)


def _failed(name: str, error: Exception) -> Check:
    text = f"{type(error).__name__}: {error}" if str(error) else repr(error)
    return Check(name, False, _short(text))


def _body(model: str, streaming: bool, style: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 16,
        "stream": streaming,
        "messages": [{"role": "user", "content": "Reply with the single word: ok"}],
    }
    if streaming and style == "openai":
        # Usage in the last chunk, so the stream reports what it cost.
        body["stream_options"] = {"include_usage": True}
    return body


async def run_checks(
    url: str,
    *,
    model: str,
    dashboard: str | None = None,
    openai: bool = False,
    request_timeout: float = 30.0,
) -> list[Check]:
    """Run every check against the proxy at `url` (its base URL or its origin); each
    request and each check is bounded by `request_timeout`."""
    timeout = request_timeout
    base, origin = url.rstrip("/"), _origin(url)
    headers = {"x-api-key": CLIENT_TOKEN, "anthropic-version": "2023-06-01"}
    checks: list[Check] = []
    token_inputs: dict[str, str | None] = {}
    token_sources: dict[str, str | None] = {}
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), trust_env=False
    ) as client:

        async def attempt(name: str, call: Callable[[], Awaitable[Check]]) -> None:
            try:
                # httpx's timeouts are per phase; this bounds the whole exchange.
                with trio.fail_after(timeout * 2):
                    checks.append(await call())
            except (httpx.HTTPError, trio.TooSlowError, OSError) as error:
                checks.append(_failed(name, error))

        variant: str | None = None

        async def health() -> Check:
            nonlocal variant
            answer = await _answer(client, "GET", origin + "/healthz")
            check, variant = judge_health(answer.status, answer.body)
            return check

        async def exchange(name: str, style: str, streaming: bool) -> Check:
            """One request through the proxy in `style`'s wire format, judged."""
            if style == "anthropic":
                path, auth = "/v1/messages", headers
            else:
                path, auth = "/v1/chat/completions", {"authorization": f"Bearer {CLIENT_TOKEN}"}
            body = _body(model, streaming, style)
            answer = await _answer(client, "POST", base + path, json=body, headers=auth)
            token_inputs[name] = answer.headers.get("x-token-input")
            token_sources[name] = answer.headers.get("x-token-input-source")
            if not streaming:
                return judge_message(name, answer.status, answer.body, style, answer.elapsed)
            content_type = answer.headers.get("content-type", "")
            return judge_stream(
                name, answer.status, content_type, answer.body, style, answer.elapsed
            )

        scraped: list[str] = []

        async def metrics() -> Check:
            answer = await _answer(client, "GET", origin + "/metrics")
            if answer.status != 200:
                return _status_failure("metrics", answer.status, answer.body)
            scraped.append(answer.body.decode("utf-8", "replace"))
            return judge_metrics(scraped[0], variant)

        async def limiter() -> Check:
            if not scraped:
                return Check("limiter", False, "no /metrics to read it from")
            return judge_limiter(scraped[0])

        async def status() -> Check:
            assert dashboard is not None
            answer = await _answer(client, "GET", dashboard.rstrip("/") + "/api/status")
            return judge_dashboard(answer.status, answer.body)

        await attempt("health", health)
        requests = [("messages", "anthropic", False), ("stream", "anthropic", True)]
        if openai:
            requests += [("openai", "openai", False), ("openai-stream", "openai", True)]
        for name, style, streaming in requests:
            await attempt(name, partial(exchange, name, style, streaming))
        checks.append(judge_token_header(token_inputs, token_sources))
        # After the requests, so every per-request series exists.
        await attempt("metrics", metrics)
        await attempt("limiter", limiter)
        if dashboard is not None:
            await attempt("dashboard", status)
    return checks


# --------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    checks = trio.run(
        lambda: run_checks(
            args.url,
            model=args.model,
            dashboard=args.dashboard,
            openai=args.openai,
            request_timeout=args.timeout,
        )
    )
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"url": args.url, "ok": ok, "checks": [asdict(c) for c in checks]}))
    else:
        print(format_checks(checks))
    return 0 if ok else 1
