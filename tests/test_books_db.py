"""Bounties told through the real database (SQLite and PostgreSQL), audited by `bountybot audit`."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from bountybot.cli import main
from bountybot.rules import (
    Actor,
    Comment,
    Decision,
    Event,
    LabelAdded,
    LinkClosed,
    LinkOpened,
    PayoutPaid,
    Policy,
    decide_comment,
    decide_event,
)
from bountybot.states import ClaimState, PayoutState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit
from bountybot.storage.bounties import ensure_repo, load_bounty, save_decision
from bountybot.storage.uow import UnitOfWork

from memory_books import ISSUE, Story


class DbStory:
    """The same story as `memory_books.Story`, each step in its own unit of work."""

    def __init__(self, sessionmaker, policy: Policy | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.policy = policy or Policy()
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        self.ids = itertools.count(5000)

    async def _step(self, decide, source: str) -> Decision:  # type: ignore[no-untyped-def]
        async with UnitOfWork(self.sessionmaker) as uow:
            repo = await ensure_repo(uow.session, "github", "1296269", ISSUE.repo)
            bounty = await load_bounty(uow.session, repo, ISSUE.number, lock=True)
            decision = decide(bounty)
            await save_decision(uow.session, repo, ISSUE, decision, source=source, now=self.now)
        return decision

    async def say(self, login: str, body: str) -> Decision:
        cid = str(next(self.ids))
        comment = Comment(cid, Actor(login, is_maintainer=login == "maya"), body)
        return await self._step(
            lambda b: decide_comment(b, ISSUE, comment, self.policy, self.now), f"comment:{cid}")

    async def event(self, event: Event, source: str | None = None) -> Decision:
        return await self._step(lambda b: decide_event(b, ISSUE, event, self.policy, self.now),
                                source or f"event:{next(self.ids)}")

    async def bounty(self):  # type: ignore[no-untyped-def]
        async with UnitOfWork(self.sessionmaker) as uow:
            repo = await ensure_repo(uow.session, "github", "1296269", ISSUE.repo)
            return await load_bounty(uow.session, repo, ISSUE.number)


SCRIPT: list[tuple[str, str] | Event] = [
    LabelAdded(),
    ("maya", "/goal 110.50"),
    ("alice", "/pledge 60"),
    ("bob", "/pledge 50,50 €"),
    ("carol", "/claim"),
    ("dave", "/claim"),
    ("alice", "/withdraw"),
    LinkOpened(12, "carol"),
    LinkClosed(12, "carol", merged=True),
]


async def tell(story: DbStory) -> None:
    for step in SCRIPT:
        if isinstance(step, tuple):
            await story.say(*step)
        else:
            await story.event(step)


async def test_a_whole_bounty_round_trips_through_the_database(sessionmaker):
    db = DbStory(sessionmaker)
    await tell(db)
    mem = Story()
    for step in SCRIPT:
        mem.say(*step) if isinstance(step, tuple) else mem.event(step)
    stored = await db.bounty()
    assert stored is not None
    assert stored.state == TaskState.DONE == mem.task.state
    assert [(p.backer, p.amount, p.state) for p in stored.pledges] == [
        (p.backer, p.amount, p.state) for p in mem.task.pledges]
    assert [(c.developer, c.state) for c in stored.claims] == [("carol", ClaimState.DONE)]
    assert [(p.developer, p.amount.minor, p.state) for p in stored.payouts] == [
        ("carol", 11050, PayoutState.PENDING)]
    await db.event(PayoutPaid(stored.payouts[0].id, "SEPA-42"))
    report = await run_audit(sessionmaker)
    assert report.ok, report.render()
    assert report.transactions == 4  # two pledges held, task done, payout paid
    async with UnitOfWork(sessionmaker) as uow:
        trail = (await uow.session.exec(select(t.AuditEvent.action))).all()
        outbox = (await uow.session.exec(select(t.Outbox))).all()
    assert "command.pledge" in trail and "task.done" in trail and "payout.paid" in trail
    assert {o.kind for o in outbox} == {"summary", "reaction", "reply"}
    replies = [o for o in outbox if o.kind == "reply"]
    assert len(replies) == 1 and "locked" in replies[0].payload["text"]


async def test_the_same_payout_cannot_be_written_twice(sessionmaker):
    db = DbStory(sessionmaker)
    await db.event(LabelAdded())
    await db.say("alice", "/pledge 10")
    await db.say("carol", "/claim")
    merge = LinkClosed(3, "carol", merged=True)
    await db.event(merge)
    stored = await db.bounty()
    paid = PayoutPaid(stored.payouts[0].id, "ref")
    # Decide twice on the same state, as two racing workers would, then write both.
    decision = decide_event(stored, ISSUE, paid, db.policy, db.now)
    again = decide_event(stored, ISSUE, paid, db.policy, db.now)
    async with UnitOfWork(sessionmaker) as uow:
        repo = await ensure_repo(uow.session, "github", "1296269", ISSUE.repo)
        await save_decision(uow.session, repo, ISSUE, decision, source="a", now=db.now)
    with pytest.raises(IntegrityError):
        async with UnitOfWork(sessionmaker) as uow:
            repo = await ensure_repo(uow.session, "github", "1296269", ISSUE.repo)
            await save_decision(uow.session, repo, ISSUE, again, source="b", now=db.now)
    report = await run_audit(sessionmaker)
    assert report.ok, report.render()
    async with UnitOfWork(sessionmaker) as uow:
        paid_rows = (await uow.session.exec(select(t.LedgerTransaction).where(
            t.LedgerTransaction.kind == "payout.paid"))).all()
    assert len(paid_rows) == 1


async def test_a_replayed_cause_queues_no_second_message(sessionmaker):
    db = DbStory(sessionmaker)
    await db.event(LabelAdded(), source="delivery-1")
    stored = await db.bounty()
    decision = decide_event(stored, ISSUE, LinkOpened(4, "zed"), db.policy, db.now)
    for _ in range(2):
        async with UnitOfWork(sessionmaker) as uow:
            repo = await ensure_repo(uow.session, "github", "1296269", ISSUE.repo)
            await save_decision(uow.session, repo, ISSUE, decision, source="delivery-2",
                                now=db.now)
    async with UnitOfWork(sessionmaker) as uow:
        keys = (await uow.session.exec(select(t.Outbox.dedup_key))).all()
    assert len(keys) == len(set(keys)) == 2


async def test_audit_command_passes_then_catches_a_corrupted_book(db_url, sessionmaker,
                                                                   monkeypatch, capsys):
    db = DbStory(sessionmaker)
    await tell(db)
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
    monkeypatch.chdir(os.path.dirname(__file__))
    assert await _run_cli(["audit"]) == 0
    assert "all invariants hold" in capsys.readouterr().out
    # Someone edits a pledge by hand: the escrow no longer matches, nor the backer's account.
    async with UnitOfWork(sessionmaker) as uow:
        await uow.session.exec(text("UPDATE pledge SET amount_minor = amount_minor + 1"
                                    " WHERE backer = 'bob'"))
    assert await _run_cli(["audit"]) == 1
    out = capsys.readouterr().out
    assert "problem" in out and "bob" in out


async def test_audit_catches_a_ledger_entry_edited_on_sqlite(sqlite_url, monkeypatch, capsys):
    from bountybot.storage.engine import create_engine, create_sessionmaker

    engine = create_engine(sqlite_url)
    try:
        db = DbStory(create_sessionmaker(engine))
        await tell(db)
        async with UnitOfWork(db.sessionmaker) as uow:
            await uow.session.exec(text(
                "UPDATE ledger_entry SET amount_minor = amount_minor - 100"
                " WHERE id = (SELECT min(id) FROM ledger_entry)"))
    finally:
        await engine.dispose()
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", sqlite_url)
    assert await _run_cli(["audit"]) == 1
    assert "does not balance" in capsys.readouterr().out


async def _run_cli(argv: list[str]) -> int:
    """`bountybot ...` in a thread: the CLI runs its own event loop."""
    import asyncio

    return await asyncio.to_thread(main, argv)

