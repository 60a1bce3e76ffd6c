"""The tables, the engine and the unit of work, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.states import ClaimState, LinkState, PayoutState, PledgeState, TaskState
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.tables import (
    AuditEvent,
    Claim,
    Delivery,
    DeliveryState,
    LedgerEntry,
    LedgerTransaction,
    Link,
    Outbox,
    OutboxState,
    Payout,
    Pledge,
    Repo,
    Task,
    Waiting,
    id_of,
)
from bountybot.storage.uow import CommitOutsideUnitOfWork, UnitOfWork, for_update_skip_locked

Sessions = async_sessionmaker[AsyncSession]

NOW = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
BIG = 3 * 2**31 + 7  # more than a 32-bit integer holds


async def add(sessionmaker: Sessions, *rows: SQLModel) -> None:
    """Write rows in one unit of work (ids are filled in)."""
    async with UnitOfWork(sessionmaker) as uow:
        for row in rows:
            uow.session.add(row)
            await uow.session.flush()


async def fetch(sessionmaker: Sessions, model: type[SQLModel], id_: int | None) -> Any:
    async with sessionmaker() as session:
        return await session.get(model, id_)


async def count(sessionmaker: Sessions, model: type[SQLModel]) -> int:
    async with sessionmaker() as session:
        return (await session.exec(select(func.count()).select_from(model))).one()


async def make_task(sessionmaker: Sessions, number: int = 7) -> Task:
    repo = Repo(forge="github", forge_repo_id="100", full_path="octo/hello", created_at=NOW)
    await add(sessionmaker, repo)
    task = Task(repo_id=id_of(repo), number=number, currency="EUR", created_at=NOW, updated_at=NOW)
    await add(sessionmaker, task)
    return task


def posting(key: str, *legs: tuple[str, int, str]) -> tuple[LedgerTransaction, Callable[..., Any]]:
    """A ledger transaction and a function that makes its entries once it has an id."""
    transaction = LedgerTransaction(key=key, kind="test", created_at=NOW)

    def entries() -> list[LedgerEntry]:
        return [
            LedgerEntry(transaction_id=id_of(transaction), account=account, amount_minor=minor,
                        currency=currency)
            for account, minor, currency in legs
        ]

    return transaction, entries


async def write_posting(sessionmaker: Sessions, key: str, *legs: tuple[str, int, str]) -> None:
    transaction, entries = posting(key, *legs)
    async with UnitOfWork(sessionmaker) as uow:
        uow.session.add(transaction)
        await uow.session.flush()
        uow.session.add_all(entries())


# -- every table -------------------------------------------------------------------------


async def test_every_table_round_trips(sessionmaker: Sessions) -> None:
    repo = Repo(forge="gitlab", forge_repo_id="278964", full_path="group/sub/name",
                installation_id="42", locale="fr", currency="EUR", created_at=NOW)
    await add(sessionmaker, repo)
    task = Task(repo_id=id_of(repo), number=12, title="Faster builds", url="https://x/12",
                state=TaskState.FUNDED, goal_minor=BIG, currency="EUR", deadline=date(2025, 6, 1),
                summary_comment_id="98765", award=[{"login": "dev", "minor": 5050}],
                created_at=NOW, updated_at=NOW)
    await add(sessionmaker, task)
    transaction = LedgerTransaction(key="pledge.held:1", kind="pledge.held", task_id=id_of(task),
                                    memo="alice", created_at=NOW)
    await add(sessionmaker, transaction)
    rows: list[SQLModel] = [
        Pledge(task_id=id_of(task), backer="alice", amount_minor=BIG, currency="EUR",
               state=PledgeState.HELD, comment_id="c1", provider_ref="pi_1", created_at=NOW,
               updated_at=NOW),
        Claim(task_id=id_of(task), developer="dev", state=ClaimState.IN_REVIEW, created_at=NOW,
              expires_at=None, paused_seconds=86_400, ended_at=None),
        Waiting(task_id=id_of(task), login="bob", position=1, created_at=NOW),
        Link(task_id=id_of(task), number=13, author="dev", state=LinkState.MERGED, url="https://x/13",
             updated_at=NOW),
        Payout(task_id=id_of(task), developer="dev", amount_minor=BIG, currency="EUR",
               state=PayoutState.PAID, reference="SEPA-1", attempts=2, last_error="timeout",
               due_at=NOW, created_at=NOW, paid_at=NOW + timedelta(days=1)),
        Delivery(forge="github", delivery_id="72d3162e", event="issue_comment",
                 payload='{"action": "created"}', state=DeliveryState.HANDLED, error=None,
                 attempts=1, received_at=NOW, handled_at=NOW),
        Outbox(task_id=id_of(task), kind="summary", payload={"body": "€50 of €100"},
               dedup_key="summary:12:3", state=OutboxState.SENT, attempts=1, next_attempt_at=NOW,
               created_at=NOW, sent_at=NOW),
        AuditEvent(task_id=id_of(task), actor="alice", action="command.pledge",
                   detail={"amount": 5000, "currency": "EUR"}, created_at=NOW),
        LedgerEntry(transaction_id=id_of(transaction), account="backer:github:alice",
                    amount_minor=-BIG, currency="EUR"),
        LedgerEntry(transaction_id=id_of(transaction), account=f"escrow:task:{id_of(task)}",
                    amount_minor=BIG, currency="EUR"),
    ]
    await add(sessionmaker, *rows)

    for row in [repo, task, transaction, *rows]:
        stored = await fetch(sessionmaker, type(row), getattr(row, "id", None))
        assert stored is not None
        assert stored.model_dump() == row.model_dump(), type(row).__name__

    stored_task = await fetch(sessionmaker, Task, task.id)
    assert type(stored_task.state) is TaskState
    assert stored_task.created_at.tzinfo is UTC
    assert stored_task.goal_minor == BIG


async def test_defaults_fill_in_what_is_not_given(sessionmaker: Sessions) -> None:
    task = await make_task(sessionmaker)
    delivery = Delivery(forge="github", delivery_id="d1", event="ping", payload="{}")
    outbox = Outbox(kind="notice", dedup_key="n1")
    await add(sessionmaker, delivery, outbox)
    stored = await fetch(sessionmaker, Delivery, delivery.id)
    assert stored.state == DeliveryState.PENDING
    assert stored.attempts == 0
    assert stored.received_at.tzinfo is UTC
    assert (await fetch(sessionmaker, Outbox, outbox.id)).payload == {}
    assert (await fetch(sessionmaker, Task, task.id)).state == TaskState.OPEN


async def test_big_amounts_survive(sessionmaker: Sessions) -> None:
    task = await make_task(sessionmaker)
    huge = 2**62
    pledge = Pledge(task_id=id_of(task), backer="whale", amount_minor=huge, currency="EUR",
                    created_at=NOW, updated_at=NOW)
    await add(sessionmaker, pledge)
    await write_posting(sessionmaker, "big", ("a", -huge, "EUR"), ("b", huge, "EUR"))
    assert (await fetch(sessionmaker, Pledge, pledge.id)).amount_minor == huge
    async with sessionmaker() as session:
        total = (await session.exec(select(func.sum(LedgerEntry.amount_minor)))).one()
        biggest = (await session.exec(select(func.max(LedgerEntry.amount_minor)))).one()
    assert (total, biggest) == (0, huge)


async def test_timestamps_come_back_in_utc(sessionmaker: Sessions) -> None:
    paris = timezone(timedelta(hours=1))
    repo = Repo(forge="github", forge_repo_id="1", full_path="a/b",
                created_at=datetime(2025, 1, 1, 13, 0, tzinfo=paris))
    await add(sessionmaker, repo)
    stored = await fetch(sessionmaker, Repo, repo.id)
    assert stored.created_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert stored.created_at.tzinfo is UTC


async def test_naive_timestamps_are_refused(sessionmaker: Sessions) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        await add(sessionmaker, Repo(forge="github", forge_repo_id="1", full_path="a/b",
                                     created_at=datetime(2025, 1, 1)))


async def test_timestamps_compare_in_queries(sessionmaker: Sessions) -> None:
    task = await make_task(sessionmaker)
    claims = [
        Claim(task_id=id_of(task), developer=f"d{i}", created_at=NOW,
              expires_at=NOW + timedelta(hours=i))
        for i in (-2, 1)
    ]
    await add(sessionmaker, *claims)
    async with sessionmaker() as session:
        due = await session.exec(
            select(col(Claim.developer)).where(col(Claim.expires_at) <= NOW)
        )
        assert due.all() == ["d-2"]


async def test_unknown_states_are_refused(sessionmaker: Sessions) -> None:
    task = await make_task(sessionmaker)
    task.state = "almost_done"  # type: ignore[assignment]
    with pytest.raises(StatementError, match="almost_done"):
        await add(sessionmaker, task)


async def test_amounts_must_be_positive(sessionmaker: Sessions) -> None:
    task = await make_task(sessionmaker)
    with pytest.raises(IntegrityError):
        await add(sessionmaker, Pledge(task_id=id_of(task), backer="a", amount_minor=0,
                                       currency="EUR", created_at=NOW, updated_at=NOW))


async def test_foreign_keys_are_enforced(sessionmaker: Sessions) -> None:
    with pytest.raises(IntegrityError):
        await add(sessionmaker, Pledge(task_id=999, backer="a", amount_minor=1, currency="EUR",
                                       created_at=NOW, updated_at=NOW))


# -- unique constraints ------------------------------------------------------------------


def repo_row(_: int) -> SQLModel:
    return Repo(forge="github", forge_repo_id="1296269", full_path="octo/renamed", created_at=NOW)


def delivery_row(_: int) -> SQLModel:
    return Delivery(forge="github", delivery_id="72d3162e", event="ping", payload="{}")


def transaction_row(_: int) -> SQLModel:
    return LedgerTransaction(key="pledge.held:12", kind="pledge.held", created_at=NOW)


def outbox_row(task_id: int) -> SQLModel:
    return Outbox(task_id=task_id, kind="reply", dedup_key="reply:comment:55")


def waiting_row(task_id: int) -> SQLModel:
    return Waiting(task_id=task_id, login="bob", position=1, created_at=NOW)


def link_row(task_id: int) -> SQLModel:
    return Link(task_id=task_id, number=13, author="dev", updated_at=NOW)


@pytest.mark.parametrize(
    "make",
    [repo_row, delivery_row, transaction_row, outbox_row, waiting_row, link_row],
    ids=["repo.forge+forge_repo_id", "delivery.forge+delivery_id", "ledger_transaction.key",
         "outbox.dedup_key", "waiting.task_id+login", "link.task_id+number"],
)
async def test_unique_constraints_hold(
    sessionmaker: Sessions, make: Callable[[int], SQLModel]
) -> None:
    task = await make_task(sessionmaker)
    assert task.id is not None
    first = make(task.id)
    await add(sessionmaker, first)
    before = await count(sessionmaker, type(first))
    with pytest.raises(IntegrityError):
        await add(sessionmaker, make(task.id))
    assert await count(sessionmaker, type(first)) == before


async def test_same_delivery_id_on_another_forge_is_fine(sessionmaker: Sessions) -> None:
    await add(sessionmaker, Delivery(forge="github", delivery_id="x", event="e", payload="{}"))
    await add(sessionmaker, Delivery(forge="gitlab", delivery_id="x", event="e", payload="{}"))
    assert await count(sessionmaker, Delivery) == 2


# -- the unit of work --------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_unit_of_work_commits_on_success(sessionmaker: Sessions) -> None:
    calls: list[str] = []
    async with UnitOfWork(sessionmaker) as uow:
        uow.session.add(delivery_row(0))
        uow.after_commit(lambda: calls.append("sync"))

        async def wake() -> None:
            calls.append(f"async, rows={await count(sessionmaker, Delivery)}")

        uow.after_commit(wake)
        assert calls == []
    assert calls == ["sync", "async, rows=1"]  # in order, and after the commit
    assert await count(sessionmaker, Delivery) == 1


async def test_unit_of_work_rolls_back_on_exception(sessionmaker: Sessions) -> None:
    calls: list[str] = []
    with pytest.raises(Boom):
        async with UnitOfWork(sessionmaker) as uow:
            uow.session.add(delivery_row(0))
            await uow.session.flush()
            uow.after_commit(lambda: calls.append("never"))
            raise Boom
    assert calls == []
    assert await count(sessionmaker, Delivery) == 0


async def test_failed_commit_drops_the_callbacks(sessionmaker: Sessions) -> None:
    await add(sessionmaker, delivery_row(0))
    calls: list[str] = []
    with pytest.raises(IntegrityError):
        async with UnitOfWork(sessionmaker) as uow:
            uow.session.add(delivery_row(0))  # a duplicate: fails when flushed by the commit
            uow.after_commit(lambda: calls.append("never"))
    assert calls == []


async def test_failing_callback_is_logged_and_the_rest_run(
    sessionmaker: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise Boom

    async with UnitOfWork(sessionmaker) as uow:
        uow.session.add(delivery_row(0))
        uow.after_commit(broken)
        uow.after_commit(lambda: calls.append("still"))
    assert calls == ["still"]
    assert "uow.after_commit_failed" in caplog.text
    assert caplog.records[-1].levelno == logging.ERROR


async def test_services_cannot_commit(sessionmaker: Sessions) -> None:
    with pytest.raises(CommitOutsideUnitOfWork):
        async with UnitOfWork(sessionmaker) as uow:
            uow.session.add(delivery_row(0))
            await uow.session.commit()
    assert await count(sessionmaker, Delivery) == 0


async def test_savepoints_are_allowed(sessionmaker: Sessions) -> None:
    await add(sessionmaker, delivery_row(0))
    async with UnitOfWork(sessionmaker) as uow:
        try:
            async with uow.session.begin_nested():
                uow.session.add(delivery_row(0))
        except IntegrityError:
            pass  # the savepoint is rolled back; the rest of the unit of work goes on
        uow.session.add(Delivery(forge="gitlab", delivery_id="other", event="e", payload="{}"))
    assert await count(sessionmaker, Delivery) == 2


async def test_readers_do_not_wait_for_a_unit_of_work(sessionmaker: Sessions) -> None:
    async with UnitOfWork(sessionmaker) as uow:
        uow.session.add(delivery_row(0))
        await uow.session.flush()
        assert await count(sessionmaker, Delivery) == 0  # not committed yet, and no waiting
    assert await count(sessionmaker, Delivery) == 1


async def test_a_unit_of_work_is_used_once(sessionmaker: Sessions) -> None:
    uow = UnitOfWork(sessionmaker)
    async with uow:
        pass
    with pytest.raises(RuntimeError):
        async with uow:
            pass


async def test_skip_locked_only_on_postgresql(sessionmaker: Sessions) -> None:
    async with UnitOfWork(sessionmaker) as uow:
        stmt = for_update_skip_locked(select(Delivery), uow.dialect)
        sql = str(stmt.compile(dialect=uow.dialect))
    assert ("FOR UPDATE SKIP LOCKED" in sql) == (uow.dialect.name == "postgresql")


# -- the engine --------------------------------------------------------------------------


async def test_sqlite_connections_are_set_up(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        async with engine.connect() as connection:
            pragmas = [
                (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("foreign_keys", "journal_mode", "busy_timeout")
            ]
    finally:
        await engine.dispose()
    assert pragmas == [1, "wal", 5000]


async def test_sqlite_writers_take_turns(sqlite_url: str) -> None:
    """Two units of work on SQLite: the second waits for the first instead of failing."""
    engine = create_engine(sqlite_url)
    sessionmaker = create_sessionmaker(engine)
    order: list[str] = []

    async def worker(name: str, hold: asyncio.Event | None) -> None:
        async with UnitOfWork(sessionmaker) as uow:
            await uow.session.exec(select(Delivery))
            order.append(f"{name} in")
            if hold is not None:
                await hold.wait()
            uow.session.add(Delivery(forge="github", delivery_id=name, event="e", payload="{}"))
        order.append(f"{name} out")

    try:
        release = asyncio.Event()
        first = asyncio.create_task(worker("first", release))
        while not order:
            await asyncio.sleep(0.001)
        second = asyncio.create_task(worker("second", None))
        await asyncio.sleep(0.05)  # the second is now waiting on SQLite's write lock
        release.set()
        await asyncio.gather(first, second)
    finally:
        await engine.dispose()
    assert order == ["first in", "first out", "second in", "second out"]


# -- PostgreSQL only ---------------------------------------------------------------------


@pytest.fixture
async def pg_sessionmaker(pg_url: str) -> AsyncIterator[Sessions]:
    """Sessions on PostgreSQL only (on SQLite the ledger module's own check is the guard)."""
    engine = create_engine(pg_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "legs",
    [
        [("backer:github:alice", -5000, "EUR"), ("escrow:task:1", 5000, "EUR")],
        [("a", -5000, "EUR"), ("b", 2000, "EUR"), ("c", 3000, "EUR")],
        [("a", -5000, "EUR"), ("b", 5000, "EUR"), ("a", -700, "USD"), ("b", 700, "USD")],
    ],
    ids=["two-legs", "split", "two-currencies"],
)
async def test_balanced_transactions_commit(pg_sessionmaker: Sessions, legs: list[Any]) -> None:
    await write_posting(pg_sessionmaker, "t", *legs)
    assert await count(pg_sessionmaker, LedgerEntry) == len(legs)


@pytest.mark.parametrize(
    "legs",
    [
        [("backer:github:alice", -5000, "EUR"), ("escrow:task:1", 4999, "EUR")],
        [("a", 100, "EUR")],
        [("a", -5000, "EUR"), ("b", 5000, "EUR"), ("a", -700, "USD"), ("b", 699, "USD")],
        [("a", -5000, "EUR"), ("b", 5000, "USD")],
    ],
    ids=["off-by-one", "one-leg", "one-currency-off", "currencies-mixed"],
)
async def test_unbalanced_transactions_fail_at_commit(
    pg_sessionmaker: Sessions, legs: list[Any]
) -> None:
    transaction, entries = posting("t", *legs)
    with pytest.raises(IntegrityError, match="does not balance"):
        async with UnitOfWork(pg_sessionmaker) as uow:
            uow.session.add(transaction)
            await uow.session.flush()
            uow.session.add_all(entries())
            await uow.session.flush()  # written without complaint: the check waits for COMMIT
    assert await count(pg_sessionmaker, LedgerTransaction) == 0
    assert await count(pg_sessionmaker, LedgerEntry) == 0


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE ledger_entry SET amount_minor = 1 WHERE account = 'b'",
        "DELETE FROM ledger_entry WHERE account = 'b'",
        "UPDATE ledger_entry SET transaction_id = (SELECT id FROM ledger_transaction WHERE key = "
        "'other') WHERE account = 'b' AND transaction_id = (SELECT id FROM ledger_transaction "
        "WHERE key = 't')",
    ],
    ids=["change-a-leg", "delete-a-leg", "move-a-leg"],
)
async def test_committed_transactions_cannot_be_unbalanced(
    pg_sessionmaker: Sessions, tamper: str
) -> None:
    await write_posting(pg_sessionmaker, "t", ("a", -5000, "EUR"), ("b", 5000, "EUR"))
    await write_posting(pg_sessionmaker, "other", ("a", -1, "EUR"), ("b", 1, "EUR"))
    with pytest.raises(IntegrityError, match="does not balance"):
        async with UnitOfWork(pg_sessionmaker) as uow:
            await uow.session.exec(text(tamper))  # type: ignore[call-overload]
    async with pg_sessionmaker() as session:
        total = (await session.exec(select(func.sum(LedgerEntry.amount_minor)))).one()
    assert total == 0


async def test_skip_locked_lets_two_workers_take_different_rows(
    pg_sessionmaker: Sessions,
) -> None:
    await add(pg_sessionmaker, *(Delivery(forge="github", delivery_id=f"d{i}", event="e",
                                          payload="{}") for i in range(2)))
    query = select(Delivery).order_by(col(Delivery.id)).limit(1)
    async with UnitOfWork(pg_sessionmaker) as first:
        mine = (await first.session.exec(for_update_skip_locked(query, first.dialect))).one()
        async with UnitOfWork(pg_sessionmaker) as second:
            theirs = (
                await second.session.exec(for_update_skip_locked(query, second.dialect))
            ).one()
    assert (mine.delivery_id, theirs.delivery_id) == ("d0", "d1")
