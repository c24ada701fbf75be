"""One adaptive limiter for every proxy on the same Redis and the same upstream key.

With RATE_LIMIT_BACKEND=redis://..., production, canary and every HPA replica take their
upstream turns from one token bucket in Redis, and one of them at a time (the judge,
holding a lease) runs the pure `AdaptiveLimiter` over all their sends and answers and
publishes what it learns. The others follow the published rate.

```
SharedGate.run
└─ heartbeat loop, every TICK (one script call each):
     push this replica's sends and answers since the last beat
     renew its place among the live replicas; take or renew the lease if free or its own
     read the published state; as judge: take every replica's events, feed the mirror
       AdaptiveLimiter, judge the window when it ends, publish the result
```
The request path costs one round trip (`_GRANT`, atomic on the server) for a turn that
is due at once; a caller that must wait asks again when it wakes, and at least every
RECHECK (`_TURN`), so a rate cut holds back those already queued, as in the local
limiter. Sends and answers are stamped
in Redis' clock (each replica knows its offset from the heartbeat) and pushed in
batches, so the judge sees every replica's traffic as if one bucket had sent it.

Keys, all under one hash tag so a Redis Cluster keeps them in one slot:

    zai-proxy:{NS}:bucket    hash    rate, produced, issued, last: the FIFO ticket bucket
    zai-proxy:{NS}:state     hash    what the judge learnt (limiter.Learned) and an epoch
    zai-proxy:{NS}:lease     string  the judge's replica id, expiring after LEASE
    zai-proxy:{NS}:replicas  zset    replica id -> last heartbeat
    zai-proxy:{NS}:events    list    batches of sends and answers, for the judge

NS is RATE_LIMIT_NAMESPACE, or by default derived from the upstream key and URL with
PBKDF2 (the key is never stored and the name cannot be turned back into it), so every
proxy on one key shares one limiter without being told.

Redis trouble never fails a request. Every call has a deadline
(RATE_LIMIT_BACKEND_TIMEOUT). The first failure puts the replica on its local bucket,
already following its share of the shared rate (rate / live replicas) and judging its
own windows from there; the outage is logged once and each failed call counted. The
heartbeat retries with backoff and the replica rejoins when Redis answers: the shared
bucket never holds more than one token, so rejoining makes no burst. A ticket queued in
Redis when it went away (or was restarted empty) takes a local turn instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import coredis
import coredis.retry
import trio

from ..settings import ProxySettings
from .limiter import AdaptiveLimiter, Adjustment, Learned, LimiterConfig
from .limiter_loop import report_adjustment
from .metrics import LiveState, ProxyMetrics
from .rate_gate import rate_limited, wait_for_turn

__all__ = ["SharedGate", "Timing", "default_namespace"]

log = logging.getLogger("zai_proxy.limiter")

# Keys idle this long vanish (a namespace nobody uses any more).
_KEY_TTL_MS = 24 * 3600 * 1000
# Batches of events kept for a judge that has not taken them (none alive).
_MAX_BATCHES = 1000
# Events a replica buffers between beats; past this it drops them (a judge that is
# that far behind learns from the rest).
_MAX_EVENTS = 50_000
_NAMESPACE_ROUNDS = 100_000


@dataclass(frozen=True)
class Timing:
    """The shared limiter's clockwork; tests shorten it."""

    tick: float = 0.1
    """Seconds between heartbeats (and batches of events)."""
    lease: float = 3.0
    """The judge's lease: a judge that stops beating hands over after this long."""
    replica_ttl: float = 3.0
    """A replica not heard of for this long is no longer counted."""
    max_backoff: float = 2.0
    """Longest wait between reconnection attempts while Redis is down."""


def default_namespace(api_key: str, target_url: str) -> str:
    """The same for every proxy on one key and upstream, and reveals neither."""
    parts = urlsplit(target_url)
    salt = b"zai-proxy rate limit namespace\0" + f"{parts.scheme}://{parts.netloc}".encode()
    digest = hashlib.pbkdf2_hmac("sha256", api_key.encode(), salt, _NAMESPACE_ROUNDS)
    return digest.hex()[:20]


# -- server-side scripts ------------------------------------------------------------------
# Each reads Redis' own clock, so every replica's turns are counted on one clock. Numbers
# go back as strings: Redis would truncate a Lua number reply to an integer.

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
"""

# The bucket: ticket k may go once `produced` >= k (see limiter.py's notes). Advances
# the tokens due since `last` at the rate in force, never more than `burst` ahead.
_ADVANCE = """
local b = redis.call('HMGET', KEYS[1], 'rate', 'produced', 'issued', 'last')
local rate = tonumber(b[1]) or tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local issued = tonumber(b[3]) or 0
local produced = tonumber(b[2]) or (issued + burst)
local last = tonumber(b[4]) or now
if now > last then
  produced = math.min(produced + rate * (now - last), issued + burst)
  last = now
end
local function save()
  redis.call('HSET', KEYS[1], 'rate', rate, 'produced', produced, 'issued', issued,
             'last', last)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
"""

# KEYS: bucket. ARGV: max_wait, initial rate, burst, key ttl ms.
# -> {ticket number (0: refused), wait, now}
_GRANT = (
    _PRELUDE
    + _ADVANCE
    + """
local number = issued + 1
local wait = 0
if number - produced > 1e-9 then wait = (number - produced) / rate end
if wait > tonumber(ARGV[1]) then
  number = 0
else
  issued = number
end
save()
return {string.format('%.0f', number), fmt(wait), fmt(now)}
"""
)

# KEYS: bucket. ARGV: ticket, initial rate, burst, key ttl ms. -> wait; -1: unknown ticket
# (the bucket was lost or restarted since it was handed out).
_TURN = (
    _PRELUDE
    + _ADVANCE
    + """
local number = tonumber(ARGV[1])
save()
if number > issued then return '-1' end
if number - produced > 1e-9 then return fmt((number - produced) / rate) end
return '0'
"""
)

# KEYS: bucket. ARGV: ticket, initial rate, burst, key ttl ms. Gives a waiting ticket's
# token back, moving everyone behind it up one turn.
_CANCEL = (
    _PRELUDE
    + _ADVANCE
    + """
local number = tonumber(ARGV[1])
if number <= issued and number - produced > 1e-9 then
  produced = math.min(produced + 1, issued + burst)
end
save()
return 'ok'
"""
)

# KEYS: replicas, lease, state, events. ARGV: replica id, replica ttl s, lease ms,
# batch ('' for none), key ttl ms.
# -> {now, live replicas, 1 if judge, state as a flat list, [batches if judge]}
_BEAT = (
    _PRELUDE
    + """
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[4])
  redis.call('LTRIM', KEYS[4], -"""
    + str(_MAX_BATCHES)
    + """, -1)
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local live = redis.call('ZCARD', KEYS[1])
local holder = redis.call('GET', KEYS[2])
local judge = 0
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  judge = 1
end
local state = redis.call('HGETALL', KEYS[3])
if #state > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
local batches = {}
if judge == 1 then
  batches = redis.call('LRANGE', KEYS[4], 0, -1)
  redis.call('DEL', KEYS[4])
end
return {fmt(now), live, judge, state, batches}
"""
)

# KEYS: bucket, state, lease. ARGV: replica id, (bucket's) initial rate, burst, key ttl
# ms, the epoch expected, then field/value pairs of the state. Only the lease holder
# publishes, and only into the epoch it read (a reset since then wins).
_PUBLISH = (
    _PRELUDE
    + _ADVANCE
    + """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 'not judge' end
local epoch = redis.call('HGET', KEYS[2], 'epoch') or '0'
if epoch ~= ARGV[5] then return 'stale epoch' end
save()
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'rate' then rate = tonumber(ARGV[i + 1]) end
end
redis.call('HSET', KEYS[1], 'rate', rate)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 'ok'
"""
)

# KEYS: bucket, state, events. ARGV: (unused), initial rate, burst, key ttl ms. Back to
# the initial rate; a new epoch tells the judge to start again from it.
_RESET = (
    _PRELUDE
    + _ADVANCE
    + """
rate = tonumber(ARGV[2])
save()
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'rate', ARGV[2], 'ceiling', '', 'clean_windows', 0,
           'hold_band_windows', 0, 'probing', 0, 'before_probe', ARGV[2],
           'changed_at', fmt(now))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[3])
return tostring(epoch)
"""
)

# KEYS: replicas, lease. ARGV: replica id. A replica that stops cleanly.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 'ok'
"""


def _state_fields(learned: Learned) -> list[str]:
    return [
        "rate", repr(learned.rate),
        "ceiling", "" if learned.ceiling is None else repr(learned.ceiling),
        "clean_windows", str(learned.clean_windows),
        "hold_band_windows", str(learned.hold_band_windows),
        "probing", "1" if learned.probing else "0",
        "before_probe", repr(learned.before_probe),
        "changed_at", repr(learned.changed_at),
        "background", repr(learned.background),
    ]  # fmt: skip


def _learned(state: dict[str, str]) -> Learned | None:
    """The published state, or None when there is none (or it is unreadable)."""
    try:
        ceiling = state.get("ceiling", "")
        return Learned(
            rate=float(state["rate"]),
            ceiling=float(ceiling) if ceiling else None,
            clean_windows=int(state.get("clean_windows", "0")),
            hold_band_windows=int(state.get("hold_band_windows", "0")),
            probing=state.get("probing") == "1",
            before_probe=float(state.get("before_probe", state["rate"])),
            changed_at=float(state.get("changed_at", "0")),
            background=float(state.get("background", "0")),
        )
    except (KeyError, ValueError):
        return None


class SharedGate:
    """RATE_LIMIT_BACKEND=redis://...: the limiter every replica on the backend shares."""

    def __init__(
        self,
        settings: ProxySettings,
        config: LimiterConfig,
        metrics: ProxyMetrics,
        *,
        timing: Timing | None = None,
        now: float = 0.0,
    ) -> None:
        self._settings = settings
        self._config = config
        self._metrics = metrics
        self._timing = timing or Timing()
        self._timeout = settings.rate_limit_backend_timeout
        namespace = settings.rate_limit_namespace or default_namespace(
            settings.api_key, settings.target_url
        )
        self.namespace = namespace
        prefix = f"zai-proxy:{{{namespace}}}:"
        self._bucket = prefix + "bucket"
        self._state = prefix + "state"
        self._lease = prefix + "lease"
        self._replicas_key = prefix + "replicas"
        self._events = prefix + "events"
        self.replica_id = (
            f"{settings.variant}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        # The local bucket: what a request uses while Redis is away, kept at this
        # replica's share of the shared rate while it is not.
        self.local = AdaptiveLimiter(config, now=now)
        self._client: coredis.Redis[str] | None = None
        self._scripts: dict[str, Any] = {}
        self.up = False
        # Set when the replica (re)joins: local waiters move to the shared bucket.
        self._back = trio.Event()
        self._closing = False
        self._down_since: float | None = None
        self._next_local_window = now + config.window
        self._offset = 0.0
        self._shared_rate: float | None = None
        self._shared_ceiling: float | None = None
        self._last_learned: Learned | None = None
        self.replicas = 1
        self.judge = False
        # As judge: the mirror limiter fed with every replica's events.
        self._mirror: AdaptiveLimiter | None = None
        self._mirror_epoch = ""
        self._took_over = 0.0
        self._next_window = 0.0
        self._sends: list[float] = []
        self._answers: list[tuple[float, float, int]] = []

    # -- reading --------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        if self.up:
            return self._config.initial if self._shared_rate is None else self._shared_rate
        return self.local.rate

    @property
    def ceiling(self) -> float | None:
        return self._shared_ceiling if self.up else self.local.ceiling

    def live(self, concurrent: int, max_workers: int) -> LiveState:
        return LiveState(
            concurrent=concurrent,
            max_workers=max_workers,
            rate_limit_rps=self.rate,
            rate_limit_ceiling=self.ceiling,
            rate_limit_backend="redis",
            rate_limit_backend_up=self.up,
            rate_limit_replicas=self.replicas,
            rate_limit_judge=self.judge and self.up,
        )

    def describe(self) -> dict[str, object]:
        return {
            "rate_limit_backend": "redis",
            "rate_limit_backend_up": self.up,
            "rate_limit_replicas": self.replicas,
            "rate_limit_judge": self.judge and self.up,
        }

    # -- the request path -----------------------------------------------------------------

    async def admit(self, max_wait: float) -> float:
        began = trio.current_time()
        while True:
            sent_at = await self._shared_turn(max_wait) if self.up else None
            if sent_at is not None:
                break
            # Redis is away: a local turn. If it comes back while this caller waits, the
            # caller moves to the shared bucket at once, so a local queue does not go on
            # at its share beside it; once max_wait has passed it stays put.
            waited = trio.current_time() - began
            leave = self._back if waited < max_wait else None
            sent_at = await wait_for_turn(
                self.local, max(max_wait - waited, 0.0), self._metrics, trio.current_time(), leave
            )
            if sent_at is not None:
                break
        self._metrics.rate_limit_wait.labels(self._metrics.variant).observe(sent_at - began)
        return sent_at

    async def _shared_turn(self, max_wait: float) -> float | None:
        """A turn from the shared bucket; None if Redis failed (take a local one)."""
        bucket_args = self._bucket_args()
        reply = await self._call("grant", [self._bucket], [repr(max_wait), *bucket_args])
        if reply is None:
            return None
        number, wait = int(reply[0]), float(reply[1])
        if number == 0:
            raise rate_limited(self._metrics, wait)
        try:
            # As in the local limiter, the turn follows the rate as it is when we wake: a
            # cut published meanwhile holds back everyone already queued. So a caller
            # that had to wait asks again, however short the wait.
            while wait > 0:
                await trio.sleep(min(wait, self._config.recheck))
                turn = await self._call("turn", [self._bucket], [str(number), *bucket_args])
                if turn is None or float(turn) < 0:
                    return None
                wait = float(turn)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._call("cancel", [self._bucket], [str(number), *bucket_args])
            raise
        sent_at = trio.current_time()
        if len(self._sends) < _MAX_EVENTS:
            self._sends.append(sent_at + self._offset)
        return sent_at

    def record(self, throttled: bool, sent_at: float) -> None:
        now = trio.current_time()
        if self.up:
            if len(self._answers) < _MAX_EVENTS:
                self._answers.append((now + self._offset, sent_at + self._offset, int(throttled)))
            return
        adjustment = self.local.record(now, throttled=throttled, sent_at=sent_at)
        if adjustment is not None:
            report_adjustment(self._metrics, adjustment)

    def retry_after(self) -> float:
        if self.up and self._shared_rate is not None:
            # A new caller's turn is about one spacing away when callers are waiting;
            # the precise figure would cost a round trip.
            return 1.0 / self._shared_rate
        return self.local.retry_after(trio.current_time())

    async def reset(self) -> float:
        old = self.rate
        self.local.reset(trio.current_time())
        initial = repr(self._config.initial)
        reply = await self._call(
            "reset",
            [self._bucket, self._state, self._events],
            [initial, initial, repr(self._config.burst), str(_KEY_TTL_MS)],
        )
        if reply is not None:
            self._shared_rate = self._config.initial
            self._shared_ceiling = None
            self._last_learned = None
        return old

    # -- the heartbeat ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join (or fall back) before the first request is served, then beat for ever.

        A client that fails as a whole (not one call) is opened again after a backoff;
        requests meanwhile take local turns."""
        delay = self._timing.tick
        while True:
            try:
                async with self._open() as client:
                    self._client = client
                    self._closing = False
                    try:
                        await self._beat_once(first=True)
                        task_status.started()
                        await self._beat_forever()
                    finally:
                        self._closing = True
                        self._client = None
                        with trio.CancelScope(shield=True):
                            await self._leave()
            except Exception as error:  # noqa: BLE001 - whatever broke, requests go local
                self._fall_back(f"client: {type(error).__name__}")
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, self._timing.max_backoff)

    def _open(self) -> coredis.Redis[str]:
        settings = self._settings
        client: coredis.Redis[str] = coredis.Redis.from_url(
            settings.rate_limit_backend,
            decode_responses=True,
            password=settings.rate_limit_backend_password,
            stream_timeout=self._timeout,
            connect_timeout=self._timeout,
            # Our own deadline and fallback decide; coredis' retries would only stretch it.
            retry_policy=coredis.retry.NoRetryPolicy(),
        )
        self._scripts = {
            "grant": client.register_script(_GRANT),
            "turn": client.register_script(_TURN),
            "cancel": client.register_script(_CANCEL),
            "beat": client.register_script(_BEAT),
            "publish": client.register_script(_PUBLISH),
            "reset": client.register_script(_RESET),
            "leave": client.register_script(_LEAVE),
        }
        return client

    async def _leave(self) -> None:
        """Stop counting as a replica and hand the lease on at once (best effort)."""
        with trio.move_on_after(self._timeout * 2):
            try:
                await self._scripts["leave"](
                    keys=[self._replicas_key, self._lease], args=[self.replica_id]
                )
            except Exception:  # noqa: BLE001 - leaving is a courtesy; the lease expires anyway
                pass

    async def _beat_forever(self) -> None:
        delay = self._timing.tick
        while True:
            await trio.sleep(delay)
            if await self._beat_once():
                delay = self._timing.tick
            else:
                delay = min(delay * 2, self._timing.max_backoff)
            if not self.up:
                self._judge_local_window()

    def _judge_local_window(self) -> None:
        now = trio.current_time()
        if now < self._next_local_window:
            return
        self._next_local_window = max(self._next_local_window + self._config.window, now)
        adjustment = self.local.adjust(now)
        if adjustment is not None:
            report_adjustment(self._metrics, adjustment)

    async def _beat_once(self, *, first: bool = False) -> bool:
        batch = self._take_batch() if self.up else ""
        began = trio.current_time()
        reply = await self._call(
            "beat",
            [self._replicas_key, self._lease, self._state, self._events],
            [
                self.replica_id,
                repr(self._timing.replica_ttl),
                str(int(self._timing.lease * 1000)),
                batch,
                str(_KEY_TTL_MS),
            ],
            quiet=first,
        )
        if reply is None:
            if first:
                self._fall_back("unreachable at start-up")
            return False
        ended = trio.current_time()
        server_now = float(reply[0])
        self._offset = server_now - (began + ended) / 2
        self.replicas = max(int(reply[1]), 1)
        self.judge = int(reply[2]) == 1
        flat: Sequence[str] = reply[3]
        state = dict(zip(flat[::2], flat[1::2], strict=True))
        learned = _learned(state)
        if learned is not None:
            self._last_learned = learned
            self._shared_rate = learned.rate
            self._shared_ceiling = learned.ceiling
        if not self.up:
            self._rejoin(first)
        if self.judge:
            await self._judge(server_now, state, learned, reply[4])
        else:
            self._mirror = None
        rate = self._shared_rate if self._shared_rate is not None else self._config.initial
        # Ready for an outage: the local bucket runs at this replica's share.
        self.local.follow(ended, rate / self.replicas, self._shared_ceiling)
        return True

    def _take_batch(self) -> str:
        if not self._sends and not self._answers:
            return ""
        batch = json.dumps({"s": self._sends, "a": self._answers}, separators=(",", ":"))
        self._sends = []
        self._answers = []
        return batch

    # -- judging ---------------------------------------------------------------------------

    async def _judge(
        self,
        now: float,
        state: dict[str, str],
        learned: Learned | None,
        batches: Sequence[str],
    ) -> None:
        epoch = state.get("epoch", "0")
        # Nothing published (a first judge, or Redis restarted empty): publish at once.
        publish = learned is None
        mirror = self._mirror
        if mirror is None or epoch != self._mirror_epoch:
            mirror = AdaptiveLimiter(self._config, now=now)
            # Carry on from the published state; if Redis lost it, from what this
            # replica last saw, so a restarted Redis does not send everyone back to
            # the initial rate.
            start = learned if learned is not None else self._last_learned
            if start is not None:
                mirror.restore(now, start)
            self._mirror = mirror
            self._mirror_epoch = epoch
            self._took_over = now
            self._next_window = now + self._config.window
            log.info(
                "judging the shared rate limit",
                extra={"replica": self.replica_id, "rate": round(mirror.rate, 3)},
            )
        adjustments: list[Adjustment] = []
        for at, kind, sent_at, throttled in self._events_in(batches):
            at = min(at, now)
            if kind == "s":
                mirror.count_send(at)
            else:
                decision = mirror.record(at, throttled=bool(throttled), sent_at=sent_at)
                if decision is not None:
                    adjustments.append(decision)
        if now >= self._next_window:
            self._next_window = max(self._next_window + self._config.window, now)
            decision = mirror.adjust(now)
            if decision is not None:
                adjustments.append(decision)
        for decision in adjustments:
            report_adjustment(self._metrics, decision)
        if not adjustments and not publish:
            return
        old = self._shared_rate
        if await self._publish(mirror.learned(), epoch) and mirror.rate != old:
            # The bucket's rate changed only now, a round trip after the decision: what
            # was sent until now went at the old rate and must not count against the new.
            published = trio.current_time() + self._offset
            mirror.restore(published, replace(mirror.learned(), changed_at=published))

    def _events_in(self, batches: Sequence[str]) -> list[tuple[float, str, float, int]]:
        """Every replica's events since the takeover, in time order."""
        events: list[tuple[float, str, float, int]] = []
        for text in batches:
            try:
                batch = json.loads(text)
                events.extend((float(t), "s", 0.0, 0) for t in batch["s"])
                events.extend((float(t), "a", float(s), int(h)) for t, s, h in batch["a"])
            except (ValueError, KeyError, TypeError):
                log.warning("dropped an unreadable batch of limiter events")
        events.sort()
        return [event for event in events if event[0] >= self._took_over]

    async def _publish(self, learned: Learned, epoch: str) -> bool:
        reply = await self._call(
            "publish",
            [self._bucket, self._state, self._lease],
            [self.replica_id, *self._bucket_args(), epoch, *_state_fields(learned)],
        )
        if reply == "ok":
            self._shared_rate = learned.rate
            self._shared_ceiling = learned.ceiling
            self._last_learned = learned
            return True
        if reply is not None:
            # Lost the lease or a reset came in between: start again next beat.
            self._mirror = None
        return False

    # -- the backend ------------------------------------------------------------------------

    def _bucket_args(self) -> list[str]:
        return [repr(self._config.initial), repr(self._config.burst), str(_KEY_TTL_MS)]

    async def _call(
        self, script: str, keys: list[str], args: list[str], *, quiet: bool = False
    ) -> Any:
        """Run one script with a deadline; None (and the fallback) if Redis failed."""
        client = self._client
        if client is None or self._closing:
            # No client (it failed, or the proxy is stopping): local turns until a beat
            # gets through again.
            self._fall_back(f"{script}: no client", quiet=self._closing)
            return None
        try:
            # coredis times the read out itself (stream_timeout); this deadline also
            # covers connecting and the pool, whatever they do.
            with trio.fail_after(self._timeout * 2):
                return await self._scripts[script](keys=keys, args=args)
        except trio.TooSlowError:
            problem = "timed out"
        except Exception as error:  # noqa: BLE001 - any client failure means: go local
            problem = type(error).__name__
        self._metrics.rate_limit_backend_errors.labels(self._metrics.variant).inc()
        if not quiet:
            self._fall_back(f"{script}: {problem}")
        return None

    def _fall_back(self, problem: str, *, quiet: bool = False) -> None:
        if not self.up and self._down_since is not None:
            return
        now = trio.current_time()
        self.up = False
        self._back = trio.Event()
        self.judge = False
        self._mirror = None
        self._down_since = now
        self._sends = []
        self._answers = []
        self._next_local_window = now + self._config.window
        if quiet:
            return
        log.warning(
            "rate limit backend unavailable; using a local bucket at this replica's share",
            extra={
                "problem": problem,
                "rate": round(self.local.rate, 3),
                "replicas": self.replicas,
            },
        )

    def _rejoin(self, first: bool) -> None:
        now = trio.current_time()
        self.up = True
        self._back.set()
        if first and self._down_since is None:
            log.info(
                "sharing the rate limit",
                extra={"namespace": self.namespace, "replicas": self.replicas},
            )
        else:
            down = 0.0 if self._down_since is None else now - self._down_since
            log.info("rate limit backend back; sharing again", extra={"down_s": round(down, 3)})
        self._down_since = None
