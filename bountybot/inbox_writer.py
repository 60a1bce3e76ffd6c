"""The inbox writer: deliveries stored once each, a burst in one commit.

The webhook doors (`bountybot.webhooks`, `bountybot.payments.stripe_events`) and the
reconciler (`bountybot.reconcile`) store what they receive here; the delivery worker
(`bountybot.inbox`) applies it later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bountybot import wakes
from bountybot.storage import tables as t
from bountybot.storage.dialect import insert_rows
from bountybot.storage.uow import UnitOfWork


class InboxWriter:
    """Stores deliveries with group commit: the requests that arrive while one transaction
    commits are written together by the next one, so a burst costs one commit (one fsync, one
    SQLite write lock) per batch instead of one per delivery; no request waits on a timer.
    Each request is answered only after the commit that holds its delivery."""

    def __init__(self, sessionmaker: Any, wake: Callable[[], None] | None,
                 max_batch: int = 500) -> None:
        self.sessionmaker = sessionmaker
        self.wake = wake
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[bool]]] = asyncio.Queue()

    async def store(self, values: dict[str, Any]) -> bool:
        """True when the delivery is new, False when it was already in the inbox."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((values, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                async with UnitOfWork(self.sessionmaker) as uow:
                    stored = await insert_new(uow.session, [values for values, _ in batch])
                    if stored:
                        # Workers of other processes hear of it at the commit (PostgreSQL).
                        await wakes.notify(uow.session)
                        if self.wake is not None:
                            uow.after_commit(self.wake)
                # A delivery id twice in one batch: the first is new, the second a repeat.
                fresh = []
                for values, _ in batch:
                    key = (values["forge"], values["delivery_id"])
                    fresh.append(key in stored)
                    stored.discard(key)
            except Exception as error:  # noqa: BLE001 - the database is down, however it fails:
                # every waiting request says so.
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), new in zip(batch, fresh, strict=True):
                if not future.done():
                    future.set_result(new)


async def insert_new(session: Any, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert deliveries in one statement, skipping those already stored; returns the
    (forge, delivery id) of the rows written."""
    # In key order: two replicas storing the same redelivered ids at once then wait for each
    # other in the same order, instead of each holding one the other needs (a deadlock).
    rows = sorted(rows, key=lambda r: (r["forge"], r["delivery_id"]))
    written = await insert_rows(session, t.Delivery, rows, skip_conflicts=True,
                                returning=(t.Delivery.forge, t.Delivery.delivery_id))
    return {(forge, delivery) for forge, delivery in written}
