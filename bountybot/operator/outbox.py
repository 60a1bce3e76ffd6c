"""The outbox as an operator sees it (`bountybot outbox`): the forge writes waiting, sent or
parked as dead, and another round of attempts for the dead ones."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.clock import utc_now
from bountybot.logs import event
from bountybot.storage.tables import Outbox, OutboxState
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

PENDING, DEAD = OutboxState.PENDING, OutboxState.DEAD
Sessionmaker = async_sessionmaker[AsyncSession]


async def list_messages(sessionmaker: Sessionmaker, state: str | None = None) -> list[Outbox]:
    """The outbox, oldest first; only the messages in `state` (`pending`, `sent`, `dead`) if
    given."""
    stmt = select(Outbox).order_by(col(Outbox.id))
    if state is not None:
        stmt = stmt.where(Outbox.state == OutboxState(state))
    async with sessionmaker() as session:
        return list((await session.exec(stmt)).all())


async def retry_dead(sessionmaker: Sessionmaker, ids: list[int] | None = None, *,
                     now: datetime | None = None) -> int:
    """Give dead messages (all, or those of `ids`) another round of attempts, now; returns how
    many. Their `last_error` stays, which also makes the sender look for a reply's marker before
    posting it (the last attempt may have reached the forge)."""
    now = now or utc_now()
    async with UnitOfWork(sessionmaker) as uow:
        stmt = select(Outbox).where(Outbox.state == DEAD)
        if ids is not None:
            stmt = stmt.where(col(Outbox.id).in_(ids))
        rows = (await uow.session.exec(stmt.with_for_update())).all()
        for row in rows:
            row.state, row.attempts, row.next_attempt_at = PENDING, 0, now
            event(log, "outbox.revived", id=row.id, kind=row.kind)
    return len(rows)
