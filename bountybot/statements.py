"""Statements: every movement of one backer's or one developer's money, with totals.

Read from the books as they are, never recomputed from memory: a backer's pledges come from
the pledge table (a promise leaves no ledger trace until its money is received), every money
movement from the ledger entries on the person's own account (`backer:<forge>:<login>`,
`developer:<forge>:<login>`), and a pledge's share of a payout from the task's `task.done`
transaction. A developer's payouts come from the payout table (created, released) and the
ledger (created, reversed, paid with its reference).

Logins are matched case-insensitively, as the forges treat them; one statement covers one
forge. Totals are per currency, since a person may back tasks of repos in several currencies.

`public=True` (the API's) leaves out every movement on a private repo's task that its operator
has not published (`api.views.shown_publicly`), totals included; someone whose every movement
is private is unknown there, in the same words as anyone else. The command line's statement
(the operator's) shows everything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api.views import amount, iso, shown_publicly
from bountybot.ledger import Account
from bountybot.money import Money, format_money
from bountybot.states import PledgeState
from bountybot.storage import tables as t

Role = Literal["backer", "developer"]

# What a movement says, in the order movements of the same moment are listed.
ORDER = ("pledged", "held", "paid out", "withdrawn", "refunded",
         "payout created", "payout released", "payout reversed", "paid")

BACKER_TOTALS = {
    "pledged": "pledged (every promise)",
    "pending": "waiting for confirmation",
    "held": "in escrow now",
    "paid_out": "paid out to developers",
    "returned": "given back",
    "balance": "put in and not given back (ledger)",
}
DEVELOPER_TOTALS = {
    "earned": "earned (payouts created, less reversed)",
    "paid": "paid",
    "owed": "owed now (ledger)",
}


@dataclass(frozen=True)
class Movement:
    """One line of a statement: on `at`, for a task, `what` happened to `amount`."""

    at: datetime
    task_id: int
    repo: str
    number: int
    url: str
    what: str
    amount: Money
    reference: str | None = None
    note: str | None = None
    # What the movement is about (a backer's pledge, a developer's task): movements at the
    # same moment are listed pledge by pledge, each in the order money moves.
    group: int = 0

    def sort_key(self) -> tuple[datetime, int, int]:
        return self.at, self.group, ORDER.index(self.what)


@dataclass
class Statement:
    forge: str
    login: str
    role: Role
    movements: list[Movement] = field(default_factory=list)
    # currency -> total name -> minor units
    totals: dict[str, dict[str, int]] = field(default_factory=dict)


class UnknownPerson(LookupError):
    """Nobody by that login has a pledge (or a payout) on that forge."""


def _only_public(stmt: Any, public: bool) -> Any:
    return stmt.where(shown_publicly()) if public else stmt


async def _rows(session: AsyncSession, table: Any, person: str, forge: str,
                login: str, public: bool) -> tuple[list[Any], list[str]]:
    """The person's rows of `table` (pledges, payouts) with their task and repo, oldest first,
    and the spellings of their login found there."""
    rows = list((await session.exec(_only_public(
        select(table, t.Task, t.Repo)
        .join(t.Task, col(t.Task.id) == table.task_id)
        .join(t.Repo, col(t.Repo.id) == t.Task.repo_id)
        .where(t.Repo.forge == forge, func.lower(getattr(table, person)) == login.lower())
        .order_by(col(table.id)), public))).all())
    if not rows:
        raise UnknownPerson(f"@{login} has no {table.__tablename__} on {forge}")
    return rows, sorted({getattr(row, person) for row, _, _ in rows})


async def _entries(session: AsyncSession, accounts: list[str], public: bool) -> list[Any]:
    """The ledger entries on these accounts, with their transaction, task and repo, in order."""
    if not accounts:
        return []
    stmt = (select(t.LedgerEntry, t.LedgerTransaction, t.Task, t.Repo)
            .join(t.LedgerTransaction,
                  col(t.LedgerTransaction.id) == t.LedgerEntry.transaction_id)
            .join(t.Task, col(t.Task.id) == t.LedgerTransaction.task_id)
            .join(t.Repo, col(t.Repo.id) == t.Task.repo_id)
            .where(col(t.LedgerEntry.account).in_(accounts))
            .order_by(col(t.LedgerEntry.id)))
    return list((await session.exec(_only_public(stmt, public))).all())


def _movement(task: t.Task, repo: t.Repo, at: datetime, what: str, money: Money,
              **more: Any) -> Movement:
    return Movement(at, t.id_of(task), repo.full_path, task.number, task.url, what, money,
                    **more)


def _subject(key: str) -> int:
    """The id a ledger key is about: `pledge.held:12` is 12."""
    return int(key.rsplit(":", 1)[1])


async def backer_statement(session: AsyncSession, forge: str, login: str, *,
                           public: bool = True) -> Statement:
    rows, logins = await _rows(session, t.Pledge, "backer", forge, login, public)
    out = Statement(forge, logins[0], "backer")
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(BACKER_TOTALS, 0))
    # The ledger transaction ids of each pledge's movements, to order them against the payout.
    moved: dict[int, dict[str, int]] = defaultdict(dict)
    for entry, txn, task, repo in await _entries(
            session, [Account("backer", forge, name).render(None) for name in logins],
            public):
        what = txn.kind.removeprefix("pledge.")
        money = Money(abs(entry.amount_minor), entry.currency)
        out.movements.append(_movement(task, repo, txn.created_at, what, money,
                                       group=_subject(txn.key)))
        totals[entry.currency]["balance"] -= entry.amount_minor
        if what in ("withdrawn", "refunded"):
            totals[entry.currency]["returned"] += money.minor
        if txn.kind.startswith("pledge."):
            moved[_subject(txn.key)][what] = t.id_of(txn)
    done = {txn.task_id: txn for txn in (await session.exec(
        select(t.LedgerTransaction).where(
            t.LedgerTransaction.kind == "task.done",
            col(t.LedgerTransaction.task_id).in_({task.id for _, task, _ in rows})))).all()}
    for pledge, task, repo in rows:
        money = Money(pledge.amount_minor, pledge.currency)
        pid = t.id_of(pledge)
        note = {PledgeState.PENDING: "waiting for confirmation"}.get(pledge.state)
        out.movements.append(_movement(task, repo, pledge.created_at, "pledged", money,
                                       note=note, group=pid))
        sums = totals[pledge.currency]
        sums["pledged"] += money.minor
        if pledge.state in (PledgeState.PENDING, PledgeState.HELD, PledgeState.PAID_OUT):
            sums[{PledgeState.PENDING: "pending", PledgeState.HELD: "held",
                  PledgeState.PAID_OUT: "paid_out"}[pledge.state]] += money.minor
        mine = moved.get(pid, {})
        if pledge.state == PledgeState.WITHDRAWN and "held" not in mine:
            # A promise dropped before its money arrived: nothing moved in the books.
            out.movements.append(_movement(task, repo, pledge.updated_at, "withdrawn", money,
                                           note="never received", group=pid))
        # Paid out: held before the task's payout transaction, and not given back before it
        # (a dispute decided by /cancel refunds it after; both lines then show).
        paid = done.get(task.id)
        held_in = mine.get("held")
        back = min((mine[k] for k in ("withdrawn", "refunded") if k in mine), default=None)
        if (paid is not None and held_in is not None and held_in < t.id_of(paid)
                and (back is None or back > t.id_of(paid))):
            out.movements.append(_movement(task, repo, paid.created_at, "paid out", money,
                                           group=pid))
    out.movements.sort(key=Movement.sort_key)
    out.totals = dict(totals)
    return out


async def developer_statement(session: AsyncSession, forge: str, login: str, *,
                              public: bool = True) -> Statement:
    rows, logins = await _rows(session, t.Payout, "developer", forge, login, public)
    out = Statement(forge, logins[0], "developer")
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(DEVELOPER_TOTALS, 0))
    references = {t.id_of(p): p.reference for p, _, _ in rows}
    for entry, txn, task, repo in await _entries(
            session, [Account("developer", forge, name).render(None) for name in logins],
            public):
        money = Money(abs(entry.amount_minor), entry.currency)
        sums = totals[entry.currency]
        sums["owed"] += entry.amount_minor
        reference = note = None
        if txn.kind == "payout.paid":
            what = "paid"
            reference = references.get(_subject(txn.key)) or txn.memo
            sums["paid"] += money.minor
        elif entry.amount_minor > 0:  # task.done, payout.awarded: money owed to them
            what = "payout created"
            note = "awarded after a dispute" if txn.kind == "payout.awarded" else None
            sums["earned"] += money.minor
        else:  # payout.reversed: a dispute took a payout back before its release
            what = "payout reversed"
            sums["earned"] -= money.minor
        out.movements.append(_movement(task, repo, txn.created_at, what, money,
                                       reference=reference, note=note,
                                       group=t.id_of(task)))
    for payout, task, repo in rows:
        if payout.released_at is not None:
            out.movements.append(_movement(
                task, repo, payout.released_at, "payout released",
                Money(payout.amount_minor, payout.currency),
                note=f"payout {payout.id}", group=t.id_of(task)))
    out.movements.sort(key=Movement.sort_key)
    out.totals = dict(totals)
    return out


async def statement(session: AsyncSession, forge: str, role: Role, login: str, *,
                    public: bool = True) -> Statement:
    """The backer's or developer's statement; `public=False` includes private repos' tasks."""
    if role == "backer":
        return await backer_statement(session, forge, login, public=public)
    return await developer_statement(session, forge, login, public=public)


def _labels(role: Role) -> dict[str, str]:
    return BACKER_TOTALS if role == "backer" else DEVELOPER_TOTALS


def render(s: Statement, locale: str) -> str:
    """The statement as text, for the command line."""
    lines = [f"statement of {s.role} @{s.login} on {s.forge}: {len(s.movements)} movement(s)",
             f"{'date (UTC)':<16}  {'task':<32}  {'what':<15}  {'amount':>14}  details"]
    for m in s.movements:
        details = "; ".join(x for x in (m.note, m.reference and f"reference {m.reference}") if x)
        task = f"{m.repo}#{m.number}"
        lines.append(f"{m.at:%Y-%m-%d %H:%M}  {task:<32}  {m.what:<15}"
                     f"  {format_money(m.amount, locale):>14}  {details}".rstrip())
    for currency, sums in sorted(s.totals.items()):
        lines.append(f"\ntotals in {currency}:")
        for key, label in _labels(s.role).items():
            lines.append(f"  {label:<40} {format_money(Money(sums[key], currency), locale):>14}")
    return "\n".join(lines)


def statement_json(s: Statement, locale: str) -> dict[str, Any]:
    """The statement as the API gives it; amounts as `{"amount", "currency", "display"}`."""
    return {
        "forge": s.forge,
        "login": s.login,
        "role": s.role,
        "movements": [{
            "at": iso(m.at),
            "task": {"id": m.task_id, "repo": m.repo, "number": m.number, "url": m.url},
            "what": m.what,
            "amount": amount(m.amount.minor, m.amount.currency, locale),
            "reference": m.reference,
            "note": m.note,
        } for m in s.movements],
        "totals": [{"currency": currency,
                    **{key: amount(sums[key], currency, locale) for key in _labels(s.role)}}
                   for currency, sums in sorted(s.totals.items())],
    }
