"""The inbox writer: deliveries stored once each, a burst in one commit.

The webhook doors (`bountybot.webhooks`, `bountybot.payments.stripe_events`) and the
reconciler (`bountybot.reconcile`) store what they receive here; the delivery worker
(`bountybot.inbox`) applies it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from bountybot import wakes
from bountybot.logs import event
from bountybot.storage import tables as t
from bountybot.storage.dialect import insert_rows
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

Waiting = tuple[dict[str, Any], "asyncio.Future[bool]"]
# How long the writer keeps its connection after its last group: through a stream of
# deliveries it takes none from the pool (nor pings one: three round trips on PostgreSQL).
IDLE_SECONDS = 1.0


class Stopping(Exception):
    """The writer stopped before the delivery was stored: the door answers 503."""


class InboxWriter:
    """Stores deliveries with group commit: the requests that arrive while one transaction
    commits are written together by the next one, as one INSERT ... ON CONFLICT DO NOTHING
    RETURNING and one commit (one fsync, one SQLite write lock) per group instead of one per
    delivery; no request waits on a timer. Each request is answered only after the commit that
    holds its delivery. A group that fails is written again one delivery at a time, so one bad
    delivery (or one the database refuses) fails alone, and the others are answered as if
    each had come by itself; unless the database cannot be reached at all, when every one of
    them is answered so at once. Between groups the writer keeps its connection until a pause
    of `IDLE_SECONDS`; each group still takes its turn for SQLite's write lock as URGENT, ahead
    of the worker's."""

    def __init__(self, sessionmaker: async_sessionmaker[Any], wake: Callable[[], None] | None,
                 max_batch: int = 500) -> None:
        self.sessionmaker = sessionmaker
        self.wake = wake
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Waiting] = asyncio.Queue()
        self._held: tuple[AsyncConnection, async_sessionmaker[Any]] | None = None

    async def store(self, values: dict[str, Any]) -> bool:
        """True when the delivery is new, False when it was already in the inbox; raises
        what the database raised when it could not be stored."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((values, future))
        return await future

    async def run(self) -> None:
        batch: list[Waiting] = []
        try:
            while True:
                batch = [await self._next()]
                while len(batch) < self.max_batch and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                await self._write(batch)
                batch = []
        finally:
            # Stopped (the service shuts down): whoever still waits is told to deliver again.
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            for _, future in batch:
                if not future.done():
                    future.set_exception(Stopping("the inbox writer stopped"))
            await self._let_go()

    async def _next(self) -> Waiting:
        if self._held is None or not self.queue.empty():
            return await self.queue.get()
        try:
            async with asyncio.timeout(IDLE_SECONDS):
                return await self.queue.get()
        except TimeoutError:  # nothing came: the connection goes back to the pool
            await self._let_go()
            return await self.queue.get()

    async def _write(self, batch: list[Waiting]) -> None:
        try:
            fresh = await self._commit(await self._sessions(), [v for v, _ in batch])
        except Exception as error:  # noqa: BLE001 - however it failed, each is tried alone
            # On a fresh connection from the pool, in case it was the writer's own that broke.
            await self._let_go()
            event(log, "inbox.group_failed", logging.WARNING, deliveries=len(batch),
                  error=type(error).__name__)
            for n, (values, future) in enumerate(batch):
                try:
                    [new] = await self._commit(self.sessionmaker, [values])
                except Exception as alone:  # noqa: BLE001 - this one is answered 503
                    _answer(future, error=alone)
                    if _unreachable(alone):  # the others would wait for the same failure
                        for _, other in batch[n + 1:]:
                            _answer(other, error=alone)
                        return
                else:
                    _answer(future, new)
            return
        for (_, future), new in zip(batch, fresh, strict=True):
            _answer(future, new)

    async def _sessions(self) -> async_sessionmaker[Any]:
        """Sessions on the writer's own connection, taken from the pool at the first group
        after a pause and kept until the next pause (`IDLE_SECONDS`)."""
        engine = self.sessionmaker.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            return self.sessionmaker
        if self._held is None:
            connection = await engine.connect()
            kw = {k: v for k, v in self.sessionmaker.kw.items() if k != "bind"}
            self._held = connection, async_sessionmaker(connection,
                                                        class_=self.sessionmaker.class_, **kw)
        return self._held[1]

    async def _let_go(self) -> None:
        if self._held is not None:
            connection, self._held = self._held[0], None
            with contextlib.suppress(Exception):  # a broken one is dropped by the pool
                await connection.close()

    async def _commit(self, sessionmaker: async_sessionmaker[Any],
                      rows: list[dict[str, Any]]) -> list[bool]:
        """Write `rows` in one transaction; whether each was new, in order. A delivery id twice
        among them: the first is new, the second a repeat. Returns once committed."""
        async with UnitOfWork(sessionmaker) as uow:
            stored = await insert_new(uow.session, rows, wake=True)
            if stored and self.wake is not None:
                uow.after_commit(self.wake)
        fresh = []
        for values in rows:
            key = (values["forge"], values["delivery_id"])
            fresh.append(key in stored)
            stored.discard(key)
        return fresh


# What the INSERT returns of each row written.
_KEY = (t.Delivery.forge, t.Delivery.delivery_id)


def _unreachable(error: BaseException) -> bool:
    """The database could not be reached (refused, timed out, or the connection dropped), as
    opposed to one delivery refused by it."""
    return isinstance(error, OSError | TimeoutError) or bool(
        getattr(error, "connection_invalidated", False))


def _answer(future: asyncio.Future[bool], new: bool = False, *,
            error: BaseException | None = None) -> None:
    if future.done():  # its request went away (the client hung up): nobody to tell
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(new)


async def insert_new(session: Any, rows: list[dict[str, Any]], *,
                     wake: bool = False) -> set[tuple[str, str]]:
    """Insert deliveries in one statement, skipping those already stored; returns the
    (forge, delivery id) of the rows written. `wake`: the workers of other processes are told
    at the commit, if a row was written (`bountybot.wakes`)."""
    # In key order: two replicas storing the same redelivered ids at once then wait for each
    # other in the same order, instead of each holding one the other needs (a deadlock).
    rows = sorted(rows, key=lambda r: (r["forge"], r["delivery_id"]))
    notice = wakes.notice(session.get_bind().dialect.name) if wake else ()
    written = await insert_rows(session, t.Delivery, rows, skip_conflicts=True,
                                returning=(*_KEY, *notice))
    return {(row[0], row[1]) for row in written}


@contextlib.asynccontextmanager
async def running(writer: InboxWriter) -> AsyncIterator[InboxWriter]:
    """`writer` storing deliveries in a task of its own until the block ends."""
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
