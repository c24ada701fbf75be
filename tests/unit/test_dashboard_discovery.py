"""DNS targets: their syntax and settings, pods coming and going in the Collector (exact
figures, no spike), and the discovery shell's schedule on the autojump clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from zai_proxy.dashboard import (
    Collector,
    Discovery,
    ScrapeLoop,
    Snapshot,
    parse_dns_target,
)
from zai_proxy.errors import ScrapeError, SettingsError
from zai_proxy.settings import DashboardSettings

SOURCE = "dns+http://zai-proxy-production-headless:8080/metrics"
INTERVAL = 5.0
EPOCH_TS = 1_000_000.0


def pod(address: str) -> str:
    return f"http://{address}:8080/metrics"


A, B, C = pod("10.0.0.1"), pod("10.0.0.2"), pod("10.0.0.3")


def exposition(requests: float, *, fast: float | None = None, max_workers: float = 10) -> str:
    """A proxy-like exposition: `requests` answered, `fast` of them within 0.1 s."""
    fast = requests if fast is None else fast
    v = 'variant="production"'
    return "\n".join(
        [
            "# TYPE zai_proxy_requests_total counter",
            f'zai_proxy_requests_total{{{v},method="POST",path="/v1/messages",'
            f'status_code="200"}} {requests}',
            "# TYPE zai_proxy_request_duration_seconds histogram",
            f'zai_proxy_request_duration_seconds_bucket{{{v},le="0.1"}} {fast}',
            f'zai_proxy_request_duration_seconds_bucket{{{v},le="1.0"}} {requests}',
            f'zai_proxy_request_duration_seconds_bucket{{{v},le="+Inf"}} {requests}',
            f"zai_proxy_request_duration_seconds_sum{{{v}}} {requests * 0.1}",
            f"zai_proxy_request_duration_seconds_count{{{v}}} {requests}",
            "# TYPE zai_proxy_max_workers gauge",
            f"zai_proxy_max_workers{{{v}}} {max_workers}",
            "",
        ]
    )


class Pods:
    """A Collector with one dns+ target, and pods whose counters grow by a fixed step."""

    def __init__(self) -> None:
        self.collector = Collector([SOURCE], interval=INTERVAL, epoch_ts=EPOCH_TS)
        self.counts: dict[str, float] = {}
        self.fast: dict[str, float] = {}

    def resolve(self, *addresses: str) -> list[Snapshot]:
        return self.collector.resolved(SOURCE, addresses, ts=EPOCH_TS).snapshots

    def scrape(
        self, url: str, tick: int, step: float, *, fast: float | None = None
    ) -> list[Snapshot]:
        """Pod `url`'s scrape at `tick`: `step` more requests, `fast` of them (all if
        None) within 0.1 s."""
        self.counts[url] = self.counts.get(url, 0.0) + step
        self.fast[url] = self.fast.get(url, 0.0) + (step if fast is None else fast)
        return self.collector.observe(
            url, tick, at=tick * INTERVAL, text=exposition(self.counts[url], fast=self.fast[url])
        )


# --- syntax and settings ---------------------------------------------------------------


def test_a_dns_target_names_one_url_per_address() -> None:
    target = parse_dns_target("dns+https://scraper:pw@headless.ns.svc/metrics?x=1")
    assert target is not None
    assert (target.name, target.scheme, target.port) == ("headless.ns.svc", "https", 443)
    assert target.pod_url("10.1.2.3") == "https://scraper:pw@10.1.2.3:443/metrics?x=1"
    assert target.pod_url("fd00::7") == "https://scraper:pw@[fd00::7]:443/metrics?x=1"
    assert parse_dns_target("http://zai-proxy:8080/metrics") is None


def test_settings_take_dns_targets_beside_plain_ones() -> None:
    s = DashboardSettings.from_env(
        {"SCRAPE_TARGETS": f"{SOURCE}, http://zai-proxy-test:8080/metrics"}
    )
    assert s.scrape_targets == (SOURCE, "http://zai-proxy-test:8080/metrics")
    assert s.dns_refresh_scrapes == 6
    assert DashboardSettings.from_env({"DNS_REFRESH_SCRAPES": "2"}).dns_refresh_scrapes == 2


@pytest.mark.parametrize(
    "target",
    [
        "dns+http:///metrics",
        "dns+http://10.0.0.1:8080/metrics",
        "dns+http://[fd00::1]:8080/metrics",
        "dns+http://headless:99999/metrics",
        "dns+ftp://headless/metrics",
        "dns://headless/metrics",
    ],
)
def test_a_bad_dns_target_stops_start_up(target: str) -> None:
    with pytest.raises(SettingsError) as caught:
        DashboardSettings.from_env({"SCRAPE_TARGETS": target})
    assert caught.value.variable == "SCRAPE_TARGETS"
    assert "dns+http(s)://NAME" in str(caught.value)


def test_a_bad_refresh_count_stops_start_up() -> None:
    with pytest.raises(SettingsError) as caught:
        DashboardSettings.from_env({"DNS_REFRESH_SCRAPES": "0"})
    assert caught.value.variable == "DNS_REFRESH_SCRAPES"


# --- the pure part: pods in the Collector ----------------------------------------------


def test_a_dns_target_names_its_variant_before_it_has_pods() -> None:
    collector = Collector([SOURCE], interval=INTERVAL, epoch_ts=EPOCH_TS)
    assert collector.targets == []
    assert collector.variants() == ["production"]
    canary = Collector(["dns+http://zai-proxy-canary-headless/metrics"], interval=1, epoch_ts=0)
    assert canary.variants() == ["canary"]


def test_each_pod_is_its_own_target_and_the_variant_is_their_sum() -> None:
    pods = Pods()
    change = pods.collector.resolved(SOURCE, ["10.0.0.1", "10.0.0.2", "10.0.0.1"], ts=EPOCH_TS)
    assert change.added == (A, B) and change.removed == ()
    assert pods.collector.targets == [A, B]
    pods.scrape(A, 0, 10)
    assert pods.scrape(B, 0, 20) == []  # first scrapes only prime
    pods.scrape(A, 1, 10, fast=10)  # 10 more, all fast
    [snapshot] = pods.scrape(B, 1, 20, fast=0)  # 20 more, all between 0.1 and 1 s
    assert snapshot.ts == EPOCH_TS + INTERVAL
    assert snapshot.req_rate == pytest.approx(30 / INTERVAL)
    assert (snapshot.targets_up, snapshot.targets_total) == (2, 2)
    assert snapshot.max_workers == 20
    # Merged buckets: 10 of 30 within 0.1 s, so the median is in the (0.1, 1] bucket.
    assert snapshot.latency_p50_ms == pytest.approx((0.1 + 0.9 * (15 - 10) / 20) * 1000)


def test_a_pod_that_appears_adds_from_its_second_scrape_without_a_spike() -> None:
    pods = Pods()
    pods.resolve("10.0.0.1", "10.0.0.2")
    for tick in (0, 1):
        pods.scrape(A, tick, 10)
        pods.scrape(B, tick, 20)
    # C has served 5000 requests elsewhere before it is found: none of them is a rate.
    change = pods.collector.resolved(SOURCE, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], ts=EPOCH_TS)
    assert change.added == (C,)
    pods.counts[C] = 5000.0
    pods.scrape(A, 2, 10)
    assert pods.scrape(B, 2, 20) == []  # the tick waits for C, which joined at tick 1
    [tick2] = pods.scrape(C, 2, 5)
    assert tick2.req_rate == pytest.approx(30 / INTERVAL)
    assert (tick2.targets_up, tick2.targets_total) == (3, 3)
    assert tick2.max_workers == 30  # C is in flight figures at once: they are not deltas
    pods.scrape(A, 3, 10)
    pods.scrape(B, 3, 20)
    [tick3] = pods.scrape(C, 3, 5)
    assert tick3.req_rate == pytest.approx(35 / INTERVAL)


def test_a_pod_that_goes_away_closes_its_tick_with_the_others_figures() -> None:
    pods = Pods()
    pods.resolve("10.0.0.1", "10.0.0.2")
    for tick in (0, 1):
        pods.scrape(A, tick, 10)
        pods.scrape(B, tick, 20)
    assert pods.scrape(A, 2, 10) == []  # waiting for B
    [tick2] = pods.resolve("10.0.0.1")  # B went away before its tick-2 scrape
    assert tick2.ts == EPOCH_TS + 2 * INTERVAL
    assert tick2.req_rate == pytest.approx(10 / INTERVAL)
    assert not tick2.stale and (tick2.targets_up, tick2.targets_total) == (1, 1)
    assert pods.collector.targets == [A]
    [tick3] = pods.scrape(A, 3, 10)
    assert tick3.req_rate == pytest.approx(10 / INTERVAL)


def test_a_pod_that_goes_away_after_its_scrape_keeps_its_reading_in_that_tick() -> None:
    pods = Pods()
    pods.resolve("10.0.0.1", "10.0.0.2")
    for tick in (0, 1):
        pods.scrape(A, tick, 10)
        pods.scrape(B, tick, 20)
    assert pods.scrape(B, 2, 20) == []  # A's tick-2 scrape is still under way
    assert pods.resolve("10.0.0.1") == []
    [tick2] = pods.scrape(A, 2, 10)
    assert tick2.req_rate == pytest.approx(30 / INTERVAL)  # B's last 20 are not lost
    [tick3] = pods.scrape(A, 3, 10)
    assert tick3.req_rate == pytest.approx(10 / INTERVAL)


def test_a_scrape_of_a_pod_that_went_away_is_ignored() -> None:
    pods = Pods()
    pods.resolve("10.0.0.1", "10.0.0.2")
    pods.resolve("10.0.0.1")
    assert pods.scrape(B, 0, 20) == []
    assert pods.collector.error_of(B) is None
    assert [s.url for s in pods.collector.status()] == [A]


def test_a_failed_resolution_keeps_the_pods_and_is_reported() -> None:
    pods = Pods()
    pods.resolve("10.0.0.1", "10.0.0.2")
    pods.collector.resolution_failed(SOURCE, "gaierror: no such name", ts=EPOCH_TS + 30)
    [status] = pods.collector.dns_status()
    assert status.to_dict() == {
        "target": SOURCE,
        "variant": "production",
        "pods": [A, B],
        "last_resolution": EPOCH_TS + 30,
        "last_error": "gaierror: no such name",
        "resolutions_ok": 1,
        "resolutions_failed": 1,
    }
    assert pods.collector.targets == [A, B]
    assert {s.source for s in pods.collector.status()} == {SOURCE}


def test_pod_urls_are_shown_without_userinfo() -> None:
    source = "dns+http://scraper:s3cret@headless:8080/metrics"
    collector = Collector([source], interval=INTERVAL, epoch_ts=EPOCH_TS)
    collector.resolved(source, ["10.0.0.1"], ts=EPOCH_TS)
    assert collector.targets == ["http://scraper:s3cret@10.0.0.1:8080/metrics"]
    shown = str([s.to_dict() for s in collector.status()] + collector.dns_status())
    assert "s3cret" not in shown and "http://10.0.0.1:8080/metrics" in shown


# --- the shell: schedule and resolver on the autojump clock ----------------------------


class FakePods:
    """A resolver and a fetch for the Discovery shell, recording virtual times."""

    def __init__(self, *addresses: str) -> None:
        self.addresses: list[str] = list(addresses)
        self.fail: OSError | None = None
        self.hang = False
        self.resolved_at: list[float] = []
        self.fetched: list[tuple[float, str]] = []

    async def resolve(self, name: str) -> Sequence[str]:
        assert name == "zai-proxy-production-headless"
        self.resolved_at.append(trio.current_time())
        if self.hang:
            await trio.sleep_forever()
        if self.fail is not None:
            raise self.fail
        return list(self.addresses)

    async def fetch(self, url: str) -> str:
        self.fetched.append((trio.current_time(), url))
        if url == C:
            raise ScrapeError("connection refused")
        return exposition(10 * len(self.fetched))

    def ticks_of(self, url: str) -> list[float]:
        return [t for t, u in self.fetched if u == url]


async def test_discovery_resolves_every_few_ticks_and_follows_the_pods(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakePods("10.0.0.1")
    collector = Collector([SOURCE], interval=1.0, epoch_ts=EPOCH_TS)
    snapshots: list[Snapshot] = []

    async def emit(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)

    loop = ScrapeLoop(collector, fetch=fake.fetch, emit=emit, timeout=0.5, epoch=0.0)
    discovery = Discovery(
        loop, SOURCE, emit=emit, every=3, timeout=0.5, resolve=fake.resolve, now=lambda: 7.0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        assert fake.resolved_at == [0.0]
        await trio.sleep_until(2.0 + 0.25)
        fake.addresses = ["10.0.0.1", "10.0.0.2"]  # B appears
        await trio.sleep_until(5.25)
        fake.addresses = ["10.0.0.2"]  # A goes away
        await trio.sleep_until(8.25)
        fake.fail = OSError("resolver down")
        await trio.sleep_until(11.25)
        fake.fail = None
        fake.hang = True
        await trio.sleep_until(14.25)
        nursery.cancel_scope.cancel()

    assert fake.resolved_at == [0.0, 2.5, 5.5, 8.5, 11.5]
    assert fake.ticks_of(A) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert fake.ticks_of(B) == [3.0 + k for k in range(12)]  # kept through both failures
    [status] = collector.dns_status()
    assert status.pods == (B,) and status.resolutions_failed == 2
    assert status.last_error == "no answer within 0.5s (SCRAPE_TIMEOUT)"
    # One snapshot per tick once there are deltas, and every one counts real requests.
    assert [s.ts - EPOCH_TS for s in snapshots] == [float(k) for k in range(1, 15)]
    assert all(s.req_rate and s.req_rate > 0 for s in snapshots)


async def test_a_pod_that_does_not_answer_is_down_and_its_variant_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakePods("10.0.0.1", "10.0.0.3")
    collector = Collector([SOURCE], interval=1.0, epoch_ts=EPOCH_TS)
    snapshots: list[Snapshot] = []

    async def emit(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)

    loop = ScrapeLoop(collector, fetch=fake.fetch, emit=emit, timeout=0.5, epoch=0.0)
    discovery = Discovery(loop, SOURCE, emit=emit, every=3, timeout=0.5, resolve=fake.resolve)
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        await trio.sleep_until(3.25)
        nursery.cancel_scope.cancel()
    assert collector.error_of(C) == "connection refused"
    assert [(s.targets_up, s.targets_total) for s in snapshots] == [(1, 2)] * 3
