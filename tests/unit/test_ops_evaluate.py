"""`zai-proxy evaluate`'s core: the shipped corpus and the error arithmetic by kind."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from zai_proxy.ops.evaluate import (
    KINDS,
    Measurement,
    aggregate,
    format_evaluation,
    load_corpus,
)
from zai_proxy.proxy.tokenizer import TokenCounter


def test_the_shipped_corpus_has_every_kind_and_unique_ids() -> None:
    prompts = load_corpus()
    kinds = Counter(p.kind for p in prompts)
    assert set(kinds) == set(KINDS)
    assert min(kinds.values()) >= 5
    assert len({p.id for p in prompts}) == len(prompts)


def test_every_corpus_prompt_is_a_request_the_counter_understands() -> None:
    counter = TokenCounter()
    for prompt in load_corpus():
        body = json.dumps({"model": "m", "max_tokens": 1, **prompt.request}).encode()
        assert (counter.count_request(body) or 0) > 10, prompt.id
    tool_prompts = [p for p in load_corpus() if p.kind == "tool_calls"]
    assert all("tools" in p.request for p in tool_prompts)
    assert any(
        isinstance(m["content"], list) and m["content"][-1].get("type") == "tool_result"
        for p in tool_prompts
        for m in p.request["messages"]
    )


def test_a_bad_corpus_line_is_named(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "kind": "text", "request": {"messages": []}}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_corpus(corpus)
    corpus.write_text("\n")
    with pytest.raises(ValueError, match="no prompt"):
        load_corpus(corpus)


def test_errors_by_kind_mean_p95_and_bias() -> None:
    measurements = [
        Measurement("t1", "text", 110, 100),  # +10 %
        Measurement("t2", "text", 90, 100),  # -10 %
        Measurement("t3", "text", 130, 100),  # +30 %
        Measurement("c1", "cjk", 40, 10),  # +300 %
        Measurement("c2", "cjk", None, 10),  # not counted locally: left out
        Measurement("x", "code", 10, None, "HTTP 500"),  # failed: left out
    ]
    rows = {r.kind: r for r in aggregate(measurements)}
    assert list(rows) == ["text", "code", "cjk", "all"]
    text = rows["text"]
    assert text.prompts == 3
    assert text.mean_abs == pytest.approx(0.5 / 3)
    assert text.bias == pytest.approx(0.3 / 3)
    # |errors| sorted 0.1, 0.1, 0.3: rank 0.95 * 2 = 1.9, so 0.1 + 0.9 * 0.2.
    assert text.p95_abs == pytest.approx(0.28)
    assert rows["cjk"].prompts == 1 and rows["cjk"].bias == pytest.approx(3.0)
    assert rows["code"].prompts == 0 and rows["code"].mean_abs is None
    assert rows["all"].prompts == 4
    assert rows["all"].bias == pytest.approx((0.1 - 0.1 + 0.3 + 3.0) / 4)


def test_the_report_names_the_backend_and_every_failed_prompt() -> None:
    measurements = [Measurement("t1", "text", 110, 100), Measurement("x", "code", 9, None, "boom")]
    text = format_evaluation(aggregate(measurements), measurements, "tiktoken")
    assert text.startswith("local count: tiktoken")
    assert "FAIL  x: boom" in text
    row = next(line for line in text.splitlines() if line.startswith("text"))
    assert row.split() == ["text", "1", "10.0", "%", "10.0", "%", "+10.0", "%"]
