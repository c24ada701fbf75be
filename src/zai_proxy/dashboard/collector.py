"""Turn each tick's scrapes into one snapshot per variant: the bookkeeping, with no I/O.

```
scrape task per target --(text)--> Collector.observe --(Snapshot)--> channel -> hub, store
```
`Collector` keeps the previous scrape of every target, reads what happened in between
(`readings.read`), and when every target of a variant has reported a tick, sums their
readings into one `Snapshot` (`readings.build_snapshot`).  Time is passed in; the trio
shell that scrapes is `scrape.ScrapeLoop`.

Choices worth knowing:
- The first scrape of a target only primes its deltas.  A tick where no target of the
  variant has a delta yet makes no snapshot; every snapshot's rates cover a real interval.
- A tick where no target of a variant answered makes a stale snapshot (nulls).
- `interval_s` is the mean of the targets' own scrape intervals.
- If a target's task misses a tick altogether (it crashed and is waiting to restart), the
  tick is closed when another target of the variant reports the next one.
- `status` shows each target's limiter (backend, up, judge; `readings.limiter_state`)
  as its latest scrape says, and none while the target is down.
- A `dns+` target (see `targets.py`) is a source of pods: `resolved` adds a target per new
  address and drops those that went away, `resolution_failed` keeps the last pods.  A new
  pod joins at the variant's current tick, so it holds no tick back, and its first scrape
  only primes (no spike from counters it gathered before).  A pod that goes away
  gives the open tick the reading it already made and closes that tick if it was the
  last one missing, so the rate neither spikes nor drops to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..settings import VARIANTS, without_userinfo
from .promparse import Exposition, parse
from .readings import LimiterState, Reading, build_snapshot, limiter_state, read
from .snapshot import Snapshot
from .targets import DnsTarget, parse_dns_target

__all__ = ["Collector", "DnsStatus", "PodChange", "TargetStatus", "infer_variant"]


def infer_variant(url: str) -> str:
    """The Go dashboard's rule: "test" or "canary" in the URL means canary."""
    lowered = without_userinfo(url).lower()
    return "canary" if "test" in lowered or "canary" in lowered else "production"


@dataclass(frozen=True, slots=True)
class TargetStatus:
    url: str  # without userinfo
    variant: str
    up: bool
    last_scrape: float | None  # unix seconds of the tick
    last_success: float | None
    last_error: str | None
    scrapes_ok: int
    scrapes_failed: int
    source: str | None = None  # the dns+ target (without userinfo) this pod came from
    limiter: LimiterState | None = None  # as its last scrape said; None while it is down

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "source": self.source,
            "variant": self.variant,
            "up": self.up,
            "stale": not self.up,
            "last_scrape": self.last_scrape,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "scrapes_ok": self.scrapes_ok,
            "scrapes_failed": self.scrapes_failed,
            "limiter": None if self.limiter is None else self.limiter.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class DnsStatus:
    """A dns+ target's pods and how its last resolutions went."""

    target: str  # without userinfo
    variant: str
    pods: tuple[str, ...]  # pod URLs without userinfo
    last_resolution: float | None  # unix seconds
    last_error: str | None
    resolutions_ok: int
    resolutions_failed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "variant": self.variant,
            "pods": list(self.pods),
            "last_resolution": self.last_resolution,
            "last_error": self.last_error,
            "resolutions_ok": self.resolutions_ok,
            "resolutions_failed": self.resolutions_failed,
        }


@dataclass(frozen=True, slots=True)
class PodChange:
    """What a resolution changed: pod URLs to start and stop scraping, and the snapshots
    that the pods' leaving completed."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    snapshots: list[Snapshot]


@dataclass(slots=True)
class _Source:
    dns: DnsTarget
    shown: str
    variant: str
    pods: tuple[str, ...] = ()
    last_resolution: float | None = None
    last_error: str | None = None
    ok: int = 0
    failed: int = 0


@dataclass(slots=True)
class _Target:
    url: str
    shown: str
    inferred: str
    variant: str
    previous: Exposition | None = None
    previous_at: float | None = None
    pending: Reading | None = None
    up: bool = False
    tick: int = -1
    ok: int = 0
    failed: int = 0
    last_error: str | None = None
    last_scrape: float | None = None
    last_success: float | None = None
    source: str | None = None
    limiter: LimiterState | None = None


class Collector:
    """Per-target scrape state and the per-variant tick bookkeeping.  No I/O, no clock."""

    def __init__(self, targets: Sequence[str], *, interval: float, epoch_ts: float) -> None:
        if not targets:
            raise ValueError("at least one scrape target")
        self.interval = interval
        self.epoch_ts = epoch_ts
        self._targets: dict[str, _Target] = {}
        self._sources: dict[str, _Source] = {}
        for url in targets:
            variant = infer_variant(url)
            dns = parse_dns_target(url)
            if dns is not None:
                self._sources[url] = _Source(dns=dns, shown=without_userinfo(url), variant=variant)
                continue
            self._targets[url] = _Target(
                url=url, shown=without_userinfo(url), inferred=variant, variant=variant
            )
        self._emitted: dict[str, int] = {}
        # Readings of pods that went away before their tick was emitted.
        self._leftover: dict[str, list[Reading]] = {}

    @property
    def targets(self) -> list[str]:
        """The URLs scraped now: the plain targets and the pods of the dns+ targets."""
        return list(self._targets)

    @property
    def dns_targets(self) -> list[str]:
        return list(self._sources)

    def pods(self, source: str) -> tuple[str, ...]:
        """The pod URLs of dns+ target `source`, as last resolved."""
        return self._sources[source].pods

    def resolved(self, source: str, addresses: Sequence[str], *, ts: float) -> PodChange:
        """dns+ target `source` resolved to `addresses` at unix time `ts`."""
        src = self._sources[source]
        src.last_resolution = ts
        src.last_error = None
        src.ok += 1
        urls = tuple(dict.fromkeys(src.dns.pod_url(a) for a in addresses))
        added = tuple(u for u in urls if u not in src.pods)
        removed = tuple(u for u in src.pods if u not in urls)
        src.pods = urls
        snapshots: list[Snapshot] = []
        for url in removed:
            snapshots += self._remove(url)
        for url in added:
            members = self._members(src.variant)
            self._targets[url] = _Target(
                url=url,
                shown=without_userinfo(url),
                inferred=src.variant,
                variant=src.variant,
                tick=max((t.tick for t in members), default=-1),
                source=source,
            )
        return PodChange(added=added, removed=removed, snapshots=snapshots)

    def resolution_failed(self, source: str, error: str, *, ts: float) -> None:
        """dns+ target `source` could not be resolved at `ts`: its pods stay as they were."""
        src = self._sources[source]
        src.last_resolution = ts
        src.last_error = error
        src.failed += 1

    def dns_status(self) -> list[DnsStatus]:
        return [
            DnsStatus(
                target=src.shown,
                variant=src.variant,
                pods=tuple(without_userinfo(u) for u in src.pods),
                last_resolution=src.last_resolution,
                last_error=src.last_error,
                resolutions_ok=src.ok,
                resolutions_failed=src.failed,
            )
            for src in self._sources.values()
        ]

    def _remove(self, url: str) -> list[Snapshot]:
        target = self._targets.pop(url)
        if target.pending is not None:
            self._leftover.setdefault(target.variant, []).append(target.pending)
        members = self._members(target.variant)
        if not members:
            return []
        # If this pod was the last one the open tick waited for, the tick is complete.
        return self._maybe_emit(target.variant, max(t.tick for t in members))

    def tick_ts(self, tick: int) -> float:
        return self.epoch_ts + tick * self.interval

    def variants(self) -> list[str]:
        found = {t.variant for t in self._targets.values()}
        # A dns+ target that has no pods (yet) still names its variant.
        found |= {s.variant for s in self._sources.values() if not s.pods}
        return sorted(found)

    def status(self) -> list[TargetStatus]:
        return [
            TargetStatus(
                url=t.shown,
                variant=t.variant,
                up=t.up,
                last_scrape=t.last_scrape,
                last_success=t.last_success,
                last_error=t.last_error,
                scrapes_ok=t.ok,
                scrapes_failed=t.failed,
                source=None if t.source is None else self._sources[t.source].shown,
                limiter=t.limiter,
            )
            for t in self._targets.values()
        ]

    def error_of(self, url: str) -> str | None:
        """Why the target's last scrape failed; None if it is up."""
        target = self._targets.get(url)
        if target is None:
            return None  # a pod that went away
        return None if target.up else target.last_error or "not scraped yet"

    def observe(
        self,
        url: str,
        tick: int,
        *,
        at: float,
        text: str | None = None,
        exposition: Exposition | None = None,
        error: str | None = None,
    ) -> list[Snapshot]:
        """Record target `url`'s scrape for `tick`, made at monotonic time `at`: its
        exposition (as `text`, or already parsed), or the `error` that stopped it.
        Returns the snapshots this completes (usually none or one)."""
        target = self._targets.get(url)
        if target is None:
            return []  # a pod that went away while its scrape was under way
        out = self._close_before(target.variant, tick)
        target.tick = tick
        target.last_scrape = self.tick_ts(tick)
        if exposition is None and text is not None:
            try:
                exposition = parse(text)
            except ValueError as exc:
                error = str(exc)
        if exposition is None:
            target.up = False
            target.limiter = None
            target.failed += 1
            target.last_error = error or "no answer"
            out += self._maybe_emit(target.variant, tick)
            return out

        target.up = True
        target.limiter = limiter_state(exposition)
        target.ok += 1
        target.last_error = None
        target.last_success = self.tick_ts(tick)
        if target.previous is not None and target.previous_at is not None:
            reading = read(target.previous, exposition, at - target.previous_at)
            target.pending = reading if target.pending is None else target.pending.merge(reading)
        target.previous = exposition
        target.previous_at = at

        variant = self._variant_of(target, exposition)
        if variant != target.variant:
            old = target.variant
            out += self._close_before(variant, tick)
            target.variant = variant
            out += self._maybe_emit(old, tick)
        out += self._maybe_emit(target.variant, tick)
        return out

    def _variant_of(self, target: _Target, exposition: Exposition) -> str:
        for value in exposition.label_values("variant"):
            if value in VARIANTS:
                return value
        return target.inferred

    def _members(self, variant: str) -> list[_Target]:
        return [t for t in self._targets.values() if t.variant == variant]

    def _close_before(self, variant: str, tick: int) -> list[Snapshot]:
        # A target reporting `tick` means the variant's earlier ticks are over, reported
        # by every target or not.
        earlier = [t.tick for t in self._members(variant) if t.tick < tick]
        if not earlier:
            return []
        open_tick = max(earlier)
        if open_tick <= self._emitted.get(variant, -1):
            return []
        return self._emit(variant, open_tick)

    def _maybe_emit(self, variant: str, tick: int) -> list[Snapshot]:
        members = self._members(variant)
        if not members or tick <= self._emitted.get(variant, -1):
            return []
        if any(t.tick < tick for t in members):
            return []
        return self._emit(variant, tick)

    def _emit(self, variant: str, tick: int) -> list[Snapshot]:
        self._emitted[variant] = tick
        members = self._members(variant)
        up = [t for t in members if t.tick == tick and t.up]
        readings = [t.pending for t in members if t.pending is not None]
        readings += self._leftover.pop(variant, [])
        for t in members:
            t.pending = None
        ts = self.tick_ts(tick)
        if not up and not readings:
            return [Snapshot.stale_at(ts, variant, len(members))]
        if not readings:
            return []  # only first scrapes so far: they prime the deltas
        expositions = [t.previous for t in up if t.previous is not None]
        return [
            build_snapshot(
                ts=ts,
                variant=variant,
                readings=readings,
                expositions=expositions,
                targets_up=len(up),
                targets_total=len(members),
            )
        ]
