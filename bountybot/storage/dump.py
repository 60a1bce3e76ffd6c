"""The operator's full dump of the books and its import into an empty database: backup, restore,
and moving between SQLite and PostgreSQL (`bountybot export --full`, `bountybot import`).

The public export (`bountybot.export`) is for reading: it leaves out private repos, ledger rows
are reshaped, and the payout accounts, outbox and handled comments are not in it. A dump is for
coming back: every row of every table the books need, column by column, ids included, so that
an import gives the same audit, the same balances and the same pages. It is the operator's
private file (private repos, provider ids, payment links): keep it as the database itself.
No secret is in it: tokens, webhook secrets and API keys live in the configuration, never in a
table.

The file, one JSON object, one row per line (`FORMAT`):

    {"format": "bountybot-dump/1", "schema": "<alembic revision>", "generated_at": "...Z",
     "left_out": {"<table>": "<why>"},
     "tables": {"repo": {"columns": ["id", ...], "rows": [[1, ...], ...]}, ...},
     "counts": {"repo": 3, ...}}

Tables come parents first, so an import inserts them in file order. Timestamps are ISO 8601 in
UTC, dates ISO dates, states their string values, JSON columns as they are. `counts` comes last:
a file cut short does not parse, and one that parses is checked against it.

Left out on purpose (`LEFT_OUT`), as operational state that a restore must not bring back:
- `delivery`: the inbox's raw webhook bodies. Handled ones are spent; their effects are in the
  books. Pending ones are fetched again: reconciliation reads each repo from the start after a
  restore (no cursor), and `handled_comment` (restored) makes every comment line apply once.
- `sync_cursor`: reconciliation's leases, ETag caches and read positions. A restored database may
  be older than the forges; without a cursor the next sync reads everything again, idempotently.
- `write_budget`: the forges' write budget shared by replicas on PostgreSQL: the writes started
  in the last hour. A rate window, not books; a restored instance counts again from nothing.

A table that is in neither `RESTORED` nor `LEFT_OUT` stops the dump (`DumpError`): a new table
must be classified here, never silently lost (`tests/test_import.py` checks it).

The import (`import_dump`) checks the whole file first (format, schema revision, tables,
columns, types, counts), then, in one transaction holding the write lock, refuses a database
that holds any row of the restored tables, inserts every row with its id, and on PostgreSQL
moves each id sequence past the imported ids (`setval`). Any failure rolls back: nothing is
written. The import reads the file whole (the books of an instance fit in memory; the dump
itself is written page by page, on one snapshot, like the export).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    Integer,
    String,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bountybot.storage import tables as t
from bountybot.storage.engine import WRITE_LOCK
from bountybot.storage.types import StateString, UTCDateTime

FORMAT = "bountybot-dump/1"
PUBLIC_FORMAT = "bountybot-export/1"  # the public export's, named in a refusal
PAGE_SIZE = 500  # rows per query when dumping, and per INSERT when importing

Write = Callable[[bytes], Awaitable[None]]
Progress = Callable[[str], None]

# Every table a restore brings back (written and inserted in foreign-key order, not this one).
RESTORED: tuple[type[t.Base], ...] = (
    t.Repo, t.Task, t.Pledge, t.Claim, t.Waiting, t.Link, t.Payout, t.LedgerTransaction,
    t.LedgerEntry, t.AuditEvent, t.HandledComment, t.Outbox, t.PaymentOp, t.PayoutAccount,
)
# The tables left out, and why (see the module's docstring).
LEFT_OUT: dict[str, str] = {
    "delivery": "the inbox's raw webhook bodies; their effects are in the books, and"
                " reconciliation fetches again what was still pending",
    "sync_cursor": "reconciliation's leases and caches; without them the next sync reads each"
                   " repo from the start, idempotently",
    "write_budget": "the forges' write budget: the writes started in the last hour, a rate"
                    " window that the governor counts again from nothing",
}


class DumpError(Exception):
    """A dump that cannot be written, or a file or database an import refuses: one sentence."""


def restored_tables() -> list[Table]:
    """The restored tables, parents before children; a table nobody classified stops here."""
    names = {cls.__table__.name for cls in RESTORED}  # type: ignore[attr-defined]
    unknown = [table.name for table in t.metadata.sorted_tables
               if table.name not in names and table.name not in LEFT_OUT]
    if unknown:
        raise DumpError(f"the table(s) {', '.join(unknown)} are neither restored nor left out"
                        " by bountybot.storage.dump: this bountybot cannot back them up")
    return [table for table in t.metadata.sorted_tables if table.name in names]


def _key(table: Table) -> Column[Any]:
    [key] = table.primary_key.columns
    return key


def _plain(value: Any) -> Any:
    """A column's value as JSON: timestamps and dates as ISO text; the rest as it is."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return value


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


async def _revision(connection: AsyncConnection) -> str:
    found = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    if not found:
        raise DumpError("the database has no schema revision: run `bountybot db upgrade`")
    return str(found)


async def _snapshot(engine: AsyncEngine) -> AsyncConnection:
    """A connection reading one consistent snapshot (REPEATABLE READ on PostgreSQL; SQLite's
    WAL gives a plain transaction one), taking no write lock."""
    connection = await engine.connect()
    if connection.dialect.name == "postgresql":
        await connection.execution_options(isolation_level="REPEATABLE READ",
                                           postgresql_readonly=True)
    await connection.begin()
    return connection


async def dump(engine: AsyncEngine, write: Write, *, now: datetime | None = None,
               progress: Progress | None = None) -> dict[str, int]:
    """Write the whole books as a dump (see the module's docstring), page by page, from one
    snapshot; return the rows written per table."""
    tables = restored_tables()
    say = progress or (lambda _line: None)
    counts: dict[str, int] = {}
    connection = await _snapshot(engine)
    try:
        head = {"format": FORMAT, "schema": await _revision(connection),
                "generated_at": (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
                "left_out": LEFT_OUT}
        await write(_line(head)[:-1] + b',\n"tables":{')
        for i, table in enumerate(tables):
            columns = [c.name for c in table.columns]
            await write((b",\n" if i else b"\n") + _line(table.name)
                        + b':{"columns":' + _line(columns) + b',"rows":[')
            counts[table.name] = await _dump_rows(connection, table, write)
            await write(b"]}")
            say(f"{table.name}: {counts[table.name]} row(s)")
        await write(b'},\n"counts":' + _line(counts) + b"}\n")
    finally:
        await connection.rollback()
        await connection.close()
    return counts


async def _dump_rows(connection: AsyncConnection, table: Table, write: Write) -> int:
    """Write a table's rows, a page at a time in id order (keyset paging); return how many."""
    key, n, last = _key(table), 0, None
    while True:
        stmt = select(table).order_by(key).limit(PAGE_SIZE)
        if last is not None:
            stmt = stmt.where(key > last)
        rows = (await connection.execute(stmt)).all()
        if not rows:
            return n
        await write(b"".join((b",\n" if n + i else b"\n") + _line([_plain(v) for v in row])
                             for i, row in enumerate(rows)))
        n += len(rows)
        last = rows[-1]._mapping[key.name]
        if len(rows) < PAGE_SIZE:
            return n


# -- reading a dump ------------------------------------------------------------------------


def _check_value(column: Column[Any], value: Any) -> Any:
    """`value` as the column takes it, or a DumpError saying what is wrong with it."""
    if value is None:
        if not column.nullable:
            raise ValueError("is null, and the column is not nullable")
        return None
    kind = column.type
    if isinstance(kind, UTCDateTime):
        found = datetime.fromisoformat(_text(value))
        if found.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone")
        return found
    if isinstance(kind, Date):
        return date.fromisoformat(_text(value))
    if isinstance(kind, StateString):
        return kind.enum(value)
    if isinstance(kind, Boolean):
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
    elif isinstance(kind, Integer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not a whole number")
    elif isinstance(kind, String) and not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DumpError(f"{what} is not a JSON object")
    return value


def _table_rows(table: Table, found: Any) -> list[dict[str, Any]]:
    """One table's rows from the file, checked column by column, as dicts to insert."""
    body = _object(found, f"the table {table.name}")
    columns = body.get("columns")
    expected = [c.name for c in table.columns]
    if not isinstance(columns, list) or sorted(map(str, columns)) != sorted(expected):
        raise DumpError(f"the table {table.name} has the columns {columns!r}, the database"
                        f" has {expected}")
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise DumpError(f"the table {table.name} has no list of rows")
    typed = [table.columns[name] for name in columns]
    out: list[dict[str, Any]] = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, list) or len(row) != len(typed):
            raise DumpError(f"row {n} of the table {table.name} does not have"
                            f" {len(typed)} values")
        values: dict[str, Any] = {}
        for column, value in zip(typed, row, strict=True):
            try:
                values[column.name] = _check_value(column, value)
            except ValueError as e:
                raise DumpError(f"row {n} of the table {table.name}: {column.name} {e}") from None
        out.append(values)
    return out


class Dump:
    """A dump read and checked whole: its schema revision and each table's rows."""

    def __init__(self, schema: str, generated_at: str,
                 tables: list[tuple[Table, list[dict[str, Any]]]]) -> None:
        self.schema = schema
        self.generated_at = generated_at
        self.tables = tables

    def counts(self) -> dict[str, int]:
        return {table.name: len(rows) for table, rows in self.tables}


def read_dump(raw: bytes) -> Dump:
    """Parse and check a dump before anything is written: a DumpError says what is wrong."""
    try:
        found = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" (line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise DumpError(f"it is not a whole dump: it does not read as JSON{where}, so it was"
                        " cut short or damaged") from None
    body = _object(found, "the file")
    kind = body.get("format")
    if kind == PUBLIC_FORMAT:
        raise DumpError("it is the public export, which leaves out what a restore needs (private"
                        " repos, payout accounts, the outbox...): write a full dump with"
                        " `bountybot export --full`")
    if kind != FORMAT:
        raise DumpError(f"its format is {kind!r}; this bountybot reads {FORMAT!r} only")
    if "counts" not in body:
        raise DumpError("it is not a whole dump: it ends before its counts")
    counts = _object(body["counts"], "counts")
    tables = _object(body.get("tables"), "tables")
    known = restored_tables()
    extra = sorted(set(tables) - {table.name for table in known})
    if extra:
        raise DumpError(f"it holds tables this bountybot does not restore: {', '.join(extra)}")
    out = []
    for table in known:
        if table.name not in tables:
            raise DumpError(f"it has no table {table.name}")
        rows = _table_rows(table, tables[table.name])
        if counts.get(table.name) != len(rows):
            raise DumpError(f"its counts say the table {table.name} has"
                            f" {counts.get(table.name)} row(s), and it holds {len(rows)}")
        out.append((table, rows))
    return Dump(str(body.get("schema")), str(body.get("generated_at")), out)


# -- importing -----------------------------------------------------------------------------


def _batches(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), PAGE_SIZE):
        yield rows[start:start + PAGE_SIZE]


async def _refuse_rows(connection: AsyncConnection, tables: list[Table]) -> None:
    held = []
    for table in tables:
        n = (await connection.execute(select(func.count()).select_from(table))).scalar_one()
        if n:
            held.append(f"{table.name} {n}")
    if held:
        raise DumpError("the database is not empty (rows: " + ", ".join(held) + "): import only"
                        " into a new database, made with `bountybot db upgrade`")


async def _advance_sequences(connection: AsyncConnection, tables: list[Table]) -> None:
    """PostgreSQL hands out ids from sequences, which inserting given ids does not move: set
    each one past the largest id imported, so the next row gets a fresh id."""
    for table in tables:
        key = _key(table)
        await connection.execute(
            text("SELECT setval(pg_get_serial_sequence(:table, :key),"
                 f' (SELECT COALESCE(MAX("{key.name}"), 0) + 1 FROM "{table.name}"), false)'),
            {"table": f'"{table.name}"', "key": key.name})


async def import_dump(engine: AsyncEngine, loaded: Dump, *,
                      progress: Progress | None = None) -> dict[str, int]:
    """Insert a checked dump into an empty database at the same schema revision, in one
    transaction; return the rows inserted per table. Refused (DumpError) without a write
    otherwise, the database's own refusals too (a broken reference, unbalanced ledger entries,
    found at the insert or, on PostgreSQL, at the commit)."""
    say = progress or (lambda _line: None)
    tables = [table for table, _ in loaded.tables]
    async with engine.connect() as connection:
        # SQLite's write lock from the first statement: no one writes between the check that
        # the database is empty and the last insert.
        await connection.execution_options(**{WRITE_LOCK: True})
        try:
            async with connection.begin():
                revision = await _revision(connection)
                if revision != loaded.schema:
                    raise DumpError(f"the dump was written at schema revision {loaded.schema},"
                                    f" the database is at {revision}: restore it with the"
                                    " bountybot that wrote it, then upgrade")
                await _refuse_rows(connection, tables)
                for table, rows in loaded.tables:
                    await _insert(connection, table, rows, say)
                if connection.dialect.name == "postgresql":
                    await _advance_sequences(connection, tables)
        except DBAPIError as e:
            if e.connection_invalidated:
                raise  # the database went away: the caller's database error, not the file's
            first = (str(e.orig or e).splitlines() or [""])[0].strip()
            raise DumpError(f"the database refused its rows ({first})") from None
    return loaded.counts()


async def _insert(connection: AsyncConnection, table: Table, rows: list[dict[str, Any]],
                  say: Progress) -> None:
    done = 0
    for batch in _batches(rows):
        await connection.execute(insert(table), list(batch))
        done += len(batch)
        if len(rows) > PAGE_SIZE:  # a long table shows it moves
            say(f"{table.name}: {done}/{len(rows)} row(s)")
    say(f"{table.name}: {len(rows)} row(s)")


async def import_file(engine: AsyncEngine, raw: bytes, *,
                      progress: Progress | None = None) -> dict[str, int]:
    """`read_dump` then `import_dump`."""
    return await import_dump(engine, read_dump(raw), progress=progress)


__all__ = ["FORMAT", "LEFT_OUT", "RESTORED", "Dump", "DumpError", "dump", "import_dump",
           "import_file", "read_dump", "restored_tables"]
