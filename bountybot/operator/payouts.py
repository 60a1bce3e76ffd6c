"""Payouts for the operator: what is due, and marking one paid (the manual provider's job)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.config import Settings
from bountybot.money import Money, format_money
from bountybot.rules import PayoutPaid, Refused
from bountybot.storage import tables as t
from bountybot.storage.bounties import decide_on_task
from bountybot.storage.uow import UnitOfWork


@dataclass(frozen=True)
class DuePayout:
    id: int
    task_id: int
    repo: str
    number: int
    developer: str
    amount: Money
    state: str
    created_at: datetime

    def line(self, locale: str) -> str:
        return (f"{self.id:>6}  {format_money(self.amount, locale):>14}  @{self.developer:<20}"
                f"  {self.repo}#{self.number}  {self.state}  since {self.created_at:%Y-%m-%d}")


async def due_payouts(sessionmaker: async_sessionmaker[AsyncSession], *,
                      waiting: bool = False) -> list[DuePayout]:
    """Payouts to pay now (pending or failed, released, not disputed), oldest first; with
    `waiting`, those still in their release window or held by a dispute instead."""
    async with sessionmaker() as session:
        rows = (await session.exec(
            select(t.Payout, t.Task, t.Repo)
            .join(t.Task, col(t.Task.id) == t.Payout.task_id)
            .join(t.Repo, col(t.Repo.id) == t.Task.repo_id)
            .where(col(t.Payout.state).in_(["pending", "failed"]))
            .order_by(col(t.Payout.id)))).all()
    out = []
    for p, task, repo in rows:
        due = p.released_at is not None and task.disputed_by is None
        if due == waiting:
            continue
        state = str(p.state)
        if task.disputed_by is not None:
            state = f"held: disputed by @{task.disputed_by}"
        elif p.released_at is None and p.due_at is not None:
            state = f"waiting until {p.due_at:%Y-%m-%d %H:%M} UTC"
        out.append(DuePayout(t.id_of(p), t.id_of(task), repo.full_path, task.number,
                             p.developer, Money(p.amount_minor, p.currency), state,
                             p.created_at))
    return out


class PayoutError(Exception):
    """Why a payout cannot be marked paid, in one sentence."""


async def mark_paid(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                    payout_id: int, reference: str, *, who: str = "operator",
                    now: datetime | None = None) -> Money:
    """Record that payout `payout_id` was paid outside the bot (a bank transfer, Liberapay…),
    with the reference people can check. Once only: a second time is refused."""
    reference = reference.strip()
    if not reference:
        raise PayoutError("a reference is needed (the transfer's id, a receipt number...)")
    now = now or datetime.now(UTC)
    async with UnitOfWork(sessionmaker) as uow:
        payout = await uow.session.get(t.Payout, payout_id)
        if payout is None:
            raise PayoutError(f"there is no payout {payout_id}")
        try:
            await decide_on_task(uow.session, settings, payout.task_id,
                                 PayoutPaid(payout_id, reference[:255]),
                                 source=f"cli:payout:{payout_id}", now=now, actor=who)
        except Refused as refusal:
            raise PayoutError(refusal.message("en")) from None
        return Money(payout.amount_minor, payout.currency)
