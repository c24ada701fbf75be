"""What the shared limiter's judge publishes in Redis: every field of Learned survives the
trip through the state hash's strings, so a replica that takes over judging resumes
exactly where the last judge stopped."""

from __future__ import annotations

import dataclasses

from zai_proxy.proxy.limiter import Learned
from zai_proxy.proxy.shared_limiter import _learned, _state_fields


def _round_trip(learned: Learned) -> Learned | None:
    fields = _state_fields(learned)
    return _learned(dict(zip(fields[::2], fields[1::2], strict=True)))


def test_every_learned_field_is_published_and_read_back() -> None:
    learned = Learned(
        rate=17.25,
        ceiling=18.125,
        clean_windows=3,
        hold_band_windows=2,
        probing=True,
        before_probe=16.5,
        changed_at=1234.0625,
        background=0.0035,
    )
    published = _state_fields(learned)[::2]
    assert set(published) == {field.name for field in dataclasses.fields(Learned)}
    assert _round_trip(learned) == learned


def test_an_unknown_ceiling_is_published_as_empty_and_read_back_as_none() -> None:
    learned = Learned(
        rate=10.0,
        ceiling=None,
        clean_windows=0,
        hold_band_windows=0,
        probing=False,
        before_probe=10.0,
        changed_at=0.0,
    )
    assert _round_trip(learned) == learned


def test_state_from_an_older_judge_without_a_background_reads_as_none_drawn() -> None:
    state = {"rate": "12.5", "ceiling": "13.0", "probing": "0"}
    learned = _learned(state)
    assert learned is not None
    assert (learned.rate, learned.ceiling, learned.background) == (12.5, 13.0, 0.0)


def test_unreadable_state_is_none() -> None:
    assert _learned({"rate": "fast"}) is None
    assert _learned({}) is None
