"""The governor keeps writes under 80 a minute and 500 an hour per key, on a virtual clock: in
one process, and across several (their governors sharing one budget in PostgreSQL)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bountybot.governor import SERVED_MINUTE, Busy, Governor
from bountybot.storage.engine import create_engine
from bountybot.storage.write_budget import PgWriteLog


class VirtualTime:
    """A clock that only moves when every task is asleep: `sleep` waits for the driver, which
    wakes the sleepers in time order. Nothing really sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def run(self, main: Awaitable[object]) -> None:
        task = asyncio.ensure_future(main)
        while not task.done():
            for _ in range(50):  # let whatever can run, run (a few hops of wake-ups)
                await asyncio.sleep(0)
            if task.done():
                break
            assert self._timers, "deadlock: every task waits and no timer is set"
            self.now = max(self.now, self._timers[0][0])
            while self._timers and self._timers[0][0] <= self.now:
                _, _, future = heapq.heappop(self._timers)
                if not future.done():
                    future.set_result(None)
        await task


@dataclass
class Record:
    """What went through the governor: write start times per key, and calls in flight."""

    starts: dict[str, list[float]] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    most_in_flight: dict[str, int] = field(default_factory=dict)


def make(vt: VirtualTime, **kw: Any) -> Governor:
    return Governor(clock=vt.clock, sleep=vt.sleep, **kw)


async def call(gov: Governor, vt: VirtualTime, rec: Record, key: str, write: bool,
               hold: float = 0.0) -> float:
    async with gov.slot(key, write):
        started = vt.now
        if write:
            rec.starts.setdefault(key, []).append(started)
        rec.in_flight[key] = rec.in_flight.get(key, 0) + 1
        rec.most_in_flight[key] = max(rec.most_in_flight.get(key, 0), rec.in_flight[key])
        try:
            if hold:
                await vt.sleep(hold)
            else:
                await asyncio.sleep(0)
        finally:
            rec.in_flight[key] -= 1
    return started


def assert_windows(starts: list[float], per_minute: int, per_hour: int) -> None:
    """No 60 s window holds more than `per_minute` starts, no 3600 s one more than `per_hour`."""
    times = sorted(starts)
    for i in range(len(times) - per_minute):
        assert times[i + per_minute] - times[i] >= 60, (i, times[i], times[i + per_minute])
    for i in range(len(times) - per_hour):
        assert times[i + per_hour] - times[i] >= 3600, (i, times[i], times[i + per_hour])


async def test_a_thousand_writes_keep_both_windows_and_lose_no_time() -> None:
    vt, rec = VirtualTime(), Record()
    gov = make(vt)

    async def burst() -> None:
        await asyncio.gather(*(call(gov, vt, rec, "inst-1", True) for _ in range(1000)))

    await vt.run(burst())
    starts = rec.starts["inst-1"]
    assert len(starts) == 1000
    assert_windows(starts, 80, 500)
    # As fast as the limits allow: 80 a minute to 500 (t=0..360), the hour, again to 1000.
    assert sorted(starts)[499] == 360 and sorted(starts)[500] == 3600
    assert max(starts) == 3600 + 360


async def test_reads_are_not_rate_limited_but_are_concurrency_limited() -> None:
    vt, rec = VirtualTime(), Record()
    gov = make(vt, concurrency=10)

    async def reads() -> None:
        await asyncio.gather(*(call(gov, vt, rec, "k", False, hold=1.0) for _ in range(1000)))

    await vt.run(reads())
    assert rec.most_in_flight["k"] == 10
    assert vt.now == 100  # 1000 reads of 1 s, ten at a time; never a minute's wait
    assert gov.next_free_in("k", write=False) == 0


async def test_writes_are_concurrency_limited_too() -> None:
    vt, rec = VirtualTime(), Record()
    gov = make(vt, concurrency=3)

    async def writes() -> None:
        await asyncio.gather(*(call(gov, vt, rec, "k", True, hold=2.0) for _ in range(30)))

    await vt.run(writes())
    assert rec.most_in_flight["k"] == 3
    assert_windows(rec.starts["k"], 80, 500)


async def test_the_service_counts_a_minute_over_seventy_seconds() -> None:
    """A granted write may reach GitHub seconds later (one call at a time per token): the
    service's governor counts a minute's writes over `SERVED_MINUTE`, so that writes arriving
    up to 10 s late still fit any 60 s of GitHub's."""
    vt, rec = VirtualTime(), Record()
    gov = make(vt, per_minute=5, minute=SERVED_MINUTE)

    async def scenario() -> None:
        for _ in range(5):
            await call(gov, vt, rec, "a", True)
        assert gov.next_free_in("a") == 70 and gov.headroom("a") == 0
        assert await call(gov, vt, rec, "a", True) == 70  # the sixth write waits 70 s
        assert gov.headroom("a") == 4  # the first five left the window at 70 s

    await vt.run(scenario())
    with pytest.raises(ValueError, match="at least 60 s"):
        Governor(minute=59)


async def test_keys_are_independent() -> None:
    vt, rec = VirtualTime(), Record()
    gov = make(vt, per_minute=5)

    async def scenario() -> None:
        for _ in range(5):
            await call(gov, vt, rec, "a", True)
        assert gov.next_free_in("a") == 60
        assert gov.next_free_in("b") == 0
        assert await call(gov, vt, rec, "b", True) == 0  # b goes at once
        assert await call(gov, vt, rec, "a", False) == 0  # and so do a's reads
        assert await call(gov, vt, rec, "a", True) == 60  # a's sixth write waits a minute

    await vt.run(scenario())


async def test_next_free_in_counts_down_and_max_wait_refuses_to_wait() -> None:
    vt, rec = VirtualTime(), Record()
    gov = make(vt, per_minute=2, per_hour=3)

    async def scenario() -> None:
        await call(gov, vt, rec, "k", True)
        await vt.sleep(10)
        await call(gov, vt, rec, "k", True)
        assert gov.next_free_in("k") == 50  # the first write leaves the minute at t=60
        with pytest.raises(Busy) as busy:
            async with gov.slot("k", True, max_wait=30):
                raise AssertionError("not reached")
        assert busy.value.retry_in == 50
        async with gov.slot("k", True, max_wait=50):
            assert vt.now == 60
        assert gov.next_free_in("k") == 3600 - 60  # three in the hour: wait for the first
        await vt.sleep(3600)
        assert gov.next_free_in("k") == 0

    await vt.run(scenario())


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Governor(per_minute=0)


Arrival = tuple[float, str, bool, float]  # at, key, write, hold


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 60).map(float),  # bursts...
                                    st.floats(0, 5000)),  # ...and writes spread over hours
                          st.sampled_from("ab"), st.booleans(),
                          st.sampled_from([0.0, 0.5, 3.0, 20.0])),
                min_size=8, max_size=150))
def test_random_arrivals_keep_every_limit(arrivals: list[Arrival]) -> None:
    per_minute, per_hour, concurrency = 4, 6, 3

    async def scenario() -> Record:
        vt, rec = VirtualTime(), Record()
        gov = make(vt, per_minute=per_minute, per_hour=per_hour, concurrency=concurrency)

        async def arrive(at: float, key: str, write: bool, hold: float) -> None:
            await vt.sleep(at)
            await call(gov, vt, rec, key, write, hold)

        await vt.run(asyncio.gather(*(arrive(*a) for a in arrivals)))
        return rec

    rec = asyncio.run(scenario())
    for key in rec.starts:
        assert_windows(rec.starts[key], per_minute, per_hour)
    assert all(n <= concurrency for n in rec.most_in_flight.values())
    assert sum(len(s) for s in rec.starts.values()) == sum(1 for a in arrivals if a[2])



async def test_a_write_kept_in_reserve_waits_for_the_reserve() -> None:
    vt, rec = VirtualTime(), Record()
    gov = make(vt, per_minute=4, per_hour=100)

    async def scenario() -> None:
        await call(gov, vt, rec, "k", True)
        await vt.sleep(10)
        await call(gov, vt, rec, "k", True)
        assert gov.headroom("k") == 2
        # Keeping two of the four: no room now, and room once the first write leaves.
        assert gov.next_free_in("k", keep=2) == 50
        with pytest.raises(Busy) as busy:
            async with gov.slot("k", True, max_wait=0, keep=2):
                raise AssertionError("not reached")
        assert busy.value.retry_in == 50
        async with gov.slot("k", True, max_wait=0):  # a write that keeps nothing goes
            pass
        assert gov.headroom("k") == 1

    await vt.run(scenario())


# -- one budget for several processes, in PostgreSQL ----------------------------------------


class LeapClock:
    """Seconds since the epoch, shared by several governors: time moves only when a task
    sleeps, to the time it wakes at (if later). Nothing really sleeps; the tasks really race on
    the database in between."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, wake)


async def recorded(engine: AsyncEngine, key: str) -> list[float]:
    """The write start times kept in the database for `key`."""
    async with engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT started_at FROM write_budget WHERE key = :key ORDER BY started_at"),
            {"key": key})
        return [when.timestamp() for when in rows.scalars()]


@pytest.fixture
async def engines(pg_url: str) -> Any:
    """Three engines on one schema, as three processes would have."""
    made = [create_engine(pg_url) for _ in range(3)]
    yield made
    for engine in made:
        await engine.dispose()


async def test_governors_of_three_processes_share_one_budget(engines: list[AsyncEngine]) -> None:
    per_minute, per_hour = 5, 12
    clock = LeapClock()
    governors = [Governor(per_minute=per_minute, per_hour=per_hour, sleep=clock.sleep,
                          store=PgWriteLog(engine, clock=clock)) for engine in engines]

    async def write(gov: Governor) -> bool:
        try:
            # Waits for the minute; refuses to wait the hour (past 10 minutes).
            async with gov.slot("inst-1", True, max_wait=600):
                await asyncio.sleep(0)
            return True
        except Busy:
            return False

    done = await asyncio.gather(*(write(gov) for gov in governors for _ in range(10)))
    starts = await recorded(engines[0], "inst-1")
    # Each process alone would have let 12 through, 36 in all; together they share 12.
    assert sum(done) == len(starts) == per_hour
    assert_windows(starts, per_minute, per_hour)
    assert starts[-1] - starts[0] >= 120  # 5, 5 a minute later, 2 a minute after that
    assert await recorded(engines[0], "inst-2") == []
    async with governors[1].slot("inst-2", True, max_wait=0):  # another key is not touched
        pass
    assert len(await recorded(engines[0], "inst-2")) == 1


async def test_the_shared_budget_forgets_what_has_left_the_hour(
        engines: list[AsyncEngine]) -> None:
    clock = LeapClock()
    a, b = (Governor(per_minute=2, per_hour=3, sleep=clock.sleep,
                     store=PgWriteLog(engine, clock=clock)) for engine in engines[:2])
    for gov in (a, b, a):
        async with gov.slot("k", True, max_wait=60):
            pass
    assert len(await recorded(engines[0], "k")) == 3
    # b saw two of them when it wrote, and a all three: each says what it last saw.
    assert a.headroom("k") == 0 and a.next_free_in("k") == 3600 - 60
    with pytest.raises(Busy) as busy:
        async with b.slot("k", True, max_wait=60):
            pass
    assert busy.value.retry_in == 3600 - 60  # b asked the database: the hour is full
    clock.now += busy.value.retry_in  # an hour after the first two
    async with b.slot("k", True, max_wait=0):
        pass
    # The first two left the hour, and the table: only the third and the new one are kept.
    starts = await recorded(engines[0], "k")
    assert len(starts) == 2 and starts[-1] == clock.now


async def test_the_shared_budget_runs_on_the_database_clock(engines: list[AsyncEngine]) -> None:
    a, b = (Governor(per_minute=2, per_hour=10, store=PgWriteLog(engine))
            for engine in engines[:2])
    async with a.slot("k", True, max_wait=0), b.slot("k", True, max_wait=0):
        pass
    with pytest.raises(Busy) as busy:
        async with a.slot("k", True, max_wait=0):
            pass
    assert 55 < busy.value.retry_in <= 60
    async with engines[0].connect() as conn:
        now = float((await conn.execute(text(
            "SELECT extract(epoch FROM clock_timestamp())"))).scalar_one())
    starts = await recorded(engines[0], "k")
    assert len(starts) == 2 and all(0 <= now - s < 5 for s in starts)
