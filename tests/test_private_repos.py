"""Private repos stay private: their tasks, people and amounts are in no public read, until the
operator publishes them (`bountybot repos publish`); the operator's own books show everything.

The books are `test_api`'s story (two public repos) plus a private GitHub repo, `commons/vault`:
an open task backed by alice (who also backs public tasks) and by mallory (who backs nothing
else), and a task paid to carol (who was also paid for a public one). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from test_api import START, Place, Tale, Teller, get, settings, tell

from bountybot.api.routes import setup
from bountybot.app import create_app
from bountybot.cli import main
from bountybot.export import export_json
from bountybot.rules import LinkClosed, LinkOpened, PayoutPaid
from bountybot.statements import statement, statement_json
from bountybot.storage import tables as t
from bountybot.storage.uow import UnitOfWork

VAULT = Place("github", "777001", "commons/vault", None)
HIDDEN, PAID = "Open the vault", "Oil the vault door"
# Words that only the private repo's data contains.
SECRETS = ("commons/vault", "mallory", HIDDEN, PAID, "SEPA-VAULT")


class Books:
    def __init__(self, tale: Tale, vault: dict[str, int], repo_id: int) -> None:
        self.tale = tale
        self.vault = vault  # task ids by title
        self.repo_id = repo_id


# Each test starts from an environment without BOUNTYBOT_* variables, its logging put back.
pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
async def books(sessionmaker: async_sessionmaker[AsyncSession]) -> Books:
    tale = await tell(sessionmaker)
    async with UnitOfWork(sessionmaker) as uow:
        s = Teller(uow.session)
        s.now = START + timedelta(days=1)
        for who, text in [("maya", "/goal 100"), ("alice", "/pledge 7"), ("mallory", "/pledge 9")]:
            await s.say(VAULT, 1, HIDDEN, who, text)
        for who, text in [("maya", "/goal 12"), ("bob", "/pledge 12"), ("carol", "/claim")]:
            await s.say(VAULT, 2, PAID, who, text)
        pull = "https://github.com/commons/vault/pull/5"
        await s.event(VAULT, 2, PAID, LinkOpened(5, "carol", pull))
        await s.event(VAULT, 2, PAID, LinkClosed(5, "carol", merged=True, url=pull))
        await s.event(VAULT, 2, PAID, PayoutPaid(await s.payout_id(VAULT, 2), "SEPA-VAULT"))
        vault = dict(s.tale.ids)
    async with UnitOfWork(sessionmaker) as uow:
        repos = {r.full_path: r for r in (await uow.session.exec(select(t.Repo))).all()}
        repo = repos["commons/vault"]
        repo.private = True  # as the forge's payloads said
        uow.session.add(repo)
        # Calls to the payment provider: one about the private repo, one about its task, and
        # one about a public repo.
        uow.session.add(t.PaymentOp(kind="account", idempotency_key="bountybot:account:mallory",
                                    repo_id=repo.id, number=1, forge="github", login="mallory"))
        uow.session.add(t.PaymentOp(kind="refund", idempotency_key="bountybot:refund:vault",
                                    task_id=vault[HIDDEN], amount_minor=900, currency="EUR"))
        uow.session.add(t.PaymentOp(kind="account", idempotency_key="bountybot:account:dave",
                                    repo_id=repos["commons/garden"].id, forge="github",
                                    login="dave"))
    return Books(tale, vault, t.id_of(repo))


@pytest.fixture
async def client(engine: AsyncEngine,
                 books: Books,  # noqa: ARG001 - the books, written before the app serves
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings(), engine=engine, features=[setup])
    async with TestClient(TestServer(app)) as client:
        yield client


async def text_of(client: TestClient[Any, Any], path: str) -> str:
    response = await client.get(path)
    assert response.status == 200
    return await response.text()


async def operator_statement(sessionmaker: async_sessionmaker[AsyncSession], role: Any,
                             login: str) -> dict[str, Any]:
    async with sessionmaker() as session:
        return statement_json(await statement(session, "github", role, login, public=False),
                              "en")


def without_vault(found: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in found["movements"] if m["task"]["repo"] != "commons/vault"]


def totals(found: dict[str, Any], key: str) -> int:
    [eur] = found["totals"]
    return int(eur[key]["amount"])


async def test_a_private_repo_is_in_no_public_read(
        client: TestClient[Any, Any], books: Books,
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    hidden = set(books.vault.values())
    everything = await get(client, "/api/v1/tasks?per_page=100")
    assert everything["total"] == 6
    assert {task["id"] for task in everything["tasks"]} == set(books.tale.ids.values())
    assert (await get(client, "/api/v1/tasks?repo=commons/vault"))["total"] == 0
    assert (await get(client, "/api/v1/tasks?forge=github"))["total"] == 5

    # A private task's id answers as an unknown one does, in the same words.
    unknown = max(hidden) + 1000
    for task_id in hidden:
        for path in (f"/api/v1/tasks/{task_id}", f"/api/v1/tasks/{task_id}/ledger"):
            assert await get(client, path, 404) == {"error": f"no task {task_id}"}
    assert await get(client, f"/api/v1/tasks/{unknown}", 404) == {"error": f"no task {unknown}"}

    # Statements: mallory backed only the private task, so is nobody here; alice and carol
    # keep their public movements and totals, without the private ones.
    mallory = await get(client, "/api/v1/statements/github/backers/mallory", 404)
    nobody = await get(client, "/api/v1/statements/github/backers/nobody", 404)
    assert mallory["error"].replace("mallory", "nobody") == nobody["error"]
    alice = await get(client, "/api/v1/statements/github/backers/alice")
    whole = await operator_statement(sessionmaker, "backer", "alice")
    assert any(m["task"]["repo"] == "commons/vault" for m in whole["movements"])
    assert alice["movements"] == without_vault(whole)
    assert totals(alice, "pledged") == totals(whole, "pledged") - 700
    carol = await get(client, "/api/v1/statements/github/developers/carol")
    paid = await operator_statement(sessionmaker, "developer", "carol")
    assert carol["movements"] == without_vault(paid)
    assert totals(carol, "earned") == totals(paid, "earned") - 1200 == 4000

    # The exports, both of them.
    raw = await text_of(client, "/api/v1/export.json")
    exported = json.loads(raw)
    assert {r["full_path"] for r in exported["repos"]} == {"commons/garden", "group/sub/project"}
    assert {task["id"] for task in exported["tasks"]} == set(books.tale.ids.values())
    assert not {txn["task_id"] for txn in exported["ledger"]} & hidden
    assert not {item["task_id"] for item in exported["audit_events"]} & hidden
    assert [op["login"] for op in exported["payment_ops"]] == ["dave"]
    counts = exported["counts"]
    assert (counts["repos"], counts["tasks"], counts["transactions"], counts["payment_ops"]) == (
        2, 6, len(exported["ledger"]), 1)
    assert counts["entries"] == sum(len(txn["entries"]) for txn in exported["ledger"])
    rows = list(csv.reader(io.StringIO(await text_of(client, "/api/v1/export.csv"))))
    assert len(rows) - 1 == counts["entries"]
    for text in (raw, json.dumps(rows), json.dumps(alice), json.dumps(carol),
                 json.dumps(everything)):
        for word in SECRETS:
            assert word not in text, word

    # The operator's export has it all.
    chunks: list[bytes] = []

    async def write(data: bytes) -> None:
        chunks.append(data)

    await export_json(sessionmaker, write, public=False)
    whole_books = json.loads(b"".join(chunks))
    assert whole_books["counts"]["repos"] == 3 and whole_books["counts"]["tasks"] == 8
    assert whole_books["counts"]["payment_ops"] == 3
    assert all(word in b"".join(chunks).decode() for word in SECRETS)


def cli(*args: str) -> int:
    return main(list(args))


async def test_the_operator_publishes_and_unpublishes_from_the_command_line(
        client: TestClient[Any, Any], books: Books, db_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)

    async def run(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli, *args)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await run("repos")
    assert code == 0
    lines = {line.split()[-1]: line.split() for line in out.splitlines()[1:4]}
    assert lines["commons/vault"][1:6] == ["github", "yes", "no", "hidden", "2"]
    assert lines["commons/garden"][1:6] == ["github", "no", "no", "public", "5"]
    assert "1 private repo(s) hidden" in out

    # Refused, and nothing changes: a public repo, an unknown one, the wrong forge.
    for args, says in [(("github", "commons/garden"), "is public: its data is public already"),
                       (("github", "nobody/nothing"), "no github repo 'nobody/nothing'"),
                       (("gitlab", "commons/vault"), "no gitlab repo 'commons/vault'"),
                       (("github", "99999"), "no github repo with id 99999")]:
        code, out, err = await run("repos", "publish", *args)
        assert (code, out) == (1, ""), err
        assert err.startswith("bountybot: repos publish: ") and says in err, err
    assert (await get(client, "/api/v1/tasks"))["total"] == 6

    code, out, _ = await run("repos", "publish", "github", "Commons/Vault")
    assert (code, out) == (0, "github commons/vault: its tasks, people and amounts are public"
                                " now\n")
    assert (await get(client, "/api/v1/tasks"))["total"] == 8
    for task_id in books.vault.values():
        assert (await get(client, f"/api/v1/tasks/{task_id}"))["repo"] == "commons/vault"
    assert "mallory" in await text_of(client, "/api/v1/export.csv")
    assert (await get(client, "/api/v1/statements/github/backers/mallory"))["login"] == "mallory"
    assert (await run("repos", "publish", "github", "commons/vault"))[1].endswith(
        "is published already\n")

    code, out, _ = await run("repos", "unpublish", "github", str(books.repo_id))
    assert (code, out) == (0, "github commons/vault: its data is off the public pages, badges,"
                                " feeds and API now\n")
    assert (await get(client, "/api/v1/tasks"))["total"] == 6
    assert "mallory" not in await text_of(client, "/api/v1/export.json")

    # The operator's own commands still see everything.
    target = tmp_path / "books.json"
    code, _, err = await run("export", "-o", str(target))
    assert code == 0, err
    assert all(word in target.read_text() for word in SECRETS)
    code, out, _ = await run("statement", "backer", "mallory")
    assert code == 0 and "commons/vault#1" in out
