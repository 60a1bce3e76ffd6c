"""The time sweep: what the clock makes due, found in the tables and applied through the rules.

Due times live in the domain tables: a funding deadline (`task.deadline`), a claim's reminder
and expiry (`claim.remind_at`, `claim.expires_at`), a payout's release (`payout.due_at`). A
sweep finds the tasks with something due and gives each a `Tick`: the rules do the rest
(refunds, promotion of the waiting list, notices), written like any other decision.

Idempotent and safe on several replicas at once: on PostgreSQL each task row is taken with
`FOR UPDATE SKIP LOCKED` (a task another replica is sweeping is left to it), and a task swept
twice changes nothing the second time, since the first sweep moved its due times away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, or_
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from bountybot.clock import Clock
from bountybot.config import Settings
from bountybot.logs import event
from bountybot.rules import Tick, decide_event
from bountybot.states import ClaimState, PayoutState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.bounties import issue_of, policy_of, save_decision, to_bounty
from bountybot.storage.uow import LATER, UnitOfWork, for_update_skip_locked

log = logging.getLogger(__name__)



@dataclass
class SweepReport:
    due: int = 0  # tasks found with something due
    changed: int = 0  # tasks the tick changed
    skipped: int = 0  # tasks another replica held at that moment


def due_tasks_query(now: datetime) -> SelectOfScalar[int] | SelectOfScalar[None]:
    """Ids of tasks with something due at `now`."""
    task_id = col(t.Task.id)
    claim_due = exists().where(
        col(t.Claim.task_id) == task_id, col(t.Claim.state) == ClaimState.ACTIVE,
        or_(col(t.Claim.expires_at) <= now, col(t.Claim.remind_at) <= now))
    payout_due = exists().where(
        col(t.Payout.task_id) == task_id, col(t.Payout.state) == PayoutState.PENDING,
        col(t.Payout.released_at).is_(None), col(t.Payout.due_at) <= now)
    deadline_due = and_(col(t.Task.state) == TaskState.OPEN, col(t.Task.deadline).is_not(None),
                        col(t.Task.deadline) < now.date())
    release_due = and_(col(t.Task.state) == TaskState.DONE, col(t.Task.disputed_by).is_(None),
                       payout_due)
    return (select(t.Task.id).where(or_(deadline_due, claim_due, release_due))
            .order_by(task_id))


class Sweeper:
    """Applies what time made due; `run_once` is what the scheduler ticks."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *,
                 clock: Clock, on_written: Callable[[], None] | None = None,
                 batch: int = 50) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.clock = clock
        self.on_written = on_written
        self.batch = batch

    async def run_once(self) -> SweepReport:
        now = self.clock()
        report = SweepReport()
        async with self.sessionmaker() as session:
            ids = [i for i in (await session.exec(due_tasks_query(now))).all() if i is not None]
        report.due = len(ids)
        for start in range(0, len(ids), self.batch):
            await self._sweep(ids[start:start + self.batch], now, report)
        if report.due:
            event(log, "sweep.done", due=report.due, changed=report.changed,
                  skipped=report.skipped)
        return report

    async def _sweep(self, ids: list[int], now: datetime, report: SweepReport) -> None:
        written = False
        async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
            session = uow.session
            stmt = for_update_skip_locked(select(t.Task).where(col(t.Task.id).in_(ids)),
                                          uow.dialect)
            tasks = {task.id: task for task in (await session.exec(stmt)).all()}
            report.skipped += len(ids) - len(tasks)
            for task_id in ids:
                task = tasks.get(task_id)
                if task is None:
                    continue
                repo = await session.get(t.Repo, task.repo_id)
                assert repo is not None
                bounty = await to_bounty(session, repo, task)
                issue = issue_of(repo, task)
                decision = decide_event(bounty, issue, Tick(), policy_of(self.settings, repo),
                                        now)
                if not decision.changed:
                    continue
                # The source names the moment: a later sweep of the same task is another cause.
                await save_decision(session, repo, issue, decision,
                                    source=f"sweep:{now.isoformat()}", now=now)
                report.changed += 1
                written = True
                event(log, "sweep.task", task=task_id, repo=repo.full_path,
                      number=task.number,
                      what=",".join(sorted({i.action for i in decision.trail})))
            if written and self.on_written is not None:
                uow.after_commit(self.on_written)
