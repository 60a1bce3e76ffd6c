"""A batch of deliveries is decided in memory and written once (`storage/batch.py`): each table
in one statement for the whole batch, new rows named before they are written, and the same
rows, books and answers as deliveries applied one at a time. What the rules cannot decide alone
(a repo renamed) is written at once in the middle of a batch, after what the batch decided so
far; should writing the batch fail, its deliveries are applied one by one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from test_inbox import NOW, comment, label
from test_inbox_isolation import pledges, row, states, store

from bountybot.config import Settings
from bountybot.inbox import DeliveryWorker
from bountybot.states import PledgeState
from bountybot.storage import batch
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit
from bountybot.storage.uow import UnitOfWork

from clocks import Clock


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements sent on `engine` (the first line of each, as sent)."""
    sent: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    yield sent
    event.remove(engine.sync_engine, "before_cursor_execute", seen)


def renamed(data: dict[str, Any], path: str = "Codertocat/Renamed") -> dict[str, Any]:
    """The payload as the forge sends it once the repo has a new name (same id)."""
    data["repository"]["full_name"] = path
    data["repository"]["name"] = path.split("/")[1]
    return data


async def outbox_keys(sessionmaker: Any) -> list[str]:
    async with sessionmaker() as session:
        return sorted((await session.exec(select(t.Outbox.dedup_key))).all())


async def test_a_batch_writes_each_table_once_and_keeps_the_books(
        sessionmaker: Any, statements: list[str]) -> None:
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issues", label(2)),
        row("d02", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
        row("d03", "issue_comment", comment(1, 12, "bob", "/pledge 5")),
        row("d04", "issue_comment", comment(2, 13, "carol", "/pledge 7\n/pledge 3")),
        row("d05", "issue_comment", comment(1, 14, "alice", "/withdraw")),
        # Bob's comment again, under another delivery id (a replay from the forge's UI).
        row("d06", "issue_comment", comment(1, 12, "bob", "/pledge 5")),
    ])
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=Clock(NOW))
    statements.clear()
    assert await worker.run_once() == 7
    assert set((await states(sessionmaker)).values()) == {("handled", 0)}
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.WITHDRAWN, 1000),
                                              ("bob", PledgeState.HELD, 500)]
    assert await pledges(sessionmaker, 2) == [("carol", PledgeState.HELD, 700),
                                              ("carol", PledgeState.HELD, 300)]
    # Pledged, held and withdrawn in one batch: the ledger names each pledge by its id.
    async with sessionmaker() as session:
        ids = sorted((await session.exec(select(t.Pledge.id))).all())
        kinds = sorted((await session.exec(select(t.LedgerTransaction.key))).all())
        handled = (await session.exec(select(t.HandledComment.comment_id, t.HandledComment.task_id)
                                      .order_by(col(t.HandledComment.id)))).all()
        tasks = {n: i for i, n in (await session.exec(select(t.Task.id, t.Task.number))).all()}
    alice, bob, carol7, carol3 = ids
    assert kinds == sorted([f"pledge.held:{i}" for i in ids] + [f"pledge.withdrawn:{alice}"])
    # Each command line recorded once, with its task (bob's replay applied nothing).
    assert handled == [("11", tasks[1]), ("12", tasks[1]), ("13", tasks[2]), ("13", tasks[2]),
                       ("14", tasks[1])]
    assert (await run_audit(sessionmaker)).ok
    reactions = [k for k in await outbox_keys(sessionmaker) if k.startswith("reaction:")]
    assert reactions == [f"reaction:github:{cid}" for cid in (11, 12, 13, 14)]
    # The five pledges went to the database in one statement, as did the ledger's entries.
    writes = [s.split("(")[0] for s in statements if s.startswith("INSERT")]
    assert writes.count("INSERT INTO pledge ") == 1
    assert writes.count("INSERT INTO ledger_entry ") == 1
    assert writes.count("INSERT INTO audit_event ") <= 2  # the repo's first label, then the rest


async def test_a_repo_renamed_mid_batch_is_written_between_what_the_batch_decided(
        sessionmaker: Any) -> None:
    """The rename is written at once (its own savepoint): what the batch decided before it is
    written first, and what follows it starts from the rows as they are then."""
    await store(sessionmaker, [row("d00", "issues", label(1))])
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=Clock(NOW))
    assert await worker.run_once() == 1
    await store(sessionmaker, [
        row("d01", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
        row("d02", "issue_comment", renamed(comment(1, 12, "bob", "/pledge 5"))),
        row("d03", "issue_comment", renamed(comment(1, 13, "carol", "/pledge 7"))),
        row("d04", "issue_comment", renamed(comment(1, 14, "alice", "/withdraw"))),
        row("d05", "issue_comment", renamed(comment(1, 15, "bob", "/pledge 1"))),
    ])
    assert await worker.run_once() == 5
    assert await pledges(sessionmaker, 1) == [
        ("alice", PledgeState.WITHDRAWN, 1000), ("bob", PledgeState.HELD, 500),
        ("carol", PledgeState.HELD, 700), ("bob", PledgeState.HELD, 100)]
    async with sessionmaker() as session:
        assert (await session.exec(select(t.Repo.full_path))).all() == ["Codertocat/Renamed"]
    assert (await run_audit(sessionmaker)).ok
    # Rows written afterwards the usual way take ids after those the batch gave.
    async with UnitOfWork(sessionmaker) as uow:
        task = (await uow.session.exec(select(t.Task))).one()
        uow.session.add(t.Pledge(task_id=t.id_of(task), backer="dave", amount_minor=100,
                                 currency="EUR", state=PledgeState.PENDING, created_at=NOW))
    async with sessionmaker() as session:
        ids = (await session.exec(select(t.Pledge.id).order_by(col(t.Pledge.id)))).all()
    assert len(set(ids)) == 5


async def test_a_batch_that_cannot_be_written_is_applied_one_by_one(
        sessionmaker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the batch fails (here: whenever it holds the reaction to comment 12): nothing of
    it is kept, then each delivery is applied alone, and only the one at fault is counted."""
    real = batch.DecisionBatch.write

    async def refusing(self: batch.DecisionBatch, session: Any, now: Any) -> None:
        if any(r["dedup_key"] == "reaction:github:12" for r in self.outbox):
            raise RuntimeError("the disk is full")
        await real(self, session, now)

    monkeypatch.setattr(batch.DecisionBatch, "write", refusing)
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issues", label(2)),
        row("d02", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
        row("d03", "issue_comment", comment(2, 12, "bob", "/pledge 5")),  # the one at fault
        row("d04", "issue_comment", comment(1, 13, "carol", "/pledge 7")),
    ])
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=Clock(NOW))
    assert await worker.run_once() == 4
    assert await states(sessionmaker) == {
        "d00": ("handled", 0), "d01": ("handled", 0), "d02": ("handled", 0),
        "d03": ("pending", 1), "d04": ("handled", 0)}
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.HELD, 1000),
                                              ("carol", PledgeState.HELD, 700)]
    assert await pledges(sessionmaker, 2) == []
    assert "reaction:github:12" not in await outbox_keys(sessionmaker)
    assert (await run_audit(sessionmaker)).ok
