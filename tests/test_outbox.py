"""The outbox sender, on SQLite and PostgreSQL: every message once, in order, through failures,
crashes and a second sender. Messages are made by the real rules (`save_decision`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from bountybot.config import Settings
from bountybot.forges.base import ForgeClient, ForgeError
from bountybot.governor import Governor
from bountybot.messages import message_marker, summary_marker
from bountybot.operator.outbox import list_messages, retry_dead
from bountybot.outbox import OutboxSender
from bountybot.refs import RepoRef
from bountybot.rules import (
    Actor,
    Comment,
    Decision,
    Event,
    IssueRef,
    LabelAdded,
    LabelRemoved,
    Policy,
    decide_comment,
    decide_event,
)
from bountybot.storage import tables as t
from bountybot.storage.bounties import ensure_repo, load_bounty, save_decision
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import UnitOfWork

from clocks import Clock

REPO = "commons/garden"
START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def issue(number: int = 7) -> IssueRef:
    return IssueRef("github", REPO, number, f"Issue {number}",
                    f"https://github.com/{REPO}/issues/{number}")


class ProcessDied(BaseException):
    """The sender's process dies here: nothing after this line runs (not even `except
    Exception`), so the message stays as the claim left it."""


class FakeForge:
    """A ForgeClient in memory: comments per (repo path, issue), reactions, every call made.
    `fail(n, ...)` makes the next n calls raise a ForgeError; `crash_after_write` makes the next
    write happen and then raise."""

    def __init__(self) -> None:
        self.comments: dict[tuple[str, int], dict[str, str]] = {}
        self.reactions: list[tuple[str, int, str]] = []
        self.calls: list[tuple[str, int]] = []
        self.errors: list[tuple[int | None, BaseException]] = []
        self.crash_after_write: BaseException | None = None
        self._ids = itertools.count(90001)

    def fail(self, times: int = 1, *, retryable: bool = True, retry_after: float | None = None,
             status: int = 502, number: int | None = None) -> None:
        """The next `times` calls (about issue `number`, if given) fail."""
        error = ForgeError(f"{status} from the forge", status=status, retryable=retryable,
                           retry_after=retry_after)
        self.errors += [(number, error)] * times

    async def _enter(self, op: str, number: int) -> None:
        await asyncio.sleep(0)  # let other senders interleave
        self.calls.append((op, number))
        for i, (only, error) in enumerate(self.errors):
            if only in (None, number):
                del self.errors[i]
                raise error

    def _written(self) -> None:
        crash, self.crash_after_write = self.crash_after_write, None
        if crash is not None:
            raise crash

    def on(self, number: int = 7) -> list[str]:
        """The bodies of the comments on issue `number`, oldest first."""
        return list(self.comments.get((REPO, number), {}).values())

    def ops(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def is_maintainer(self, repo: RepoRef, login: str) -> bool:  # noqa: ARG002
        return login == "maya"

    async def create_comment(self, repo: RepoRef, number: int, body: str) -> str:
        await self._enter("create", number)
        cid = str(next(self._ids))
        self.comments.setdefault((repo.full_path, number), {})[cid] = body
        self._written()
        return cid

    async def edit_comment(self, repo: RepoRef, number: int, comment_id: str, body: str) -> None:
        await self._enter("edit", number)
        comments = self.comments.get((repo.full_path, number), {})
        if comment_id not in comments:
            raise ForgeError("404 Not Found", status=404)
        comments[comment_id] = body
        self._written()

    async def find_comment(self, repo: RepoRef, number: int, marker: str) -> str | None:
        await self._enter("find", number)
        for cid, body in self.comments.get((repo.full_path, number), {}).items():
            if marker in body:
                return cid
        return None

    async def react(self, repo: RepoRef, number: int, comment_id: str) -> None:
        await self._enter("react", number)
        self.reactions.append((repo.full_path, number, comment_id))
        self._written()


class Half(random.Random):
    """Jitter in the middle: a backoff of exactly `base_delay * 2**(attempts-1)`."""

    def random(self) -> float:
        return 0.5


class Books:
    """Comments and events run through the real rules into the database, as the worker does."""

    def __init__(self, sessionmaker: Any, *, installation: str | None = "42") -> None:
        self.sessionmaker = sessionmaker
        self.policy = Policy()
        self.installation = installation
        self.ids = itertools.count(5000)

    async def _step(self, number: int, decide: Callable[[Any], Decision], source: str) -> None:
        async with UnitOfWork(self.sessionmaker) as uow:
            repo = await ensure_repo(uow.session, "github", "1296269", REPO, self.installation)
            bounty = await load_bounty(uow.session, repo, number, lock=True)
            await save_decision(uow.session, repo, issue(number), decide(bounty),
                                source=source, now=START)

    async def say(self, login: str, body: str, number: int = 7) -> str:
        cid = str(next(self.ids))
        comment = Comment(cid, Actor(login, is_maintainer=login == "maya"), body)
        await self._step(number, lambda b: decide_comment(b, issue(number), comment,
                                                          self.policy, START), f"comment:{cid}")
        return cid

    async def event(self, event: Event, number: int = 7) -> None:
        await self._step(number, lambda b: decide_event(b, issue(number), event, self.policy,
                                                        START), f"event:{next(self.ids)}")

    async def refused(self, login: str = "bob", number: int = 7) -> str:
        """A comment whose one command is refused: a reply, and nothing else."""
        return await self.say(login, "/pledge twenty", number)

    async def outbox(self) -> list[t.Outbox]:
        return await list_messages(self.sessionmaker, None)

    async def row(self, outbox_id: int) -> t.Outbox:
        rows = {r.id: r for r in await self.outbox()}
        return rows[outbox_id]

    async def task(self, number: int = 7) -> t.Task:
        async with self.sessionmaker() as session:
            row = (await session.exec(select(t.Task).where(t.Task.number == number))).one()
        return row


def sender(sessionmaker: Any, forge: FakeForge, clock: Clock, **kw: Any) -> OutboxSender:
    kw.setdefault("rng", Half())
    kw.setdefault("governor", Governor())
    # The fake has only the methods the outbox calls.
    clients = {"github": cast(ForgeClient, forge)}
    return OutboxSender(sessionmaker, clients, settings=Settings(), clock=clock, **kw)


@pytest.fixture
def forge() -> FakeForge:
    return FakeForge()


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def books(sessionmaker: Any) -> Books:
    return Books(sessionmaker)


async def only(books: Books, kind: str) -> t.Outbox:
    [row] = [r for r in await books.outbox() if r.kind == kind]
    return row


# -- each kind, once -----------------------------------------------------------------------


async def test_a_reply_a_reaction_a_notice_and_a_summary_are_each_sent_once(
        sessionmaker, books, forge, clock):
    await books.event(LabelAdded())
    pledge = await books.say("alice", "/pledge 20")
    await books.say("bob", "/pledge twenty")  # refused: a reply
    await books.event(LabelRemoved())  # cancelled: a notice, and the summary says so
    rows = await books.outbox()
    assert sorted(r.kind for r in rows).count("summary") >= 2
    out = sender(sessionmaker, forge, clock)

    assert await out.run_once() == len(rows)

    comments = forge.on(7)
    assert len(comments) == 3
    [summary] = [c for c in comments if "bountybot:summary" in c]
    reply, notice = [c for c in comments if c != summary]  # in the order they were decided
    assert summary.startswith(summary_marker((await books.task()).id))
    assert "cancelled" in summary  # rendered when sent: the state after the last event
    assert message_marker((await only(books, "reply")).id) in reply and "twenty" in reply
    assert message_marker((await only(books, "notice")).id) in notice
    assert forge.reactions == [(REPO, 7, pledge)]
    assert forge.ops("create") == 3 and forge.ops("react") == 1
    assert {r.state for r in await books.outbox()} == {t.OutboxState.SENT}
    # Nothing is left to send: a second round calls nobody.
    calls = len(forge.calls)
    assert await out.run_once() == 0
    assert len(forge.calls) == calls


async def test_ten_pledges_make_one_summary_showing_the_total_then_edits_of_it(
        sessionmaker, books, forge, clock, caplog):
    caplog.set_level(logging.INFO, "bountybot.outbox")
    await books.event(LabelAdded())
    await books.say("maya", "/goal 500")
    for i in range(10):
        await books.say(f"backer{i}", "/pledge 10")
    rows = await books.outbox()
    out = sender(sessionmaker, forge, clock)

    assert await out.run_once() == len(rows)  # sent or coalesced, every one

    [summary] = forge.on(7)
    assert "€100.00 pledged of €500.00" in summary and "backer9" in summary
    assert forge.ops("create") == 1 and forge.ops("edit") == 0
    assert len(forge.reactions) == 11
    coalesced = [r for r in caplog.records if r.getMessage() == "outbox.coalesced"]
    assert len(coalesced) == sum(r.kind == "summary" for r in rows) - 1
    task = await books.task()
    assert task.summary_comment_id is not None

    await books.say("zoe", "/pledge 10")
    await out.run_once()

    assert forge.on(7) == [forge.comments[(REPO, 7)][task.summary_comment_id]]
    assert "€110.00 pledged" in forge.on(7)[0]
    assert forge.ops("create") == 1 and forge.ops("edit") == 1
    assert {r.state for r in await books.outbox()} == {t.OutboxState.SENT}


async def test_the_summary_speaks_the_repos_language(sessionmaker, books, forge, clock):
    await books.event(LabelAdded())
    async with UnitOfWork(sessionmaker) as uow:
        await uow.session.exec(update(t.Repo).values(locale="fr"))  # type: ignore[call-overload]
    await sender(sessionmaker, forge, clock).run_once()
    assert "### Prime" in forge.on(7)[0]


async def test_a_summary_whose_id_was_lost_is_found_by_its_marker(
        sessionmaker, books, forge, clock):
    await books.event(LabelAdded())
    forge.crash_after_write = ProcessDied()
    with pytest.raises(ProcessDied):  # created on the forge; the id never reached the task
        await sender(sessionmaker, forge, clock).run_once()
    assert len(forge.on(7)) == 1 and (await books.task()).summary_comment_id is None

    await books.say("alice", "/pledge 5")
    clock.advance(121)  # the dead sender's lease is over
    await sender(sessionmaker, forge, clock).run_once()

    [body] = forge.on(7)
    assert "€5.00" in body
    assert forge.ops("create") == 1 and forge.ops("edit") == 1
    assert forge.ops("find") == 2  # before creating it, and again after the crash
    task = await books.task()
    assert task.summary_comment_id == next(iter(forge.comments[(REPO, 7)]))


async def test_a_deleted_summary_is_posted_again(sessionmaker, books, forge, clock):
    await books.event(LabelAdded())
    out = sender(sessionmaker, forge, clock)
    await out.run_once()
    forge.comments[(REPO, 7)].clear()  # a maintainer deleted it
    await books.say("alice", "/pledge 5")
    await out.run_once()
    [body] = forge.on(7)
    assert "€5.00" in body
    assert (await books.task()).summary_comment_id in forge.comments[(REPO, 7)]


# -- failures ------------------------------------------------------------------------------


async def test_a_retryable_error_backs_off_then_sends_once(sessionmaker, books, forge, clock,
                                                           caplog):
    await books.refused()
    reply = await only(books, "reply")
    forge.fail(1)
    out = sender(sessionmaker, forge, clock)

    assert await out.run_once() == 0
    row = await books.row(reply.id)
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "502 from the forge")
    assert row.next_attempt_at == START + timedelta(seconds=5)  # base_delay, jitter x1
    assert "outbox.retry" in caplog.text

    clock.advance(4.9)
    assert await out.run_once() == 0 and forge.on(7) == []
    clock.advance(0.1)
    assert await out.run_once() == 1

    row = await books.row(reply.id)
    assert (row.state, row.attempts) == ("sent", 2)
    assert len(forge.on(7)) == 1
    assert forge.ops("find") == 1  # the second try looked for the first one's comment


async def test_the_backoff_doubles_with_jitter_up_to_max_delay(sessionmaker, books, forge,
                                                               clock):
    await books.refused()
    reply = await only(books, "reply")
    out = sender(sessionmaker, forge, clock, rng=random.Random(3), max_delay=30.0)
    waits = []
    for _ in range(6):
        forge.fail(1)
        await out.run_once()
        row = await books.row(reply.id)
        waits.append((row.next_attempt_at - clock.now).total_seconds())
        clock.now = row.next_attempt_at
    for attempt, wait in enumerate(waits, start=1):
        base = min(30.0, 5.0 * 2 ** (attempt - 1))
        assert base * 0.5 <= wait < base * 1.5


async def test_retry_after_is_honoured(sessionmaker, books, forge, clock):
    await books.refused()
    forge.fail(1, status=403, retry_after=42)
    out = sender(sessionmaker, forge, clock)
    await out.run_once()
    row = await only(books, "reply")
    assert row.next_attempt_at == START + timedelta(seconds=42)
    clock.advance(41)
    await out.run_once()
    assert forge.on(7) == []
    clock.advance(1)
    assert await out.run_once() == 1 and len(forge.on(7)) == 1


async def test_a_non_retryable_error_is_dead_at_once(sessionmaker, books, forge, clock, caplog):
    await books.refused()
    forge.fail(1, retryable=False, status=422)
    assert await sender(sessionmaker, forge, clock).run_once() == 1
    row = await only(books, "reply")
    assert (row.state, row.attempts, row.last_error) == ("dead", 1, "422 from the forge")
    [dead] = [r for r in caplog.records if r.getMessage() == "outbox.dead"]
    assert dead.levelno == logging.ERROR
    assert dead.bountybot_fields["id"] == row.id and dead.bountybot_fields["kind"] == "reply"


async def test_max_attempts_then_dead_then_retry_dead_sends_it(sessionmaker, books, forge,
                                                                clock):
    await books.refused()
    forge.fail(10)
    out = sender(sessionmaker, forge, clock, max_attempts=3)
    finished = []
    for _ in range(3):
        finished.append(await out.run_once())
        clock.advance(3600)
    row = await only(books, "reply")
    assert finished == [0, 0, 1]
    assert (row.state, row.attempts) == ("dead", 3)
    assert await list_messages(sessionmaker, "dead") == [row]

    forge.errors.clear()
    assert await retry_dead(sessionmaker, [row.id + 1000]) == 0
    assert await retry_dead(sessionmaker, [row.id], now=clock.now) == 1
    assert await out.run_once() == 1
    row = await only(books, "reply")
    assert (row.state, row.attempts) == ("sent", 1)
    assert len(forge.on(7)) == 1
    assert await retry_dead(sessionmaker, None) == 0


async def test_a_sender_that_died_after_posting_does_not_post_twice(sessionmaker, books, forge,
                                                                    clock):
    await books.refused()
    forge.crash_after_write = ProcessDied()
    with pytest.raises(ProcessDied):
        await sender(sessionmaker, forge, clock).run_once()
    row = await only(books, "reply")
    assert (row.state, row.attempts, len(forge.on(7))) == ("pending", 1, 1)

    other = sender(sessionmaker, forge, clock)
    clock.advance(119)
    assert await other.run_once() == 0  # still leased to the dead sender
    clock.advance(1)
    assert await other.run_once() == 1

    row = await only(books, "reply")
    assert (row.state, row.attempts) == ("sent", 2)
    assert len(forge.on(7)) == 1 and forge.ops("create") == 1


async def test_an_unexpected_exception_is_retried_and_logged_with_its_traceback(
        sessionmaker, books, forge, clock, caplog):
    await books.refused()
    forge.crash_after_write = RuntimeError("token=hunter2 in a URL")
    out = sender(sessionmaker, forge, clock)
    assert await out.run_once() == 0
    row = await only(books, "reply")
    assert row.last_error == "unexpected RuntimeError"  # the exception's text is not stored
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.WARNING)
    clock.advance(5)
    assert await out.run_once() == 1
    assert len(forge.on(7)) == 1


async def test_a_lane_waits_behind_its_failing_head(sessionmaker, books, forge, clock):
    first = await books.refused("bob")
    await books.refused("carol")
    await books.refused("dan", number=8)  # another issue goes on regardless
    forge.fail(1, number=7)
    out = sender(sessionmaker, forge, clock)

    assert await out.run_once() == 1
    assert forge.on(7) == [] and len(forge.on(8)) == 1
    replies = [r for r in await books.outbox() if r.payload["number"] == 7]
    assert [r.attempts for r in replies] == [1, 0]  # the second was given back, untried

    clock.advance(5)
    assert await out.run_once() == 2
    bodies = forge.on(7)
    assert [message_marker(r.id) in b for r, b in zip(replies, bodies, strict=True)] == [True] * 2
    assert replies[0].payload["comment_id"] == first


async def test_a_forge_without_a_client_is_dead_not_stuck(sessionmaker, books, clock):
    await books.refused()
    out = OutboxSender(sessionmaker, {}, settings=Settings(), governor=Governor(), clock=clock)
    assert await out.run_once() == 1
    row = await only(books, "reply")
    assert row.state == "dead" and "no client for forge 'github'" in (row.last_error or "")


async def test_the_rate_limit_postpones_without_counting_an_attempt(sessionmaker, books, forge,
                                                                    clock):
    await books.refused(number=1)
    await books.refused(number=2)
    out = sender(sessionmaker, forge, clock, governor=Governor(per_minute=1))
    assert await out.run_once() == 1
    postponed = [r for r in await books.outbox() if r.state == "pending"]
    [row] = postponed
    assert row.attempts == 0
    assert 50 < (row.next_attempt_at - clock.now).total_seconds() <= 60


async def test_a_lane_too_slow_for_its_lease_gives_the_rest_back(sessionmaker, books, forge,
                                                                  clock, caplog):
    caplog.set_level(logging.INFO, "bountybot.outbox")
    await books.refused("bob")
    await books.refused("carol")
    create = forge.create_comment

    async def slow_create(repo: RepoRef, number: int, body: str) -> str:
        clock.advance(61)  # more than half the lease, on the first comment already
        return await create(repo, number, body)

    forge.create_comment = slow_create  # type: ignore[method-assign]
    assert await sender(sessionmaker, forge, clock).run_once() == 2
    first, second = await books.outbox()
    assert (first.attempts, second.attempts) == (1, 1)  # given back untried, then taken again
    assert len(forge.on(7)) == 2
    assert "outbox.postponed" in caplog.text


async def test_a_malformed_message_is_dead_and_stops_nothing(sessionmaker, books, forge, clock):
    await books.refused(number=8)
    repo_id = (await only(books, "reply")).payload["repo_id"]
    async with UnitOfWork(sessionmaker) as uow:
        uow.session.add(t.Outbox(kind="reply", payload={"repo_id": repo_id, "text": "hi"},
                                 dedup_key="bad", next_attempt_at=START))
    assert await sender(sessionmaker, forge, clock).run_once() == 2
    states = {r.dedup_key: (r.state, r.last_error) for r in await books.outbox()}
    assert states["bad"] == ("dead", "no issue number")
    assert len(forge.on(8)) == 1


async def test_a_message_leased_too_often_is_dead(sessionmaker, books, forge, clock):
    await books.refused()
    for _ in range(2):
        forge.errors.append((None, ProcessDied()))  # dies at its first call, every time
        with pytest.raises(ProcessDied):
            await sender(sessionmaker, forge, clock, max_attempts=2).run_once()
        clock.advance(120)
    assert await sender(sessionmaker, forge, clock, max_attempts=2).run_once() == 1
    row = await only(books, "reply")
    assert row.state == "dead" and "never finished" in (row.last_error or "")


# -- senders together ----------------------------------------------------------------------


@pytest.mark.usefixtures("sessionmaker")
async def test_two_senders_at_once_never_send_a_message_twice(db_url, books, forge, clock):
    for number in range(1, 13):
        for login in ("bob", "carol", "dan"):
            await books.say(login, "/help", number=number)
    await books.event(LabelAdded(), number=1)
    await books.say("alice", "/pledge 3", number=1)
    rows = await books.outbox()
    engines = [create_engine(db_url) for _ in range(2)]
    try:
        senders = [sender(create_sessionmaker(e), forge, clock) for e in engines]
        finished = [0, 0]
        for _ in range(20):
            done = await asyncio.gather(*(s.run_once(limit=7) for s in senders))
            finished = [a + b for a, b in zip(finished, done, strict=True)]
            if not sum(done):
                break
    finally:
        for e in engines:
            await e.dispose()
    assert sum(finished) == len(rows) and min(finished) > 0, finished  # both did some
    assert {r.state for r in await books.outbox()} == {t.OutboxState.SENT}
    for row in rows:
        if row.kind in ("reply", "notice"):
            marker = message_marker(row.id)
            on = forge.on(row.payload["number"])
            assert sum(marker in body for body in on) == 1, row.id
    assert forge.ops("create") == 36 + 1  # every reply, and one summary
    for number in range(1, 13):  # each issue's replies in the order they were decided
        ids = [r.id for r in rows if r.payload["number"] == number and r.kind == "reply"]
        bodies = [b for b in forge.on(number) if "bountybot:msg" in b]
        assert [next(i for i in ids if message_marker(i) in b) for b in bodies] == ids


async def test_run_forever_sends_when_woken_and_stops(sessionmaker, books, forge, clock):
    out = sender(sessionmaker, forge, clock)
    wake, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.create_task(out.run_forever(wake, stop, poll=0.05))
    await books.say("bob", "/help")
    wake.set()
    for _ in range(200):
        if forge.on(7):
            break
        await asyncio.sleep(0.01)
    assert len(forge.on(7)) == 1
    stop.set()
    await asyncio.wait_for(loop, 2)


async def test_list_messages_filters_by_state(sessionmaker, books, forge, clock):
    await books.refused(number=7)
    await books.refused(number=8)
    forge.fail(1, retryable=False, number=7)
    await sender(sessionmaker, forge, clock).run_once()
    assert [r.state for r in await list_messages(sessionmaker)] == ["dead", "sent"]
    assert len(await list_messages(sessionmaker, "pending")) == 0
    assert [r.kind for r in await list_messages(sessionmaker, "sent")] == ["reply"]
    async with sessionmaker() as session:
        ids = (await session.exec(select(t.Outbox.id).order_by(col(t.Outbox.id)))).all()
    assert len(ids) == 2
