"""The whole books for leaving: every repo, task, ledger transaction, audit line and call to the
payment provider, as JSON, or as a spreadsheet-friendly CSV of the ledger; streamed, for
`GET /api/v1/export.*` and the CLI.

Both exports page through the tables by id (`WHERE id > last ORDER BY id LIMIT n`) inside one
read-only snapshot, and hand each page to `write` as soon as it is encoded, so memory stays flat
however large the books are and every figure in one file comes from the same moment. Shaping
and encoding a page (formatting its amounts above all) is CPU work: it runs in the export
threads (`_off_loop`), so that the event loop stays free to answer webhooks while exports run.
Loading a page's rows does run in the loop (the ledger, the longest table, as plain rows with
no ORM object built; amounts formatted once each, `api.views.display_amount`); given a `pace`
lock, exports take turns page by page, so the loop never has more than one export's page to do
before it gets back to a webhook, however many exports run.

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

`public=True` (the default, and what `GET /api/v1/export.*` asks for) leaves out what belongs to
a private repo its operator has not published (`api.views.shown_publicly`): the repo, its tasks,
their ledger transactions, audit lines and payment operations. The operator's own
`bountybot export` passes `public=False`: it is their books, whole.

CSV (`export_csv`): one row per ledger entry, joined with its transaction and task (`CSV_COLUMNS`),
in ledger order. UTF-8 with a byte order mark, so spreadsheets show `€` correctly. A text cell
that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`) is prefixed with
`'`; the JSON export keeps every value as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, or_
from sqlalchemy import select as sql_select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api.views import (
    Json,
    amount,
    audit_json,
    display_amount,
    iso,
    load_tasks,
    locale_of,
    payment_op_json,
    repo_json,
    shown_publicly,
    task_json,
)
from bountybot.storage import tables as t
from bountybot.storage.books import reading
from bountybot.storage.tables import id_of

Write = Callable[[bytes], Awaitable[None]]
"""Where the export goes: a response's `write`, or a file's, wrapped in a coroutine."""

FORMAT = "bountybot-export/1"
# Rows per query; also how much work the event loop does at a time for an export (loading a
# page's rows), so it is kept small enough to leave the loop to others every few milliseconds.
PAGE_SIZE = 200
# The export threads. Exports are few at once (`server.read_concurrency`), and their pages are
# CPU work that the GIL runs one at a time anyway: more threads would not go faster. Their own
# pool, so the forge adapters' calls (`asyncio.to_thread`) never queue behind an export.
ENCODER_THREADS = 4
_encoders: ThreadPoolExecutor | None = None

T = TypeVar("T")
CSV_COLUMNS = (
    "transaction_key", "kind", "created_at", "task_id", "forge", "repo", "number", "account",
    "amount_minor", "currency", "amount_display", "memo",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")



def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def _off_loop(work: Callable[[], T]) -> T:
    """`work()` in an export thread: the event loop goes on meanwhile."""
    global _encoders
    if _encoders is None:  # made on first use, so importing this module starts nothing
        _encoders = ThreadPoolExecutor(ENCODER_THREADS, thread_name_prefix="bountybot-export")
    return await asyncio.get_running_loop().run_in_executor(_encoders, work)


Page = Callable[[], list[Json]]
"""A page of an export's array, to shape in an export thread: its items as JSON values."""


def _each(shape: Callable[[Any], Json], rows: Sequence[Any]) -> list[Json]:
    return [shape(row) for row in rows]


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
        tail = rows[-1]  # an entity, or a row whose first item is the one ordered by (or its id)
        first = tail if isinstance(tail, t.Base) else tail[0]
        last = first if isinstance(first, int) else id_of(cast(t.HasId, first))
        session.expunge_all()
        if len(rows) < size:
            return


def _public_or_none() -> ColumnElement[bool]:
    """For a row outer-joined to its repo: no repo at all, or one shown publicly."""
    return or_(col(t.Repo.id).is_(None), shown_publicly())


async def _shaped_pages(session: AsyncSession, stmt: Any, key: Any, size: int,
                        shape: Callable[[Any], Json]) -> AsyncIterator[Page]:
    """The rows of `stmt` page by page, each page to be shaped into JSON when it is encoded."""
    async for rows in _pages(session, stmt, key, size):
        yield partial(_each, shape, rows)


def _ledger_pages(session: AsyncSession, size: int,
                  public: bool) -> AsyncIterator[Sequence[Any]]:
    """Ledger transactions in order, as plain rows (no ORM object is built for the books'
    longest table), with their task's number and repo (None for a task-less one)."""
    columns: list[Any] = [t.LedgerTransaction.id, t.LedgerTransaction.task_id,
                          t.LedgerTransaction.key, t.LedgerTransaction.kind,
                          t.LedgerTransaction.created_at, t.LedgerTransaction.memo,
                          t.Task.number, t.Repo.forge, t.Repo.full_path, t.Repo.locale]
    stmt: Any = (sql_select(*columns)
                 .outerjoin(t.Task, col(t.Task.id) == col(t.LedgerTransaction.task_id))
                 .outerjoin(t.Repo, col(t.Repo.id) == col(t.Task.repo_id)))
    if public:
        stmt = stmt.where(_public_or_none())
    return _pages(session, stmt, col(t.LedgerTransaction.id), size)


Entry = tuple[str, int, str]
"""A ledger entry as the exports read it: account, amount_minor, currency."""


async def _entries(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[Entry]]:
    """The entries of these transactions, in one query of plain rows, by transaction id."""
    grouped: dict[int, list[Entry]] = defaultdict(list)
    if ids:
        stmt: Any = (sql_select(col(t.LedgerEntry.transaction_id), col(t.LedgerEntry.account),
                                col(t.LedgerEntry.amount_minor), col(t.LedgerEntry.currency))
                     .where(col(t.LedgerEntry.transaction_id).in_(ids))
                     .order_by(col(t.LedgerEntry.id)))
        for txn_id, account, minor, currency in (await session.exec(stmt)).all():
            grouped[txn_id].append((account, minor, currency))
    return grouped


def _transaction(row: Any, entries: list[Entry], locale: str) -> Json:
    """`api.views.transaction_json(..., full=True)` of a plain row."""
    return {"id": row.id, "task_id": row.task_id, "key": row.key, "kind": row.kind,
            "created_at": iso(row.created_at), "memo": row.memo,
            "entries": [{"account": account, "amount": amount(minor, currency, locale)}
                        for account, minor, currency in entries]}


def _turn(pace: asyncio.Lock | None) -> contextlib.AbstractAsyncContextManager[Any]:
    return pace if pace is not None else contextlib.nullcontext()


def _encode(page: Page) -> tuple[bytes, int]:
    items = page()
    return ",\n".join(_dumps(item) for item in items).encode(), len(items)


async def _write_array(write: Write, pace: asyncio.Lock | None, name: str,
                       pages: AsyncIterator[Page]) -> int:
    """Write one named array of the export, a page at a time; return how many items it had."""
    await write(f',\n"{name}":['.encode())
    n = 0
    while True:
        async with _turn(pace):
            page = await anext(pages, None)
            if page is None:
                break
            text, size = await _off_loop(partial(_encode, page))
        # Sent outside the turn: a slow client holds up its own export only.
        await write((b",\n" if n else b"\n") + text)
        n += size
    await write(b"]")
    return n


def _repos_query(public: bool) -> Any:
    return select(t.Repo).where(shown_publicly()) if public else select(t.Repo)


def _tasks_query(public: bool) -> Any:
    stmt = select(t.Task, t.Repo).join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
    if public:
        stmt = stmt.where(shown_publicly())
    return stmt


def _audit_events_query(public: bool) -> Any:
    stmt = select(t.AuditEvent)
    if public:
        stmt = (stmt.outerjoin(t.Task, col(t.Task.id) == col(t.AuditEvent.task_id))
                .outerjoin(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
                .where(_public_or_none()))
    return stmt


def _payment_ops_query(public: bool) -> Any:
    stmt = (select(t.PaymentOp, t.Repo)
            .outerjoin(t.Repo, col(t.Repo.id) == col(t.PaymentOp.repo_id)))
    if public:
        # An operation names its repo, its task, or both: neither may be private.
        task_repo = aliased(t.Repo)
        stmt = (stmt.outerjoin(t.Task, col(t.Task.id) == col(t.PaymentOp.task_id))
                .outerjoin(task_repo, col(task_repo.id) == col(t.Task.repo_id))
                .where(_public_or_none(),
                       or_(col(task_repo.id).is_(None), ~col(task_repo.private),
                           col(task_repo.published))))
    return stmt


async def export_json(sessionmaker: async_sessionmaker[AsyncSession], write: Write, *,
                      locale: str = "en", now: datetime | None = None,
                      page_size: int = PAGE_SIZE, public: bool = True,
                      pace: asyncio.Lock | None = None) -> None:
    """Write the whole books as one JSON object (see the module's docstring), page by page.

    `locale` is the bot's, for the `display` of amounts whose repo has no locale of its own;
    `public=False` includes the private repos' data (the operator's export); `pace`, a lock
    the exports of one process share, held while a page is loaded and encoded.
    """
    now = now or datetime.now(UTC)
    counts = {"repos": 0, "tasks": 0, "transactions": 0, "entries": 0, "audit_events": 0,
              "payment_ops": 0}
    async with reading(sessionmaker) as session:
        await write(f'{{"format":{_dumps(FORMAT)},"generated_at":{_dumps(iso(now))}'.encode())

        async def array(name: str, pages: AsyncIterator[Page]) -> int:
            return await _write_array(write, pace, name, pages)

        async def tasks() -> AsyncIterator[Page]:
            stmt = _tasks_query(public)
            async for rows in _pages(session, stmt, col(t.Task.id), page_size):
                loaded = await load_tasks(session, [(task, repo) for task, repo in rows],
                                          plain=True)
                yield partial(_each, lambda r: task_json(r, locale, full=True), loaded)

        async def ledger() -> AsyncIterator[Page]:
            async for rows in _ledger_pages(session, page_size, public):
                entries = await _entries(session, [row.id for row in rows])
                counts["entries"] += sum(len(e) for e in entries.values())

                def shape(row: Any, entries: dict[int, list[Entry]] = entries) -> Json:
                    return _transaction(row, entries[row.id], row.locale or locale)

                yield partial(_each, shape, rows)

        def payment_op(row: Any) -> Json:
            return payment_op_json(row[0], locale_of(row[1], locale))

        counts["repos"] = await array("repos", _shaped_pages(
            session, _repos_query(public), col(t.Repo.id), page_size, repo_json))
        counts["tasks"] = await array("tasks", tasks())
        counts["transactions"] = await array("ledger", ledger())
        counts["audit_events"] = await array("audit_events", _shaped_pages(
            session, _audit_events_query(public), col(t.AuditEvent.id), page_size, audit_json))
        counts["payment_ops"] = await array("payment_ops", _shaped_pages(
            session, _payment_ops_query(public), col(t.PaymentOp.id), page_size, payment_op))
        await write(f',\n"counts":{_dumps(counts)}}}\n'.encode())


def _cell(text: str | None) -> str:
    """Text a spreadsheet shows as text: a leading `=`, `+`, `-` or `@` would make a formula."""
    if not text:
        return ""
    return "'" + text if text.startswith(_FORMULA_START) else text


async def export_csv(sessionmaker: async_sessionmaker[AsyncSession], write: Write, *,
                     locale: str = "en", page_size: int = PAGE_SIZE,
                     public: bool = True, pace: asyncio.Lock | None = None) -> None:
    """Write the ledger as CSV, one row per entry (`CSV_COLUMNS`), page by page; `public=False`
    includes the private repos' transactions (the operator's export); `pace` as for JSON."""
    async with reading(sessionmaker) as session:
        def encode(rows: Sequence[Any], entries: dict[int, list[Entry]]) -> bytes:
            buffer = io.StringIO()
            out = csv.writer(buffer)  # RFC 4180: CRLF line ends, quotes only where needed
            for txn in rows:
                shown = txn.locale or locale
                for account, minor, currency in entries[txn.id]:
                    out.writerow([
                        _cell(txn.key), txn.kind, iso(txn.created_at), txn.task_id or "",
                        txn.forge or "", _cell(txn.full_path or ""),
                        "" if txn.number is None else txn.number, _cell(account), minor,
                        currency, display_amount(minor, currency, shown), _cell(txn.memo),
                    ])
            return buffer.getvalue().encode()

        head = io.StringIO()
        head.write("\ufeff")
        csv.writer(head).writerow(CSV_COLUMNS)
        await write(head.getvalue().encode())
        pages = _ledger_pages(session, page_size, public)
        while True:
            async with _turn(pace):
                rows: Sequence[Any] | None = await anext(pages, None)
                if rows is None:
                    break
                entries = await _entries(session, [row.id for row in rows])
                text = await _off_loop(partial(encode, rows, entries))
            await write(text)
