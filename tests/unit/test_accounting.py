"""Token accounting after a request: local counts of large answers stay off the loop."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest

from zai_proxy.proxy import (
    INLINE_MAX_BYTES,
    Accountant,
    LiveState,
    ModelLabels,
    Outcome,
    ProxyMetrics,
    TokenCounter,
    count_response_async,
)


def answer_of(size: int) -> bytes:
    text = "word " * (size // 5)
    return json.dumps({"type": "message", "content": [{"type": "text", "text": text}]}).encode()


class ThreadSpy(TokenCounter):
    """A real counter that notes which thread each large count ran on."""

    def __init__(self) -> None:
        super().__init__(use_tiktoken=False)
        self.threads: list[threading.Thread] = []

    def count_response(self, body: bytes, style: str) -> int | None:  # type: ignore[override]
        self.threads.append(threading.current_thread())
        return super().count_response(body, style)  # type: ignore[arg-type]

    def count_text(self, text: str) -> int:
        if len(text) >= INLINE_MAX_BYTES:
            self.threads.append(threading.current_thread())
        return super().count_text(text)


@pytest.mark.parametrize(
    ("size", "on_the_loop"), [(INLINE_MAX_BYTES // 2, True), (4 * INLINE_MAX_BYTES, False)]
)
async def test_a_large_answer_is_counted_off_the_event_loop(size: int, on_the_loop: bool) -> None:
    counter = ThreadSpy()
    body = answer_of(size)
    assert await count_response_async(counter, body, "anthropic") == counter.count_response(
        body, "anthropic"
    )
    assert (counter.threads[0] is threading.main_thread()) is on_the_loop


@pytest.mark.parametrize("streamed", [False, True])
async def test_the_accountant_counts_a_large_output_off_the_event_loop(streamed: bool) -> None:
    counter = ThreadSpy()
    metrics = ProxyMetrics(variant="production", live=lambda: LiveState(0, 1, 1.0, None))
    accountant = Accountant(metrics=metrics, counter=counter, models=ModelLabels("glm-4"))
    big = answer_of(8 * 1024 * 1024)
    outcome = Outcome(status=200)
    if streamed:
        outcome.output_text = "word " * (1024 * 1024)
    else:
        outcome.output_text_bytes = big
    usage = await accountant.account(
        route="/v1/messages",
        body=b'{"messages":[{"role":"user","content":"hi"}]}',
        style="anthropic",
        model="glm-4.6",
        outcome=outcome,
        duration=1.0,
        now=datetime(2026, 12, 2, 12, tzinfo=UTC),
    )
    assert usage is not None and usage.output > 1_000_000 // 5
    assert counter.threads and all(t is not threading.main_thread() for t in counter.threads)
