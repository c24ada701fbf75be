"""What a run sends, to where, and for how long: the request bodies and the plan."""

from __future__ import annotations

import json
from dataclasses import dataclass

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
KEY = "sk-bench-upstream"

_MESSAGES = [
    {"role": "system", "content": "You are a terse assistant used by a benchmark."},
    {
        "role": "user",
        "content": "Summarise in one sentence why a reverse proxy in front of an LLM API "
        "should add almost no latency, and say nothing else.",
    },
]
REQUEST = json.dumps(
    {"model": "bench", "max_tokens": 64, "temperature": 0.2, "messages": _MESSAGES}
).encode()
STREAM_REQUEST = json.dumps(
    {"model": "bench", "max_tokens": 64, "stream": True, "messages": _MESSAGES}
).encode()
SLOW_REQUEST = json.dumps(
    {"model": "bench-slow", "max_tokens": 64, "stream": True, "messages": _MESSAGES}
).encode()


@dataclass(frozen=True, slots=True)
class Plan:
    c1_requests: int
    c1_warmup: int
    streams: int
    stream_events: int
    stream_interval_ms: float
    c64_seconds: float
    c64_rounds: int
    open_streams: int
    soak_seconds: float
    soak_rate: float
    sample_every: float
    c1_wrk_seconds: float
    c1_wrk_rounds: int

    @classmethod
    def full(cls, soak: float) -> Plan:
        return cls(2000, 100, 40, 20, 5.0, 10.0, 2, 1000, soak, 50.0, 5.0, 5.0, 3)

    @classmethod
    def quick(cls) -> Plan:
        return cls(200, 20, 8, 20, 5.0, 3.0, 1, 200, 20.0, 50.0, 2.0, 2.0, 1)
