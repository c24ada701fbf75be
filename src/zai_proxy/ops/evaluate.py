"""`zai-proxy evaluate [URL | --upstream URL]`: seed 003's token-count evaluation.

Each prompt of a corpus (corpus.jsonl, shipped with the package: prose, code, Chinese /
Japanese / Korean, tool definitions and tool calls, each line with its `kind`) is sent
as a Messages request, and the API's prompt count (input + cache read + cache write,
from the answer's usage) is set against the proxy's local count of the same body (the
proxy's own `TokenCounter`, tiktoken cl100k when it loads).  The table gives, per kind
and over all, the mean and p95 of |local - API| / API, and the mean signed error (the
bias: above 0, the local count is too high).

Through a proxy nothing here needs the key.  `--upstream URL` goes straight to an
upstream, with the key from ZAI_API_KEY; it is sent as a Bearer token and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import trio

from ..proxy.tokenizer import TokenCounter, get_counter, relative_error
from ..proxy.usage import usage_from_json
from ..sim.agents import retry_after_seconds
from .check import CLIENT_TOKEN
from .report import format_table, percentile, share

__all__ = [
    "KINDS",
    "KindResult",
    "Measurement",
    "Prompt",
    "aggregate",
    "format_evaluation",
    "load_corpus",
    "measure",
    "run",
]

KINDS = ("text", "code", "cjk", "tool_calls")
_CONCURRENCY = 4
_MAX_TOKENS = 16
# A 429, a 5xx or no answer is tried again, as the SDKs do: one bad answer from a busy
# upstream should not leave a prompt out of the evaluation.
_ATTEMPTS = 3
_RETRY_PAUSE = 0.5


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    kind: str
    request: dict[str, Any]
    """A Messages body without model and max_tokens (added when sent)."""


def load_corpus(path: Path | None = None) -> list[Prompt]:
    """The shipped corpus, or a JSONL file of the same shape; ValueError names a bad line."""
    if path is None:
        text = resources.files(__package__).joinpath("corpus.jsonl").read_text("utf-8")
        where = "corpus.jsonl"
    else:
        text = path.read_text("utf-8")
        where = str(path)
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = Prompt(str(row["id"]), str(row["kind"]), dict(row["request"]))
            if not isinstance(prompt.request.get("messages"), list):
                raise TypeError("request.messages is not a list")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{where} line {number}: {error}") from None
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{where} holds no prompt")
    return prompts


@dataclass(frozen=True, slots=True)
class Measurement:
    id: str
    kind: str
    local: int | None
    api: int | None
    error: str | None = None
    """Why there is no API count (the request failed)."""

    @property
    def relative_error(self) -> float | None:
        """Signed: (local - API) / API; None when either count is missing."""
        if self.local is None or self.api is None:
            return None
        return relative_error(self.local, self.api)


@dataclass(frozen=True, slots=True)
class KindResult:
    kind: str
    prompts: int
    mean_abs: float | None
    p95_abs: float | None
    bias: float | None


def aggregate(measurements: Sequence[Measurement]) -> list[KindResult]:
    """One row per kind present (KINDS first, in order, then any other), then "all"."""
    present = [k for k in KINDS if any(m.kind == k for m in measurements)]
    present += sorted({m.kind for m in measurements} - set(present))

    def row(kind: str, chosen: Sequence[Measurement]) -> KindResult:
        errors = [e for e in (m.relative_error for m in chosen) if e is not None]
        absolute = [abs(e) for e in errors]
        return KindResult(
            kind=kind,
            prompts=len(errors),
            mean_abs=sum(absolute) / len(absolute) if absolute else None,
            p95_abs=percentile(absolute, 0.95),
            bias=sum(errors) / len(errors) if errors else None,
        )

    rows = [row(kind, [m for m in measurements if m.kind == kind]) for kind in present]
    rows.append(row("all", measurements))
    return rows


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f} %"


def format_evaluation(
    results: Sequence[KindResult], measurements: Sequence[Measurement], backend: str
) -> str:
    table = format_table(
        ("kind", "prompts", "mean |error|", "p95 |error|", "bias"),
        [
            (r.kind, str(r.prompts), share(r.mean_abs), share(r.p95_abs), _signed(r.bias))
            for r in results
        ],
    )
    lines = [f"local count: {backend}; error = (local - API) / API", "", table]
    failed = [m for m in measurements if m.error is not None]
    if failed:
        lines.append("")
        lines += [f"FAIL  {m.id}: {m.error}" for m in failed]
    return "\n".join(lines)


def format_prompts(measurements: Sequence[Measurement]) -> str:
    return format_table(
        ("prompt", "kind", "local", "API", "error"),
        [
            (
                m.id,
                m.kind,
                "-" if m.local is None else str(m.local),
                "-" if m.api is None else str(m.api),
                _signed(m.relative_error),
            )
            for m in measurements
        ],
    )


# --------------------------------------------------------------------------- network shell


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


async def _one(
    client: httpx.AsyncClient,
    url: str,
    prompt: Prompt,
    *,
    model: str,
    counter: TokenCounter,
    headers: dict[str, str],
    limit: float,
    secret: str | None,
) -> Measurement:
    body = {"model": model, "max_tokens": _MAX_TOKENS, **prompt.request, "stream": False}
    payload = json.dumps(body, ensure_ascii=False).encode()
    local = counter.count_request(payload)
    reason, wait = "", 0.0
    for attempt in range(_ATTEMPTS):
        await trio.sleep(wait)
        try:
            with trio.fail_after(limit):
                response = await client.post(
                    url, content=payload, headers={**headers, "content-type": "application/json"}
                )
        except (httpx.HTTPError, trio.TooSlowError, OSError) as error:
            reason = _redact(f"{type(error).__name__}: {error}", secret)
            wait = _RETRY_PAUSE * (attempt + 1)
            continue
        if response.status_code == 200:
            break
        text = " ".join(response.text.split())[:160]
        reason = _redact(f"HTTP {response.status_code}: {text}", secret)
        if response.status_code != 429 and response.status_code < 500:
            break
        wait = retry_after_seconds(response.headers.get("retry-after"), _RETRY_PAUSE)
    else:
        return Measurement(prompt.id, prompt.kind, local, None, reason)
    if response.status_code != 200:
        return Measurement(prompt.id, prompt.kind, local, None, reason)
    usage = usage_from_json(response.content, "anthropic")
    if usage is None:
        return Measurement(prompt.id, prompt.kind, local, None, "the answer reports no usage")
    return Measurement(prompt.id, prompt.kind, local, usage.prompt)


async def measure(
    url: str,
    prompts: Sequence[Prompt],
    *,
    model: str,
    api_key: str | None = None,
    request_timeout: float = 60.0,
    counter: TokenCounter | None = None,
) -> list[Measurement]:
    """Send every prompt to `url` (a proxy's or an upstream's base URL), a few at once."""
    counter = counter if counter is not None else get_counter()
    token = api_key if api_key is not None else CLIENT_TOKEN
    headers = {"authorization": f"Bearer {token}", "anthropic-version": "2023-06-01"}
    results: list[Measurement | None] = [None] * len(prompts)
    gate = trio.CapacityLimiter(_CONCURRENCY)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(request_timeout, connect=min(request_timeout, 10.0)),
        trust_env=False,
    ) as client:
        one = partial(
            _one,
            client,
            url.rstrip("/") + "/v1/messages",
            model=model,
            counter=counter,
            headers=headers,
            limit=request_timeout,
            secret=api_key,
        )

        async def slot(position: int) -> None:
            async with gate:
                results[position] = await one(prompts[position])

        async with trio.open_nursery() as nursery:
            for position in range(len(prompts)):
                nursery.start_soon(slot, position)
    return [m for m in results if m is not None]


# --------------------------------------------------------------------------- command


def _fail(message: str) -> int:
    print(f"zai-proxy evaluate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    if (args.url is None) == (args.upstream is None):
        return _fail("give the proxy's URL or --upstream URL (one of them)")
    key = None
    if args.upstream is not None:
        key = env.get("ZAI_API_KEY", "").strip()
        if not key:
            return _fail("--upstream needs the upstream's key in ZAI_API_KEY")
    try:
        prompts = load_corpus(args.corpus)
    except (OSError, ValueError) as error:
        return _fail(str(error))
    counter = get_counter()
    measurements = trio.run(
        partial(
            measure,
            args.upstream or args.url,
            prompts,
            model=args.model,
            api_key=key,
            request_timeout=args.timeout,
            counter=counter,
        )
    )
    results = aggregate(measurements)
    if args.json:
        print(
            json.dumps(
                {
                    "backend": counter.backend,
                    "kinds": [asdict(r) for r in results],
                    "prompts": [
                        {**asdict(m), "relative_error": m.relative_error} for m in measurements
                    ],
                },
                ensure_ascii=False,
            )
        )
    else:
        print(format_evaluation(results, measurements, counter.backend))
        if args.prompts:
            print()
            print(format_prompts(measurements))
    return 0 if all(m.error is None for m in measurements) else 1
