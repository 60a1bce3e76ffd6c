"""Reads that stay the same size however large the books: the task list by cursor (`after=`),
a task's pledges summed with only the first listed (the rest a page at a time under
`/api/v1/tasks/{id}/pledges`), a task's ledger a page at a time, and a task's page that lists
its first backers and newest pledges. On SQLite and PostgreSQL, with rows written directly.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api import routes
from bountybot.api.views import first_backers, load_tasks
from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.rules.model import RAISED
from bountybot.states import PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.tables import id_of
from bountybot.web import pages

pytestmark = pytest.mark.usefixtures("no_bountybot_env")

PUBLIC = "https://bounties.example.org"
STATES = (PledgeState.HELD, PledgeState.HELD, PledgeState.PAID_OUT, PledgeState.REFUNDED,
          PledgeState.WITHDRAWN, PledgeState.PENDING)


def app_client(engine: AsyncEngine, public_backers: str = "names") -> TestClient[Any, Any]:
    settings = Settings(config_file=None, server={"public_url": PUBLIC},
                        bot={"public_backers": public_backers})
    return TestClient(TestServer(create_app(settings, engine=engine,
                                            features=[routes.setup, pages.setup])))


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[TestClient[Any, Any]]:
    async with app_client(engine) as client:
        yield client


async def add_repo(session: AsyncSession, path: str, *, private: bool = False) -> t.Repo:
    repo = t.Repo(forge="github", forge_repo_id=path, full_path=path, private=private)
    session.add(repo)
    await session.flush()
    return repo


async def add_tasks(sessionmaker: async_sessionmaker[AsyncSession], repo_id: int,
                    numbers: range) -> list[int]:
    async with sessionmaker() as session:
        tasks = [t.Task(repo_id=repo_id, number=n, title=f"Task {n}", currency="EUR")
                 for n in numbers]
        session.add_all(tasks)
        await session.commit()
        return [id_of(task) for task in tasks]


async def get(client: TestClient[Any, Any], url: str, status: int = 200) -> Any:
    response = await client.get(url.removeprefix(PUBLIC))
    assert response.status == status, (url, await response.text())
    return response, await response.json()


def next_link(response: Any) -> str | None:
    found = re.findall(r'<([^>]+)>; rel="next"', response.headers.get("Link", ""))
    return found[0] if found else None


async def test_a_cursor_walk_sees_every_public_task_once_while_tasks_are_added(
        sessionmaker: async_sessionmaker[AsyncSession], client: TestClient[Any, Any]) -> None:
    async with sessionmaker() as session:
        public, private = await add_repo(session, "octo/public"), await add_repo(
            session, "octo/secret", private=True)
        await session.commit()
        public_id, private_id = id_of(public), id_of(private)
    shown = await add_tasks(sessionmaker, public_id, range(1, 8))
    hidden = await add_tasks(sessionmaker, private_id, range(1, 4))
    seen: list[int] = []
    url: str | None = f"{PUBLIC}/api/v1/tasks?after=0&per_page=3"
    pages_walked = 0
    while url is not None:
        response, body = await get(client, url)
        assert set(body) == {"tasks", "per_page", "after", "next"}
        assert body["next"] == next_link(response)
        seen += [task["id"] for task in body["tasks"]]
        assert all(task["repo"] == "octo/public" for task in body["tasks"])
        pages_walked += 1
        if pages_walked == 1:  # new tasks, public and private, while the walk goes on
            shown += await add_tasks(sessionmaker, public_id, range(8, 12))
            hidden += await add_tasks(sessionmaker, private_id, range(4, 6))
            shown += await add_tasks(sessionmaker, public_id, range(12, 13))
        url = body["next"]
    assert sorted(seen) == seen and len(seen) == len(set(seen))
    assert set(seen) == set(shown) and not set(seen) & set(hidden)
    # The page-numbered list's `next` goes on by cursor from its last task.
    response, body = await get(client, f"{PUBLIC}/api/v1/tasks?per_page=2")
    assert body["total"] == len(shown)
    assert next_link(response) == (f"{PUBLIC}/api/v1/tasks?per_page=2"
                                   f"&after={body['tasks'][-1]['id']}")


@pytest.mark.parametrize(("query", "message"), [
    ("after=abc", "after must be the id the previous page ended with, a whole number from 0"
                  " (as in the Link rel=\"next\" address; got 'abc')"),
    ("after=-1", "after must be the id the previous page ended with"),
    ("after=", "after must be the id the previous page ended with"),
    ("after=99999999999", "after must be the id the previous page ended with"),
    ("after=3&page=2", "page and after cannot be used together"),
])
async def test_a_bad_cursor_is_a_400_that_says_why(client: TestClient[Any, Any], query: str,
                                                   message: str) -> None:
    for path in ("/api/v1/tasks", "/api/v1/tasks/1/pledges", "/api/v1/tasks/1/ledger"):
        if "page=" in query and path != "/api/v1/tasks":
            continue
        response = await client.get(f"{path}?{query}")
        assert response.status == 400, path
        assert (await response.json())["error"].startswith(message), path


async def many_pledges(sessionmaker: async_sessionmaker[AsyncSession], count: int,
                       *, private: bool = False) -> tuple[int, list[t.Pledge]]:
    """A task with `count` pledges in assorted states, from backers who pledge twice each
    (in two spellings of their login)."""
    async with sessionmaker() as session:
        repo = await add_repo(session, "octo/crowd", private=private)
        task = t.Task(repo_id=id_of(repo), number=1, title="Crowd", goal_minor=10**9,
                      currency="EUR", state=TaskState.OPEN)
        session.add(task)
        await session.flush()
        pledges = [t.Pledge(task_id=id_of(task),
                            backer=f"Backer{i // 2}" if i % 2 else f"backer{i // 2}",
                            amount_minor=100 + i, currency="EUR",
                            state=STATES[i % len(STATES)])
                   for i in range(count)]
        session.add_all(pledges)
        await session.commit()
        return id_of(task), pledges


async def test_a_task_with_many_pledges_lists_the_first_and_sums_them_all(
        sessionmaker: async_sessionmaker[AsyncSession], client: TestClient[Any, Any]) -> None:
    task_id, pledges = await many_pledges(sessionmaker, 250)
    _, task = await get(client, f"/api/v1/tasks/{task_id}")
    assert len(task["pledges"]) == routes.PLEDGES_SHOWN and task["pledge_count"] == 250
    assert [p["amount"]["amount"] for p in task["pledges"]] == [
        p.amount_minor for p in pledges[:routes.PLEDGES_SHOWN]]
    held = sum(p.amount_minor for p in pledges if p.state == PledgeState.HELD)
    raised = sum(p.amount_minor for p in pledges if p.state in RAISED)
    backers = {p.backer.casefold() for p in pledges if p.state in RAISED}
    assert task["pledged"]["amount"] == held and task["raised"]["amount"] == raised
    assert task["backers"] == len(backers)
    assert task["pledges_url"] == f"{PUBLIC}/api/v1/tasks/{task_id}/pledges"
    # The sums are the rules' own: the same as a `Bounty` that has every pledge.
    async with sessionmaker() as session:
        row = await session.get(t.Task, task_id)
        assert row is not None
        repo = await session.get(t.Repo, row.repo_id)
        assert repo is not None
        [every] = await load_tasks(session, [(row, repo)])
        [first] = await load_tasks(session, [(row, repo)], pledges=5, backers=3)
        b = every.bounty()
        assert first.figures(first.bounty()) == every.figures(b)
        assert (every.figures(b).held, every.figures(b).raised) == (b.held().minor,
                                                                   b.raised().minor)
        assert first.backers == [(name, sum(p.amount_minor for p in pledges
                                            if p.backer.casefold() == name.casefold()
                                            and p.state in RAISED))
                                 for name in b.backers(RAISED)[:3]]
        # Read a few pledges at a time, the first backers' totals still count all they gave.
        assert await first_backers(session, task_id, 3, chunk=4) == first.backers
    # Every pledge, a page at a time, exactly once and in order.
    seen: list[int] = []
    url: str | None = f"{PUBLIC}/api/v1/tasks/{task_id}/pledges?per_page=40"
    while url is not None:
        response, body = await get(client, url)
        assert body["task_id"] == task_id and len(body["pledges"]) <= 40
        seen += [p["id"] for p in body["pledges"]]
        url = body["next"]
        assert next_link(response) == url
    assert seen == [id_of(p) for p in pledges]


async def test_a_private_tasks_pledges_are_unknown_and_hidden_names_stay_hidden(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    task_id, _ = await many_pledges(sessionmaker, 30, private=True)
    async with app_client(engine) as client:
        for path in (f"/api/v1/tasks/{task_id}", f"/api/v1/tasks/{task_id}/pledges"):
            response = await client.get(path)
            assert response.status == 404 and "secret" not in await response.text()
    async with sessionmaker() as session:
        repo = (await session.get(t.Repo, (await session.get(t.Task, task_id)).repo_id))  # type: ignore[union-attr]
        assert repo is not None
        repo.private = False
        await session.commit()
    async with app_client(engine, public_backers="count") as client:
        _, body = await get(client, f"/api/v1/tasks/{task_id}/pledges")
        assert len(body["pledges"]) == 30
        assert all(p["backer"] is None for p in body["pledges"])
        text = await (await client.get("/github/octo/crowd/-/issues/1")).text()
        assert "acker1" not in text


async def test_a_ledger_is_read_a_page_at_a_time(
        sessionmaker: async_sessionmaker[AsyncSession], client: TestClient[Any, Any]) -> None:
    async with sessionmaker() as session:
        repo = await add_repo(session, "octo/ledger")
        task = t.Task(repo_id=id_of(repo), number=1, title="Ledger", currency="EUR")
        session.add(task)
        await session.flush()
        for i in range(7):
            txn = t.LedgerTransaction(key=f"pledge.held:{i}", kind="pledge.held",
                                      task_id=id_of(task))
            session.add(txn)
            await session.flush()
            session.add_all([
                t.LedgerEntry(transaction_id=id_of(txn), account=f"backer:github:b{i}",
                              amount_minor=-(100 + i), currency="EUR"),
                t.LedgerEntry(transaction_id=id_of(txn), account=f"escrow:task:{task.id}",
                              amount_minor=100 + i, currency="EUR")])
        await session.commit()
        task_id = id_of(task)
    keys: list[str] = []
    url: str | None = f"{PUBLIC}/api/v1/tasks/{task_id}/ledger?per_page=3"
    while url is not None:
        response, body = await get(client, url)
        assert body["balance"]["amount"] == sum(100 + i for i in range(7))
        assert len(body["transactions"]) <= 3
        keys += [txn["key"] for txn in body["transactions"]]
        url = body["next"]
        assert next_link(response) == url
    assert keys == [f"pledge.held:{i}" for i in range(7)]


async def test_a_task_page_lists_its_first_backers_and_newest_pledges(
        sessionmaker: async_sessionmaker[AsyncSession], client: TestClient[Any, Any]) -> None:
    backers = pages.LISTED_BACKERS + 7
    async with sessionmaker() as session:
        repo = await add_repo(session, "octo/big")
        task = t.Task(repo_id=id_of(repo), number=5, title="Big", goal_minor=10**8, currency="EUR")
        session.add(task)
        await session.flush()
        session.add_all([t.Pledge(task_id=id_of(task), backer=f"fan{i:04d}", amount_minor=500,
                                  currency="EUR", state=PledgeState.HELD) for i in range(backers)])
        session.add_all([t.AuditEvent(task_id=id_of(task), actor=f"fan{i:04d}",
                                      action="pledge.held",
                                      detail={"backer": f"fan{i:04d}", "amount": 500})
                         for i in range(backers)])
        session.add(t.AuditEvent(task_id=id_of(task), actor="maintainer", action="task.open"))
        await session.commit()
    text = await (await client.get("/github/octo/big/-/issues/5")).text()
    listed, timeline = text.split('id="timeline-h"')
    # The first backers, in the order they pledged, and how many more there are.
    names = re.findall(r"<th scope=\"row\">(fan\d+)</th>", listed)
    assert names == [f"fan{i:04d}" for i in range(pages.LISTED_BACKERS)]
    assert "and 7 more backers" in listed
    # The timeline: the task's own lines, the newest pledges, and how many older ones.
    assert "7 earlier pledges and refunds are not listed here." in timeline
    assert [f"fan{i:04d}" in timeline for i in (6, 7, backers - 1)] == [False, True, True]


async def test_a_months_refunds_are_listed_newest_first_and_counted(
        sessionmaker: async_sessionmaker[AsyncSession], client: TestClient[Any, Any]) -> None:
    refunds = routes.LIVE_SHOWN + 5
    async with sessionmaker() as session:
        repo = await add_repo(session, "octo/refunds")
        task = t.Task(repo_id=id_of(repo), number=1, title="Cancelled", goal_minor=10_000,
                      currency="EUR", state=TaskState.CANCELLED)
        session.add(task)
        await session.flush()
        for i in range(refunds):
            txn = t.LedgerTransaction(key=f"pledge.refunded:{i}", kind="pledge.refunded",
                                      task_id=id_of(task))
            session.add(txn)
            await session.flush()
            session.add_all([
                t.LedgerEntry(transaction_id=id_of(txn), account=f"escrow:task:{task.id}",
                              amount_minor=-(100 + i), currency="EUR"),
                t.LedgerEntry(transaction_id=id_of(txn), account=f"backer:github:b{i}",
                              amount_minor=100 + i, currency="EUR")])
        await session.commit()
        repo_id = id_of(repo)
    _, body = await get(client, f"/api/v1/repos/{repo_id}/needs")
    assert len(body["refunds"]) == routes.LIVE_SHOWN and body["more_refunds"] == 5
    # The newest are listed; the figures count every refund.
    assert [r["amount"]["amount"] for r in body["refunds"]][-1] == 100 + refunds - 1
    assert body["refunded"]["amount"] == sum(100 + i for i in range(refunds))
    text = await (await client.get("/github/octo/refunds/-/needs")).text()
    assert "and 5 earlier refunds this month" in text
