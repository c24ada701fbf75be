"""The report: a header naming the machine and versions, then one table per measurement,
each figure followed by its ratio to direct (x d) and to nginx (x n)."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .load import Throughput
from .memory import OpenStreams, Soak
from .plan import PATH, REQUEST, Plan
from .service import Service
from .stats import pct, slope_per_minute
from .streaming import StreamStats


def fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def ratio(value: float, base: float | None) -> str:
    # Ratios of differences to a zero or negative difference (noise) mean nothing.
    if base is None or math.isnan(value) or math.isnan(base) or base <= 0:
        return "-"
    return f"{value / base:.2f}"


class Table:
    """Rows of figures, one per target.  The header names the columns as they print,
    `|` between them: each figure's name, then `x d` and/or `x n` for its ratio to
    direct's or to nginx's figure."""

    def __init__(self, title: str, header: str) -> None:
        self.title = title
        self.header = [column.strip() for column in header.split("|")]
        self.rows: list[tuple[str, list[str]]] = []

    def add(
        self,
        name: str,
        values: Sequence[float],
        direct: Sequence[float] | None,
        nginx: Sequence[float] | None,
        digits: int | Sequence[int] = 2,
    ) -> None:
        places = [digits] * len(values) if isinstance(digits, int) else list(digits)
        bases = {"x d": direct, "x n": nginx}
        cells = []
        i = -1
        for column in self.header:
            if column in bases:
                base = bases[column]
                cells.append(ratio(values[i], base[i] if base else None))
            else:
                i += 1
                cells.append(fmt(values[i], places[i]))
        self.rows.append((name, cells))

    def render(self) -> str:
        widths = [max(len(h), 6) for h in self.header]
        for _, cells in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]

        def line(name: str, cells: Sequence[str]) -> str:
            return (
                "  "
                + name.ljust(11)
                + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
            )

        lines = [self.title, line("target", self.header)]
        lines += [line(name, cells) for name, cells in self.rows]
        return "\n".join(lines)


def _comparison(
    title: str,
    header: str,
    names: Sequence[str],
    row: Callable[[str], list[float]],
    digits: int | Sequence[int] = 2,
) -> str:
    """One row per name, with ratios to direct's row and nginx's where they are named."""
    table = Table(title, header)
    direct = row("direct") if "direct" in names else None
    nginx = row("nginx") if "nginx" in names else None
    for name in names:
        table.add(name, row(name), direct, nginx, digits)
    return table.render()


def _versions(services: Sequence[Service]) -> str:
    names = ["trio", "hypercorn", "httpx", "h11", "quart-trio"]
    parts = [f"python {platform.python_version()}"]
    parts += [f"{n} {importlib.metadata.version(n)}" for n in names]
    parts += [f"{s.name} {s.version}" for s in services if s.version]
    return ", ".join(parts)


def _machine() -> str:
    cores = os.cpu_count()
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return f"{cores} cores, {mem_kib / 1024 / 1024:.0f} GiB"


def header(plan: Plan, peers: Sequence[Service], missing: Mapping[str, str]) -> str:
    lines = [
        f"# perf.py  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {_machine()}",
        f"# {_versions(peers)}",
        f"# request: {len(REQUEST)}-byte OpenAI chat request, POST {PATH}; "
        f"streams {plan.stream_events} events {plan.stream_interval_ms:g} ms apart",
    ]
    lines += [f"# {name}: not available: {reason}" for name, reason in missing.items()]
    lines.append("# x d = ratio to direct, x n = ratio to nginx")
    return "\n".join(lines)


def _latency_table(title: str, p50s: Mapping[str, float], p99s: Mapping[str, float]) -> str:
    """p50 and p99 per target, and what each adds to direct's."""

    def row(name: str) -> list[float]:
        p50, p99 = p50s[name], p99s[name]
        return [p50, p99, p50 - p50s["direct"], p99 - p99s["direct"]]

    header = "p50 | x d | x n | p99 | x d | x n | added p50 | x n | added p99 | x n"
    return _comparison(title, header, list(p50s), row)


def c1_table(latencies: Mapping[str, list[float]], plan: Plan) -> str:
    return _latency_table(
        f"\nconcurrency 1, non-streaming: {plan.c1_requests} requests per target, interleaved (ms)",
        {name: pct(values, 50) for name, values in latencies.items()},
        {name: pct(values, 99) for name, values in latencies.items()},
    )


def c1_wrk_table(by_wrk: Mapping[str, Throughput] | None, plan: Plan) -> str:
    if by_wrk is None:
        return "\nconcurrency 1 by wrk: wrk is not installed (apt install wrk)"
    return _latency_table(
        f"\nconcurrency 1, non-streaming, wrk as the client: median of "
        f"{plan.c1_wrk_rounds} rounds of {plan.c1_wrk_seconds:g} s per target (ms)",
        {name: r.p50_ms for name, r in by_wrk.items()},
        {name: r.p99_ms for name, r in by_wrk.items()},
    )


def streaming_table(stats: Mapping[str, StreamStats], plan: Plan) -> str:
    base = stats["direct"].percentiles()

    def row(name: str) -> list[float]:
        s = stats[name]
        raw = s.percentiles()
        added = [r - b for r, b in zip(raw, base, strict=True)]
        return [raw[0], *added, max(s.gap_ms, default=math.nan)]

    table = _comparison(
        f"\nstreaming, one at a time: {plan.streams} streams per target (ms; added = "
        "minus direct; delay = upstream write to client read, per event)",
        "ttft p50 | x d | +ttft p50 | x n | +ttft p99 | x n | +delay p50 | x n "
        "| +delay p99 | x n | +gap p50 | +gap p99 | max gap",
        list(stats),
        row,
    )
    lines = [table]
    for name, s in stats.items():
        held = "none held back" if s.received == s.sent else "EVENTS MISSING"
        lines.append(f"  {name:<11}events received {s.received} of {s.sent}: {held}")
    return "\n".join(lines)


def throughput_table(tool: str, tput: Mapping[str, Throughput], plan: Plan) -> str:
    def row(name: str) -> list[float]:
        r = tput[name]
        return [r.rps, r.p50_ms, r.p99_ms, r.cpu_ms, float(r.errors)]

    return _comparison(
        f"\nconcurrency 64, non-streaming: {plan.c64_rounds} x {plan.c64_seconds:g} s per "
        f"target, load by {tool}",
        "req/s | x d | x n | p50 ms | x d | x n | p99 ms | x d | x n | cpu ms/req | x n | errors",
        list(tput),
        row,
        digits=(0, 2, 2, 3, 0),
    )


def soak_table(soaked: Mapping[str, Soak], plan: Plan) -> str:
    # The first tenth of the samples is start-up, not steady state.
    skip = max(1, len(next(iter(soaked.values())).samples) // 10) if soaked else 0

    def row(name: str) -> list[float]:
        samples = soaked[name].samples[skip:]
        if not samples:
            return [math.nan] * 4
        first, last = samples[0][1], samples[-1][1]
        return [first, last, 100 * (last - first) / first, slope_per_minute(samples)]

    table = _comparison(
        f"\nsoak: {plan.soak_seconds:g} s, {plan.soak_rate:g} req/s to each proxy at once "
        f"(1 in 10 streamed); RSS MB every {plan.sample_every:g} s, start after "
        f"{skip * plan.sample_every:g} s",
        "start MB | x n | end MB | x n | change % | MB/min",
        list(soaked),
        row,
    )
    lines = [table]
    for name, r in soaked.items():
        lines.append(
            f"  {name:<11}{r.ok} ok, {r.errors} errors, {r.skipped} skipped (late); RSS: "
            + " ".join(f"{mb:.0f}" for _, mb in r.samples)
        )
    return "\n".join(lines)


def open_streams_table(opened: Mapping[str, OpenStreams], plan: Plan) -> str:
    def row(name: str) -> list[float]:
        o = opened[name]
        return [o.idle_mb, o.open_mb, float(o.opened), float(o.flowing), o.seconds_to_open]

    lines = [f"  {name}: {o.note}" for name, o in opened.items() if o.note]
    lines.append(
        _comparison(
            f"\n{plan.open_streams} concurrent open streams (1 event/s each): RSS MB of the "
            "proxy's process tree",
            "before MB | x n | open MB | x n | opened | flowing | open s",
            list(opened),
            row,
            digits=(1, 1, 0, 0, 1),
        )
    )
    return "\n".join(lines)
