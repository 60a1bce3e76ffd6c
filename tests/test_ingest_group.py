"""Group commit at the doors (#16): deliveries that arrive together are stored by one INSERT and
one commit, each answered only once that commit is done; a repeat is still a repeat, even in the
same group; a group that fails is written again one delivery at a time, so only the delivery
that cannot be stored is answered 503. On SQLite and PostgreSQL, through the inbox writer and
through the real doors over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, func
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot import webhooks
from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.inbox_writer import InboxWriter, Stopping, running
from bountybot.storage import tables as t
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import BACKGROUND, UnitOfWork

from fixtures import payload
from github_harness import SECRET, TOKEN, sign

WAIT = 30.0  # a bound for a failing test, never a measure

pytestmark = pytest.mark.usefixtures("no_bountybot_env")


def delivery(delivery_id: str, **changes: Any) -> dict[str, Any]:
    return dict(forge="github", delivery_id=delivery_id, event="issue_comment", payload="{}",
                topic=None, state=t.DeliveryState.PENDING, attempts=0,
                received_at=datetime.now(UTC)) | changes


async def stored_ids(sessionmaker: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessionmaker() as session:
        return list((await session.exec(select(t.Delivery.delivery_id))).all())


class Commits:
    """Counts the engine's commits; with `fail`, makes the next ones fail before the database
    commits (the transaction is then rolled back)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.count = 0
        self.fail = 0
        self.seen: list[Callable[[], None]] = []

    def __call__(self, _conn: Any) -> None:
        for look in self.seen:
            look()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the commit failed")
        self.count += 1

    def __enter__(self) -> Commits:
        event.listen(self.engine.sync_engine, "commit", self)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine.sync_engine, "commit", self)


async def queued(writer: InboxWriter, rows: list[dict[str, Any]]) -> list[asyncio.Task[bool]]:
    """Each row handed to the writer before it runs: they are one group."""
    stores = [asyncio.create_task(writer.store(row)) for row in rows]
    await asyncio.sleep(0)
    assert writer.queue.qsize() == len(rows)
    return stores


# -- the writer ----------------------------------------------------------------------------


async def test_fifty_deliveries_together_are_one_insert_and_one_commit(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    woken: list[int] = []
    writer = InboxWriter(sessionmaker, wake=lambda: woken.append(len(woken)))
    ids = [f"group-{n}" for n in range(50)]
    stores = await queued(writer, [delivery(i) for i in ids])
    with Commits(engine) as commits:
        # At the commit nobody has been answered yet: each answer waits for it.
        commits.seen.append(lambda: assert_none_done(stores))
        async with running(writer):
            answers = await asyncio.wait_for(asyncio.gather(*stores), WAIT)
    assert answers == [True] * 50
    assert commits.count == 1 and woken == [0]
    assert sorted(await stored_ids(sessionmaker)) == sorted(ids)


def assert_none_done(stores: list[asyncio.Task[bool]]) -> None:
    assert not any(store.done() for store in stores)


async def test_one_delivery_id_twice_in_a_group_is_stored_once(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    writer = InboxWriter(sessionmaker, wake=None)
    async with running(writer):
        assert await writer.store(delivery("before")) is True
    stores = await queued(writer, [delivery("twice"), delivery("other"), delivery("twice"),
                                   delivery("before")])
    with Commits(engine) as commits:
        async with running(writer):
            answers = await asyncio.wait_for(asyncio.gather(*stores), WAIT)
    # The first of the two is new, the second a repeat; one stored earlier is a repeat too.
    assert answers == [True, True, False, False]
    assert commits.count == 1
    assert sorted(await stored_ids(sessionmaker)) == ["before", "other", "twice"]


async def test_a_delivery_the_database_refuses_fails_alone(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    writer = InboxWriter(sessionmaker, wake=None)
    rows = [delivery(f"good-{n}") for n in range(5)]
    rows.insert(2, delivery("bad", event=None))  # NOT NULL: the group's INSERT fails
    rows.append(delivery("good-1"))  # and a repeat in the same group
    stores = await queued(writer, rows)
    with Commits(engine) as commits:
        async with running(writer):
            answers = await asyncio.wait_for(
                asyncio.gather(*stores, return_exceptions=True), WAIT)
    bad = answers.pop(2)
    assert isinstance(bad, Exception) and not isinstance(bad, AssertionError)
    assert answers == [True] * 5 + [False]
    assert commits.count == 6  # written again one at a time; the refused one never commits
    assert sorted(await stored_ids(sessionmaker)) == [f"good-{n}" for n in range(5)]


async def test_a_failed_commit_answers_nobody_as_stored(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    woken: list[int] = []
    writer = InboxWriter(sessionmaker, wake=lambda: woken.append(1))
    stores = await queued(writer, [delivery(f"lost-{n}") for n in range(4)])
    with Commits(engine) as commits:
        commits.fail = 1 + 4  # the group's commit, then each delivery's alone
        async with running(writer):
            answers = await asyncio.wait_for(
                asyncio.gather(*stores, return_exceptions=True), WAIT)
    assert all(isinstance(a, RuntimeError) for a in answers), answers
    assert woken == [] and await stored_ids(sessionmaker) == []
    # The database works again: the forge's redeliveries are new.
    async with running(writer):
        assert await writer.store(delivery("lost-0")) is True


async def test_a_failed_group_commit_is_written_again_one_by_one(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    writer = InboxWriter(sessionmaker, wake=None)
    stores = await queued(writer, [delivery(f"again-{n}") for n in range(4)])
    with Commits(engine) as commits:
        commits.fail = 1  # only the group's
        async with running(writer):
            answers = await asyncio.wait_for(asyncio.gather(*stores), WAIT)
    assert answers == [True] * 4 and commits.count == 4
    assert sorted(await stored_ids(sessionmaker)) == [f"again-{n}" for n in range(4)]


async def test_a_group_that_cannot_reach_the_database_is_not_tried_one_by_one() -> None:
    # Nothing listens there: the group fails, the first delivery alone fails the same way,
    # and the others are answered at once instead of each waiting for that failure in turn.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = create_engine(f"postgresql+asyncpg://bot@127.0.0.1:{port}/nowhere")
    attempts: list[int] = []
    event.listen(engine.sync_engine, "do_connect", lambda *_: attempts.append(1))
    writer = InboxWriter(create_sessionmaker(engine), wake=None)
    stores = await queued(writer, [delivery(f"far-{n}") for n in range(5)])
    async with running(writer):
        answers = await asyncio.wait_for(asyncio.gather(*stores, return_exceptions=True), WAIT)
    assert all(isinstance(a, OSError) for a in answers), answers
    assert len(attempts) == 2  # the group's, then the first delivery's alone
    await engine.dispose()


async def test_a_writer_stopped_mid_group_leaves_nobody_waiting(
        sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    writer = InboxWriter(sessionmaker, wake=None)
    stores = await queued(writer, [delivery(f"stop-{n}") for n in range(6)])
    task = asyncio.create_task(writer.run())
    await asyncio.sleep(0)  # it has taken the group and begun to write it
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    answers = await asyncio.wait_for(asyncio.gather(*stores, return_exceptions=True), WAIT)
    # Told to deliver again (503), or accepted only if committed: never left waiting. (One
    # stored but told to deliver again would be a duplicate then, and lose nothing.)
    assert all(a is True or isinstance(a, Stopping) for a in answers), answers
    accepted = {f"stop-{n}" for n, a in enumerate(answers) if a is True}
    assert accepted <= set(await stored_ids(sessionmaker))


async def test_the_writer_goes_before_the_worker_on_sqlite(sqlite_url: str) -> None:
    # The writer keeps a connection of its own between groups: its units of work still wait
    # for SQLite's write lock in the same line as the worker's, ahead of them.
    engine = create_engine(sqlite_url)
    sessionmaker = create_sessionmaker(engine)
    writer = InboxWriter(sessionmaker, wake=None)
    async with running(writer):
        assert await writer.store(delivery("first")) is True  # the writer holds its connection
        async with UnitOfWork(sessionmaker, priority=BACKGROUND) as worker:
            storing = asyncio.create_task(writer.store(delivery("urgent")))
            async with asyncio.timeout(WAIT):
                while not worker.contended:
                    await asyncio.sleep(0.01)
            assert not storing.done()  # it waits for the worker's commit
        assert await asyncio.wait_for(storing, WAIT) is True
    await engine.dispose()


# -- the doors ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def doors(engine: AsyncEngine) -> AsyncIterator[TestClient[Any, Any]]:
    """The webhook doors alone, as `serve --role web` has them (no worker in this process)."""
    settings = Settings.model_validate({
        "github": {"token": TOKEN, "webhook_secret": SECRET}})
    app = create_app(settings, engine=engine, features=[webhooks.setup])
    async with TestClient(TestServer(app)) as client:
        yield client


async def post(client: TestClient[Any, Any], delivery_id: str, number: int) -> tuple[int, Any]:
    data = payload("github", "issue_comment.created")
    data["issue"]["number"] = number
    body = json.dumps(data).encode()
    answer = await client.post("/webhooks/github", data=body, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "issue_comment",
        "X-GitHub-Delivery": delivery_id, "X-Hub-Signature-256": sign(body)})
    return answer.status, await answer.json()


async def test_fifty_concurrent_deliveries_are_each_stored_once_and_accepted(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    ids = [str(uuid.uuid4()) for _ in range(50)]
    async with doors(engine) as client:
        answers = await asyncio.gather(*(post(client, i, n % 7 + 1) for n, i in enumerate(ids)))
    assert answers == [(202, {"status": "accepted", "delivery": i}) for i in ids]
    assert sorted(await stored_ids(sessionmaker)) == sorted(ids)
    async with sessionmaker() as session:
        topics = (await session.exec(select(func.count(func.distinct(t.Delivery.topic))))).one()
    assert topics == 7  # each stored with its own topic


async def test_the_same_delivery_twice_at_once_is_one_accepted_one_duplicate(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with doors(engine) as client:
        for _ in range(3):
            twice = str(uuid.uuid4())
            answers = await asyncio.gather(post(client, twice, 1), post(client, twice, 1))
            assert sorted(answers, key=lambda a: a[0]) == [
                (200, {"status": "duplicate", "delivery": twice}),
                (202, {"status": "accepted", "delivery": twice})]
    assert len(await stored_ids(sessionmaker)) == 3


async def test_no_delivery_is_accepted_before_its_commit(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    ids = [str(uuid.uuid4()) for _ in range(10)]
    async with doors(engine) as client:
        with Commits(engine) as commits:
            commits.fail = 10_000  # every commit fails, in a group or alone
            answers = await asyncio.gather(*(post(client, i, 1) for i in ids))
        assert {status for status, _ in answers} == {503}
        assert await stored_ids(sessionmaker) == []
        # Redelivered once the database commits again: accepted, as new.
        assert (await post(client, ids[0], 1))[0] == 202


async def test_a_failed_group_commit_loses_no_delivery(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    ids = [str(uuid.uuid4()) for _ in range(20)]
    async with doors(engine) as client:
        with Commits(engine) as commits:
            commits.fail = 1  # the first commit (a group, or one delivery) fails
            answers = await asyncio.gather(*(post(client, i, 1) for i in ids))
    assert [status for status, _ in answers] == [202] * 20
    assert sorted(await stored_ids(sessionmaker)) == sorted(ids)
