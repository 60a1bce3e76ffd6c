"""The export, for leaving: the whole books as JSON and the ledger as CSV, streamed page by page.

The books are `test_api`'s story (two repos, six tasks in every state), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from test_api import DOCS, SECRET, TOKEN, Tale, serve, told

from bountybot import export
from bountybot.export import CSV_COLUMNS, export_csv, export_json
from bountybot.money import Money, format_money
from bountybot.storage import tables as t
from bountybot.storage.books import reading
from bountybot.storage.uow import UnitOfWork

# Each test starts from an environment without BOUNTYBOT_* variables.
pytestmark = pytest.mark.usefixtures("no_bountybot_env")


@pytest.fixture
async def tale(engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> Tale:
    return await told(engine, sessionmaker)


@pytest.fixture
async def client(engine: AsyncEngine,
                 tale: Tale,  # noqa: ARG001 - the story's books, written before the API serves
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    async with serve(engine) as client:
        yield client


async def count(sessionmaker: async_sessionmaker[AsyncSession], table: Any) -> int:
    async with sessionmaker() as session:
        return int((await session.exec(select(func.count()).select_from(table))).one())


async def download(client: TestClient[Any, Any], path: str, kind: str) -> str:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == kind and response.charset == "utf-8"
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    suffix = path.rsplit(".", 1)[1]
    assert re.fullmatch(rf"attachment; filename=bountybot-export-\d{{4}}-\d\d-\d\d\.{suffix}",
                        response.headers["Content-Disposition"])
    text = await response.text()
    assert SECRET not in text and TOKEN not in text
    return text


async def test_export_json_round_trips(client: TestClient[Any, Any], tale: Tale,
                                       sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    books = json.loads(await download(client, "/api/v1/export.json", "application/json"))
    assert list(books) == ["format", "generated_at", "repos", "tasks", "ledger", "audit_events",
                           "payment_ops", "counts"]
    assert books["format"] == "bountybot-export/1"
    assert books["generated_at"].endswith("Z")
    assert [(r["forge"], r["forge_repo_id"], r["full_path"], r["locale"])
            for r in books["repos"]] == [("github", "1296269", "commons/garden", None),
                                         ("gitlab", "4242", "group/sub/project", "fr")]
    assert [task["id"] for task in books["tasks"]] == sorted(tale.ids.values())
    assert len(books["tasks"]) == await count(sessionmaker, t.Task)
    assert len(books["ledger"]) == await count(sessionmaker, t.LedgerTransaction)
    assert len(books["audit_events"]) == await count(sessionmaker, t.AuditEvent)
    entries = [e for txn in books["ledger"] for e in txn["entries"]]
    assert len(entries) == await count(sessionmaker, t.LedgerEntry)
    assert books["counts"] == {
        "repos": 2, "tasks": 6, "transactions": len(books["ledger"]), "entries": len(entries),
        "audit_events": len(books["audit_events"]), "payment_ops": 0}
    assert books["payment_ops"] == []  # the manual provider calls no one (see test_payment_ops_cli)

    # The books balance: each transaction, and everything together.
    assert sum(e["amount"]["amount"] for e in entries) == 0
    for txn in books["ledger"]:
        assert sum(e["amount"]["amount"] for e in txn["entries"]) == 0, txn["key"]
    # Each task's escrow, summed from the exported ledger, is what its held pledges make.
    for task in books["tasks"]:
        escrow = sum(e["amount"]["amount"] for e in entries
                     if e["account"] == f"escrow:task:{task['id']}")
        held = sum(p["amount"]["amount"] for p in task["pledges"] if p["state"] == "held")
        assert escrow == held == task["pledged"]["amount"], task["title"]

    # The export's task is the API's (less the addresses of this instance's pages, which a new
    # home would not keep), plus what a new home needs to carry on.
    api = await (await client.get(f"/api/v1/tasks/{tale.ids[DOCS]}")).json()
    docs = next(task for task in books["tasks"] if task["title"] == DOCS)
    nested = ("pledges", "links", "payouts")
    assert {k: v for k, v in docs.items() if k in api and k not in nested} == {
        k: v for k, v in api.items()
        if k not in (*nested, "page_url", "badge_url", "pledges_url")}
    assert docs["repo_id"] == books["repos"][1]["id"]
    assert set(docs["pledges"][0]) >= {"id", "backer", "amount", "state", "created_at",
                                       "comment_id", "provider_ref"}
    assert docs["pledged"]["display"] == format_money(Money(5000, "EUR"), "fr")
    gate = next(task for task in books["tasks"] if task["title"] == "Fix the gate")
    assert [(c["developer"], c["state"]) for c in gate["claims"]] == [("carol", "active")]
    compost = next(task for task in books["tasks"] if task["title"] == "Build a compost bin")
    assert compost["payouts"][0]["reference"] == "SEPA-42"
    assert "last_error" not in compost["payouts"][0]
    actions = Counter(item["action"] for item in books["audit_events"])
    assert actions["command.pledge"] == 11 and actions["payout.paid"] == 1


async def test_export_csv_has_one_row_per_ledger_entry(
        client: TestClient[Any, Any], tale: Tale,
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    text = await download(client, "/api/v1/export.csv", "text/csv")
    assert text.startswith("\ufeff")  # so spreadsheets read UTF-8 (and show €)
    rows = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == await count(sessionmaker, t.LedgerEntry)
    assert sum(int(row["amount_minor"]) for row in rows) == 0
    by_key: dict[str, int] = Counter()
    for row in rows:
        by_key[row["transaction_key"]] += int(row["amount_minor"])
    assert set(by_key.values()) == {0}
    assert len(by_key) == await count(sessionmaker, t.LedgerTransaction)

    paid = [row for row in rows if row["kind"] == "payout.paid"]
    assert paid == [
        {"transaction_key": paid[0]["transaction_key"], "kind": "payout.paid",
         "created_at": paid[0]["created_at"], "task_id": str(tale.ids["Build a compost bin"]),
         "forge": "github", "repo": "commons/garden", "number": "4",
         "account": "developer:github:carol", "amount_minor": "-4000", "currency": "EUR",
         "amount_display": "-€40.00", "memo": "SEPA-42"},
        {**paid[0], "account": "external", "amount_minor": "4000",
         "amount_display": "€40.00"}]
    docs = [row for row in rows if row["task_id"] == str(tale.ids[DOCS])]
    assert [(r["forge"], r["repo"], r["number"]) for r in docs] == [
        ("gitlab", "group/sub/project", "3")] * 2
    assert docs[1]["amount_display"] == format_money(Money(5000, "EUR"), "fr")


async def collect(produce: Any, sessionmaker: Any, **kwargs: Any) -> tuple[bytes, int]:
    chunks: list[bytes] = []

    async def write(data: bytes) -> None:
        chunks.append(data)

    await produce(sessionmaker, write, **kwargs)
    return b"".join(chunks), len(chunks)


@pytest.mark.usefixtures("tale")
async def test_exports_page_through_the_books(sessionmaker: async_sessionmaker[AsyncSession]
                                              ) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    whole, _ = await collect(export_json, sessionmaker, now=now)
    paged, writes = await collect(export_json, sessionmaker, now=now, page_size=2)
    assert paged == whole and writes > 20
    assert json.loads(whole)["generated_at"] == "2026-12-01T00:00:00Z"
    whole, _ = await collect(export_csv, sessionmaker)
    paged, writes = await collect(export_csv, sessionmaker, page_size=3)
    assert paged == whole and writes > 5


async def test_empty_books_export_cleanly(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    books = json.loads((await collect(export_json, sessionmaker))[0])
    assert (books["repos"], books["tasks"], books["ledger"], books["audit_events"],
            books["payment_ops"]) == ([], [], [], [], [])
    text = (await collect(export_csv, sessionmaker))[0].decode("utf-8-sig")
    assert list(csv.reader(io.StringIO(text))) == [list(CSV_COLUMNS)]


async def test_an_export_cut_short_is_never_a_valid_file(
        client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError("the database went away halfway")

    monkeypatch.setattr(export, "_entries", broken)  # the ledger's entries, after the tasks
    for path in ("/api/v1/export.json", "/api/v1/export.csv"):
        response = await client.get(path)
        assert response.status == 200  # the first pages were on their way
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


@pytest.mark.parametrize("value", ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)"])
def test_csv_cells_cannot_become_formulas(value: str) -> None:
    assert export._cell(value) == "'" + value
    assert export._cell("SEPA-42") == "SEPA-42" and export._cell(None) == ""


@pytest.mark.usefixtures("tale")
async def test_an_export_reads_one_snapshot_and_holds_up_no_writer(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async def trail(session: AsyncSession) -> int:
        stmt = select(func.count()).select_from(t.AuditEvent)
        return int((await session.exec(stmt)).one())

    async with reading(sessionmaker) as session:
        before = await trail(session)
        # A worker writes meanwhile: on SQLite it would wait for the write lock (and time out)
        # if a read held it; on PostgreSQL the read is a snapshot.
        async with UnitOfWork(sessionmaker) as uow:
            uow.session.add(t.AuditEvent(action="test.meanwhile"))
        assert await trail(session) == before
        if session.get_bind().dialect.name == "postgresql":
            show = "SHOW transaction_isolation", "SHOW transaction_read_only"
            assert [await session.scalar(text(q)) for q in show] == [
                "repeatable read", "on"]
    async with reading(sessionmaker) as session:
        assert await trail(session) == before + 1
