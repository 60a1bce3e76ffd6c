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

`month_figures` is the reference, one month read task by task; `history` gives the same figures
for a run of months in a few grouped queries (what the pages and feeds use), and the property
tests hold the two equal. Every amount is kept per currency and never converted. Reads only;
the caller brings a session (the public read pool) and filters nothing else: private repos are
left out here unless `public=False` (the operator's tools).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_
from sqlalchemy import select as sql_select
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
    more_live: int = 0  # live tasks left out of `tasks` (`history(..., live=N)`)
    more_payouts: int = 0  # the month's older payouts left out of `payouts` (the same)
    more_refunds: int = 0  # and its older refunds left out of `refunds`
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


async def _endings(session: AsyncSession, ids: list[int]) -> dict[int, datetime]:
    """When each of these tasks ended, by its first audit line that ended it (none: not ended)."""
    ended: dict[int, datetime] = {}
    if ids:
        stmt = (select(t.AuditEvent.task_id, func.min(t.AuditEvent.created_at))
                .where(col(t.AuditEvent.task_id).in_(ids), col(t.AuditEvent.action).in_(ENDED))
                .group_by(col(t.AuditEvent.task_id)))
        for task_id, at in (await session.exec(stmt)).all():
            if task_id is not None:
                ended[task_id] = _utc(at)
    return ended


async def _committed(session: AsyncSession, ids: list[int], cutoff: datetime
                     ) -> dict[int, int]:
    """What the backers had put into each of these tasks before `cutoff` (0 when nothing)."""
    committed: dict[int, int] = defaultdict(int)
    if ids:
        stmt = (select(t.LedgerTransaction.task_id, func.sum(t.LedgerEntry.amount_minor))
                .join(t.LedgerEntry,
                      col(t.LedgerEntry.transaction_id) == col(t.LedgerTransaction.id))
                .where(col(t.LedgerTransaction.task_id).in_(ids),
                       col(t.LedgerTransaction.created_at) < cutoff,
                       col(t.LedgerEntry.account).like("backer:%"))
                .group_by(col(t.LedgerTransaction.task_id)))
        for task_id, total in (await session.exec(stmt)).all():
            if task_id is not None:
                committed[task_id] = -_minor(total)
    return committed


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
    ended = await _endings(session, [id_of(task) for task, _ in rows])
    live = []
    for task, repo in rows:
        tid = id_of(task)
        end_at = ended.get(tid)
        if end_at is None and task.state in ENDED_STATES:
            end_at = _utc(task.updated_at)  # a task ended with no audit line (an old row)
        if end_at is None or end_at >= start:
            live.append((task, repo))

    committed = await _committed(session, [id_of(task) for task, _ in live], cutoff)

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

    pledged, found, refunds = await _moved(session, where, start, end,
                                           ("pledge.held", "payout.paid", *RETURNED))
    for cur, sums in pledged.items():
        for name, minor in sums.items():
            figures[cur][name] += minor
    paid = await _paid_out(session, found)
    return _month_figures(month, figures, now, default_currency, tuple(tasks), paid, refunds)


Found = tuple[t.LedgerTransaction, int, str, t.Task, t.Repo]


async def _moved(session: AsyncSession, where: list[ColumnElement[bool]], start: datetime,
                 end: datetime, kinds: tuple[str, ...],
                 ) -> tuple[dict[str, dict[str, int]], list[Found], tuple[Refund, ...]]:
    """Money that moved in [start, end), by kind of posting (of `kinds`): the sums by currency
    and figure, the `payout.paid` postings and the refunds."""
    moved = (select(t.LedgerTransaction, t.LedgerEntry, t.Task, t.Repo)
             .join(t.LedgerEntry, col(t.LedgerEntry.transaction_id) == col(t.LedgerTransaction.id))
             .join(t.Task, col(t.Task.id) == col(t.LedgerTransaction.task_id))
             .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
             .where(col(t.LedgerTransaction.created_at) >= start,
                    col(t.LedgerTransaction.created_at) < end,
                    col(t.LedgerTransaction.kind).in_(kinds),
                    *where)
             .order_by(col(t.LedgerTransaction.created_at), col(t.LedgerTransaction.id)))
    sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    payouts: list[Found] = []
    refunds = []
    for txn, entry, task, repo in (await session.exec(moved)).all():
        cur = entry.currency
        if txn.kind == "pledge.held" and entry.account.startswith("escrow:"):
            sums[cur]["pledged"] += entry.amount_minor
        elif txn.kind == "payout.paid" and entry.account == "external":
            sums[cur]["paid"] += entry.amount_minor
            payouts.append((txn, entry.amount_minor, cur, task, repo))
        elif txn.kind in RETURNED and entry.account.startswith("backer:"):
            sums[cur]["refunded"] += entry.amount_minor
            why = "withdrawn" if txn.kind == "pledge.withdrawn" else task.state.value
            refunds.append(Refund(id_of(task), repo.forge, repo.full_path, task.number,
                                  entry.account.split(":", 2)[2], Money(entry.amount_minor, cur),
                                  _utc(txn.created_at), why))
    return sums, payouts, tuple(refunds)


def _month_figures(month: date, figures: dict[str, dict[str, int]], now: datetime,
                   default_currency: str, tasks: tuple[LiveTask, ...] = (),
                   payouts: tuple[PaidOut, ...] = (), refunds: tuple[Refund, ...] = (),
                   more_live: int = 0, more_payouts: int = 0,
                   more_refunds: int = 0) -> MonthFigures:
    """A month's `MonthFigures` from its sums by currency (`asked`, `funded`, ... by name)."""
    start, end = month_start(month), month_start(next_month(month))
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
                        tasks, payouts, refunds, more_live, more_payouts, more_refunds)


async def _paid_out(session: AsyncSession,
                    found: list[Found]) -> tuple[PaidOut, ...]:
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


async def history(session: AsyncSession, repo_id: int | None, month: date, months: int = 12, *,
                  now: datetime | None = None, default_currency: str = "EUR",
                  public: bool = True, detail: bool = True,
                  live: int | None = None) -> list[MonthFigures]:
    """`month_figures` for `months` months ending with `month`, newest first, summed by month in
    SQL: three queries for the figures whatever the number of tasks, pledges and months
    (`month_figures` reads a month's every task; twelve of them took seconds on a large repo).
    The newest month comes with its live tasks, payouts and refunds when `detail` (a few
    queries more); the others, and the newest without `detail`, have the figures only (empty
    `tasks`, `payouts`, `refunds`). With `live`, the newest month lists only its `live`
    newest live tasks (in id order) and counts the others in `more_live`, and likewise its
    `live` newest payouts and refunds (`more_payouts`, `more_refunds`): what the pages and the
    API show, bounded however many tasks are live and however much money moved.
    tests/test_needs_property.py proves it equal to `month_figures` month by month on random
    books."""
    now = now or datetime.now(UTC)
    w = _Window(previous_months(month, months)[::-1], now)  # oldest first
    n = len(w.months)
    where = _repo_filter(repo_id, public)
    figures: list[dict[str, dict[str, int]]] = [defaultdict(lambda: defaultdict(int))
                                                for _ in range(n)]

    # Each task with a goal is live from its month `first` to its month `last`: its goal and
    # its count go in at `first` and out after `last` (differences from month to month).
    spans = _spans(w, where).subquery()
    steps: dict[str, dict[str, list[int]]] = defaultdict(
        lambda: {k: [0] * (n + 1) for k in ("asked", "funded", "tasks")})
    by_span: Any = (sql_select(spans.c.currency, spans.c.first, spans.c.last,
                               func.sum(spans.c.goal), func.count())
                    .group_by(spans.c.currency, spans.c.first, spans.c.last))
    for cur, first, last, asked, count in (await session.exec(by_span)).all():
        if first > last:  # ended before it was created (never live)
            continue
        for name, value in (("asked", _minor(asked)), ("tasks", count)):
            steps[cur][name][first] += value
            steps[cur][name][last + 1] -= value

    # funded: each task's capped committed money, piece by piece (see _funded_by_month).
    for since, until, cur, total in (await session.exec(
            _funded_by_month(w, where, spans))).all():
        steps[cur]["funded"][since] += _minor(total)
        steps[cur]["funded"][until + 1] -= _minor(total)
    for cur, s in steps.items():
        running = dict.fromkeys(s, 0)
        for i in range(n):
            for k in s:
                running[k] += s[k][i]
            if running["tasks"]:
                figures[i][cur].update(running)

    # Money that moved, by month, currency and kind of posting.
    for i, figure, cur, total in (await session.exec(_moved_by_month(w, where))).all():
        figures[i][cur][figure] += _minor(total)

    tasks: tuple[LiveTask, ...] = ()
    payouts: tuple[PaidOut, ...] = ()
    refunds: tuple[Refund, ...] = ()
    more_live = more_payouts = more_refunds = 0
    if detail:
        tasks, more_live = await _live_tasks(session, w, where, live)
        _, found, refunds = await _moved(session, where, w.starts[-1], w.ends[-1],
                                         ("payout.paid", *RETURNED))
        if live is not None:
            more_payouts, found = max(0, len(found) - live), found[-live:]
            more_refunds, refunds = max(0, len(refunds) - live), refunds[-live:]
        payouts = await _paid_out(session, found)
    out = [_month_figures(w.months[i], figures[i], now, default_currency) for i in range(n - 1)]
    out.append(_month_figures(w.months[-1], figures[-1], now, default_currency,
                              tasks, payouts, refunds, more_live, more_payouts,
                              more_refunds))
    return out[::-1]


class _Window:
    """Months in a row, oldest first, with their bounds; month `i` of a moment is the index of
    the first bound it is before, computed in SQL by `index`."""

    def __init__(self, months: list[date], now: datetime) -> None:
        self.months = months
        self.starts = [month_start(m) for m in months]
        self.ends = [month_start(next_month(m)) for m in months]
        self.cutoffs = [min(e, now) for e in self.ends]  # committed is counted up to these

    @staticmethod
    def index(moment: Any, bounds: list[datetime], first: int = 0) -> Any:
        # A binary search (four comparisons for twelve months, not up to twelve): it runs on
        # every posting of the window.
        if len(bounds) <= 2:
            return case(*((moment < bound, first + i) for i, bound in enumerate(bounds)),
                        else_=first + len(bounds))
        half = len(bounds) // 2
        return case((moment < bounds[half], _Window.index(moment, bounds[:half], first)),
                    else_=_Window.index(moment, bounds[half:], first + half))


def _ended_at() -> Any:
    """When each task ended: its first ending audit line, else (an old row with none) its
    `updated_at` if its state is an ending one, else null; with the join it needs."""
    ended = (select(col(t.AuditEvent.task_id).label("task_id"),
                    func.min(t.AuditEvent.created_at).label("at"))
             .where(col(t.AuditEvent.action).in_(ENDED)).group_by(col(t.AuditEvent.task_id))
             .subquery())
    at = func.coalesce(ended.c.at, case((col(t.Task.state).in_(ENDED_STATES),
                                         col(t.Task.updated_at)), else_=None))
    return ended, at


def _spans(w: _Window, where: list[ColumnElement[bool]]) -> Any:
    """The tasks with a goal live in some month of `w`: id, currency, goal, first and last
    live month."""
    ended, at = _ended_at()
    n = len(w.months)
    last = case((at.is_(None), n - 1),
                *((at >= w.starts[i], i) for i in reversed(range(n))), else_=-1)
    return (sql_select(col(t.Task.id).label("id"), col(t.Task.currency).label("currency"),
                       col(t.Task.goal_minor).label("goal"),
                       _Window.index(col(t.Task.created_at), w.ends).label("first"),
                       last.label("last"))
            .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
            .outerjoin(ended, ended.c.task_id == col(t.Task.id))
            .where(col(t.Task.created_at) < w.ends[-1], col(t.Task.goal_minor).is_not(None),
                   or_(at.is_(None), at >= w.starts[0]), *where))


def _backer_legs(w: _Window, where: list[ColumnElement[bool]], of: Any = None) -> Any:
    """What the backers committed to each task (of the tasks `of` selects, if given: rows with
    their `id`), by the month whose cutoff it came before."""
    inner: Any = (select(col(t.LedgerTransaction.task_id).label("task_id"),
                         _Window.index(col(t.LedgerTransaction.created_at), w.cutoffs)
                         .label("i"),
                         col(t.LedgerEntry.amount_minor).label("minor"))
                  .join(t.LedgerEntry,
                        col(t.LedgerEntry.transaction_id) == col(t.LedgerTransaction.id))
                  .where(col(t.LedgerTransaction.created_at) < w.cutoffs[-1],
                         col(t.LedgerEntry.account).like("backer:%")))
    if of is None:
        inner = (inner.join(t.Task, col(t.Task.id) == col(t.LedgerTransaction.task_id))
                 .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id)).where(*where))
    else:
        inner = inner.join(of, of.c.id == col(t.LedgerTransaction.task_id))
    legs = inner.subquery()
    # A backer leg takes money out of the backer's account: committed is minus their sum.
    return (select(legs.c.task_id, legs.c.i, (-func.sum(legs.c.minor)).label("minor"))
            .group_by(legs.c.task_id, legs.c.i))


def _funded_by_month(w: _Window, where: list[ColumnElement[bool]], spans: Any) -> Any:
    """Rows (since, until, currency, sum): the capped committed money of the tasks of `spans`
    that each month from `since` to `until` counts."""
    n = len(w.months)
    legs = _backer_legs(w, where, of=spans).subquery()
    # A task's committed money changes in the months its backer legs fall in: from each such
    # month to the next (within its live months) it adds the same capped amount.
    changes = (select(legs.c.task_id, legs.c.i,
                      func.sum(legs.c.minor).over(partition_by=legs.c.task_id,
                                                  order_by=legs.c.i).label("committed"),
                      func.lead(legs.c.i, 1, n).over(partition_by=legs.c.task_id,
                                                     order_by=legs.c.i).label("next"))
               .subquery())
    capped = case((changes.c.committed <= 0, 0),
                  (changes.c.committed >= spans.c.goal, spans.c.goal),
                  else_=changes.c.committed)
    since = case((changes.c.i > spans.c.first, changes.c.i), else_=spans.c.first)
    until = case((changes.c.next - 1 < spans.c.last, changes.c.next - 1), else_=spans.c.last)
    pieces = (select(spans.c.currency.label("currency"), since.label("since"),
                     until.label("until"), capped.label("funded"))
              .join(changes, changes.c.task_id == spans.c.id).subquery())
    return (select(pieces.c.since, pieces.c.until, pieces.c.currency, func.sum(pieces.c.funded))
            .where(pieces.c.since <= pieces.c.until)
            .group_by(pieces.c.since, pieces.c.until, pieces.c.currency))


def _moved_by_month(w: _Window, where: list[ColumnElement[bool]]) -> Any:
    """Rows (month, figure, currency, sum): the pledged, paid and refunded sums of each month."""
    created = col(t.LedgerTransaction.created_at)
    kind, account = col(t.LedgerTransaction.kind), col(t.LedgerEntry.account)
    prefix = func.substr(account, 1, 7)
    figure = case((and_(kind == "pledge.held", prefix == "escrow:"), "pledged"),
                  (and_(kind == "payout.paid", account == "external"), "paid"),
                  (and_(kind.in_(RETURNED), prefix == "backer:"), "refunded"), else_=None)
    inner = (select(_Window.index(created, w.ends).label("i"), figure.label("figure"),
                    col(t.LedgerEntry.currency).label("currency"),
                    col(t.LedgerEntry.amount_minor).label("minor"))
             .join(t.LedgerEntry,
                   col(t.LedgerEntry.transaction_id) == col(t.LedgerTransaction.id))
             .join(t.Task, col(t.Task.id) == col(t.LedgerTransaction.task_id))
             .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
             .where(created >= w.starts[0], created < w.ends[-1],
                    kind.in_(("pledge.held", "payout.paid", *RETURNED)), *where)
             .subquery())
    return (select(inner.c.i, inner.c.figure, inner.c.currency, func.sum(inner.c.minor))
            .where(inner.c.figure.is_not(None))
            .group_by(inner.c.i, inner.c.figure, inner.c.currency))


async def _live_tasks(session: AsyncSession, w: _Window, where: list[ColumnElement[bool]],
                      limit: int | None = None) -> tuple[tuple[LiveTask, ...], int]:
    """The live tasks of the newest month of `w` (its `limit` newest, if given), with what
    their backers committed by its cutoff, in the order of their ids; and how many live tasks
    are left out."""
    ended, at = _ended_at()
    live: Any = (select(col(t.Task.id).label("id"))
                 .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
                 .outerjoin(ended, ended.c.task_id == col(t.Task.id))
                 .where(col(t.Task.created_at) < w.ends[-1],
                        or_(at.is_(None), at >= w.starts[-1]), *where))
    more = 0
    if limit is not None:
        listed = (await session.exec(live.order_by(col(t.Task.id).desc()).limit(limit))).all()
        if len(listed) == limit:
            more = int((await session.exec(
                select(func.count()).select_from(live.subquery()))).one()) - limit
        live = select(col(t.Task.id).label("id")).where(
            col(t.Task.id).in_(list(listed)))
    chosen = live.subquery()
    legs = _backer_legs(_Window([w.months[-1]], w.cutoffs[-1]), where, of=chosen).subquery()
    # Ten columns: SQLAlchemy's own select (sqlmodel's overloads stop at four).
    columns: list[Any] = [t.Task.id, t.Repo.forge, t.Repo.full_path, t.Task.number,
                          t.Task.title, t.Task.url, t.Task.state, t.Task.currency,
                          t.Task.goal_minor, legs.c.minor]
    stmt: Any = (sql_select(*columns)
                 .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
                 .join(chosen, chosen.c.id == col(t.Task.id))
                 .outerjoin(legs, legs.c.task_id == col(t.Task.id))
                 .order_by(col(t.Task.id)))
    return tuple(LiveTask(tid, forge, path, number, title, url, state, cur, goal,
                          max(0, _minor(minor)))
                 for tid, forge, path, number, title, url, state, cur, goal, minor
                 in (await session.exec(stmt)).all()), more


def _utc(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back for some aggregate queries: they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
