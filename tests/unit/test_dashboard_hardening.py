"""A scrape target is not trusted to be our proxy: what it can put in a snapshot, in an
error and on the event loop is bounded."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import zai_proxy.dashboard.scrape as scrape_module
from zai_proxy.dashboard import Collector, ScrapeLoop, Snapshot, parse, read
from zai_proxy.dashboard.readings import MAX_LABEL_VALUES

URL = "http://zai-proxy:8080/metrics"


def requests_by(label: str, name: str, values: list[str], count: float) -> str:
    lines = [f"# TYPE {name} counter"]
    lines += [f'{name}_total{{{label}="{value}"}} {count}' for value in values]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("metric", "label", "field"),
    [
        ("zai_proxy_requests", "status_code", "by_status"),
        ("zai_proxy_retry_attempts", "reason", "retries"),
        ("zai_proxy_upstream_errors", "error_type", "upstream_errors"),
        ("zai_proxy_rate_limit_rejections", "reason", "rejections"),
        ("zai_proxy_rate_limit_adjustments", "direction", "adjustments"),
        ("zai_proxy_tokens", "direction", "tokens"),
    ],
)
def test_thousands_of_label_values_fold_into_other(metric: str, label: str, field: str) -> None:
    values = [f"{i:04d}" for i in range(5000)]
    before = parse(requests_by(label, metric, values, 0))
    after = parse(requests_by(label, metric, values, 1))
    counts: dict[str, float] = getattr(read(before, after, 5.0), field)
    assert len(counts) == MAX_LABEL_VALUES + 1
    assert counts["other"] == 5000 - MAX_LABEL_VALUES
    assert sum(counts.values()) == 5000


def test_a_long_label_value_is_cut() -> None:
    values = ["x" * 100_000]
    before = parse(requests_by("status_code", "zai_proxy_requests", values, 0))
    after = parse(requests_by("status_code", "zai_proxy_requests", values, 1))
    assert list(read(before, after, 5.0).by_status) == ["x" * 64]


def test_counters_swinging_across_the_float_range_make_a_json_snapshot() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=0.0)

    def text(value: float) -> str:
        return (
            "# TYPE zai_proxy_requests_total counter\n"
            f'zai_proxy_requests_total{{status_code="200"}} {value!r}\n'
            f'zai_proxy_requests_total{{status_code="500"}} {-value!r}\n'
            "# TYPE zai_proxy_concurrent_requests gauge\n"
            f'zai_proxy_concurrent_requests{{pod="a"}} {value!r}\n'
            f'zai_proxy_concurrent_requests{{pod="b"}} {value!r}\n'
        )

    collector.observe(URL, 0, at=0.0, text=text(-1.7e308))
    (snapshot,) = collector.observe(URL, 1, at=0.001, text=text(1.7e308))
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    assert snapshot.concurrent is None and snapshot.req_rate is not None


async def down_after_one_scrape(text: str) -> str | None:
    collector = Collector([URL], interval=5.0, epoch_ts=0.0)

    async def fetch(url: str) -> str:
        return text

    async def emit(snapshot: Snapshot) -> None:
        pass

    loop = ScrapeLoop(collector, fetch=fetch, emit=emit, timeout=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run_target, URL)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    (status,) = collector.status()
    assert not status.up
    return status.last_error


async def test_the_error_of_a_long_garbage_line_is_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Under the size parsed in a thread: the autojump clock does not wait for threads.
    error = await down_after_one_scrape("x{" * 20_000 + "\n")
    assert error is not None and error.startswith("not a Prometheus text exposition")
    assert len(error) <= 201


async def test_too_many_series_is_an_error(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scrape_module, "MAX_SERIES", 10)
    text = requests_by("status_code", "zai_proxy_requests", [str(i) for i in range(11)], 1)
    assert await down_after_one_scrape(text) == "more than 10 series"
