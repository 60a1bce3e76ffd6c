"""The monthly appeal: what a repo (or the whole instance) asked, got and spent in one month.

Definitions (PUBLIC.md, "The monthly appeal"), for a calendar month M in UTC:

- live tasks: created before M ended, and not yet done, cancelled or expired when M began (the
  moment a task ended is its first `task.done`/`task.cancelled`/`task.expired` audit line);
- asked: the goals of the live tasks that have one;
- funded: per live task with a goal, the money its backers have committed at the end of M (now,
  for the current month), capped at the goal. Committed is read from the ledger: minus the sum of
  the `backer:*` legs of the task's transactions up to then (a pledge held takes money from a
  backer account, a refund or withdrawal gives it back; a payout moves it on without giving it
  back, so paid-out money stays committed);
- pledged: `pledge.held` postings in M; paid out: `payout.paid` postings in M (settled payouts
  only, with their developer and merged pull request); refunded: `pledge.refunded` and
  `pledge.withdrawn` postings in M.

Every amount is kept per currency and never converted. Reads only; the caller brings a session
(the public read pool) and filters nothing else: private repos are left out here unless
`public=False` (the operator's tools).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.money import Money
from bountybot.states import LinkState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.tables import id_of

ENDED = ("task.done", "task.cancelled", "task.expired")
ENDED_STATES = frozenset({TaskState.DONE, TaskState.CANCELLED, TaskState.EXPIRED})
RETURNED = ("pledge.refunded", "pledge.withdrawn")


def month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_months(month: date, count: int) -> list[date]:
    """`count` months ending with `month`, newest first."""
    out = [date(month.year, month.month, 1)]
    while len(out) < count:
        last = out[-1]
        out.append(date(last.year - (last.month == 1), (last.month - 2) % 12 + 1, 1))
    return out


@dataclass(frozen=True)
class Figures:
    """One currency's figures for a month, in minor units."""

    currency: str
    asked: int = 0
    funded: int = 0
    pledged: int = 0
    paid: int = 0
    refunded: int = 0
    tasks: int = 0  # live tasks with a goal in this currency

    @property
    def to_go(self) -> int:
        return max(0, self.asked - self.funded)

    @property
    def percent(self) -> int:
        """funded / asked in whole percents, rounded down (0 when nothing is asked); may pass
        100 only if funded could (it cannot: funded is capped per task)."""
        return self.funded * 100 // self.asked if self.asked else 0


@dataclass(frozen=True)
class LiveTask:
    """A task live in the month: what the money is for."""

    id: int
    forge: str
    repo: str
    number: int
    title: str
    url: str
    state: TaskState
    currency: str
    goal: int | None
    committed: int  # at the end of the month (now, for the current one), not capped

    @property
    def funded(self) -> int:
        return self.committed if self.goal is None else min(self.committed, self.goal)


@dataclass(frozen=True)
class PaidOut:
    """A payout settled in the month: what the money did."""

    task_id: int
    forge: str
    repo: str
    number: int
    title: str
    developer: str
    amount: Money
    at: datetime
    pull_request: int | None
    pull_request_url: str | None
    reference: str | None


@dataclass(frozen=True)
class Refund:
    """Money given back to a backer in the month; `why` is `withdrawn`, `cancelled`,
    `expired` (or the task's state when it is none of those)."""

    task_id: int
    forge: str
    repo: str
    number: int
    backer: str
    amount: Money
    at: datetime
    why: str


@dataclass(frozen=True)
class MonthFigures:
    """The monthly appeal of one repo (or of every public repo) for `month`."""

    month: date
    currency: str  # the main currency: the one with the most asked, else the default
    by_currency: tuple[Figures, ...]
    days_left: int
    current: bool
    tasks: tuple[LiveTask, ...] = ()
    payouts: tuple[PaidOut, ...] = ()
    refunds: tuple[Refund, ...] = ()
    _main: Figures = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        main = next((f for f in self.by_currency if f.currency == self.currency),
                    Figures(self.currency))
        object.__setattr__(self, "_main", main)

    @property
    def main(self) -> Figures:
        return self._main

    @property
    def asked(self) -> Money:
        return Money(self._main.asked, self.currency)

    @property
    def funded(self) -> Money:
        return Money(self._main.funded, self.currency)

    @property
    def to_go(self) -> Money:
        return Money(self._main.to_go, self.currency)

    @property
    def percent(self) -> int:
        return self._main.percent

    @property
    def goal_tasks(self) -> int:
        """Live tasks with a goal (the "across 5 tasks" of the sentence), all currencies."""
        return sum(f.tasks for f in self.by_currency)


def _repo_filter(repo_id: int | None, public: bool) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if repo_id is not None:
        where.append(col(t.Repo.id) == repo_id)
    if public:
        where.append(or_(~col(t.Repo.private), col(t.Repo.published)))
    return where


def _minor(value: Any) -> int:
    # PostgreSQL sums a BIGINT as NUMERIC (a Decimal): int() of it is exact.
    return int(value or 0)


async def month_figures(session: AsyncSession, repo_id: int | None, month: date, *,
                        now: datetime | None = None, default_currency: str = "EUR",
                        public: bool = True) -> MonthFigures:
    """The appeal of `month` (any day of it) for one repo, or for all repos (`repo_id=None`)."""
    now = now or datetime.now(UTC)
    start, end = month_start(month), month_start(next_month(month))
    cutoff = min(end, now)
    where = _repo_filter(repo_id, public)
    joined = col(t.Repo.id) == col(t.Task.repo_id)

    # Live tasks: created before the end, not ended before the start.
    rows = (await session.exec(
        select(t.Task, t.Repo).join(t.Repo, joined)
        .where(col(t.Task.created_at) < end, *where).order_by(col(t.Task.id)))).all()
    ids = [id_of(task) for task, _ in rows]
    ended: dict[int, datetime] = {}
    if ids:
        stmt = (select(t.AuditEvent.task_id, func.min(t.AuditEvent.created_at))
                .where(col(t.AuditEvent.task_id).in_(ids), col(t.AuditEvent.action).in_(ENDED))
                .group_by(col(t.AuditEvent.task_id)))
        for task_id, at in (await session.exec(stmt)).all():
            if task_id is not None:
                ended[task_id] = _utc(at)
    live = []
    for task, repo in rows:
        tid = id_of(task)
        end_at = ended.get(tid)
        if end_at is None and task.state in ENDED_STATES:
            end_at = _utc(task.updated_at)  # a task ended with no audit line (an old row)
        if end_at is None or end_at >= start:
            live.append((task, repo))

    committed: dict[int, int] = defaultdict(int)
    live_ids = [id_of(task) for task, _ in live]
    if live_ids:
        stmt2 = (select(t.LedgerTransaction.task_id, func.sum(t.LedgerEntry.amount_minor))
                 .join(t.LedgerEntry,
                       col(t.LedgerEntry.transaction_id) == col(t.LedgerTransaction.id))
                 .where(col(t.LedgerTransaction.task_id).in_(live_ids),
                        col(t.LedgerTransaction.created_at) < cutoff,
                        col(t.LedgerEntry.account).like("backer:%"))
                 .group_by(col(t.LedgerTransaction.task_id)))
        for task_id, total in (await session.exec(stmt2)).all():
            if task_id is not None:
                committed[task_id] = -_minor(total)

    figures: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    tasks = []
    for task, repo in live:
        item = LiveTask(id_of(task), repo.forge, repo.full_path, task.number, task.title,
                        task.url, task.state, task.currency, task.goal_minor,
                        max(0, committed[id_of(task)]))
        tasks.append(item)
        if item.goal is not None:
            f = figures[task.currency]
            f["asked"] += item.goal
            f["funded"] += item.funded
            f["tasks"] += 1

    # Money that moved in the month, by kind of posting.
    moved = (select(t.LedgerTransaction, t.LedgerEntry, t.Task, t.Repo)
             .join(t.LedgerEntry, col(t.LedgerEntry.transaction_id) == col(t.LedgerTransaction.id))
             .join(t.Task, col(t.Task.id) == col(t.LedgerTransaction.task_id))
             .join(t.Repo, joined)
             .where(col(t.LedgerTransaction.created_at) >= start,
                    col(t.LedgerTransaction.created_at) < end,
                    col(t.LedgerTransaction.kind).in_(("pledge.held", "payout.paid", *RETURNED)),
                    *where)
             .order_by(col(t.LedgerTransaction.created_at), col(t.LedgerTransaction.id)))
    payouts: list[tuple[t.LedgerTransaction, int, str, t.Task, t.Repo]] = []
    refunds = []
    for txn, entry, task, repo in (await session.exec(moved)).all():
        cur = entry.currency
        if txn.kind == "pledge.held" and entry.account.startswith("escrow:"):
            figures[cur]["pledged"] += entry.amount_minor
        elif txn.kind == "payout.paid" and entry.account == "external":
            figures[cur]["paid"] += entry.amount_minor
            payouts.append((txn, entry.amount_minor, cur, task, repo))
        elif txn.kind in RETURNED and entry.account.startswith("backer:"):
            figures[cur]["refunded"] += entry.amount_minor
            why = "withdrawn" if txn.kind == "pledge.withdrawn" else task.state.value
            refunds.append(Refund(id_of(task), repo.forge, repo.full_path, task.number,
                                  entry.account.split(":", 2)[2], Money(entry.amount_minor, cur),
                                  _utc(txn.created_at), why))

    paid = await _paid_out(session, payouts)
    by_currency = tuple(sorted((Figures(cur, **f) for cur, f in figures.items()),
                               key=lambda f: (-f.asked, f.currency)))
    main = by_currency[0].currency if by_currency and by_currency[0].asked else default_currency
    if any(f.currency == default_currency and f.asked == by_currency[0].asked
           for f in by_currency):
        main = default_currency
    current = start <= now < end
    last_day = (end.date() - start.date()).days
    days_left = (last_day - now.day) if current else (0 if end <= now else last_day)
    return MonthFigures(date(month.year, month.month, 1), main, by_currency, days_left, current,
                        tuple(tasks), paid, tuple(refunds))


async def _paid_out(session: AsyncSession,
                    found: list[tuple[t.LedgerTransaction, int, str, t.Task, t.Repo]],
                    ) -> tuple[PaidOut, ...]:
    """The payouts behind `payout.paid` postings, with the merged pull request of their task
    (the developer's own, if they opened one)."""
    if not found:
        return ()
    payout_ids = [int(txn.key.rsplit(":", 1)[1]) for txn, *_ in found]
    payouts = {id_of(p): p for p in (await session.exec(
        select(t.Payout).where(col(t.Payout.id).in_(payout_ids)))).all()}
    task_ids = {id_of(task) for *_, task, _ in found}
    links: dict[int, list[t.Link]] = defaultdict(list)
    for link in (await session.exec(select(t.Link).where(
            col(t.Link.task_id).in_(task_ids), col(t.Link.state) == LinkState.MERGED)
            .order_by(col(t.Link.id)))).all():
        links[link.task_id].append(link)
    out = []
    for (txn, minor, cur, task, repo), pid in zip(found, payout_ids, strict=True):
        payout = payouts.get(pid)
        developer = payout.developer if payout else ""
        merged = links[id_of(task)]
        own = [li for li in merged if li.author.casefold() == developer.casefold()]
        found_link: t.Link | None = (own or merged)[0] if (own or merged) else None
        out.append(PaidOut(id_of(task), repo.forge, repo.full_path, task.number, task.title,
                           developer, Money(minor, cur), _utc(txn.created_at),
                           found_link.number if found_link else None,
                           found_link.url if found_link else None,
                           payout.reference if payout else None))
    return tuple(out)


async def history(session: AsyncSession, repo_id: int | None, month: date, months: int = 12,
                  **options: Any) -> list[MonthFigures]:
    """`month_figures` for `months` months ending with `month`, newest first."""
    return [await month_figures(session, repo_id, m, **options)
            for m in previous_months(month, months)]


def _utc(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back for some aggregate queries: they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
