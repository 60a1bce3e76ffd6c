"""On SQLite the units of work of one process take SQLite's write lock in turns, by priority."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import BACKGROUND, LATER, URGENT, UnitOfWork, _sqlite_turn


async def waiting(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> None:
    """Until `count` units of work wait for the turn (no sleeping: they queue at their first
    step, so this takes a loop iteration or two)."""
    turn = _sqlite_turn(sessionmaker)
    assert turn is not None
    async with asyncio.timeout(5):
        while turn.waiting < count:
            await asyncio.sleep(0)


async def test_webhooks_go_before_the_worker_and_the_worker_before_the_outbox(sqlite_url):
    engine = create_engine(sqlite_url)
    sessionmaker = create_sessionmaker(engine)
    order: list[str] = []
    try:
        holding = asyncio.Event()
        release = asyncio.Event()

        async def first() -> None:
            async with UnitOfWork(sessionmaker, priority=BACKGROUND) as uow:
                holding.set()
                assert not uow.contended
                await release.wait()
                assert uow.contended  # a webhook waits: a batch would commit and let it in
            order.append("first")

        async def queued(name: str, priority: int) -> None:
            async with UnitOfWork(sessionmaker, priority=priority):
                order.append(name)

        holder = asyncio.create_task(first())
        await holding.wait()
        waiters = [asyncio.create_task(queued("outbox", LATER)),
                   asyncio.create_task(queued("worker", BACKGROUND)),
                   asyncio.create_task(queued("webhook", URGENT))]
        await waiting(sessionmaker, 3)
        assert order == []  # nobody got in while the first held the lock
        release.set()
        await asyncio.gather(holder, *waiters)
        assert order == ["first", "webhook", "worker", "outbox"]
    finally:
        await engine.dispose()


async def test_a_cancelled_waiter_passes_its_turn_on(sqlite_url):
    engine = create_engine(sqlite_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        gate = asyncio.Event()
        holding = asyncio.Event()

        async def hold() -> None:
            async with UnitOfWork(sessionmaker):
                holding.set()
                await gate.wait()

        holder = asyncio.create_task(hold())
        await holding.wait()
        doomed = asyncio.create_task(UnitOfWork(sessionmaker).__aenter__())
        await waiting(sessionmaker, 1)
        doomed.cancel()
        gate.set()
        await holder
        async with asyncio.timeout(5):
            async with UnitOfWork(sessionmaker):  # would hang if the turn were lost
                pass
    finally:
        await engine.dispose()
