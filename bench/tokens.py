"""Token counting latency and estimate accuracy.

    python bench/tokens.py

Prints, for Anthropic-shaped request bodies of about 1k, 10k and 100k cl100k tokens,
the p50/p99 latency of ``TokenCounter.count_request`` with the tiktoken and the
estimate backends, then the estimate's error against cl100k on a few kinds of text.
Text comes from the standard library (English docs and Python source), so the figures
are reproducible offline.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import pydoc_data.topics
import statistics
import sysconfig
import time

from zai_proxy.proxy import TokenCounter, estimate_tokens, relative_error

SIZES = (1_000, 10_000, 100_000)
RUNS = {1_000: 300, 10_000: 100, 100_000: 20}


def _corpus() -> dict[str, str]:
    import asyncio.base_events
    import json.decoder

    topics = list(pydoc_data.topics.topics.values())
    texts = {
        "english prose": "\n".join(topics[:60]),
        "python code": inspect.getsource(asyncio.base_events) + inspect.getsource(json.decoder),
        "json": json.dumps({k: v[:300] for k, v in pydoc_data.topics.topics.items()}, indent=2),
        "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю. " * 40,
    }
    cjk = pathlib.Path(sysconfig.get_path("stdlib"), "test", "cjkencodings")
    for name, label in (("gb2312-utf8.txt", "chinese"), ("shift_jis-utf8.txt", "japanese")):
        path = cjk / name
        if path.exists():
            texts[label] = path.read_text("utf-8") * 20
    return texts


def _body(counter: TokenCounter, prose: str, code: str, tokens: int) -> bytes:
    """An Anthropic Messages body of roughly ``tokens`` tokens: system, turns, tool use."""
    source = (prose + "\n" + code) * (1 + tokens * 5 // (len(prose) + len(code)))
    messages: list[object] = []
    used = 0
    pos = 0
    turn = 0
    while used < tokens:
        piece = source[pos : pos + 1_000]
        pos += 1_000
        used += counter.count_text(piece)
        if turn % 2 == 0:
            content: object = [{"type": "tool_result", "tool_use_id": f"t{turn}", "content": piece}]
        else:
            content = [
                {"type": "text", "text": piece},
                {"type": "tool_use", "id": f"t{turn + 1}", "name": "Read", "input": {"p": "x"}},
            ]
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": content})
        turn += 1
    return json.dumps(
        {"model": "glm-4.6", "max_tokens": 1024, "system": "You are a coder.", "messages": messages}
    ).encode()


def _latency(counter: TokenCounter, body: bytes, runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        counter.count_request(body)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
    return statistics.median(samples), p99


def main() -> None:
    tiktoken_counter = TokenCounter()
    estimate_counter = TokenCounter(use_tiktoken=False)
    assert tiktoken_counter.backend == "tiktoken"
    texts = _corpus()

    print("count_request latency, Anthropic-shaped bodies")
    print(f"{'tokens':>8} {'body KiB':>9} {'backend':>9} {'p50 ms':>8} {'p99 ms':>8} {'runs':>5}")
    for size in SIZES:
        body = _body(tiktoken_counter, texts["english prose"], texts["python code"], size)
        actual = tiktoken_counter.count_request(body)
        for counter in (tiktoken_counter, estimate_counter):
            p50, p99 = _latency(counter, body, RUNS[size])
            print(
                f"{actual:>8} {len(body) / 1024:>9.0f} {counter.backend:>9}"
                f" {p50:>8.2f} {p99:>8.2f} {RUNS[size]:>5}"
            )

    print()
    print("estimate vs cl100k (signed relative error)")
    print(f"{'text':>14} {'chars':>8} {'cl100k':>8} {'estimate':>9} {'error':>7}")
    for label, text in texts.items():
        actual = tiktoken_counter.count_text(text)
        estimate = estimate_tokens(text)
        error = relative_error(estimate, actual)
        print(f"{label:>14} {len(text):>8} {actual:>8} {estimate:>9} {error:>+7.1%}")


if __name__ == "__main__":
    main()
