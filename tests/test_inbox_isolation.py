"""No delivery, whatever it holds, stops the others: one that breaks its batch (outside every
savepoint, or before it is even read) is counted, fails after its tries, and the rest go on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select
from test_inbox import NOW, comment, label

from bountybot.config import Settings
from bountybot.forges.events import SYNC_EVENT, Happening, happenings_to_json
from bountybot.forges.registry import FORGES
from bountybot.forges.topics import issue_topic
from bountybot.inbox import DeliveryWorker
from bountybot.inbox_writer import insert_new
from bountybot.resources import SESSIONMAKER
from bountybot.rules import LabelAdded
from bountybot.service import RUNTIME
from bountybot.states import PledgeState
from bountybot.storage import tables as t
from bountybot.storage.bounties import load_bounty
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import UnitOfWork

from clocks import Clock
from github_harness import REPO, REPO_ID, GitHubBot

# A repo named by path with half of a surrogate pair: valid JSON (`\ud800`), and it passes the
# worker's checks of what a forge could send, but no database driver can encode it. PostgreSQL
# meets it while the batch locks its tasks, outside every delivery's savepoint (SQLite, which
# locks nothing, meets it inside the delivery's savepoint). Reconciliation stores such rows.
POISON = happenings_to_json([Happening("Codertocat/Hello\ud800World", None, 1, LabelAdded())])


def row(name: str, kind: str, data: dict[str, Any] | str, topic: str | None = None,
        forge: str = "github") -> dict[str, Any]:
    """A delivery as the door stores it; its topic read from the payload as the door does."""
    if topic is None and isinstance(data, dict):
        topic = FORGES[forge].topic(kind, data)
    return dict(forge=forge, delivery_id=name, event=kind, topic=topic,
                payload=data if isinstance(data, str) else json.dumps(data),
                state=t.DeliveryState.PENDING, attempts=0, received_at=NOW)


async def store(sessionmaker: Any, rows: list[dict[str, Any]]) -> None:
    # Named d00, d01...: the inbox numbers a batch in the order of its names.
    async with UnitOfWork(sessionmaker) as uow:
        await insert_new(uow.session, rows)


async def states(sessionmaker: Any) -> dict[str, tuple[str, int]]:
    async with sessionmaker() as session:  # not the payloads: one may be unreadable
        rows = (await session.exec(select(t.Delivery.delivery_id, t.Delivery.state,
                                          t.Delivery.attempts))).all()
    return {name: (state, attempts) for name, state, attempts in rows}


async def pledges(sessionmaker: Any, number: int) -> list[tuple[str, str, int]]:
    async with sessionmaker() as session:
        repo = (await session.exec(select(t.Repo))).one()
        bounty = await load_bounty(session, repo, number)
    assert bounty is not None
    return [(p.backer, p.state, p.amount.minor) for p in bounty.pledges]


# -- through the real door ---------------------------------------------------------------------


async def test_a_delivery_that_breaks_its_batch_fails_alone_and_a_later_pledge_is_applied(
        db_url, github_server):
    clock = Clock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    bot = await GitHubBot.start(db_url, github_server, clock=clock)
    try:
        await bot.label(1)
        await bot.settle()
        sessionmaker = bot.app[SESSIONMAKER]
        await store(sessionmaker, [row("sync:github:poison", SYNC_EVENT, POISON)])
        assert (await bot.comment("alice", "/pledge 20")).status == 202
        runtime = bot.app[RUNTIME]
        for _ in range(200):  # bounded: a stuck inbox fails here instead of hanging
            state, attempts = (await states(sessionmaker))["sync:github:poison"]
            if state == t.DeliveryState.FAILED:
                break
            clock.move(hours=2)  # past the poisoned delivery's backoff
            runtime.wake_worker.set()
            await asyncio.sleep(0.02)
        await bot.settle()
        async with sessionmaker() as session:
            poison = (await session.exec(select(t.Delivery).where(
                t.Delivery.delivery_id == "sync:github:poison"))).one()
        assert poison.state == t.DeliveryState.FAILED
        assert poison.attempts == runtime.worker.max_attempts == 5
        assert "surrogates not allowed" in (poison.error or "")
        assert await pledges(sessionmaker, 1) == [("alice", PledgeState.HELD, 2000)]
        (alice,) = [c for c in github_server.comments(REPO, 1) if c.login == "alice"]
        assert [r.content for r in github_server.reactions(alice.id)] == ["+1"]
    finally:
        await bot.close()


# -- the worker --------------------------------------------------------------------------------


async def test_a_batch_that_fails_outside_every_savepoint_is_applied_one_by_one(
        sessionmaker, monkeypatch):
    """Whatever fails outside the deliveries' savepoints, on either database: the batch is tried
    again one delivery at a time, the one at fault is counted, its issue's later deliveries wait
    for it, everything else is applied."""
    real = DeliveryWorker._lock_tasks

    # The one function patched, so that both databases fail where PostgreSQL failed on
    # `Fixes #2147483648` before numbers were checked at the edge: taking the batch's locks.
    async def refusing(self: DeliveryWorker, session: Any, batch: list[Any]) -> None:
        if any(item.name == "d01" for item in batch):
            raise OverflowError("value out of int32 range")
        await real(self, session, batch)

    monkeypatch.setattr(DeliveryWorker, "_lock_tasks", refusing)
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issues", label(2)),  # the poisoned one
        row("d02", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
        row("d03", "issue_comment", comment(2, 12, "bob", "/pledge 5")),  # after it, issue 2
        row("d04", "issues", label(3)),
    ])
    clock = Clock(NOW)
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=clock, max_attempts=3)
    assert await worker.run_once() == 3
    seen = await states(sessionmaker)
    assert seen == {"d00": ("handled", 0), "d01": ("pending", 1), "d02": ("handled", 0),
                    "d03": ("pending", 0), "d04": ("handled", 0)}
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.HELD, 1000)]
    assert await worker.run_once() == 0  # nothing due before the backoff is over
    clock.move(hours=2)
    assert await worker.run_once() == 0
    assert (await states(sessionmaker))["d01"] == ("pending", 2)
    clock.move(hours=2)
    assert await worker.run_once() == 2  # the poison fails for good; bob's pledge goes on
    seen = await states(sessionmaker)
    assert seen["d01"] == ("failed", 3) and seen["d03"] == ("handled", 0)
    async with sessionmaker() as session:
        error = (await session.exec(select(t.Delivery.error).where(
            t.Delivery.delivery_id == "d01"))).one()
    assert error == "OverflowError: value out of int32 range"


async def test_a_payload_nothing_can_read_is_counted_and_holds_back_only_its_own_issue(
        sessionmaker):
    """Not JSON, or JSON no adapter can read: tried `max_attempts` times like any failure, then
    failed; deliveries about other issues never wait for it, later ones about its issue do."""
    topic1 = issue_topic("github", str(REPO_ID), 1)
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issue_comment", '{"comment": ', topic=topic1),  # cut short: not JSON
        row("d02", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
        row("d03", "issues", label(2)),
        # KeyError: number (reconciliation's own kind, under its own delivery ids)
        row("sync:github:d04", SYNC_EVENT, '{"happenings": [{"repo_path": "a/b"}]}',
            topic=issue_topic("github", str(REPO_ID), 3)),
        row("d05", "issue_comment", comment(2, 12, "bob", "/pledge 5")),
    ])
    clock = Clock(NOW)
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=clock, max_attempts=2)
    assert await worker.run_once() == 3
    seen = await states(sessionmaker)
    assert seen == {"d00": ("handled", 0), "d01": ("pending", 1), "d02": ("pending", 0),
                    "d03": ("handled", 0), "sync:github:d04": ("pending", 1),
                    "d05": ("handled", 0)}
    assert await pledges(sessionmaker, 2) == [("bob", PledgeState.HELD, 500)]
    # Another replica looking meanwhile does not take alice's pledge past the bad delivery.
    other = DeliveryWorker(sessionmaker, Settings(), {}, clock=clock, max_attempts=2)
    assert await other.due(100) == []
    clock.move(hours=2)
    assert await worker.run_once() == 3
    seen = await states(sessionmaker)
    assert seen["d01"] == ("failed", 2) and seen["sync:github:d04"] == ("failed", 2)
    assert seen["d02"] == ("handled", 0)
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.HELD, 1000)]
    async with sessionmaker() as session:
        errors = dict((await session.exec(select(t.Delivery.delivery_id, t.Delivery.error)
                                          .where(t.Delivery.state == "failed"))).all())
    assert errors["d01"].startswith("JSONDecodeError: ")
    assert errors["sync:github:d04"] == "KeyError: 'number'"


@pytest.fixture
async def sqlite_sessionmaker(sqlite_url: str) -> AsyncIterator[Any]:
    engine = create_engine(sqlite_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def test_a_delivery_that_cannot_even_be_read_is_counted_each_round(sqlite_sessionmaker):
    """SQLite keeps whatever bytes it is given as text: a payload that is no UTF-8 makes the
    batch's first read fail, before any attempt could be counted. The loop used to log that and
    read the same batch again, forever; now the batch goes one by one, and that one is counted.
    (PostgreSQL refuses such text when it is written.)"""
    sessionmaker = sqlite_sessionmaker
    await store(sessionmaker, [row("d00", "issues", label(1))])
    async with UnitOfWork(sessionmaker) as uow:
        await uow.session.exec(text(  # type: ignore[call-overload]
            "INSERT INTO delivery (forge, delivery_id, event, payload, state, attempts,"
            " received_at) VALUES ('github', 'd01', 'issues', CAST(X'7bff22fe7d' AS TEXT),"
            " 'pending', 0, :at)").bindparams(at=NOW.replace(tzinfo=None)))
    await store(sessionmaker, [row("d02", "issue_comment", comment(1, 11, "alice", "/pledge 10"))])
    clock = Clock(NOW)
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=clock, max_attempts=3)
    for attempts in (1, 2):
        await worker.run_once()  # never raises: there is nothing for the loop to spin on
        assert (await states(sessionmaker))["d01"] == ("pending", attempts)
        clock.move(hours=2)
    assert await worker.run_once() == 1
    seen = await states(sessionmaker)
    assert seen == {"d00": ("handled", 0), "d01": ("failed", 3), "d02": ("handled", 0)}
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.HELD, 1000)]
