"""The outbox under a write budget smaller than a burst, on SQLite and PostgreSQL: every
reaction is sent in the end, none is dropped or counted as a failed attempt, the summaries and
replies keep their reserve, and no 60 s (or 3600 s) window holds more writes than allowed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from test_governor import assert_windows
from test_outbox import START, Books, FakeForge, sender

from bountybot.config import Settings
from bountybot.governor import Governor
from bountybot.messages import message_marker
from bountybot.outbox import OutboxSender
from bountybot.refs import RepoRef
from bountybot.rules import LabelAdded
from bountybot.storage import tables as t

from clocks import Clock

PER_MINUTE, PER_HOUR = 6, 30
RESERVE = PER_MINUTE // 2  # the sender's default: half the minute's writes


class TimedForge(FakeForge):
    """The in-memory forge, noting when (seconds after START) each write started, and what."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.writes: list[tuple[float, str]] = []

    def _note(self, what: str) -> None:
        self.writes.append(((self.clock.now - START).total_seconds(), what))

    async def create_comment(self, repo: RepoRef, number: int, body: str) -> str:
        self._note("comment")
        return await super().create_comment(repo, number, body)

    async def edit_comment(self, repo: RepoRef, number: int, comment_id: str, body: str) -> None:
        self._note("comment")
        await super().edit_comment(repo, number, comment_id, body)

    async def react(self, repo: RepoRef, number: int, comment_id: str) -> None:
        self._note("reaction")
        await super().react(repo, number, comment_id)


def governed(sessionmaker: Any, forge: TimedForge, clock: Clock) -> OutboxSender:
    """A sender whose governor reads the test's clock, and whose waits move it."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    governor = Governor(per_minute=PER_MINUTE, per_hour=PER_HOUR, sleep=sleep,
                        clock=lambda: (clock.now - START).total_seconds())
    # Two attempts at most: a reaction deferred twice would be dead if deferring counted.
    return sender(sessionmaker, forge, clock, governor=governor, max_attempts=2)


async def send_until_done(out: OutboxSender, books: Books, clock: Clock,
                          until: datetime | None = None) -> None:
    """Rounds of the sender, the clock moved to the next message due in between, until nothing
    is pending (or the clock reaches `until`)."""
    for _ in range(500):
        await out.run_once()
        pending = [r for r in await books.outbox() if r.state == t.OutboxState.PENDING]
        if not pending:
            return
        due = min(r.next_attempt_at for r in pending)
        if until is not None and due >= until:
            return
        clock.now = max(clock.now, due)
    raise AssertionError("the outbox never emptied")


async def test_a_burst_beyond_the_budget_is_acknowledged_in_full_within_it(sessionmaker):
    clock = Clock(START)
    forge = TimedForge(clock)
    books = Books(sessionmaker)
    await books.event(LabelAdded())
    pledges = [await books.say(f"backer{i}", "/pledge 5") for i in range(40)]
    out = governed(sessionmaker, forge, clock)

    # The first minute: a few reactions, then the rest wait; a reply decided meanwhile, on the
    # same issue as the waiting reactions, goes at once on the writes kept in reserve.
    await out.run_once()
    reacted = len(forge.reactions)
    assert 0 < reacted < len(pledges)
    reply = await books.refused("zed")
    [reply_row] = [r for r in await books.outbox() if r.kind == "reply"]
    await out.run_once()
    assert any(message_marker(reply_row.id) in body for body in forge.on(7))
    assert reply and len(forge.reactions) == reacted  # no reaction went on the reserve

    await send_until_done(out, books, clock)
    rows = await books.outbox()
    assert {r.state for r in rows} == {t.OutboxState.SENT}  # none skipped, none dead
    reactions = [r for r in rows if r.kind == "reaction"]
    assert sorted(cid for _, _, cid in forge.reactions) == sorted(pledges)
    assert len(reactions) == len(pledges)
    assert all(r.attempts == 1 for r in reactions)  # deferring was never an attempt
    starts = [at for at, _ in forge.writes]
    assert len(starts) > PER_HOUR  # more than an hour's budget: it took two hours
    assert_windows(starts, PER_MINUTE, PER_HOUR)
    # A reaction went only when the reserve was left after it.
    for at, what in forge.writes:
        if what == "reaction":
            before = sum(1 for other, _ in forge.writes if at - 60 < other < at)
            assert before < PER_MINUTE - RESERVE, (at, before)
    assert max(starts) >= 3600  # the second hour's budget was waited for, not overrun


async def test_a_deferred_reaction_holds_back_nothing_of_its_issue(sessionmaker):
    clock = Clock(START)
    forge = TimedForge(clock)
    books = Books(sessionmaker)
    await books.event(LabelAdded())
    for i in range(8):
        await books.say(f"backer{i}", "/pledge 5")
    await books.refused("zed")  # queued behind the reactions of issue 7
    out = governed(sessionmaker, forge, clock)

    await out.run_once()
    rows = await books.outbox()
    [reply] = [r for r in rows if r.kind == "reply"]
    assert reply.state == t.OutboxState.SENT
    waiting = [r for r in rows if r.state == t.OutboxState.PENDING]
    assert waiting and all(r.kind == "reaction" for r in waiting)
    assert all(r.lane == f"reaction:{r.id}" and r.attempts == 0 for r in waiting)
    assert all(r.next_attempt_at > clock.now for r in waiting)
    await send_until_done(out, books, clock)
    assert len(forge.reactions) == 8
    assert_windows([at for at, _ in forge.writes], PER_MINUTE, PER_HOUR)


async def test_a_reaction_that_cannot_be_sent_at_all_is_still_dead(sessionmaker):
    """Deferring is for the budget only: a reaction with no client for its forge is not kept."""
    clock = Clock(START)
    books = Books(sessionmaker)
    await books.event(LabelAdded())
    await books.say("alice", "/pledge 5")
    out = OutboxSender(sessionmaker, {}, settings=Settings(), governor=Governor(per_minute=1),
                       clock=clock)
    await out.run_once()
    [reaction] = [r for r in await books.outbox() if r.kind == "reaction"]
    assert reaction.state == t.OutboxState.DEAD
    assert "no client for forge" in (reaction.last_error or "")
