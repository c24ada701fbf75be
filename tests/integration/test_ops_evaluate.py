"""`zai-proxy evaluate` against the simulated upstream, through a proxy and straight.

The simulator reports usage by its own rule, one token per 4 characters of the prompt's
text (sim/upstream.py, `_tokens`), not cl100k: so the API counts here are known in
advance, the local counts are the proxy's tokenizer, and the error between them is a
known skew: small on English, large and positive on CJK (cl100k spends about a token
per Han or kana character where the simulator counts a quarter)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import trio

from tests.conftest import UPSTREAM_KEY, ProxyHandle, StartProxy, StartUpstream
from zai_proxy.cli import main
from zai_proxy.ops.evaluate import load_corpus
from zai_proxy.proxy.tokenizer import get_counter
from zai_proxy.sim.upstream import Fault, SimUpstream


async def evaluate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        code = await trio.to_thread.run_sync(main, ["evaluate", *argv])
    captured = capsys.readouterr()
    assert UPSTREAM_KEY not in captured.out + captured.err
    return code, captured.out, captured.err


def sim_count(text: str) -> int:
    """The simulator's usage rule for a prompt of plain text."""
    return max(1, math.ceil(len(text) / 4))


async def test_through_the_proxy_every_prompt_is_counted_and_cjk_skews_high(
    proxy: ProxyHandle, upstream: SimUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await evaluate(capsys, proxy.url, "--json")

    report = json.loads(out)
    assert code == 0
    assert len(report["prompts"]) == len(load_corpus()) == upstream.total_requests
    assert all(p["api"] and p["error"] is None for p in report["prompts"])
    kinds = {row["kind"]: row for row in report["kinds"]}
    assert list(kinds) == ["text", "code", "cjk", "tool_calls", "all"]
    assert kinds["cjk"]["bias"] > 1.0
    assert kinds["text"]["mean_abs"] < 0.35
    assert kinds["all"]["prompts"] == len(load_corpus())


async def test_the_errors_are_local_against_api_for_known_counts(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Half of each prompt cached: the API count is input + cache read + cache write.
    upstream = await start_upstream(cache_ratio=0.5)
    proxy = await start_proxy(upstream)
    texts = {
        "en": "The quick brown fox jumps over the lazy dog. " * 20,
        "zh": "反向代理替客户端发送请求，并且从不向客户端展示真正的密钥。" * 4,
    }
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps(
                {"id": k, "kind": k, "request": {"messages": [{"role": "user", "content": t}]}}
            )
            + "\n"
            for k, t in texts.items()
        )
    )

    code, out, _ = await evaluate(capsys, proxy.url, "--corpus", str(corpus), "--json")

    assert code == 0
    prompts = {p["id"]: p for p in json.loads(out)["prompts"]}
    for name, text in texts.items():
        body = {
            "model": "glm-4.6",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": text}],
        }
        local = get_counter().count_request(json.dumps(body, ensure_ascii=False).encode())
        api = sim_count(text)
        assert prompts[name]["api"] == api, name
        assert prompts[name]["local"] == local, name
        assert prompts[name]["relative_error"] == pytest.approx((local - api) / api), name
    assert upstream.status_counts[200] == 2


async def test_straight_to_an_upstream_with_the_key_from_the_environment(
    upstream: SimUpstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZAI_API_KEY", UPSTREAM_KEY)
    code, out, _ = await evaluate(capsys, "--upstream", upstream.url)
    assert code == 0
    assert out.startswith("local count: tiktoken")
    assert upstream.status_counts[200] == len(load_corpus())


async def test_a_wrong_key_fails_every_prompt_without_printing_it(
    upstream: SimUpstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "sk-wrong-" + UPSTREAM_KEY[-8:]
    monkeypatch.setenv("ZAI_API_KEY", wrong)
    code, out, err = await evaluate(capsys, "--upstream", upstream.url)
    assert code == 1
    assert sum(line.startswith("FAIL ") for line in out.splitlines()) == len(load_corpus())
    assert "HTTP 401" in out
    assert wrong not in out + err
    # A refusal is final: not sent again.
    assert upstream.total_requests == len(load_corpus())


async def test_a_5xx_or_429_is_tried_again(
    upstream: SimUpstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZAI_API_KEY", UPSTREAM_KEY)
    upstream.script(Fault.status(500), Fault.status(429, retry_after=0))
    code, out, _ = await evaluate(capsys, "--upstream", upstream.url, "--json")
    assert code == 0
    assert all(p["api"] for p in json.loads(out)["prompts"])
    assert upstream.status_counts[500] == upstream.status_counts[429] == 1
    assert upstream.status_counts[200] == len(load_corpus())


def test_without_a_target_or_a_key_it_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ZAI_API_KEY", raising=False)
    assert main(["evaluate"]) == 2
    assert main(["evaluate", "--upstream", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "zai-proxy evaluate: give the proxy's URL or --upstream URL (one of them)",
        "zai-proxy evaluate: --upstream needs the upstream's key in ZAI_API_KEY",
    ]
