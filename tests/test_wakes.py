"""Wakes across processes: a delivery stored through one engine wakes a worker listening on
another (PostgreSQL's LISTEN/NOTIFY, `bountybot.wakes`); SQLite has no listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from bountybot import wakes
from bountybot.inbox_writer import InboxWriter
from bountybot.storage import migrate
from bountybot.storage import tables as t
from bountybot.storage.engine import create_engine, create_sessionmaker

WAIT = 30.0  # a bound for a failing test, never a measure: the wake comes at the commit


def delivery(n: int) -> dict[str, object]:
    return dict(forge="github", delivery_id=f"wake-{n}", event="issue_comment", payload="{}",
                topic=None, state=t.DeliveryState.PENDING, attempts=0,
                received_at=datetime.now(UTC))


@dataclass
class Two:
    """A worker's process (its engine listening) and a web process (its inbox writer)."""

    writer: InboxWriter
    storing: AsyncEngine
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    heard: int = 0

    def wake(self) -> None:
        self.heard += 1
        self.woken.set()

    async def next_wake(self) -> None:
        await asyncio.wait_for(self.woken.wait(), WAIT)
        self.woken.clear()


@contextlib.asynccontextmanager
async def two_processes(pg_url: str, check: float = wakes.CHECK_SECONDS) -> AsyncIterator[Two]:
    listening, storing = create_engine(pg_url), create_engine(pg_url)
    two = Two(InboxWriter(create_sessionmaker(storing), wake=None), storing)
    stop = asyncio.Event()
    listener = asyncio.create_task(wakes.listen(listening, two.wake, stop, check=check))
    writing = asyncio.create_task(two.writer.run())
    try:
        await two.next_wake()  # the first wake, on listening: "look, in case"
        yield two
    finally:
        stop.set()
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
        await asyncio.wait_for(listener, WAIT)
        await listening.dispose()
        await storing.dispose()


async def test_a_delivery_stored_in_one_process_wakes_the_worker_of_another(pg_url: str):
    async with two_processes(pg_url) as two:
        assert await two.writer.store(delivery(1)) is True
        await two.next_wake()
        before = two.heard
        # A repeat stores nothing, and tells nobody.
        assert await two.writer.store(delivery(1)) is False
        assert await two.writer.store(delivery(2)) is True
        await two.next_wake()
        assert two.heard == before + 1


async def test_the_listener_comes_back_after_its_connection_is_lost(pg_url: str):
    async with two_processes(pg_url, check=0.05) as two:
        # The database drops the listener's connection (a restart, a failover).
        async with two.storing.connect() as conn:
            await conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
                " AND datname = current_database()")
        await two.next_wake()  # listening again ("look, in case")
        assert await two.writer.store(delivery(3)) is True
        await two.next_wake()


async def test_sqlite_has_no_listener(tmp_path: Path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    stop = asyncio.Event()
    woken: list[int] = []
    await asyncio.wait_for(wakes.listen(engine, lambda: woken.append(1), stop), WAIT)
    assert woken == [] and not stop.is_set()
    await engine.dispose()


async def test_a_delivery_stored_in_another_schema_wakes_nobody_here(pg_url: str,
                                                                     empty_pg_url: str):
    migrate.upgrade(empty_pg_url)
    elsewhere = create_engine(empty_pg_url)
    other = InboxWriter(create_sessionmaker(elsewhere), wake=None)
    writing = asyncio.create_task(other.run())
    try:
        async with two_processes(pg_url) as two:
            assert await other.store(delivery(4)) is True  # another instance's inbox
            assert await two.writer.store(delivery(5)) is True  # then this one's
            await two.next_wake()
            assert two.heard == 2  # the first "look, in case", then this schema's delivery
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
        await elsewhere.dispose()
