"""The operator tools' shared arithmetic and tables (zai_proxy.ops.report)."""

from __future__ import annotations

import pytest

from zai_proxy.ops.report import format_table, percentile, seconds, share


def test_percentile_interpolates_between_the_nearest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 4.0
    assert percentile(values, 0.5) == pytest.approx(2.5)
    # Rank 0.95 * 3 = 2.85: 85 % of the way from 3 to 4.
    assert percentile(values, 0.95) == pytest.approx(3.85)
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_of_nothing_is_none_not_zero() -> None:
    assert percentile([], 0.5) is None


def test_percentile_refuses_a_quantile_outside_0_to_1() -> None:
    with pytest.raises(ValueError, match="1.5"):
        percentile([1.0], 1.5)


def test_durations_and_shares_read_as_units_and_dash_for_none() -> None:
    assert seconds(0.0421) == "42 ms"
    assert seconds(12.34) == "12.3 s"
    assert seconds(None) == "-"
    assert share(0.0512) == "5.1 %"
    assert share(None) == "-"


def test_table_pads_columns_first_left_others_right() -> None:
    text = format_table(("name", "n"), [("a", "1"), ("longer", "100")])
    assert text.splitlines() == ["name      n", "a         1", "longer  100"]


def test_table_refuses_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="one cell per column"):
        format_table(("a", "b"), [("only one",)])
