"""The Prometheus surface: every seed metric and label, bounded cardinality, formats,
token accounting through the real proxy."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anthropic
import httpx
import openai
import trio
from prometheus_client.parser import text_string_to_metric_families

import zai_proxy
from tests.conftest import ProxyHandle, StartProxy, StartUpstream
from zai_proxy.ops import check
from zai_proxy.proxy import MODEL_LABEL_CAP, ROUTES, ModelLabels, pricing_tier
from zai_proxy.sim.upstream import Fault, SimUpstream

MESSAGE = {"model": "glm-4.6", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
CACHED = {
    **MESSAGE,
    "system": [{"type": "text", "text": "z" * 800, "cache_control": {"type": "ephemeral"}}],
}

# Seed 000 "Telemetry & Metrics" and "Rate-limiter metrics" tables: name -> (type, labels).
SEED_METRICS: dict[str, tuple[str, set[str]]] = {
    "zai_proxy_tokens": ("counter", {"direction", "model", "variant", "pricing_tier"}),
    "zai_proxy_request_duration_seconds": (
        "histogram",
        {"method", "path", "status_code", "variant"},
    ),
    "zai_proxy_requests": ("counter", {"method", "path", "status_code", "variant"}),
    "zai_proxy_request_size_bytes": ("histogram", {"method", "path", "variant"}),
    "zai_proxy_response_size_bytes": ("histogram", {"method", "path", "status_code", "variant"}),
    "zai_proxy_concurrent_requests": ("gauge", {"variant"}),
    "zai_proxy_max_workers": ("gauge", {"variant"}),
    "zai_proxy_worker_utilization_ratio": ("gauge", {"variant"}),
    "zai_proxy_token_count_duration_seconds": ("histogram", {"variant"}),
    "zai_proxy_token_rate_seconds": ("histogram", {"direction", "model", "variant"}),
    "zai_proxy_token_rate": ("histogram", {"direction", "model", "variant"}),
    "zai_proxy_build_info": ("gauge", {"version", "variant", "commit", "build_time"}),
    "zai_proxy_rate_limit_requests_per_second": ("gauge", {"variant"}),
    "zai_proxy_rate_limit_wait_seconds": ("histogram", {"variant"}),
    "zai_proxy_rate_limit_adjustments": ("counter", {"direction", "variant"}),
    "zai_proxy_rate_limit_rejections": ("counter", {"variant", "reason"}),
    "zai_proxy_retry_attempts": ("counter", {"reason", "variant"}),
    "zai_proxy_upstream_errors": ("counter", {"error_type", "variant"}),
}
# Seed 004: histogram buckets.
DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
# "Exponential: 100, 1000, 10000, ...", up to 100 MB: MAX_BODY_BYTES is 32 MiB.
SIZE_BUCKETS = [100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8]
LABEL_VALUES = {
    ("zai_proxy_rate_limit_adjustments", "direction"): {"increase", "decrease", "probe"},
    ("zai_proxy_retry_attempts", "reason"): {
        "retry",
        "network_error",
        "429",
        "truncated_response",
        "empty_streaming",
    },
    ("zai_proxy_upstream_errors", "error_type"): {
        "422",
        "429",
        "truncated_response",
        "empty_streaming",
        "upstream_connection",
        "write_error",
        "read_error",
        "request_creation",
    },
}


async def scrape(proxy: ProxyHandle, accept: str = "") -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(proxy.origin + "/metrics", headers={"accept": accept})


async def test_every_seed_metric_and_label_is_exported(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.status(429))
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(proxy.url + "/v1/messages", json=CACHED)
        await client.post(proxy.url + "/v1/messages", json={**CACHED, "stream": True})
    await proxy.settled()
    families = {f.name: f for f in text_string_to_metric_families((await scrape(proxy)).text)}
    for name, (kind, labels) in SEED_METRICS.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        samples = [s for s in family.samples if not s.name.endswith(("_sum", "_count"))]
        assert samples, f"{name} has no samples"
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
            assert sample.labels["variant"] == "production"
    for (name, label), values in LABEL_VALUES.items():
        seen = {s.labels[label] for s in families[name].samples}
        assert values <= seen, (name, values - seen)
    buckets = [
        float(s.labels["le"])
        for s in families["zai_proxy_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["status_code"] == "200"
    ]
    assert buckets == [*DURATION_BUCKETS, float("inf")]
    for family in ("zai_proxy_request_size_bytes", "zai_proxy_response_size_bytes"):
        sizes = [
            float(s.labels["le"])
            for s in families[family].samples
            if s.name.endswith("_bucket") and s.labels.get("status_code", "200") == "200"
        ]
        assert sizes == [*SIZE_BUCKETS, float("inf")], family
    tiers = {s.labels["pricing_tier"] for s in families["zai_proxy_tokens"].samples}
    assert tiers == {pricing_tier(datetime.now(UTC))}
    directions = {s.labels["direction"] for s in families["zai_proxy_tokens"].samples}
    assert directions == {"input", "output", "cache_read", "cache_write"}


async def test_openmetrics_is_served_when_asked(proxy: ProxyHandle) -> None:
    response = await scrape(proxy, "application/openmetrics-text; version=1.0.0")
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    plain = await scrape(proxy)
    assert plain.headers["content-type"].startswith("text/plain")


def test_model_label_falls_back_to_tokenizer_model_and_is_capped() -> None:
    labels = ModelLabels("glm-4-default", cap=3)
    assert labels.label(None) == "glm-4-default"
    assert labels.label("") == "glm-4-default"
    assert [labels.label(m) for m in ("a", "b", "a", "c", "d", "e", "b")] == [
        "a",
        "b",
        "a",
        "c",
        "other",
        "other",
        "b",
    ]
    assert labels.label("x" * 500) == "other"


def direction_totals(proxy: ProxyHandle, model: str) -> dict[str, float]:
    tier = pricing_tier(datetime.now(UTC))
    return {
        direction: proxy.sample(
            "zai_proxy_tokens_total", direction=direction, model=model, pricing_tier=tier
        )
        or 0.0
        for direction in ("input", "output", "cache_read", "cache_write")
    }


async def test_each_token_direction_counts_exactly_what_the_upstream_reported(
    proxy: ProxyHandle,
) -> None:
    # The SDKs read the usage the upstream sent; the four counters must equal their sums,
    # direction by direction (a swap of cache_read and cache_write must show).
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="agent", max_retries=0)
    reported = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
    # A prefix's first request writes the cache, later ones read it; both ways of
    # answering (JSON and SSE) carry both kinds.
    turns = [("q" * 1200, False), ("q" * 1200, True), ("r" * 2000, True), ("q" * 1200, False)]
    with trio.fail_after(10):
        for n, (prefix, streamed) in enumerate(turns):
            request: Any = {
                "model": "glm-4.7",
                "max_tokens": 64,
                "system": [
                    {"type": "text", "text": prefix, "cache_control": {"type": "ephemeral"}}
                ],
                "messages": [{"role": "user", "content": f"turn {n}"}],
            }
            if streamed:
                async with client.messages.stream(**request) as stream:
                    usage = (await stream.get_final_message()).usage
            else:
                usage = (await client.messages.create(**request)).usage
            reported["input"] += usage.input_tokens
            reported["output"] += usage.output_tokens
            reported["cache_read"] += usage.cache_read_input_tokens or 0
            reported["cache_write"] += usage.cache_creation_input_tokens or 0
    await proxy.settled()
    # Unequal cache reads and writes, so a swap of the two cannot go unseen.
    assert all(reported.values()) and reported["cache_read"] != reported["cache_write"], reported
    assert direction_totals(proxy, "glm-4.7") == reported


async def test_openai_cached_tokens_count_as_cache_reads_not_input(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(await start_upstream(cache_ratio=0.5))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="agent", max_retries=0)
    prompt = [{"role": "user", "content": "w " * 400}]
    reported = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
    with trio.fail_after(10):
        for _ in range(2):
            answer = await client.chat.completions.create(model="glm-4.5", messages=prompt)  # type: ignore[arg-type]
            usage = answer.usage
            assert usage is not None and usage.prompt_tokens_details is not None
            cached = usage.prompt_tokens_details.cached_tokens or 0
            reported["input"] += usage.prompt_tokens - cached
            reported["output"] += usage.completion_tokens
            reported["cache_read"] += cached
    await proxy.settled()
    assert reported["cache_read"] > 0
    assert direction_totals(proxy, "glm-4.5") == reported


async def test_labels_stay_bounded_after_10000_requests_with_random_paths_and_models(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(MAX_WORKERS="64")
    rng = random.Random(5)

    async def agent(count: int, client: httpx.AsyncClient) -> None:
        for _ in range(count):
            if rng.random() < 0.5:
                path = "/v1/" + "/".join(rng.choice("abcdefgh") * 3 for _ in range(2))
                # Methods are the caller's to invent, too.
                method = rng.choice(["GET", "DELETE", f"M{rng.randrange(10**6)}"])
                await client.request(method, proxy.url + path + f"?n={rng.random()}")
            else:
                model = f"model-{rng.randrange(10**9)}"
                await client.post(proxy.url + "/v1/messages", json={**MESSAGE, "model": model})

    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(32):
                    nursery.start_soon(partial(agent, 10_000 // 32 + 1, client))
    await proxy.settled()
    families = {f.name: f for f in text_string_to_metric_families((await scrape(proxy)).text)}
    requests = families["zai_proxy_requests"].samples
    assert sum(s.value for s in requests) >= 10_000
    paths = {s.labels["path"] for s in requests}
    assert paths <= set(ROUTES) | {"other"}
    methods = {s.labels["method"] for s in requests}
    assert methods == {"GET", "DELETE", "POST", "other"}
    models = {s.labels["model"] for s in families["zai_proxy_tokens"].samples}
    assert len(models) <= MODEL_LABEL_CAP + 1 and "other" in models
    total_samples = sum(len(f.samples) for f in families.values())
    assert total_samples < 3000, total_samples


async def test_openai_stream_without_usage_is_counted_locally(proxy: ProxyHandle) -> None:
    chat = {
        "model": "glm-4.5",
        "stream": True,
        "messages": [{"role": "user", "content": "x " * 50}],
    }
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/chat/completions", json=chat) as r:
            await r.aread()
    await proxy.settled()
    tier = pricing_tier(datetime.now(UTC))
    labels = {"model": "glm-4.5", "pricing_tier": tier}
    input_tokens = proxy.sample("zai_proxy_tokens_total", direction="input", **labels)
    output_tokens = proxy.sample("zai_proxy_tokens_total", direction="output", **labels)
    assert input_tokens is not None and input_tokens >= 50
    assert output_tokens is not None and output_tokens > 0
    assert proxy.sample("zai_proxy_token_count_duration_seconds_count") == 1


async def test_counting_disabled_records_no_local_counts(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(TOKEN_COUNTING_ENABLED="false")
    chat = {"model": "glm-4.5", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/chat/completions", json=chat) as r:
            await r.aread()
        # API-reported usage is still recorded: only local counting is off.
        await client.post(proxy.url + "/v1/messages", json=MESSAGE)
    await proxy.settled()
    tier = pricing_tier(datetime.now(UTC))
    assert (
        proxy.sample(
            "zai_proxy_tokens_total", direction="input", model="glm-4.5", pricing_tier=tier
        )
        is None
    )
    assert proxy.sample(
        "zai_proxy_tokens_total", direction="input", model="glm-4.6", pricing_tier=tier
    )


async def test_estimate_accuracy_is_recorded_for_sampled_requests(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(TOKEN_ACCURACY_SAMPLE="1")
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(3):
            await client.post(proxy.url + "/v1/messages", json=CACHED)
    await proxy.settled()
    count = proxy.sample("zai_proxy_token_estimate_relative_error_count", direction="input")
    assert count == 3


async def test_build_info_carries_version_and_commit(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        ZAI_PROXY_VERSION="9.9.9-rc1", BUILD_COMMIT="abc1234", BUILD_TIME="2026-11-25T00:00:00Z"
    )
    families = {f.name: f for f in text_string_to_metric_families((await scrape(proxy)).text)}
    (sample,) = families["zai_proxy_build_info"].samples
    assert sample.value == 1
    assert sample.labels["version"] == "9.9.9-rc1"
    assert sample.labels["commit"] == "abc1234"
    assert sample.labels["build_time"] == "2026-11-25T00:00:00Z"
    async with httpx.AsyncClient() as client:
        health = (await client.get(proxy.origin + "/healthz")).json()
    assert health["version"] == "9.9.9-rc1"


async def test_build_version_defaults_to_the_package_version(proxy: ProxyHandle) -> None:
    families = {f.name: f for f in text_string_to_metric_families((await scrape(proxy)).text)}
    (sample,) = families["zai_proxy_build_info"].samples
    assert sample.labels["version"] == zai_proxy.__version__


def test_the_operators_check_looks_for_every_seed_metric() -> None:
    # `zai-proxy check` verifies a deployed proxy against the same list as this file.
    assert set(check.SEED_METRICS) == set(SEED_METRICS)
