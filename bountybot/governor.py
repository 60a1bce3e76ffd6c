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

`next_free_in(key)` says how long a write would wait for its rate, so a caller with other work
(the outbox) can postpone a message instead of waiting; `slot(..., max_wait=s)` raises `Busy`
instead of waiting longer than `s` for the rate limits.

Pure asyncio and single-threaded: no lock is needed between checking a window and recording
a write, because nothing else runs between the two (there is no `await` in between).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

MINUTE = 60.0
HOUR = 3600.0
# The shortest sleep: a wait computed from float timestamps can come out a hair above zero
# after sleeping it; never sleeping less than this guarantees that the clock moves on.
MIN_SLEEP = 0.001


def token_key(forge: str) -> str:
    """The key of the writes made with a forge's one token (not a GitHub App's installation)."""
    return f"{forge}:token"


class Busy(Exception):
    """The slot would not be free within `max_wait`; `retry_in` is how long it would take."""

    def __init__(self, key: str, retry_in: float) -> None:
        super().__init__(f"rate limit for {key}: free in {retry_in:.1f}s")
        self.key = key
        self.retry_in = retry_in


@dataclass
class _Bucket:
    """One key's state: calls in flight, start times of the writes of the last hour (sorted),
    and the tasks waiting for a call in flight to end."""

    in_flight: int = 0
    writes: list[float] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class Governor:
    """Rate and concurrency limits per key, shared by every forge call of the process."""

    def __init__(
        self,
        per_minute: int = 80,
        per_hour: int = 500,
        concurrency: int = 100,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        limits: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """`limits`: (per minute, per hour) of the keys that have their own (Forgejo's token:
        Codeberg asks for fewer writes than GitHub allows)."""
        self._limits = dict(limits or {})
        if min(per_minute, per_hour, concurrency, *(n for pair in self._limits.values()
                                                    for n in pair)) < 1:
            raise ValueError("per_minute, per_hour and concurrency must be at least 1")
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.concurrency = concurrency
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        return bucket

    def limits_for(self, key: str) -> tuple[int, int]:
        """(writes a minute, writes an hour) allowed for `key`."""
        return self._limits.get(key, (self.per_minute, self.per_hour))

    def _rate_wait(self, key: str, bucket: _Bucket, now: float) -> float:
        """Seconds until one more write for `key` fits both windows (0: now)."""
        per_minute, per_hour = self.limits_for(key)
        writes = bucket.writes
        # Forget what has left the hour; written `now - w >= HOUR` like the checks below, so
        # that all of them agree at the boundary whatever the float rounding.
        old = 0
        while old < len(writes) and now - writes[old] >= HOUR:
            old += 1
        del writes[:old]
        wait = 0.0
        if len(writes) >= per_hour:
            wait = max(wait, HOUR - (now - writes[-per_hour]))
        if len(writes) >= per_minute:
            wait = max(wait, MINUTE - (now - writes[-per_minute]))
        return wait

    def next_free_in(self, key: str, write: bool = True) -> float:
        """Seconds until a call for `key` would fit the rate limits (0: it would go now).

        Reads have no rate limit, so for them it is 0. Calls in flight are not counted: they
        end within a request's timeout, which is no reason to postpone anything."""
        if not write or key not in self._buckets:
            return 0.0
        return self._rate_wait(key, self._buckets[key], self._clock())

    def headroom(self, key: str) -> int:
        """How many writes for `key` could start now without waiting for the rate windows."""
        per_minute, per_hour = self.limits_for(key)
        bucket = self._buckets.get(key)
        if bucket is None:
            return min(per_minute, per_hour)
        now = self._clock()
        self._rate_wait(key, bucket, now)  # forgets what has left the hour
        last_minute = sum(1 for w in bucket.writes if now - w < MINUTE)
        return max(0, min(per_minute - last_minute, per_hour - len(bucket.writes)))

    @asynccontextmanager
    async def slot(self, key: str, write: bool, *,
                   max_wait: float | None = None) -> AsyncIterator[None]:
        """Hold one of `key`'s calls in flight for the `async with` block; a `write` also
        counts against the minute and hour windows. Waits until both fit; with `max_wait`,
        raises `Busy` rather than wait longer than that for the rate limits."""
        bucket = self._bucket(key)
        while True:
            now = self._clock()
            full = bucket.in_flight >= self.concurrency
            wait = self._rate_wait(key, bucket, now) if write else 0.0
            if not full and wait <= 0:
                break
            if wait > 0:
                # Rate-limited: sleep without holding a place in flight, so reads go on.
                if max_wait is not None and wait > max_wait:
                    raise Busy(key, wait)
                await self._sleep(max(wait, MIN_SLEEP))
            else:
                waiter = asyncio.get_running_loop().create_future()
                bucket.waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in bucket.waiters:
                        bucket.waiters.remove(waiter)
        # No await since the checks above: the place and the write are still free. The write
        # is recorded at the time it was checked at, so later checks agree with this one.
        bucket.in_flight += 1
        if write:
            bucket.writes.append(now)
        try:
            yield
        finally:
            bucket.in_flight -= 1
            # Wake every waiter; each checks again (the first ones take the free places).
            waiters, bucket.waiters = bucket.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
