"""The public read model of the books: how tasks, amounts and ledger transactions look in JSON,
and the batched queries that load them. Shared by the HTTP API and the export; no aiohttp here.

Every shape is built from table rows loaded a page at a time: one query for the page's tasks
(with their repos), then one query per child table for all of the page's task ids, so a page of
100 tasks costs six queries, not six hundred. The figures a task shows (`pledged`, `raised`,
`backers`, the claim) are computed by the rules' own `Bounty`, so the API and the bot never
disagree; except that a public read (`load_tasks(..., pledges=N)`) loads only a task's first
`N` pledges and sums the rest in SQL (`PledgeTotals`, the same definitions as `Bounty.held`,
`raised` and `backers(RAISED)`), so that a task with 10,000 pledges costs what a task with ten
does; the rest are a page at a time under `/api/v1/tasks/{id}/pledges`.

A private repo's tasks, people and amounts are not public: every public read filters its rows
by `shown_publicly()` (a public repo, or a private one its operator published with `bountybot
repos publish`). The operator's own commands (`export`, `audit`, `statement`) see everything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, case, func, not_, or_
from sqlalchemy import select as sql_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.ledger import ESCROW
from bountybot.money import Money, format_money
from bountybot.needs import Figures, MonthFigures
from bountybot.rules.model import RAISED, Bounty
from bountybot.states import ClaimState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.bounties import bounty_of
from bountybot.storage.tables import id_of

Json = dict[str, Any]


def shown_publicly() -> ColumnElement[bool]:
    """The condition on `repo` rows whose data the public may see: a public repo's, or a
    private one's that its operator published."""
    return or_(not_(col(t.Repo.private)), col(t.Repo.published))


def is_public(repo: t.Repo) -> bool:
    """`shown_publicly()` for a repo row already loaded."""
    return not repo.private or repo.published


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z` (`2026-11-23T09:00:00Z`), or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def amount(minor: int, currency: str, locale: str) -> Json:
    """`{"amount": 5000, "currency": "EUR", "display": "€50.00"}`; signed in the ledger."""
    return {"amount": minor, "currency": currency,
            "display": display_amount(minor, currency, locale)}


# Babel takes a fifth of a millisecond per amount, and the books repeat amounts (goals, the
# usual pledges, both legs of a transaction): an export formats each one once.
@lru_cache(maxsize=4096)
def display_amount(minor: int, currency: str, locale: str) -> str:
    return format_money(Money(minor, currency), locale)


def locale_of(repo: t.Repo | None, default: str) -> str:
    """The repo's own locale, else the bot's (`bot.locale`)."""
    return repo.locale if repo is not None and repo.locale else default


@dataclass(frozen=True)
class PledgeTotals:
    """A task's pledges summed in SQL, for a read that loads only the first few: how many there
    are, what is held, what is raised (held and paid out) and by how many backers (logins
    without case: the forges' logins are ASCII, where SQL's `lower` is Python's `casefold`)."""

    count: int
    held: int
    raised: int
    backers: int


@dataclass
class TaskRows:
    """One task's rows, as loaded for a page: the task, its repo and what hangs from it.

    With `totals`, `pledges` holds only the first pledges (by id) and `totals` sums them all;
    `backers`, when loaded, the first backers behind `raised` (in the order they first
    pledged) with what each gave."""

    task: t.Task
    repo: t.Repo
    pledges: list[t.Pledge]
    claims: list[t.Claim]
    waiting: list[t.Waiting]
    links: list[t.Link]
    payouts: list[t.Payout]
    totals: PledgeTotals | None = None
    backers: list[tuple[str, int]] | None = None

    def bounty(self) -> Bounty:
        """The rules' view of the task (`storage.bounties.bounty_of`); with `totals`, its
        pledges are only the first ones (its claims, links and payouts are all there)."""
        return bounty_of(self.repo, self.task, self.pledges, self.claims, self.waiting,
                         self.links, self.payouts)

    def figures(self, b: Bounty) -> PledgeTotals:
        """What the task's pledges add up to: `totals`, or `b`'s sums when every pledge is
        loaded."""
        if self.totals is not None:
            return self.totals
        return PledgeTotals(len(self.pledges), b.held().minor, b.raised().minor,
                            len(b.backers(RAISED)))


Child = TypeVar("Child", t.Pledge, t.Claim, t.Waiting, t.Link, t.Payout)


async def _by_task(session: AsyncSession, table: type[Child], ids: Sequence[int],
                   order: Any) -> dict[int, list[Child]]:
    grouped: dict[int, list[Child]] = defaultdict(list)
    if ids:
        stmt = select(table).where(col(table.task_id).in_(ids)).order_by(col(order))
        for row in (await session.exec(stmt)).all():
            grouped[row.task_id].append(row)
    return grouped


async def _first_pledges(session: AsyncSession, ids: Sequence[int], limit: int,
                         totals: dict[int, PledgeTotals]) -> dict[int, list[t.Pledge]]:
    """The first `limit` pledges (by id) of each of these tasks: those of the tasks with at
    most `limit` in one query, and a query of `limit` rows (on the index of (task_id, id)) for
    each task with more, so that a task's thousands of pledges are never read to list a few."""
    grouped: dict[int, list[t.Pledge]] = defaultdict(list)
    few = [i for i in ids if 0 < totals.get(i, PledgeTotals(0, 0, 0, 0)).count <= limit]
    many = [i for i in ids if totals.get(i, PledgeTotals(0, 0, 0, 0)).count > limit]
    if few:
        grouped.update(await _by_task(session, t.Pledge, few, t.Pledge.id))
    for task_id in many:
        grouped[task_id] = list((await session.exec(
            select(t.Pledge).where(col(t.Pledge.task_id) == task_id)
            .order_by(col(t.Pledge.id)).limit(limit))).all())
    return grouped


def _raised() -> ColumnElement[bool]:
    return col(t.Pledge.state).in_(sorted(RAISED))


async def pledge_totals(session: AsyncSession, ids: Sequence[int]) -> dict[int, PledgeTotals]:
    """`PledgeTotals` of each of these tasks, in two grouped queries (the distinct backers
    apart: `count(DISTINCT ...)` sorts, a `DISTINCT` subquery hashes)."""
    if not ids:
        return {}
    amount_ = col(t.Pledge.amount_minor)
    of_tasks = col(t.Pledge.task_id).in_(ids)
    stmt: Any = (select(
        col(t.Pledge.task_id), func.count(),
        func.coalesce(func.sum(case((col(t.Pledge.state) == PledgeState.HELD, amount_),
                                    else_=0)), 0),
        func.coalesce(func.sum(case((_raised(), amount_), else_=0)), 0))
        .where(of_tasks).group_by(col(t.Pledge.task_id)))
    distinct_backers = (sql_select(col(t.Pledge.task_id).label("task_id"),
                                   func.lower(col(t.Pledge.backer)).label("login"))
                        .where(of_tasks, _raised()).distinct().subquery())
    backers = dict((await session.exec(
        select(distinct_backers.c.task_id, func.count())
        .group_by(distinct_backers.c.task_id))).all())
    # PostgreSQL sums a BIGINT column as NUMERIC (a Decimal here): int() of it is exact.
    return {task_id: PledgeTotals(int(n), int(held), int(raised), int(backers.get(task_id, 0)))
            for task_id, n, held, raised in (await session.exec(stmt)).all()}


async def first_backers(session: AsyncSession, task_id: int, limit: int,
                        chunk: int = 1000) -> list[tuple[str, int]]:
    """The first `limit` backers behind `raised` of a task, in the order they first pledged,
    each with the login of their first pledge and what they gave in all. Reads the task's
    pledges in id order a `chunk` at a time until it has found them, then sums what they gave
    (one grouped query, when some pledges were not read)."""
    found: dict[str, tuple[str, int]] = {}
    after, complete = 0, False
    while len(found) < limit:
        rows = (await session.exec(
            select(col(t.Pledge.id), col(t.Pledge.backer), col(t.Pledge.amount_minor))
            .where(col(t.Pledge.task_id) == task_id, _raised(), col(t.Pledge.id) > after)
            .order_by(col(t.Pledge.id)).limit(chunk))).all()
        for pledge_id, backer, minor in rows:
            key = backer.casefold()
            if key in found:
                found[key] = (found[key][0], found[key][1] + minor)
            elif len(found) < limit:
                found[key] = (backer, minor)
            after = pledge_id or after
        if len(rows) < chunk:
            complete = True
            break
    if not complete and found:
        # Pledges past those read may be from the same backers: their totals, in SQL.
        lowered = func.lower(col(t.Pledge.backer))
        sums = dict((await session.exec(
            select(lowered, func.sum(col(t.Pledge.amount_minor)))
            .where(col(t.Pledge.task_id) == task_id, _raised(), lowered.in_(list(found)))
            .group_by(lowered))).all())
        found = {k: (name, int(sums.get(k, minor))) for k, (name, minor) in found.items()}
    return list(found.values())


async def _plain_pledges(session: AsyncSession,
                         ids: Sequence[int]) -> dict[int, list[t.Pledge]]:
    """Every pledge of these tasks as plain rows, not ORM objects: rows read the same way
    (`p.backer`, `p.state`, ...) and cost a fraction to build, so that the export's page with a
    task of 10,000 pledges does not hold the event loop for a second. Read-only: nothing is
    ever written through them."""
    grouped: dict[int, list[t.Pledge]] = defaultdict(list)
    if ids:
        # Every column of the table, so a row has every attribute the ORM object would.
        stmt: Any = (sql_select(*cast(Any, t.Pledge).__table__.columns)
                     .where(col(t.Pledge.task_id).in_(ids)).order_by(col(t.Pledge.id)))
        for row in (await session.exec(stmt)).all():
            grouped[row.task_id].append(cast(t.Pledge, row))
    return grouped


async def load_tasks(session: AsyncSession, pairs: Sequence[tuple[t.Task, t.Repo]], *,
                     pledges: int | None = None, backers: int | None = None,
                     plain: bool = False) -> list[TaskRows]:
    """The children of these tasks, one query per child table; in the order given. With
    `pledges`, only each task's first `pledges` pledges and their `PledgeTotals`; with
    `backers` (and `pledges`), each task's first `backers` backers too (a few queries per
    task: for a task's own page). `plain` (the export's) loads every pledge as a plain row."""
    ids = [id_of(task) for task, _ in pairs]
    totals: dict[int, PledgeTotals] = {}
    listed: dict[int, list[tuple[str, int]]] | None = None
    if pledges is None:
        loaded = await (_plain_pledges(session, ids) if plain
                        else _by_task(session, t.Pledge, ids, t.Pledge.id))
    else:
        totals = await pledge_totals(session, ids)
        loaded = await _first_pledges(session, ids, pledges, totals)
        if backers is not None:
            listed = {i: await first_backers(session, i, backers) for i in ids}
    claims = await _by_task(session, t.Claim, ids, t.Claim.id)
    waiting = await _by_task(session, t.Waiting, ids, t.Waiting.position)
    links = await _by_task(session, t.Link, ids, t.Link.id)
    payouts = await _by_task(session, t.Payout, ids, t.Payout.id)
    return [TaskRows(task, repo, loaded[i], claims[i], waiting[i], links[i], payouts[i],
                     None if pledges is None else totals.get(i, PledgeTotals(0, 0, 0, 0)),
                     None if listed is None else listed[i])
            for (task, repo), i in zip(pairs, ids, strict=True)]


@dataclass(frozen=True)
class Privacy:
    """What the public may see of a repo's tasks: backers' names (`bot.public_backers`) and
    amounts (`[repos."forge:path"] public_amounts`). The operator's own reads see everything."""

    names: bool = True
    amounts: bool = True


EVERYTHING = Privacy()


def privacy_of(settings: Any, repo: t.Repo) -> Privacy:
    """The privacy `settings` (a `bountybot.config.Settings`) give `repo`'s public views."""
    return Privacy(names=settings.bot.public_backers != "count",
                   amounts=settings.public_amounts(repo.forge, repo.full_path))


def percent_of(minor: int, goal: int | None) -> int | None:
    """`minor` as a whole percentage of `goal` (rounded down, not capped), or None."""
    return None if not goal else minor * 100 // goal


def task_json(rows: TaskRows, default_locale: str, *, full: bool = False,
              privacy: Privacy = EVERYTHING) -> Json:
    """A task as DESIGN.md lists it (plus `currency`, `deadline`, `created_at`, `raised`).

    `pledged` is what escrow holds now (held pledges); `raised` is what the backers gave and
    kept in (held plus paid out; refunded and withdrawn money is not counted): the two are
    equal until the payouts, and `raised` is what a done task shows once `pledged` is zero.
    `backers` is the number of distinct backers behind `raised` (the logins are in `pledges`).
    `claim` is the live claim, or for a done task the claim it was done under (`state`
    `done`, `expires_at` null). `full` (the export) adds every row's id and bookkeeping
    columns, and the whole claim history under `claims`.

    `pledges` lists the pledges loaded (all of them for the export; the first ones for the
    API, `pledge_count` saying how many there are in all).

    `privacy` (the public API's; never with `full`): without names, every `pledges[].backer` is
    null (`backers` still counts them); without amounts, every amount (`goal`, `pledged`,
    `raised`, `pledges[].amount`, `payouts[].amount`) is null and `percent` says how much of
    the goal is gathered (raised for a done task, held otherwise; null without a goal).
    """
    task, repo = rows.task, rows.repo
    locale = locale_of(repo, default_locale)
    b = rows.bounty()
    claim = b.shown_claim()
    sums = rows.figures(b)

    def money(minor: int) -> Json:
        return amount(minor, task.currency, locale)

    out: Json = {
        "id": task.id,
        "forge": repo.forge,
        "repo": repo.full_path,
        "number": task.number,
        "title": task.title,
        "url": task.url,
        "state": task.state.value,
        "currency": task.currency,
        "goal": None if task.goal_minor is None else money(task.goal_minor),
        "pledged": money(sums.held),
        "raised": money(sums.raised),
        "backers": sums.backers,
        "deadline": task.deadline.isoformat() if task.deadline else None,
        "created_at": iso(task.created_at),
        "claim": None if claim is None else {
            "developer": claim.developer, "state": claim.state.value,
            # A claim done has no clock left (the database may still hold its last one).
            "expires_at": None if claim.state == ClaimState.DONE else iso(claim.expires_at),
        },
        "waiting": [w.login for w in rows.waiting],
        "pledges": [{"backer": p.backer, "amount": money(p.amount_minor),
                     "state": p.state.value, "created_at": iso(p.created_at)}
                    for p in rows.pledges],
        "pledge_count": sums.count,
        "links": [{"number": li.number, "author": li.author, "state": li.state.value,
                   "url": li.url} for li in rows.links],
        "payouts": [{"developer": p.developer, "amount": money(p.amount_minor),
                     "state": p.state.value, "created_at": iso(p.created_at),
                     "paid_at": iso(p.paid_at)} for p in rows.payouts],
    }
    if not full:
        return _private(out, sums, task, privacy)
    out.update(repo_id=task.repo_id, updated_at=iso(task.updated_at), award=task.award,
               summary_comment_id=task.summary_comment_id)
    for item, p in zip(out["pledges"], rows.pledges, strict=True):
        item.update(id=p.id, comment_id=p.comment_id, provider_ref=p.provider_ref,
                    updated_at=iso(p.updated_at))
    out["claims"] = [{"id": c.id, "developer": c.developer, "state": c.state.value,
                      "created_at": iso(c.created_at), "expires_at": iso(c.expires_at),
                      "paused_seconds": c.paused_seconds, "ended_at": iso(c.ended_at)}
                     for c in rows.claims]
    for item, li in zip(out["links"], rows.links, strict=True):
        item.update(id=li.id, updated_at=iso(li.updated_at))
    # `last_error` is left out: it is a provider's message for the operators, not the books.
    for item, po in zip(out["payouts"], rows.payouts, strict=True):
        item.update(id=po.id, reference=po.reference, due_at=iso(po.due_at),
                    attempts=po.attempts)
    return out


def pledge_json(pledge: t.Pledge, locale: str, privacy: Privacy = EVERYTHING) -> Json:
    """One pledge of a task's page of pledges (`/api/v1/tasks/{id}/pledges`): its id (the
    cursor of the next page), backer, amount, state and time; null where `privacy` hides."""
    return {"id": pledge.id, "backer": pledge.backer if privacy.names else None,
            "amount": amount(pledge.amount_minor, pledge.currency, locale)
            if privacy.amounts else None,
            "state": pledge.state.value, "created_at": iso(pledge.created_at)}


def _private(out: Json, sums: PledgeTotals, task: t.Task, privacy: Privacy) -> Json:
    """`out` with what `privacy` hides set to null."""
    if not privacy.names:
        for item in out["pledges"]:
            item["backer"] = None
    if not privacy.amounts:
        shown = sums.raised if task.state == TaskState.DONE else sums.held
        out.update(goal=None, pledged=None, raised=None,
                   percent=percent_of(shown, task.goal_minor))
        for item in out["pledges"] + out["payouts"]:
            item["amount"] = None
    return out


async def load_entries(session: AsyncSession,
                       transaction_ids: Sequence[int]) -> dict[int, list[t.LedgerEntry]]:
    """The entries of these transactions, in one query, by transaction id."""
    grouped: dict[int, list[t.LedgerEntry]] = defaultdict(list)
    if transaction_ids:
        stmt = (select(t.LedgerEntry)
                .where(col(t.LedgerEntry.transaction_id).in_(transaction_ids))
                .order_by(col(t.LedgerEntry.id)))
        for entry in (await session.exec(stmt)).all():
            grouped[entry.transaction_id].append(entry)
    return grouped


def transaction_json(txn: t.LedgerTransaction, entries: Sequence[t.LedgerEntry], locale: str,
                     *, full: bool = False) -> Json:
    """A ledger transaction: its key, kind, time, memo and signed entries (which sum to zero)."""
    out: Json = {"id": txn.id, "task_id": txn.task_id} if full else {}
    out.update({
        "key": txn.key,
        "kind": txn.kind,
        "created_at": iso(txn.created_at),
        "memo": txn.memo,
        "entries": [{"account": e.account, "amount": amount(e.amount_minor, e.currency, locale)}
                    for e in entries],
    })
    return out


async def escrow_balance(session: AsyncSession, task: t.Task) -> int:
    """What the task's escrow account holds, summed from its ledger entries (never stored)."""
    stmt = select(func.coalesce(func.sum(t.LedgerEntry.amount_minor), 0)).where(
        t.LedgerEntry.account == ESCROW.render(id_of(task)),
        t.LedgerEntry.currency == task.currency)
    # PostgreSQL sums a BIGINT column as NUMERIC (a Decimal here): int() of it is exact.
    return int((await session.exec(stmt)).one())


def repo_json(repo: t.Repo) -> Json:
    """A repo as exported; `installation_id` (a GitHub App detail) is not part of the books."""
    return {"id": repo.id, "forge": repo.forge, "forge_repo_id": repo.forge_repo_id,
            "full_path": repo.full_path, "locale": repo.locale, "currency": repo.currency,
            "created_at": iso(repo.created_at)}


def audit_json(item: t.AuditEvent) -> Json:
    """One line of the audit trail: who did what to which task, and its details."""
    return {"id": item.id, "task_id": item.task_id, "actor": item.actor, "action": item.action,
            "detail": item.detail, "created_at": iso(item.created_at)}


def payment_op_json(op: t.PaymentOp, locale: str) -> Json:
    """A call to the payment provider (the export's): what it is for, its key, where it stands
    and the provider's ids. Not its `url` (a checkout page or an onboarding link is a one-time
    key to someone's payment or account), nor `last_error` (the provider's message, for the
    operators: `bountybot payments`)."""
    return {"id": op.id, "kind": op.kind, "state": op.state.value,
            "idempotency_key": op.idempotency_key, "task_id": op.task_id,
            "pledge_id": op.pledge_id, "payout_id": op.payout_id, "repo_id": op.repo_id,
            "number": op.number, "comment_id": op.comment_id, "forge": op.forge,
            "login": op.login,
            "amount": None if op.amount_minor is None or op.currency is None
            else amount(op.amount_minor, op.currency, locale),
            "session_id": op.session_id, "payment_intent": op.payment_intent,
            "refund_id": op.refund_id, "transfer_id": op.transfer_id,
            "account_id": op.account_id, "status": op.status, "attempts": op.attempts,
            "next_attempt_at": iso(op.next_attempt_at), "created_at": iso(op.created_at),
            "updated_at": iso(op.updated_at), "done_at": iso(op.done_at)}


# -- the monthly appeal (`bountybot.needs`), as the public API shows it --------------------------


def figures_json(f: Figures, locale: str, privacy: Privacy = EVERYTHING) -> Json:
    """One currency's figures for a month; without `privacy.amounts` every amount is null and
    `percent` (funded / asked, rounded down) is what is left."""

    def money(minor: int) -> Json | None:
        return amount(minor, f.currency, locale) if privacy.amounts else None

    return {"currency": f.currency, "asked": money(f.asked), "funded": money(f.funded),
            "to_go": money(f.to_go), "percent": f.percent, "tasks": f.tasks,
            "pledged": money(f.pledged), "paid_out": money(f.paid),
            "refunded": money(f.refunded)}


def month_json(m: MonthFigures, locale: str, privacy: Privacy = EVERYTHING) -> Json:
    """A month's appeal in its main currency (`m.currency`: the one with the most asked), as
    the needs page's sentence says it, and each currency's figures under `by_currency` (never
    converted). `tasks` counts the live tasks with a goal, in every currency."""
    main = figures_json(m.main, locale, privacy)
    del main["currency"]
    return {"month": f"{m.month:%Y-%m}", "current": m.current, "days_left": m.days_left,
            "currency": m.currency, **main, "tasks": m.goal_tasks,
            "by_currency": [figures_json(f, locale, privacy) for f in m.by_currency]}


def appeal_json(m: MonthFigures, locale: str, privacy: Privacy = EVERYTHING) -> Json:
    """`month_json` and what the needs page lists: the live tasks (what the money is for), the
    payouts settled in the month (what it did: developer, pull request, the reference that is
    the public proof of payment) and the refunds (their reason; never a backer's name)."""

    def money(value: Money) -> Json | None:
        return amount(value.minor, value.currency, locale) if privacy.amounts else None

    def minor(value: int | None, currency: str) -> Json | None:
        return None if value is None else money(Money(value, currency))

    return {
        **month_json(m, locale, privacy),
        "live_tasks": [{"id": x.id, "number": x.number, "title": x.title, "url": x.url,
                        "state": x.state.value, "currency": x.currency,
                        "goal": minor(x.goal, x.currency),
                        "funded": minor(x.funded, x.currency),
                        "percent": percent_of(x.funded, x.goal)} for x in m.tasks],
        "payouts": [{"task_id": p.task_id, "number": p.number, "title": p.title,
                     "developer": p.developer, "amount": money(p.amount), "paid_at": iso(p.at),
                     "pull_request": None if p.pull_request is None else {
                         "number": p.pull_request, "url": p.pull_request_url},
                     "reference": p.reference} for p in m.payouts],
        "refunds": [{"task_id": r.task_id, "number": r.number, "amount": money(r.amount),
                     "at": iso(r.at), "why": r.why} for r in m.refunds],
    }
