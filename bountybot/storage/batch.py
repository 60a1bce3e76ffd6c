"""Decisions written together: what a batch of deliveries decided, in a few statements.

The delivery worker decides a batch of deliveries one after the other, in memory (the rules are
pure), and writes what they decided once, at the end of its transaction: each task's rows as
the last decision left them (only those that changed), then every ledger transaction, ledger
entry, outbox message, payment operation, audit line and handled command line of the batch,
one multi-row statement per table, compiled once and cached (`dialect.insert_rows`). What
`save_decision` writes for one decision, this writes for many, with the same rows.

The rules name new rows before they are written (a ledger transaction's key is its pledge's
id; a later command in the same batch withdraws that pledge), so new tasks, pledges, claims,
links and payouts are given their ids as they are decided (`NewIds`): from the table's sequence
on PostgreSQL, and after the largest id on SQLite, where the unit of work holds the database's
only write lock from its first statement, so no other writer can take the same id meanwhile.

Should writing fail, the whole transaction rolls back and the worker applies the deliveries one
by one: a batch never half-writes what it decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.payments.ops import insert_ops, request_rows
from bountybot.rules import Bounty, Decision, IssueRef
from bountybot.storage import tables as t
from bountybot.storage.bounties import (
    audit_rows,
    bounty_of,
    child_values,
    created,
    outbox_rows,
    posting_rows,
    task_values,
    write_postings,
)
from bountybot.storage.dialect import insert_rows

# The tables whose new rows the rules name before they are written.
NAMED = (t.Task, t.Pledge, t.Claim, t.Link, t.Payout)
CHILDREN = (t.Pledge, t.Claim, t.Waiting, t.Link, t.Payout)


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


class NewIds:
    """Ids for rows not yet written, handed out in one statement for many rows.

    On PostgreSQL they come from the table's own sequence (`nextval`), which no other
    transaction hands out again: a batch that takes more than it uses leaves a gap, as a rolled
    back insert does. On SQLite they follow the largest id in the table, read once per table and
    transaction: only one transaction writes at a time (`BEGIN IMMEDIATE`). A row inserted
    meanwhile by this transaction without an id of ours must be followed by `forget()`.

    Ids are handed out in the order rows are decided, so rows read back in id order (a task's
    pledges) come in the order the rules saw them: each batch takes ids after those of every
    earlier batch, and a task is decided by one batch at a time (its row is locked)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.postgres = connection.dialect.name == "postgresql"
        self.free: dict[str, list[int]] = {}
        self.after: dict[str, int] = {}

    def forget(self) -> None:
        """Rows were inserted by other means in this transaction (they took the next ids of
        the sequence, or after the largest): ask again, so the ids handed out from now on come
        after theirs, and a task's rows keep the order in which they were decided."""
        self.after.clear()
        self.free.clear()

    async def take(self, model: type[Any], count: int, spare: int = 0) -> list[int]:
        """`count` new ids for `model`'s table; on PostgreSQL `spare` more are kept for the
        next call, so a batch asks the sequence once rather than once per decision."""
        if count <= 0:
            return []
        name = _table(model).name
        if self.postgres:
            free = self.free.setdefault(name, [])
            if len(free) < count:
                rows = await self.connection.execute(
                    text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) "
                         "FROM generate_series(1, :n)"),
                    {"table": name, "n": count - len(free) + spare})
                free.extend(sorted(i for (i,) in rows.all()))
            taken, self.free[name] = free[:count], free[count:]
            return taken
        if name not in self.after:
            largest = (await self.connection.execute(
                select(func.max(_table(model).c.id)))).scalar()
            self.after[name] = largest or 0
        first = self.after[name] + 1
        self.after[name] += count
        return list(range(first, first + count))

    async def name(self, bounty: Bounty, spare: int = 0) -> None:
        """Give the new task (if it is new) and each new child of `bounty` its id: after every
        id its rows have already. (Ids kept from earlier in the batch may be older than rows
        another replica gave the task meanwhile, before this batch read and locked it.)"""
        if bounty.id is None:
            (bounty.id,) = await self.take(t.Task, 1)
        for model, objects in ((t.Pledge, bounty.pledges), (t.Claim, bounty.claims),
                               (t.Link, bounty.links), (t.Payout, bounty.payouts)):
            new = [o for o in objects if o.id is None]
            if not new:
                continue
            last = max((o.id for o in objects if o.id is not None), default=0)
            name = _table(model).name
            self.free[name] = [i for i in self.free.get(name, []) if i > last]
            for obj, new_id in zip(new, await self.take(model, len(new), spare), strict=True):
                obj.id = new_id


async def load_many(session: AsyncSession, wanted: dict[int, tuple[t.Repo, set[int]]], *,
                    lock: bool = False) -> dict[tuple[int, int], Bounty | None]:
    """The tasks of these issues (by repo id: the repo and the issue numbers) as the rules see
    them, by (repo id, number); None for an issue with no task. Read with plain statements (no
    ORM objects: the batch writes with plain statements too), one a table however many tasks:
    a batch reads its tasks at once. `lock` takes the tasks' rows on PostgreSQL."""
    found: dict[tuple[int, int], Bounty | None] = {
        (repo_id, number): None for repo_id, (_, numbers) in wanted.items() for number in numbers}
    if not found:
        return found
    connection = await session.connection()
    task_table = _table(t.Task)
    stmt = select(task_table).where(or_(*(
        and_(task_table.c.repo_id == repo_id, task_table.c.number.in_(sorted(numbers)))
        for repo_id, (_, numbers) in sorted(wanted.items(), key=lambda item: item[0]))))
    if lock and connection.dialect.name == "postgresql":
        stmt = stmt.order_by(task_table.c.id).with_for_update()
    tasks = (await connection.execute(stmt)).all()
    if not tasks:
        return found
    ids = [task.id for task in tasks]
    children: dict[int, list[list[Any]]] = {i: [[] for _ in CHILDREN] for i in ids}
    for n, model in enumerate(CHILDREN):
        table = _table(model)
        rows = await connection.execute(
            select(table).where(table.c.task_id.in_(ids)).order_by(table.c.id))
        for row in rows.all():
            children[row.task_id][n].append(row)
    for task in tasks:
        repo = wanted[task.repo_id][0]
        found[(task.repo_id, task.number)] = bounty_of(
            repo, task, *children[task.id])  # type: ignore[arg-type]  # rows read as models
    return found


async def load_rows(session: AsyncSession, repo: t.Repo, number: int, *,
                    lock: bool = False) -> Bounty | None:
    """The task of issue `number` in `repo` (`load_many` for one)."""
    found = await load_many(session, {t.id_of(repo): (repo, {number})}, lock=lock)
    return found[(t.id_of(repo), number)]


@lru_cache(maxsize=32)
def _update_by_id(table: Table, columns: tuple[str, ...]) -> Any:
    """UPDATE table SET each column WHERE id = :_id, for executemany; built once per shape."""
    return (update(table).where(table.c.id == bindparam("_id"))
            .values({name: bindparam(f"_{name}") for name in columns}))


async def _update_rows(connection: AsyncConnection, model: type[Any],
                       rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = tuple(name for name in rows[0] if name != "id")
    await connection.execute(_update_by_id(_table(model), columns), [
        {"_id": row["id"], **{f"_{name}": row[name] for name in columns}} for row in rows])


@dataclass
class _Touched:
    """A task the batch decided on: as it was stored before (None: new) and as it is now."""

    repo: t.Repo
    stored: Bounty | None
    now: Bounty


@dataclass
class DecisionBatch:
    """What a batch decided, kept until `write`."""

    ids: NewIds
    tasks: dict[int, _Touched] = field(default_factory=dict)
    handled: list[dict[str, Any]] = field(default_factory=list)
    transactions: list[dict[str, Any]] = field(default_factory=list)
    books: list[tuple[str, list[tuple[str, int, str]]]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.handled or self.transactions or self.outbox
                    or self.payments or self.audit)

    def add(self, decisions: Sequence[tuple[t.Repo, IssueRef, Decision, Bounty | None]],
            handled: Sequence[dict[str, Any]], *, source: str, now: datetime,
            summary_delay: float) -> None:
        """Keep the decisions of one delivery (their new rows named already: `NewIds.name`),
        each with the task as the batch found it before (as stored, or as an earlier decision
        of the batch left it), and the `handled_comment` rows of the command lines it applied.
        All or nothing: should one decision be wrong (an unbalanced posting), none is kept."""
        transactions: list[dict[str, Any]] = []
        books: list[tuple[str, list[tuple[str, int, str]]]] = []
        outbox: list[dict[str, Any]] = []
        payments: list[dict[str, Any]] = []
        audit: list[dict[str, Any]] = []
        tasks: dict[int, _Touched] = {}
        for repo, issue, decision, stored in decisions:
            b = decision.bounty
            task_id = b.id if b is not None else None
            if b is not None:
                assert task_id is not None, "name the decision's new rows first"
                seen = tasks.get(task_id) or self.tasks.get(task_id)
                tasks[task_id] = _Touched(repo, seen.stored if seen else stored, b)
            rows, legs = posting_rows(decision, task_id, now)
            transactions += rows
            books += legs
            outbox += outbox_rows(repo, issue, task_id, decision, source=source, now=now,
                                  summary_delay=summary_delay)
            if decision.payments:
                payments += request_rows(repo, issue.number, task_id, decision.payments, now)
            audit += audit_rows(task_id, decision, now)
        self.tasks.update(tasks)
        self.handled += handled
        self.transactions += transactions
        self.books += books
        self.outbox += outbox
        self.payments += payments
        self.audit += audit

    async def write(self, session: AsyncSession, now: datetime) -> None:
        """Write everything kept, in the session's transaction, and start empty again."""
        connection = await session.connection()
        new: dict[type[Any], list[dict[str, Any]]] = {model: [] for model in (*NAMED, t.Waiting)}
        changed: dict[type[Any], list[dict[str, Any]]] = {model: [] for model in NAMED}
        queues: list[int] = []
        for task_id, touched in self.tasks.items():
            b, stored = touched.now, touched.stored
            values = task_values(touched.repo, b)
            if stored is None:
                new[t.Task].append({"id": task_id, **values,
                                    "created_at": b.created_at or now})
            elif task_values(touched.repo, stored) != values:
                changed[t.Task].append({"id": task_id, **values})
            objects: list[Any] = [] if stored is None else [
                *stored.pledges, *stored.claims, *stored.links, *stored.payouts]
            before = {(type(o), o.id): o for o in objects}
            for model, obj, child in child_values(task_id, b):
                old = before.get((type(obj), obj.id))
                if old is None:
                    new[model].append({"id": obj.id, **child, **created(obj)})
                elif old != obj:
                    changed[model].append({"id": obj.id, **child})
            if (stored.waiting if stored is not None else []) != b.waiting:
                if stored is not None:
                    queues.append(task_id)
                new[t.Waiting] += [dict(task_id=task_id, login=login, position=i,
                                        created_at=now) for i, login in enumerate(b.waiting)]
        # Parents before children (foreign keys); a waiting list is replaced whole.
        for model in NAMED:
            await insert_rows(session, model, new[model])
            await _update_rows(connection, model, changed[model])
        if queues:
            waiting = _table(t.Waiting)
            await connection.execute(delete(waiting).where(waiting.c.task_id.in_(queues)))
        await insert_rows(session, t.Waiting, new[t.Waiting])
        await insert_rows(session, t.HandledComment, self.handled)
        await write_postings(session, self.transactions, self.books)
        await insert_rows(session, t.Outbox, self.outbox, skip_conflicts=True)
        await insert_ops(session, self.payments)
        await insert_rows(session, t.AuditEvent, self.audit)
        self.tasks.clear()
        self.handled.clear()
        self.transactions.clear()
        self.books.clear()
        self.outbox.clear()
        self.payments.clear()
        self.audit.clear()
