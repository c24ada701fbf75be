"""What the operator tools print: percentiles and plain-text tables.  Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["format_table", "percentile", "seconds", "share"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-quantile (0..1) of `values`, interpolated between the two nearest ranks
    (NumPy's default); None for no values, never 0, so "no data" stays visible."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not within 0..1")
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def seconds(value: float | None) -> str:
    """A duration for a table: milliseconds under 10 s, else seconds; "-" for none."""
    if value is None:
        return "-"
    if value < 10.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s"


def share(value: float | None) -> str:
    """A fraction as a percentage with one decimal; "-" for none."""
    return "-" if value is None else f"{value * 100:.1f} %"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, the others right."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError("every row needs one cell per column")
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
