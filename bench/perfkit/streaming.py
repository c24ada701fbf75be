"""Streams one at a time: time to first event, per-event delay, gaps, events lost."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from .load import interleaved
from .plan import STREAM_REQUEST, Plan
from .service import Service
from .stats import pct


@dataclass
class StreamStats:
    ttft_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)
    gap_ms: list[float] = field(default_factory=list)
    received: int = 0
    sent: int = 0

    def percentiles(self) -> list[float]:
        """p50 and p99 of time to first event, per-event delay and gap, in that order."""
        return [
            pct(values, q)
            for values in (self.ttft_ms, self.delay_ms, self.gap_ms)
            for q in (50, 99)
        ]


def measure_streams_c1(targets: Sequence[Service], plan: Plan) -> dict[str, StreamStats]:
    """Streams one at a time, interleaved: time to first event, per-event delay, gaps.
    The first two rounds warm up and are not counted."""
    stats = {t.name: StreamStats() for t in targets}
    for round_, target, response, _ in interleaved(targets, plan.streams + 2, STREAM_REQUEST):
        if round_ < 2:
            continue
        s = stats[target.name]
        s.sent += plan.stream_events
        s.received += len(response.marks)
        if not response.marks:
            continue
        s.ttft_ms.append((response.marks[0][1] - response.sent_ns) / 1e6)
        s.delay_ms.extend((got - stamp) / 1e6 for stamp, got in response.marks)
        arrivals = [got for _, got in response.marks]
        s.gap_ms.extend((b - a) / 1e6 for a, b in itertools.pairwise(arrivals))
    return stats
