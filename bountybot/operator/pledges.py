"""Pledges for the operator: what waits for confirmation, and confirming that money arrived.

With `payments.manual_confirm` a pledge is a promise (`pending`) until a maintainer sees the
money (a bank transfer, Liberapay, Open Collective...) and confirms it here; the rules then
hold it in escrow, post `pledge.held`, fund the task when the goal is reached, and queue the
summary's update, exactly as a webhook's decision would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.config import Settings
from bountybot.money import Money, format_money
from bountybot.rules import PledgeConfirmed, Refused
from bountybot.states import PledgeState
from bountybot.storage import tables as t
from bountybot.storage.bounties import decide_on_task
from bountybot.storage.uow import UnitOfWork


@dataclass(frozen=True)
class PendingPledge:
    id: int
    task_id: int
    repo: str
    number: int
    backer: str
    amount: Money
    created_at: datetime

    def line(self, locale: str) -> str:
        return (f"{self.id:>6}  {format_money(self.amount, locale):>14}  @{self.backer:<20}"
                f"  {self.created_at:%Y-%m-%d %H:%M}  task {self.task_id}:"
                f" {self.repo}#{self.number}")


class PledgeError(Exception):
    """Why pledges cannot be confirmed, in one sentence."""


async def _pending(session: AsyncSession, task_id: int | None = None) -> list[PendingPledge]:
    stmt = (select(t.Pledge, t.Task, t.Repo)
            .join(t.Task, col(t.Task.id) == t.Pledge.task_id)
            .join(t.Repo, col(t.Repo.id) == t.Task.repo_id)
            .where(t.Pledge.state == PledgeState.PENDING)
            .order_by(col(t.Pledge.id)))
    if task_id is not None:
        stmt = stmt.where(t.Pledge.task_id == task_id)
    return [PendingPledge(t.id_of(p), t.id_of(task), repo.full_path, task.number, p.backer,
                          Money(p.amount_minor, p.currency), p.created_at)
            for p, task, repo in (await session.exec(stmt)).all()]


async def pending_pledges(sessionmaker: async_sessionmaker[AsyncSession], *,
                          task_id: int | None = None) -> list[PendingPledge]:
    """Pledges waiting for a maintainer to confirm their money arrived, oldest first."""
    async with sessionmaker() as session:
        return await _pending(session, task_id)


async def confirm_pledges(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                          pledge_ids: list[int] | None = None, *, task_id: int | None = None,
                          who: str = "operator", reference: str | None = None,
                          now: datetime | None = None) -> list[PendingPledge]:
    """Confirm the pending pledges `pledge_ids`, or every pending pledge of task `task_id`.

    All or nothing, in one transaction: a pledge that is unknown or not pending refuses the
    whole command, so an operator who mistyped one id fixes it and runs it again."""
    who = who.strip() or "operator"
    reference = (reference or "").strip()[:255] or None
    now = now or datetime.now(UTC)
    async with UnitOfWork(sessionmaker) as uow:
        session = uow.session
        if task_id is not None:
            if await session.get(t.Task, task_id) is None:
                raise PledgeError(f"there is no task {task_id}")
            pledge_ids = [p.id for p in await _pending(session, task_id)]
            if not pledge_ids:
                raise PledgeError(f"task {task_id} has no pending pledge")
        done = []
        for pledge_id in dict.fromkeys(pledge_ids or []):  # an id given twice counts once
            done.append(await _confirm(session, settings, pledge_id, who, reference, now))
        return done


async def _confirm(session: AsyncSession, settings: Settings, pledge_id: int, who: str,
                   reference: str | None, now: datetime) -> PendingPledge:
    pledge = await session.get(t.Pledge, pledge_id)
    if pledge is None:
        raise PledgeError(f"there is no pledge {pledge_id}")
    try:
        await decide_on_task(session, settings, pledge.task_id,
                             PledgeConfirmed(pledge_id, reference),
                             source=f"cli:pledge:{pledge_id}", now=now, actor=who)
    except Refused as refusal:
        raise PledgeError(refusal.message("en")) from None
    task = await session.get(t.Task, pledge.task_id)
    assert task is not None  # a foreign key
    repo = await session.get(t.Repo, task.repo_id)
    assert repo is not None
    return PendingPledge(pledge_id, t.id_of(task), repo.full_path, task.number, pledge.backer,
                         Money(pledge.amount_minor, pledge.currency), pledge.created_at)
