"""The inbox as an operator sees it (`bountybot deliveries`): what waits or failed, and why."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import defer
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.logs import event
from bountybot.storage import tables as t
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

PENDING, FAILED = t.DeliveryState.PENDING, t.DeliveryState.FAILED


@dataclass(frozen=True)
class Listed:
    """A delivery without its payload: an operator sees what it is and how it went, never what
    it holds (a payload may carry anything a stranger wrote)."""

    id: int
    forge: str
    kind: str
    topic: str | None
    state: str
    attempts: int
    received_at: datetime
    error: str | None

    @property
    def error_line(self) -> str:
        return (self.error or "").splitlines()[0][:120] if self.error else ""


async def list_deliveries(sessionmaker: async_sessionmaker[AsyncSession],
                          states: Collection[t.DeliveryState]) -> list[Listed]:
    """The deliveries in `states`, oldest first."""
    d = t.Delivery
    # Never the payloads: they may be large, or (the reason one failed) unreadable.
    stmt = (select(d).options(defer(d.payload))  # type: ignore[arg-type]  # SQLModel types it str
            .where(col(d.state).in_(list(states))).order_by(col(d.id)))
    async with sessionmaker() as session:
        rows = (await session.exec(stmt)).all()
        return [Listed(t.id_of(r), r.forge, r.event, r.topic, r.state, r.attempts,
                       r.received_at, r.error) for r in rows]


async def retry_failed(sessionmaker: async_sessionmaker[AsyncSession],
                       ids: list[int] | None = None) -> list[int]:
    """Put failed deliveries (all, or those of `ids`) back in the inbox with their tries reset,
    due at once; returns their ids. The last error stays until one is handled."""
    async with UnitOfWork(sessionmaker) as uow:
        stmt = select(t.Delivery).where(t.Delivery.state == FAILED)
        if ids is not None:
            stmt = stmt.where(col(t.Delivery.id).in_(ids))
        rows = (await uow.session.exec(stmt.order_by(col(t.Delivery.id))
                                       .with_for_update())).all()
        for row in rows:
            row.state, row.attempts, row.next_attempt_at = PENDING, 0, None
            event(log, "delivery.revived", id=row.id, forge=row.forge,
                  delivery=row.delivery_id)
    return [row.id for row in rows if row.id is not None]


async def fail_pending(sessionmaker: async_sessionmaker[AsyncSession], ids: list[int],
                       why: str | None = None) -> list[int]:
    """Give up on pending deliveries: marked failed, with `why` (and their last error) as the
    reason; returns their ids. One a worker is applying right now is waited for, and left
    alone if it was handled meanwhile. Later deliveries about the same issue go on."""
    reason = f"failed by hand: {why}" if why else "failed by hand (bountybot deliveries fail)"
    async with UnitOfWork(sessionmaker) as uow:
        rows = (await uow.session.exec(select(t.Delivery).where(
            t.Delivery.state == PENDING, col(t.Delivery.id).in_(ids))
            .order_by(col(t.Delivery.id)).with_for_update())).all()
        for row in rows:
            row.error = reason + (f"; last error: {row.error}" if row.error else "")
            row.state = FAILED
            event(log, "delivery.failed_by_hand", logging.WARNING, id=row.id, forge=row.forge,
                  delivery=row.delivery_id, why=why or "")
    return [row.id for row in rows if row.id is not None]


async def work_waiting(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """(deliveries not yet handled, forge writes not yet sent): both zero once all is done."""
    async with sessionmaker() as session:
        waiting = (await session.exec(select(func.count()).select_from(t.Delivery).where(
            col(t.Delivery.state) == PENDING))).one()
        sending = (await session.exec(select(func.count()).select_from(t.Outbox).where(
            col(t.Outbox.state) == t.OutboxState.PENDING))).one()
    return waiting, sending
