"""Restore, shown: `bountybot export --full` then `bountybot import` into an empty database gives
the same audit, the same balances, the same public pages and the same public export.

The story is played by signed webhooks through the real app and a local fake GitHub:
Codertocat/Hello-World #1 funded, merged and paid; #2 funded in part; #3 funded, then closed as
not planned (refunded); commons/vault (a private repo) #1 funded. It goes SQLite -> SQLite,
SQLite -> PostgreSQL and PostgreSQL -> SQLite, through the command line, and the restored
database takes new work (fresh ids: PostgreSQL's sequences moved past the imported ones).
Bad files and a non-empty database are refused with nothing written.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import sqlite_file_url
from sqlalchemy import func, select
from sqlmodel import col

from bountybot.api.routes import setup as api_setup
from bountybot.app import create_app
from bountybot.cli import main
from bountybot.config import Settings
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.states import PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit
from bountybot.storage.dump import FORMAT, LEFT_OUT, RESTORED, dump, restored_tables
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.web import badges, feeds, pages

from fakes.github import FakeGitHub
from fixtures import payload
from github_harness import MAINTAINER, REPO, SECRET, TOKEN, GitHubBot

VAULT, VAULT_ID = "commons/vault", 777001
BASE = f"/github/{REPO}"
PUBLIC_PATHS = ("/", BASE, f"{BASE}/-/needs", f"{BASE}/-/issues/1", f"{BASE}/-/issues/2",
                f"{BASE}/-/issues/3", f"{BASE}/-/issues/1/badge.json", "/api/v1/repos",
                "/api/v1/tasks?per_page=100", "/api/v1/statements/github/backers/alice",
                "/feed.atom")


class Story(GitHubBot):
    """The harness's bot, whose deliveries can be about the private repo (`self.vault`)."""

    vault = False

    async def post(self, event: str, data: dict[str, Any] | bytes, **kw: Any) -> Any:
        if self.vault and isinstance(data, dict) and "repository" in data:
            data["repository"].update(id=VAULT_ID, name="vault", full_name=VAULT, private=True,
                                      html_url=f"https://github.com/{VAULT}")
            data["repository"]["owner"]["login"] = "commons"
            if "issue" in data:
                number = data["issue"]["number"]
                data["issue"]["html_url"] = f"https://github.com/{VAULT}/issues/{number}"
        return await super().post(event, data, **kw)

    async def comment(self, login: str, body: str, number: int = 1, **kw: Any) -> Any:
        if not self.vault:
            return await super().comment(login, body, number, **kw)
        data = payload("github", "issue_comment.created")
        self._issue(data, number)
        cid = self.fake.add_comment(VAULT, number, body, login=login)
        data["comment"].update(id=cid, body=body)
        data["comment"]["user"].update(login=login)
        data["sender"].update(login=login)
        return await self.post("issue_comment", data)


async def play(db_url: str, fake: FakeGitHub) -> Story:
    fake.add_repo(VAULT, VAULT_ID)
    fake.set_permission(VAULT, MAINTAINER, "maintain")
    bot = await Story.start(db_url, fake)
    await bot.paid_task("SEPA-2026-1")
    await bot.label(2)
    for who, text in [("maya", "/goal 200"), ("erin", "/pledge 50"), ("dave", "/pledge 20")]:
        await bot.comment(who, text, 2)
    await bot.label(3)
    for who, text in [("maya", "/goal 50"), ("frank", "/pledge 30"), ("gina", "/pledge 10")]:
        await bot.comment(who, text, 3)
    await bot.settle()
    await bot.close_issue(3, "not_planned")
    await bot.settle()
    bot.vault = True
    await bot.label(1)
    for who, text in [("maya", "/goal 80"), ("mallory", "/pledge 40")]:
        await bot.comment(who, text, 1)
    await bot.settle()
    bot.vault = False
    # What a Stripe instance keeps beside the books: a call to the provider, an account.
    [payout] = await bot.rows(t.Payout)
    async with bot.app[SESSIONMAKER]() as session:
        session.add(t.PaymentOp(kind="transfer", idempotency_key="bountybot:transfer:payout:1",
                                task_id=payout.task_id, payout_id=payout.id, forge="github",
                                login="carol", amount_minor=10000, currency="EUR",
                                transfer_id="tr_1Transfer", state=t.PaymentOpState.DONE))
        session.add(t.PayoutAccount(forge="github", login="carol", account_id="acct_1Carol",
                                    ready=True))
        await session.commit()
    states = sorted((task.repo_id, task.number, task.state) for task in await bot.rows(t.Task))
    assert [state for _, _, state in states] == [
        TaskState.DONE, TaskState.OPEN, TaskState.CANCELLED, TaskState.OPEN], states
    return bot


# Each test starts from an environment without BOUNTYBOT_* variables, its logging put back.
pytestmark = pytest.mark.usefixtures("cli_env")


def fresh_sqlite(template: Path, path: Path) -> str:
    shutil.copyfile(template, path)
    return sqlite_file_url(path)


def database(request: pytest.FixtureRequest, kind: str, path: Path) -> str:
    """A new database at head with no rows: PostgreSQL's test schema, or a SQLite file."""
    if kind == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return fresh_sqlite(request.getfixturevalue("sqlite_template"), path)


PAIRS = [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "sqlite")]


@pytest.fixture(params=PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    source, target = request.param
    return (database(request, source, tmp_path / "source.db"),
            database(request, target, tmp_path / "restored.db"))


class Run:
    """The command line, run as `bountybot` runs it, on the database given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    async def __call__(self, db_url: str, *args: str) -> tuple[int, str, str]:
        self.monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
        code = await asyncio.to_thread(main, list(args))
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(monkeypatch, capsys)


@pytest.fixture
async def engines(urls: tuple[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    source, target = create_engine(urls[0]), create_engine(urls[1])
    try:
        yield source, target
    finally:
        await source.dispose()
        await target.dispose()


async def dumped(engine: Any) -> dict[str, Any]:
    """The dump of a database, parsed, without the moment it was written."""
    chunks: list[bytes] = []

    async def write(data: bytes) -> None:
        chunks.append(data)

    await dump(engine, write)
    found = json.loads(b"".join(chunks))
    del found["generated_at"]
    return dict(found)


async def balances(engine: Any) -> dict[tuple[str, str], int]:
    async with engine.connect() as connection:
        rows = (await connection.execute(
            select(t.LedgerEntry.account, t.LedgerEntry.currency,  # type: ignore[call-overload]
                   func.sum(t.LedgerEntry.amount_minor))
            .group_by(t.LedgerEntry.account, t.LedgerEntry.currency))).all()
    return {(account, currency): int(total) for account, currency, total in rows}


async def public_face(settings: Settings, engine: Any) -> dict[str, str]:
    """Every public path's body, from an app serving `engine`'s books (the export without
    the moment it was made)."""
    app = create_app(settings, engine=engine,
                     features=[api_setup, badges.setup, feeds.setup, pages.setup])
    async with TestClient(TestServer(app)) as client:
        bodies = {}
        for path in (*PUBLIC_PATHS, "/api/v1/export.json", "/api/v1/export.csv"):
            response = await client.get(path)
            assert response.status == 200, (path, response.status)
            # The app's own address (its port differs from app to app) is in links.
            bodies[path] = (await response.text()).replace(
                f"{client.host}:{client.port}", "HOST")
    export = json.loads(bodies["/api/v1/export.json"])
    del export["generated_at"]
    bodies["/api/v1/export.json"] = json.dumps(export)
    return bodies


async def test_a_full_export_imported_into_an_empty_database_is_the_same_books(
        urls: tuple[str, str], engines: tuple[Any, Any], github_server: FakeGitHub,
        cli: Run, tmp_path: Path) -> None:
    source_url, target_url = urls
    source, target = engines
    bot = await play(source_url, github_server)
    settings: Settings = bot.app[SETTINGS]
    await bot.close()

    file = tmp_path / "books.dump.json"
    code, out, err = await cli(source_url, "export", "--full", "--output", str(file))
    assert (code, out) == (0, ""), err
    assert "ledger_entry:" in err and f"to {file}" in err
    assert not file.with_name(file.name + ".partial").exists()
    raw = file.read_text()
    assert SECRET not in raw and TOKEN not in raw
    written = json.loads(raw)
    assert written["format"] == FORMAT and written["left_out"] == LEFT_OUT
    assert [name for name in written["tables"]] == [table.name for table in restored_tables()]
    assert VAULT in raw  # the operator's books, whole

    code, out, err = await cli(target_url, "import", str(file))
    assert code == 0, err
    assert "all invariants hold" in out and "imported" in out
    assert "pledge: 7 row(s)" in err

    # Every restored table, row for row and id for id.
    assert await dumped(target) == await dumped(source)
    before, after = await run_audit(create_sessionmaker(source)), await run_audit(
        create_sessionmaker(target))
    assert before.ok and before.tasks == 4 and before.transactions > 10, before.render()
    assert after == before
    accounts = await balances(source)
    assert await balances(target) == accounts
    # The tasks in the order the story made them (on PostgreSQL ids go on from earlier tests).
    async with source.connect() as connection:
        ids = list((await connection.execute(
            select(col(t.Task.id)).order_by(col(t.Task.id)))).scalars())
    assert accounts[(f"escrow:task:{ids[1]}", "EUR")] == 7000  # erin's and dave's pledges
    assert accounts[(f"escrow:task:{ids[3]}", "EUR")] == 4000  # mallory's, in the private repo
    assert accounts[("external", "EUR")] == 10000  # carol's payout
    assert sum(accounts.values()) == 0
    face = await public_face(settings, source)
    assert await public_face(settings, target) == face
    assert "commons/vault" not in face["/api/v1/export.json"]  # still private
    assert "SEPA-2026-1" in face["/api/v1/export.json"]

    # The restored books take new work, with fresh ids.
    async with engines[1].connect() as connection:
        old = (await connection.execute(select(func.max(t.Pledge.id)))).scalar_one()
    restored = await Story.start(target_url, github_server)
    try:
        await restored.comment("hana", "/pledge 5", 2)
        await restored.settle()
        task = await restored.existing_task(2)
        [new] = [p for p in task.pledges if p.backer == "hana"]
        assert new.id is not None and new.id > old and new.state == PledgeState.HELD
        assert any("hana" in c.body for c in restored.bot_comments(2))
        report = await run_audit(restored.app[SESSIONMAKER])
        assert report.ok and report.transactions == after.transactions + 1, report.render()
    finally:
        await restored.close()


def test_every_table_is_restored_or_left_out_for_a_reason() -> None:
    restored = {cls.__table__.name for cls in RESTORED}  # type: ignore[attr-defined]
    for table in t.metadata.sorted_tables:
        assert (table.name in restored) != (table.name in LEFT_OUT), table.name
    assert all(len(why) > 20 for why in LEFT_OUT.values())


@pytest.fixture
async def small(tmp_path: Path, github_server: FakeGitHub, cli: Run,
                sqlite_template: Path) -> tuple[str, Path]:
    """A SQLite database holding one paid task, and its full export."""
    source = fresh_sqlite(sqlite_template, tmp_path / "small.db")
    bot = await GitHubBot.start(source, github_server)
    try:
        await bot.paid_task("SEPA-1")
    finally:
        await bot.close()
    file = tmp_path / "small.json"
    code, _, err = await cli(source, "export", "--full", "-o", str(file))
    assert code == 0, err
    return source, file


async def row_counts(engine: Any) -> dict[str, int]:
    async with engine.connect() as connection:
        return {table.name: (await connection.execute(
            select(func.count()).select_from(table))).scalar_one()
            for table in restored_tables()}


def changed(file: Path, change: Any) -> bytes:
    books = json.loads(file.read_text())
    change(books)
    return json.dumps(books).encode()


def _drop_a_pledge(books: dict[str, Any]) -> None:
    books["tables"]["pledge"]["rows"].pop()


def _bad_amount(books: dict[str, Any]) -> None:
    pledge = books["tables"]["pledge"]
    pledge["rows"][0][pledge["columns"].index("amount_minor")] = "lots"


def _dangling_entry(books: dict[str, Any]) -> None:
    entries = books["tables"]["ledger_entry"]
    entries["rows"][-1][entries["columns"].index("transaction_id")] = 999_999


async def test_bad_files_and_a_database_with_books_are_refused_and_nothing_is_written(
        db_url: str, small: tuple[str, Path], cli: Run, tmp_path: Path) -> None:
    source_url, file = small
    public = tmp_path / "public.json"
    assert (await cli(source_url, "export", "-o", str(public)))[0] == 0
    raw = file.read_bytes()
    bad = {
        "cut short": (raw[:len(raw) // 2], "it does not read as JSON"),
        "another version": (changed(file, lambda b: b.update(format="bountybot-dump/2")),
                            "its format is 'bountybot-dump/2'; this bountybot reads"
                            " 'bountybot-dump/1' only"),
        "the public export": (public.read_bytes(), "it is the public export"),
        "no counts": (changed(file, lambda b: b.pop("counts")), "it ends before its counts"),
        "a row missing": (changed(file, _drop_a_pledge),
                          "its counts say the table pledge has 2 row(s), and it holds 1"),
        "a bad value": (changed(file, _bad_amount),
                        "row 1 of the table pledge: amount_minor 'lots' is not a whole number"),
        "another schema": (changed(file, lambda b: b.update(schema="0001")),
                           "the dump was written at schema revision 0001"),
        "a broken reference": (changed(file, _dangling_entry), "the database refused its rows"),
    }
    engine = create_engine(db_url)
    try:
        empty = await row_counts(engine)
        assert set(empty.values()) == {0}
        for name, (content, says) in bad.items():
            path = tmp_path / f"{name}.json"
            path.write_bytes(content)
            code, out, err = await cli(db_url, "import", str(path))
            assert (code, out) == (1, ""), (name, err)
            last = err.strip().splitlines()[-1]
            assert last.startswith(f"bountybot: import {path}: ") and says in last, (name, err)
            assert last.endswith("; nothing was imported"), (name, err)
            assert await row_counts(engine) == empty, name

        code, out, err = await cli(db_url, "import", str(file))
        assert code == 0, err
        assert "all invariants hold" in out
        books = await dumped(engine)
        assert books["tables"]["pledge"]["rows"] and await row_counts(engine) != empty

        # A second import into books that hold rows: refused, nothing changes.
        code, out, err = await cli(db_url, "import", str(file))
        assert (code, out) == (1, ""), err
        assert "the database is not empty (rows: repo 1, task 1," in err, err
        assert "import only into a new database" in err
        assert await dumped(engine) == books
    finally:
        await engine.dispose()

    assert (await cli(db_url, "import", str(tmp_path / "nowhere.json")))[0] == 2
    code, _, err = await cli(source_url, "export", "--full", "--format", "csv")
    assert code == 2 and "JSON only" in err
