"""Deliveries about one issue apply in the order received, whichever replica takes them: one
never overtakes an earlier one about the same issue that another replica is applying, or that
waits for its retry; deliveries about other issues never wait for either."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from test_inbox import NOW, Maintainers, comment, label
from test_inbox_isolation import Clock, row, states, store

from bountybot.config import Settings
from bountybot.inbox import DeliveryWorker
from bountybot.states import PledgeState
from bountybot.storage import tables as t
from bountybot.storage.bounties import ensure_repo, load_bounty
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import UnitOfWork

from github_harness import REPO, REPO_ID


async def ids(sessionmaker: Any) -> dict[str, int]:
    async with sessionmaker() as session:
        rows = (await session.exec(select(t.Delivery.delivery_id, t.Delivery.id))).all()
    return dict(rows)


async def bounty(sessionmaker: Any, number: int) -> Any:
    async with sessionmaker() as session:
        repo = (await session.exec(select(t.Repo))).one()
        return await load_bounty(session, repo, number)


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def blocked_by(engine: AsyncEngine, holder: int) -> None:
    """Return once a session waits for a lock that backend `holder` holds (bounded)."""
    query = text(f"SELECT count(*) FROM pg_stat_activity WHERE {int(holder)} = ANY("
                 "pg_blocking_pids(pid))")
    async with asyncio.timeout(10):
        while True:
            async with engine.connect() as conn:
                if (await conn.execute(query)).scalar():
                    return
            await asyncio.sleep(0.01)


async def test_a_pledge_waits_for_the_label_another_replica_is_applying(pg):
    """Two replicas on one PostgreSQL: A is applying issue 1's label (its transaction is open,
    waiting on a third one), B looks for work. B must not take the pledge on issue 1 received
    after the label (it would answer "no bounty here" and lose it), but takes issue 5's label."""
    sessionmaker = create_sessionmaker(pg)
    async with UnitOfWork(sessionmaker) as uow:
        repo_id = t.id_of(await ensure_repo(uow.session, "github", str(REPO_ID), REPO))
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
        row("d02", "issues", label(5)),
    ])
    numbered = await ids(sessionmaker)
    a = DeliveryWorker(sessionmaker, Settings(), {}, clock=lambda: NOW)
    b = DeliveryWorker(sessionmaker, Settings(), {}, clock=lambda: NOW)
    # A third transaction creates issue 1's task and stays open: A's label, creating it too,
    # waits on the unique key, holding delivery d00 in A's open transaction.
    third = UnitOfWork(sessionmaker)
    await third.__aenter__()
    try:
        third.session.add(t.Task(repo_id=repo_id, number=1, currency="EUR"))
        await third.session.flush()
        holder = (await third.session.exec(text("SELECT pg_backend_pid()"))).one()[0]
        applying = asyncio.create_task(a.run_once(limit=1))
        await blocked_by(pg, holder)
        assert await b.due(100) == [numbered["d02"]]
        assert await b.run_once() == 1
        assert (await states(sessionmaker))["d01"] == ("pending", 0)
    finally:
        await third.__aexit__(RuntimeError, RuntimeError("rolled back"), None)
    assert await applying == 1  # the third one rolled back: A's label creates the task
    assert await b.run_once() == 1  # now the pledge, after the label
    assert set((await states(sessionmaker)).values()) == {("handled", 0)}
    task = await bounty(sessionmaker, 1)
    assert [(p.backer, p.state) for p in task.pledges] == [("alice", PledgeState.HELD)]
    async with sessionmaker() as session:
        replies = (await session.exec(select(t.Outbox).where(t.Outbox.kind == "reply"))).all()
    assert replies == []  # no "this issue has no bounty" to alice


async def test_a_batch_never_overtakes_an_earlier_delivery_it_did_not_take(sessionmaker):
    """Two replicas read the same due deliveries before either took them, and each took a part:
    the one holding the later delivery of an issue leaves it for after the earlier one."""
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
    ])
    numbered = await ids(sessionmaker)
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=lambda: NOW)
    assert await worker.handle_batch([numbered["d01"]]) == 0
    assert (await states(sessionmaker))["d01"] == ("pending", 0)
    assert await worker.run_once() == 2
    task = await bounty(sessionmaker, 1)
    assert [(p.backer, p.state) for p in task.pledges] == [("alice", PledgeState.HELD)]


async def test_while_the_forge_is_down_only_the_issue_that_needs_it_waits(sessionmaker):
    """A maintainer's /goal waits for GitHub to say who maintains the repo: the pledge after it
    on that issue waits too, on this replica and on any other, even once the goal waits for its
    retry time; issue 2's deliveries go on at once."""
    forge = Maintainers({"maya"})
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issue_comment", comment(1, 11, "maya", "/goal 50")),
        row("d02", "issue_comment", comment(1, 12, "alice", "/pledge 10")),
        row("d03", "issues", label(2)),
        row("d04", "issue_comment", comment(2, 13, "bob", "/pledge 5")),
    ])
    clock = Clock(NOW)
    forge.down = True
    worker = DeliveryWorker(sessionmaker, Settings(), {"github": forge}, clock=clock)
    assert await worker.run_once() == 3
    seen = await states(sessionmaker)
    assert seen == {"d00": ("handled", 0), "d01": ("pending", 1), "d02": ("pending", 0),
                    "d03": ("handled", 0), "d04": ("handled", 0)}
    clock.move(seconds=10)  # the goal's retry is not due yet
    other = DeliveryWorker(sessionmaker, Settings(), {"github": forge}, clock=clock)
    assert await other.due(100) == []
    assert await other.run_once() == 0
    forge.down = False
    clock.move(minutes=5)
    assert await other.run_once() == 2
    task = await bounty(sessionmaker, 1)
    assert task.goal is not None and task.goal.minor == 5000
    assert [(p.backer, p.state) for p in task.pledges] == [("alice", PledgeState.HELD)]
    assert forge.asked == ["maya", "maya"]  # never asked about a plain /pledge
