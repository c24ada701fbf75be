"""The hub's fan-out: every snapshot to every client, a slow one dropped, keepalives on
schedule, and `close` ending every stream."""

from __future__ import annotations

import json
import logging

import pytest
import trio
import trio.testing

from zai_proxy.dashboard import Hub, Snapshot


def snapshot(ts: float, variant: str = "production") -> Snapshot:
    return Snapshot(ts=ts, variant=variant, interval_s=5.0, req_rate=ts)


def frame(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def snapshot_frame(s: Snapshot) -> bytes:
    return f"event: snapshot\ndata: {s.to_json()}\n\n".encode()


def pending(channel: trio.MemoryReceiveChannel[bytes]) -> list[bytes]:
    """The frames a client has waiting, without blocking; stops at the end of the stream."""
    out: list[bytes] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


def ended(channel: trio.MemoryReceiveChannel[bytes]) -> bool:
    try:
        channel.receive_nowait()
    except trio.EndOfChannel:
        return True
    except trio.WouldBlock:
        return False
    raise AssertionError("a frame was still waiting")


def test_a_stream_starts_with_the_interval_and_the_sorted_variants() -> None:
    hub = Hub(scrape_interval=5.0, variants=["production", "canary"])
    with hub.subscribe() as frames:
        assert pending(frames) == [
            frame("connected", {"scrape_interval_s": 5.0, "variants": ["canary", "production"]})
        ]


def test_every_client_gets_every_snapshot_in_order() -> None:
    hub = Hub(scrape_interval=5.0)
    first, second = snapshot(1.0), snapshot(2.0, "canary")
    with hub.subscribe() as a, hub.subscribe() as b:
        pending(a), pending(b)
        hub.publish(first)
        hub.publish(second)
        assert pending(a) == [snapshot_frame(first), snapshot_frame(second)]
        assert pending(b) == [snapshot_frame(first), snapshot_frame(second)]
    assert hub.published == 2


def test_a_published_snapshot_becomes_the_latest_of_its_variant() -> None:
    hub = Hub(scrape_interval=5.0, variants=["production"])
    hub.publish(snapshot(1.0))
    hub.publish(snapshot(2.0, "canary"))
    hub.publish(snapshot(3.0))
    assert hub.latest == {"production": snapshot(3.0), "canary": snapshot(2.0, "canary")}
    assert hub.variants == {"production", "canary"}


def test_a_new_client_learns_the_variants_published_so_far() -> None:
    hub = Hub(scrape_interval=2.5)
    hub.publish(snapshot(1.0, "canary"))
    with hub.subscribe() as frames:
        assert pending(frames) == [
            frame("connected", {"scrape_interval_s": 2.5, "variants": ["canary"]})
        ]


def test_seeding_keeps_the_newer_snapshot_of_each_variant_and_sends_nothing() -> None:
    hub = Hub(scrape_interval=5.0)
    hub.publish(snapshot(10.0))
    with hub.subscribe() as frames:
        pending(frames)
        hub.seed(
            {
                "production": snapshot(5.0),
                "canary": snapshot(7.0, "canary"),
            }
        )
        hub.seed({"canary": snapshot(8.0, "canary")})
        hub.seed({"canary": snapshot(8.0, "canary"), "production": snapshot(10.0)})
        assert pending(frames) == []
    assert hub.latest == {"production": snapshot(10.0), "canary": snapshot(8.0, "canary")}
    assert hub.variants == {"production", "canary"}
    assert hub.published == 1


def test_a_client_whose_buffer_is_full_is_dropped_and_the_others_keep_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub(scrape_interval=5.0, buffer=2)
    with hub.subscribe() as slow, hub.subscribe() as fast:
        # The connected frame takes one place in each buffer.
        assert pending(fast) == [frame("connected", {"scrape_interval_s": 5.0, "variants": []})]
        hub.publish(snapshot(1.0))
        assert pending(fast) == [snapshot_frame(snapshot(1.0))]
        assert hub.dropped == 0
        with caplog.at_level(logging.INFO, logger="zai_proxy.dashboard.hub"):
            hub.publish(snapshot(2.0))
        assert hub.dropped == 1
        assert hub.clients == 1
        assert pending(fast) == [snapshot_frame(snapshot(2.0))]
        # The slow one still reads what it had, then its stream ends.
        assert len(pending(slow)) == 2
        assert ended(slow)
    [record] = [r for r in caplog.records if r.name == "zai_proxy.dashboard.hub"]
    assert record.getMessage() == "dropped a slow dashboard client"
    assert (record.buffer, record.clients) == (2, 1)  # type: ignore[attr-defined]


def test_every_dropped_client_is_counted() -> None:
    hub = Hub(scrape_interval=5.0, buffer=1)
    with hub.subscribe(), hub.subscribe(), hub.subscribe() as reader:
        pending(reader)
        hub.publish(snapshot(1.0))
        assert (hub.dropped, hub.clients) == (2, 1)


def test_seeding_never_replaces_the_live_snapshot_of_the_same_tick() -> None:
    hub = Hub(scrape_interval=5.0)
    live = Snapshot(ts=10.0, variant="production", req_rate=1.0)
    hub.publish(live)
    hub.seed({"production": Snapshot(ts=10.0, variant="production", req_rate=2.0)})
    assert hub.latest == {"production": live}


def test_a_client_that_went_away_is_forgotten_without_counting_a_drop() -> None:
    hub = Hub(scrape_interval=5.0)
    with hub.subscribe() as gone, hub.subscribe() as stays:
        gone.close()
        hub.publish(snapshot(1.0))
        assert hub.clients == 1
        assert hub.dropped == 0
        assert pending(stays)[-1] == snapshot_frame(snapshot(1.0))


def test_clients_are_counted_while_subscribed_and_in_total() -> None:
    hub = Hub(scrape_interval=5.0)
    assert hub.clients == 0
    with hub.subscribe():
        with hub.subscribe():
            assert hub.clients == 2
        assert hub.clients == 1
    assert hub.clients == 0
    assert hub.connected_total == 2


def test_leaving_closes_the_clients_channel() -> None:
    hub = Hub(scrape_interval=5.0)
    with hub.subscribe() as frames:
        pass
    with pytest.raises(trio.ClosedResourceError):
        frames.receive_nowait()


def test_close_ends_every_stream_and_refuses_new_ones() -> None:
    hub = Hub(scrape_interval=5.0, variants=["production"])
    with hub.subscribe() as frames:
        assert hub.closed is False
        hub.close()
        assert hub.closed
        assert hub.clients == 0
        assert len(pending(frames)) == 1
        assert ended(frames)
    with hub.subscribe() as late:
        # A late client still gets the connected frame, then the end of its stream.
        assert pending(late) == [
            frame("connected", {"scrape_interval_s": 5.0, "variants": ["production"]})
        ]
        assert ended(late)
        assert hub.clients == 0
    assert hub.connected_total == 1


async def test_joining_and_leaving_wake_whoever_waits_for_a_change() -> None:
    hub = Hub(scrape_interval=5.0)
    seen: list[int] = []

    async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        for _ in range(2):
            await hub.wait_changed()
            seen.append(hub.clients)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        with hub.subscribe():
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
    assert seen == [1, 0]


async def test_publishing_wakes_no_one_waiting_for_a_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(scrape_interval=5.0)
    with hub.subscribe():
        with trio.move_on_after(1) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hub.wait_changed)
                await trio.testing.wait_all_tasks_blocked()
                hub.publish(snapshot(1.0))
        assert scope.cancelled_caught


async def test_a_stream_carries_frames_as_published_and_keepalives_when_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(scrape_interval=5.0, keepalive=30.0)
    received: list[tuple[float, bytes]] = []

    async def client() -> None:
        async for chunk in hub.stream():
            received.append((trio.current_time(), chunk))

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(client)
        await trio.sleep(10)
        hub.publish(snapshot(1.0))
        await trio.sleep(65)  # quiet: keepalives at 30 and 60 s, counted from the start
        hub.close()
    at = [(round(t - start, 6), chunk) for t, chunk in received]
    assert at == [
        (0.0, frame("connected", {"scrape_interval_s": 5.0, "variants": []})),
        (10.0, snapshot_frame(snapshot(1.0))),
        (30.0, b": keepalive\n\n"),
        (60.0, b": keepalive\n\n"),
    ]
    assert hub.clients == 0
