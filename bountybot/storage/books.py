"""The books read whole, on one consistent snapshot: for the audit, the export and the public
reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.ledger.audit import AuditReport, JournalEntry, JournalTransaction, audit
from bountybot.rules import Bounty
from bountybot.storage import tables as t
from bountybot.storage.bounties import to_bounty


@asynccontextmanager
async def reading(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A read-only session on one consistent snapshot of the books, rolled back at the end.

    Not a `UnitOfWork`: that one begins with SQLite's write lock (`BEGIN IMMEDIATE`), so every
    page view, and a long export to a slow client, would hold up the webhook workers. A plain
    `BEGIN` in WAL mode reads a snapshot and blocks no one (see `storage/engine.py`). On
    PostgreSQL the transaction is REPEATABLE READ and READ ONLY, so the several queries of a
    page or an export see the same books (an export whose entries do not sum to zero because a
    payout was committed halfway through would be worse than useless). The connection is
    taken on entry, so an unreachable database fails before a response is started.
    """
    async with sessionmaker() as session:
        options: dict[str, Any] = {}
        if session.get_bind().dialect.name == "postgresql":
            options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        await session.connection(execution_options=options)
        try:
            yield session
        finally:
            await session.rollback()


async def load_books(session: AsyncSession) -> tuple[list[Bounty], list[Any]]:
    """Every task and the whole journal, for the audit and the export."""
    repos = {r.id: r for r in (await session.exec(select(t.Repo))).all()}
    bounties = [await to_bounty(session, repos[task.repo_id], task)
                for task in (await session.exec(select(t.Task).order_by(col(t.Task.id)))).all()]
    entries: dict[int, list[JournalEntry]] = {}
    for e in (await session.exec(select(t.LedgerEntry).order_by(col(t.LedgerEntry.id)))).all():
        entries.setdefault(e.transaction_id, []).append(
            JournalEntry(e.account, e.amount_minor, e.currency))
    journal = [JournalTransaction(txn.key, txn.kind, txn.task_id,
                                  tuple(entries.get(txn.id or 0, [])))
               for txn in (await session.exec(
                   select(t.LedgerTransaction).order_by(col(t.LedgerTransaction.id)))).all()]
    return bounties, journal


async def run_audit(sessionmaker: async_sessionmaker[AsyncSession]) -> AuditReport:
    """Audit the books in the database, read as the public API reads them: one snapshot,
    taking no write lock."""
    async with reading(sessionmaker) as session:
        bounties, journal = await load_books(session)
    return audit(bounties, journal)


__all__ = ["load_books", "reading", "run_audit"]
