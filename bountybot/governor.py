"""Keeps the bot inside the forges' secondary rate limits: requests in flight, and writes per
minute and per hour, counted per installation (or token, or GitLab host).

GitHub's documented secondary limits are at most 100 concurrent requests, and at most 80
content-creating requests a minute and 500 an hour; going over them earns 403s and, if it goes
on, a ban of the integration. So every forge call the bot makes goes through

    async with governor.slot(key, write=True):
        await client.create_comment(...)

which waits (with the injected `sleep`, so tests move a fake clock instead of sleeping) until
the call fits: fewer than `concurrency` calls in flight for `key`, and for a write, fewer than
`per_minute` writes started in the last 60 s and fewer than `per_hour` in the last 3600 s. The
windows slide: a write at `t` counts against every window that holds `t`, so no 60 s span, wherever
it starts, ever holds more than `per_minute` writes. A write is counted when it starts, whether it
then succeeds or not (the forge counts it too).

Where the write start times live is the governor's `store` (a `WriteLog`): in this process by
default (`MemoryWriteLog`, one process on SQLite); on PostgreSQL, in the database
(`bountybot.storage.write_budget.PgWriteLog`), so that every replica draws on one budget per
key, as the forge counts it. Either way, checking the windows and recording the write are one
atomic step (`WriteLog.take`): in memory because nothing else runs between the two (no `await`),
in PostgreSQL under a lock on the key. Calls in flight are a process's own affair and are
counted here, in memory.

`next_free_in(key)` says how long a write would wait for its rate, so a caller with other work
(the outbox) can postpone a message instead of waiting; `slot(..., max_wait=s)` raises `Busy`
instead of waiting longer than `s` for the rate limits; `slot(..., keep=n)` lets the write go
only if `n` writes of each window are still free after it (the outbox keeps that many for
summaries and replies when it sends a reaction).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

MINUTE = 60.0
HOUR = 3600.0
# A write is counted when it is granted and reaches the forge a little later: PyGithub sends one
# call at a time per token, so a granted write may queue for seconds behind the others. The
# service counts a minute's writes over 70 s (`Governor(minute=SERVED_MINUTE)`): writes granted
# up to 10 s before they arrive still fit GitHub's minute. (`bench/webhook_ingest.py --only
# burst` on PostgreSQL saw 81 arrive in one minute with 72 granted per 60 s.)
SERVED_MINUTE = MINUTE + 10.0
# The shortest sleep: a wait computed from float timestamps can come out a hair above zero
# after sleeping it; never sleeping less than this guarantees that the clock moves on.
MIN_SLEEP = 0.001

# Judges a key's write start times of the last hour (oldest first) at the time `now`: returns
# the seconds until one more write fits (0: now).
Judge = Callable[[Sequence[float], float], float]


def token_key(forge: str) -> str:
    """The key of the writes made with a forge's one token (not a GitHub App's installation)."""
    return f"{forge}:token"


def rate_wait(starts: Sequence[float], now: float, per_minute: int, per_hour: int,
              minute: float = MINUTE) -> float:
    """Seconds until one more write fits both windows (0: now), given the start times of the
    last hour, oldest first; `minute` is how long the minute's window lasts. Written
    `now - w >= window` like the pruning, so that all of them agree at the boundary whatever
    the float rounding."""
    wait = 0.0
    if len(starts) >= per_hour:
        wait = max(wait, HOUR - (now - starts[-per_hour]))
    if len(starts) >= per_minute:
        wait = max(wait, minute - (now - starts[-per_minute]))
    return wait


def within_hour(starts: Sequence[float], now: float) -> list[float]:
    """The start times that are still in the hour before `now`."""
    return [w for w in starts if now - w < HOUR]


class WriteLog(Protocol):
    """Where the write start times of each key are kept, and checked and recorded at once."""

    async def take(self, key: str, judge: Judge) -> float:
        """Judge the key's starts of the last hour at the time now; if it says 0, record a
        write starting now, in the same atomic step. Returns what the judge said."""
        ...

    def view(self, key: str) -> tuple[Sequence[float], float] | None:
        """The key's starts of the last hour and the time now, as this process last saw them
        (None: it has none), for the gauges and `next_free_in`."""
        ...


class MemoryWriteLog:
    """The write start times in this process: exact, for one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._writes: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        writes = self._writes.get(key, [])
        old = 0
        while old < len(writes) and now - writes[old] >= HOUR:  # forget what left the hour
            old += 1
        del writes[:old]
        return writes

    async def take(self, key: str, judge: Judge) -> float:
        # No await in here: nothing runs between the check and the record.
        now = self._clock()
        writes = self._recent(key, now)
        wait = judge(writes, now)
        if wait <= 0:
            # Recorded at the time it was checked at, so later checks agree with this one.
            self._writes.setdefault(key, writes).append(now)
        return wait

    def view(self, key: str) -> tuple[Sequence[float], float] | None:
        if key not in self._writes:
            return None
        now = self._clock()
        return self._recent(key, now), now


class Busy(Exception):
    """The slot would not be free within `max_wait`; `retry_in` is how long it would take."""

    def __init__(self, key: str, retry_in: float) -> None:
        super().__init__(f"rate limit for {key}: free in {retry_in:.1f}s")
        self.key = key
        self.retry_in = retry_in


@dataclass
class _Bucket:
    """One key's calls in this process: how many are in flight, and the tasks waiting for one
    of them to end."""

    in_flight: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class Governor:
    """Rate and concurrency limits per key, shared by every forge call of the process (and, with
    a shared `store`, the rate limits by every replica)."""

    def __init__(
        self,
        per_minute: int = 80,
        per_hour: int = 500,
        concurrency: int = 100,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        limits: Mapping[str, tuple[int, int]] | None = None,
        store: WriteLog | None = None,
        minute: float = MINUTE,
    ) -> None:
        """`limits`: (per minute, per hour) of the keys that have their own (Forgejo's token:
        Codeberg asks for fewer writes than GitHub allows). `store`: where the write start
        times live (default: in this process, on `clock`). `minute`: the seconds over which
        `per_minute` writes are counted (`SERVED_MINUTE` in the service)."""
        if minute < MINUTE:
            raise ValueError("a minute's window is at least 60 s")
        self.minute = minute
        self._limits = dict(limits or {})
        if min(per_minute, per_hour, concurrency, *(n for pair in self._limits.values()
                                                    for n in pair)) < 1:
            raise ValueError("per_minute, per_hour and concurrency must be at least 1")
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.concurrency = concurrency
        self._sleep = sleep
        self.store: WriteLog = store if store is not None else MemoryWriteLog(clock)
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        return bucket

    def limits_for(self, key: str, keep: int = 0) -> tuple[int, int]:
        """(writes a minute, writes an hour) allowed for `key`; with `keep`, that many fewer
        (never below one, so that a write kept waiting always goes in the end)."""
        per_minute, per_hour = self._limits.get(key, (self.per_minute, self.per_hour))
        return max(1, per_minute - keep), max(1, per_hour - keep)

    def _judge(self, key: str, keep: int) -> Judge:
        per_minute, per_hour = self.limits_for(key, keep)
        return lambda starts, now: rate_wait(starts, now, per_minute, per_hour, self.minute)

    def next_free_in(self, key: str, write: bool = True, keep: int = 0) -> float:
        """Seconds until a call for `key` would fit the rate limits (0: it would go now), as
        this process last saw the key's writes (exact with the in-process store).

        Reads have no rate limit, so for them it is 0. Calls in flight are not counted: they
        end within a request's timeout, which is no reason to postpone anything."""
        seen = self.store.view(key) if write else None
        if seen is None:
            return 0.0
        starts, now = seen
        return self._judge(key, keep)(within_hour(starts, now), now)

    def headroom(self, key: str) -> int:
        """How many writes for `key` could start now without waiting for the rate windows (as
        this process last saw them)."""
        per_minute, per_hour = self.limits_for(key)
        seen = self.store.view(key)
        if seen is None:
            return min(per_minute, per_hour)
        starts, now = seen
        hour = within_hour(starts, now)
        last_minute = sum(1 for w in hour if now - w < self.minute)
        return max(0, min(per_minute - last_minute, per_hour - len(hour)))

    def budgets(self) -> dict[str, int]:
        """`headroom` of every key that has made a call, for the metrics."""
        return {key: self.headroom(key) for key in list(self._buckets)}

    def _release(self, bucket: _Bucket) -> None:
        bucket.in_flight -= 1
        # Wake every waiter; each checks again (the first ones take the free places).
        waiters, bucket.waiters = bucket.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _place(self, bucket: _Bucket) -> None:
        """Wait for a place in flight and take it."""
        while bucket.in_flight >= self.concurrency:
            waiter = asyncio.get_running_loop().create_future()
            bucket.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in bucket.waiters:
                    bucket.waiters.remove(waiter)
        bucket.in_flight += 1

    @asynccontextmanager
    async def slot(self, key: str, write: bool, *, max_wait: float | None = None,
                   keep: int = 0) -> AsyncIterator[None]:
        """Hold one of `key`'s calls in flight for the `async with` block; a `write` also
        counts against the minute and hour windows (leaving `keep` writes of each free).
        Waits until both fit; with `max_wait`, raises `Busy` rather than wait longer than that
        for the rate limits."""
        bucket = self._bucket(key)
        judge = self._judge(key, keep)
        while True:
            # The place is taken before the write is recorded, so that the write starts when
            # it is recorded (a write recorded and then kept waiting for a place would start
            # later than the windows think).
            await self._place(bucket)
            try:
                wait = await self.store.take(key, judge) if write else 0.0
            except BaseException:
                self._release(bucket)
                raise
            if wait <= 0:
                break
            # Rate-limited: sleep without holding a place in flight, so reads go on.
            self._release(bucket)
            if max_wait is not None and wait > max_wait:
                raise Busy(key, wait)
            await self._sleep(max(wait, MIN_SLEEP))
        try:
            yield
        finally:
            self._release(bucket)
