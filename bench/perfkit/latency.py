"""Non-streaming latency at concurrency 1: a Python client, then wrk as the client."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence
from pathlib import Path

from .load import Throughput, alternating, has_wrk, interleaved, run_wrk, write_wrk_script
from .plan import REQUEST, Plan
from .service import Service


def measure_c1(targets: Sequence[Service], plan: Plan) -> dict[str, list[float]]:
    """Non-streaming latency in ms at concurrency 1, targets interleaved round by round."""
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    rounds = plan.c1_warmup + plan.c1_requests
    # closing: the connections close at once when a bad answer ends the run.
    with contextlib.closing(interleaved(targets, rounds, REQUEST)) as answers:
        for round_, target, response, elapsed in answers:
            if response.status != 200:
                raise RuntimeError(f"{target.name}: HTTP {response.status}")
            if round_ >= plan.c1_warmup:
                latencies[target.name].append(elapsed)
    return latencies


def measure_c1_wrk(
    targets: Sequence[Service], plan: Plan, tmp: Path
) -> dict[str, Throughput] | None:
    """Concurrency 1 again, with wrk as the client: a Python client shares the two cores
    with the proxy and the upstream, and its own scheduling lands in the figures.  Rounds
    of `c1_wrk_seconds` per target, the order alternating; medians of the rounds.  None
    without wrk."""
    if not has_wrk():
        return None
    script = write_wrk_script(tmp / "post-c1.lua")
    runs: dict[str, list[Throughput]] = {t.name: [] for t in targets}
    for target in alternating(targets, plan.c1_wrk_rounds):
        runs[target.name].append(run_wrk(target.port, plan.c1_wrk_seconds, script, 1))
    return {
        name: Throughput.combine(rs, statistics.median, statistics.median)
        for name, rs in runs.items()
    }
