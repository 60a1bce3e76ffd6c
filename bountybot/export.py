"""The whole books for leaving: every repo, task, ledger transaction, audit line and call to the
payment provider, as JSON, or as a spreadsheet-friendly CSV of the ledger; streamed, for
`GET /api/v1/export.*` and the CLI.

Both exports page through the tables by id (`WHERE id > last ORDER BY id LIMIT n`) inside one
read-only snapshot, and hand each page to `write` as soon as it is encoded, so memory stays flat
however large the books are and every figure in one file comes from the same moment.

JSON (`export_json`), one object:

    {"format": "bountybot-export/1", "generated_at": "...Z",
     "repos": [{"id", "forge", "forge_repo_id", "full_path", "locale", "currency",
                "created_at"}],
     "tasks": [<the API's task, plus ids, bookkeeping columns and the claim history>],
     "ledger": [{"id", "task_id", "key", "kind", "created_at", "memo",
                 "entries": [{"account", "amount": {"amount", "currency", "display"}}]}],
     "audit_events": [{"id", "task_id", "actor", "action", "detail", "created_at"}],
     "payment_ops": [{"id", "kind", "state", "idempotency_key", "task_id", "pledge_id",
                      "payout_id", "repo_id", "number", "comment_id", "forge", "login",
                      "amount", "session_id", "payment_intent", "refund_id", "transfer_id",
                      "account_id", "status", "attempts", "next_attempt_at", "created_at",
                      "updated_at", "done_at"}],
     "counts": {"repos", "tasks", "transactions", "entries", "audit_events", "payment_ops"}}

`payment_ops` are the Stripe provider's calls (empty with the manual provider), without their
one-time links or the provider's error messages (`api.views.payment_op_json`).

`counts` comes last: a download cut short does not parse, and one that parses can be checked.

CSV (`export_csv`): one row per ledger entry, joined with its transaction and task (`CSV_COLUMNS`),
in ledger order. UTF-8 with a byte order mark, so spreadsheets show `€` correctly. A text cell
that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`) is prefixed with
`'`; the JSON export keeps every value as it is.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api.views import (
    Json,
    amount,
    audit_json,
    iso,
    load_entries,
    load_tasks,
    locale_of,
    payment_op_json,
    reading,
    repo_json,
    task_json,
    transaction_json,
)
from bountybot.storage import tables as t
from bountybot.storage.tables import id_of

Write = Callable[[bytes], Awaitable[None]]
"""Where the export goes: a response's `write`, or a file's, wrapped in a coroutine."""

FORMAT = "bountybot-export/1"
PAGE_SIZE = 500
CSV_COLUMNS = (
    "transaction_key", "kind", "created_at", "task_id", "forge", "repo", "number", "account",
    "amount_minor", "currency", "amount_display", "memo",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

LedgerRow = tuple[t.LedgerTransaction, t.Task | None, t.Repo | None]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def _pages(session: AsyncSession, stmt: Any, key: Any,
                 size: int) -> AsyncIterator[Sequence[Any]]:
    """The rows of `stmt` a page at a time, ordered by the id column `key` (keyset paging:
    each page starts after the last id seen, so a page costs the same at the end as at the
    start). The rows are let go after each page: the session keeps nothing it has sent."""
    last: int | None = None
    while True:
        page = stmt.order_by(key).limit(size)
        if last is not None:
            page = page.where(key > last)
        rows = (await session.exec(page)).all()
        if not rows:
            return
        yield rows
        tail = rows[-1]  # an entity, or a row whose first entity is the one ordered by
        last = id_of(cast(t.HasId, tail if isinstance(tail, t.Base) else tail[0]))
        session.expunge_all()
        if len(rows) < size:
            return


def _ledger_pages(session: AsyncSession, size: int) -> AsyncIterator[Sequence[Any]]:
    """Ledger transactions in order, each with its task and repo (None for a task-less one)."""
    stmt = (select(t.LedgerTransaction, t.Task, t.Repo)
            .outerjoin(t.Task, col(t.Task.id) == col(t.LedgerTransaction.task_id))
            .outerjoin(t.Repo, col(t.Repo.id) == col(t.Task.repo_id)))
    return _pages(session, stmt, col(t.LedgerTransaction.id), size)


async def export_json(sessionmaker: async_sessionmaker[AsyncSession], write: Write, *,
                      locale: str = "en", now: datetime | None = None,
                      page_size: int = PAGE_SIZE) -> None:
    """Write the whole books as one JSON object (see the module's docstring), page by page.

    `locale` is the bot's, for the `display` of amounts whose repo has no locale of its own.
    """
    now = now or datetime.now(UTC)
    counts = {"repos": 0, "tasks": 0, "transactions": 0, "entries": 0, "audit_events": 0,
              "payment_ops": 0}
    async with reading(sessionmaker) as session:
        await write(f'{{"format":{_dumps(FORMAT)},"generated_at":{_dumps(iso(now))}'.encode())

        async def array(name: str, pages: AsyncIterator[list[Json]]) -> int:
            await write(f',\n"{name}":['.encode())
            n = 0
            async for items in pages:
                text = ",\n".join(_dumps(item) for item in items)
                await write((",\n" if n else "\n").encode() + text.encode())
                n += len(items)
            await write(b"]")
            return n

        async def repos() -> AsyncIterator[list[Json]]:
            async for rows in _pages(session, select(t.Repo), col(t.Repo.id), page_size):
                yield [repo_json(r) for r in rows]

        async def tasks() -> AsyncIterator[list[Json]]:
            stmt = select(t.Task, t.Repo).join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
            async for rows in _pages(session, stmt, col(t.Task.id), page_size):
                loaded = await load_tasks(session, [(task, repo) for task, repo in rows])
                yield [task_json(r, locale, full=True) for r in loaded]

        async def ledger() -> AsyncIterator[list[Json]]:
            async for rows in _ledger_pages(session, page_size):
                entries = await load_entries(session, [id_of(txn) for txn, _, _ in rows])
                counts["entries"] += sum(len(e) for e in entries.values())
                yield [transaction_json(txn, entries[id_of(txn)], locale_of(repo, locale),
                                        full=True) for txn, _, repo in rows]

        async def audit_events() -> AsyncIterator[list[Json]]:
            stmt = select(t.AuditEvent)
            async for rows in _pages(session, stmt, col(t.AuditEvent.id), page_size):
                yield [audit_json(item) for item in rows]

        async def payment_ops() -> AsyncIterator[list[Json]]:
            stmt = (select(t.PaymentOp, t.Repo)
                    .outerjoin(t.Repo, col(t.Repo.id) == col(t.PaymentOp.repo_id)))
            async for rows in _pages(session, stmt, col(t.PaymentOp.id), page_size):
                yield [payment_op_json(op, locale_of(repo, locale)) for op, repo in rows]

        counts["repos"] = await array("repos", repos())
        counts["tasks"] = await array("tasks", tasks())
        counts["transactions"] = await array("ledger", ledger())
        counts["audit_events"] = await array("audit_events", audit_events())
        counts["payment_ops"] = await array("payment_ops", payment_ops())
        await write(f',\n"counts":{_dumps(counts)}}}\n'.encode())


def _cell(text: str | None) -> str:
    """Text a spreadsheet shows as text: a leading `=`, `+`, `-` or `@` would make a formula."""
    if not text:
        return ""
    return "'" + text if text.startswith(_FORMULA_START) else text


async def export_csv(sessionmaker: async_sessionmaker[AsyncSession], write: Write, *,
                     locale: str = "en", page_size: int = PAGE_SIZE) -> None:
    """Write the ledger as CSV, one row per entry (`CSV_COLUMNS`), page by page."""
    async with reading(sessionmaker) as session:
        buffer = io.StringIO()
        out = csv.writer(buffer)  # RFC 4180: CRLF line ends, quotes only where needed

        async def flush() -> None:
            await write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()

        buffer.write("\ufeff")
        out.writerow(CSV_COLUMNS)
        await flush()
        rows: Sequence[LedgerRow]
        async for rows in _ledger_pages(session, page_size):
            entries = await load_entries(session, [id_of(txn) for txn, _, _ in rows])
            for txn, task, repo in rows:
                shown = locale_of(repo, locale)
                for e in entries[id_of(txn)]:
                    out.writerow([
                        _cell(txn.key), txn.kind, iso(txn.created_at), txn.task_id or "",
                        repo.forge if repo else "", _cell(repo.full_path if repo else ""),
                        task.number if task else "", _cell(e.account), e.amount_minor,
                        e.currency, amount(e.amount_minor, e.currency, shown)["display"],
                        _cell(txn.memo),
                    ])
            await flush()
