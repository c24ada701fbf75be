"""Throughput, latency and CPU per request at concurrency 64, non-streaming."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .load import (
    Throughput,
    alternating,
    has_wrk,
    run_python_load,
    run_wrk,
    write_wrk_script,
    wrk_version,
)
from .plan import Plan
from .procfs import cpu_seconds
from .service import Service


def measure_c64(
    targets: Sequence[Service], plan: Plan, tmp: Path
) -> tuple[str, dict[str, Throughput]]:
    """Closed loop, 64 connections, `c64_seconds` per target per round; rounds alternate
    the order and the figures are the mean of rounds (p99: the worst round).  Returns
    the load tool's description with the figures."""
    script = write_wrk_script(tmp / "post.lua")
    if has_wrk():
        tool = f"wrk ({wrk_version()}, 2 threads)"

        def load(port: int) -> Throughput:
            return run_wrk(port, plan.c64_seconds, script)
    else:
        tool = "python (2 processes x 32 trio connections; wrk not installed)"

        def load(port: int) -> Throughput:
            return run_python_load(port, plan.c64_seconds)

    runs: dict[str, list[Throughput]] = {t.name: [] for t in targets}
    for target in alternating(targets, plan.c64_rounds):
        cpu_before = math.nan if target.pid is None else cpu_seconds(target.pid)
        result = load(target.port)
        if target.pid is not None:
            served = result.rps * plan.c64_seconds
            cpu = cpu_seconds(target.pid) - cpu_before
            result = replace(result, cpu_ms=1000 * cpu / served if served else math.nan)
        runs[target.name].append(result)
        time.sleep(1)
    return tool, {name: Throughput.combine(rs, statistics.fmean, max) for name, rs in runs.items()}
