"""Sends what the decisions queued in the outbox to the forges: once, in order, with retries.

The send protocol, for each message (`OutboxSender.run_once`):

1. **Claim**, in one short unit of work: take the due `pending` messages (`next_attempt_at <=
   now`, by id, `FOR UPDATE SKIP LOCKED` on PostgreSQL), add one to their `attempts` and lease
   them (`next_attempt_at = now + lease`), then commit. Another replica does not take a leased
   message; if this process dies, the message is due again once the lease is over. When a
   summary is taken, the task's other pending summaries are marked sent (coalesced): the one
   sent renders the task as it is then, which covers them all.
2. **Call the forge**, holding no database lock, through the governor's rate limits. What
   would wait long for them (more than a quarter of the lease), or comes up after half the
   lease is gone, is given back untried (`attempts` as it was) for later, so that no lease
   runs out while its message is still being sent.
3. **Finish**, in another unit of work: `sent` (and the summary's comment id kept on the task);
   or, on failure, the next try scheduled with backoff, or `dead`.

Nothing is sent twice: a message taken again after its sender died (or after an error that may
have hidden a success, like a timeout) may already be on the forge, so replies and notices carry
a hidden marker (`<!-- bountybot:msg:<id> -->`, from `bountybot.messages`) that is looked for
before posting again, and the summary is found by its task marker. Reactions are idempotent on
the forges.

The write budget (`bountybot.governor`, one per installation or token, shared by the replicas on
PostgreSQL): a reaction only acknowledges a command, so it goes only while the budget keeps a
reserve for the summaries and replies (half the minute's writes, by default). When it does not,
the reaction is deferred, never dropped: due again when the governor says a write fits with the
reserve kept, not counted as an attempt (a burst of pledges never makes a reaction dead), and
moved out of its issue's lane, since nothing needs to wait behind an acknowledgement.

Order: messages travel in lanes, one per issue (replies, notices and reactions) and one per
task's summary. A message is taken only when every earlier pending message of its lane is taken
with it; those of a lane are sent one after another in id order, and when one fails, the rest
of the lane waits behind it. So at most one summary of a task is in flight at a time (two could
otherwise both create it, or land out of order), and comments appear in the order decided.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, exists, func, or_, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.clock import backoff, utc_now
from bountybot.config import Settings
from bountybot.forges.base import ForgeClient, ForgeError
from bountybot.governor import Busy, Governor, token_key
from bountybot.logs import event
from bountybot.loops import wait_any
from bountybot.messages import fit_comment, message_marker, summary_marker
from bountybot.metrics import Metrics
from bountybot.refs import RepoRef
from bountybot.rules.policy import policy_from_settings
from bountybot.rules.summary import SUMMARY_MARKER, render_summary
from bountybot.storage.bounties import load_bounty_by_id, repo_ref
from bountybot.storage.tables import Outbox, OutboxState, Repo, Task, id_of
from bountybot.storage.uow import LATER, UnitOfWork, for_update_skip_locked

log = logging.getLogger(__name__)

SUMMARY, REACTION, REPLY, NOTICE = "summary", "reaction", "reply", "notice"
PENDING, SENT, DEAD = OutboxState.PENDING, OutboxState.SENT, OutboxState.DEAD
Sessionmaker = async_sessionmaker[AsyncSession]
T = TypeVar("T")


def _behind(busy_after: datetime | None) -> ColumnElement[bool]:
    """An earlier pending message of the lane exists (one not due at `busy_after`, if given:
    in flight at another sender, or waiting for its retry)."""
    o = aliased(Outbox)
    cond: list[Any] = [o.state == PENDING, o.id < col(Outbox.id), o.lane == col(Outbox.lane)]
    if busy_after is not None:
        cond.append(o.next_attempt_at > busy_after)
    return exists(select(o.id).where(*cond))


@dataclass(frozen=True)
class _ClaimedMessage:
    """A claimed message, as read in the claim transaction (no ORM row crosses the HTTP call)."""

    id: int
    kind: str
    task_id: int | None
    number: int
    comment_id: str | None
    text: str | None
    attempts: int
    look_first: bool  # it may already be on the forge: look for its marker before posting
    repo: RepoRef | None
    locale: str | None
    lane: str
    leased_until: datetime


@dataclass(frozen=True)
class _Outcome:
    what: Literal["sent", "retry", "dead", "postponed"]
    at: datetime | None = None  # retry, postponed: when to try next
    # postponed: a reaction waiting for the write budget, which leaves its lane (nothing waits
    # behind it) instead of holding the lane's later messages back.
    alone: bool = False
    error: str | None = None
    summary_id: str | None = None  # sent summary: its comment id
    found: bool = False  # sent: it was already on the forge


# A message tried, what came of it, and the untried messages of its lane given back behind it.
_Tried = tuple[_ClaimedMessage, _Outcome, list[_ClaimedMessage]]


@dataclass(frozen=True)
class SenderOptions:
    """How `bountybot.service` tunes its `OutboxSender` (tests shorten the backoff): the
    sender's own arguments, whose delays default to these; `max_attempts` and `lease` left at
    None are the settings' `scheduler.outbox_max_attempts` and `outbox_lease_seconds`."""

    max_attempts: int | None = None
    base_delay: float = 5.0
    max_delay: float = 3600.0
    lease: float | None = None  # None: the settings' `scheduler.outbox_lease_seconds`
    rng: random.Random | None = None
    reaction_reserve: int | None = None


class OutboxSender:
    """Sends due outbox messages through `clients` (by forge name: `github`, `gitlab`)."""

    def __init__(self, sessionmaker: Sessionmaker, clients: Mapping[str, ForgeClient], *,
                 settings: Settings, governor: Governor,
                 clock: Callable[[], datetime] = utc_now, max_attempts: int = 8,
                 base_delay: float = SenderOptions.base_delay,
                 max_delay: float = SenderOptions.max_delay, lease: float | None = None,
                 rng: random.Random | None = None, reaction_reserve: int | None = None,
                 metrics: Metrics | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.metrics = metrics or Metrics()
        self.clients = clients
        self.settings = settings
        self.governor = governor
        self.clock = clock
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.lease = float(settings.scheduler.outbox_lease_seconds if lease is None else lease)
        self.rng = rng or random.Random()
        # Writes per minute (and per hour) kept for summaries and replies: reactions wait
        # while the budget is below it (None: half of each key's writes a minute).
        self.reaction_reserve = reaction_reserve
        # By key: no reaction fits the budget before this time (the governor said so).
        self._reactions_wait: dict[str, datetime] = {}

    # -- the loop ---------------------------------------------------------------------------

    async def run_once(self, limit: int = 50) -> int:
        """Send what is due now (at most `limit` messages); returns how many were finished:
        sent, coalesced or dead. A lane's later messages are sent in the same call once the
        earlier ones are done."""
        finished = taken = 0
        while taken < limit:
            jobs, claimed, done = await self._claim(self.clock(), limit - taken)
            if not claimed:
                break
            taken += claimed
            finished += done
            lanes: dict[str, list[_ClaimedMessage]] = {}
            for job in jobs:
                lanes.setdefault(job.lane, []).append(job)
            results = await asyncio.gather(*(self._run_lane(lane) for lane in lanes.values()),
                                           return_exceptions=True)
            # What happened to every message of the round is written in one unit of work:
            # one commit (one turn of SQLite's write lock) per round, not one per message.
            outcomes = [item for result in results if not isinstance(result, BaseException)
                        for item in result]
            finished += await self._finish_all(outcomes)
            for result in results:  # every lane has finished; now fail with the first error
                if isinstance(result, BaseException):
                    raise result
        return finished

    async def run_forever(self, wake: asyncio.Event, stop: asyncio.Event, *,
                          poll: float = 5.0, pace: float = 0.25) -> None:
        """`run_once` until `stop` is set; in between, wait for `wake` (new messages), `stop`,
        or the next message due, at most `poll` seconds (which also catches what another
        replica unblocked). Errors (the database going away) are logged and the loop goes on.
        Rounds are at least `pace` seconds apart: in a burst, what the worker decides in the
        meantime is sent together (ten pledges, one summary edit) and the sender does not
        compete with the worker for the database at every message."""
        while not stop.is_set():
            wake.clear()
            started = asyncio.get_running_loop().time()
            try:
                finished = await self.run_once()
                delay = await self._next_due_in()
            except Exception:
                log.exception("outbox.loop_failed")
                finished, delay = 0, poll
            if not finished:
                delay = max(delay, 0.05)  # what is due but was not taken is at another sender
            await wait_any((wake, stop), min(delay, poll))
            rest = pace - (asyncio.get_running_loop().time() - started)
            if rest > 0 and not stop.is_set():
                await wait_any((stop,), rest)

    async def _next_due_in(self) -> float:
        async with self.sessionmaker() as session:
            due = (await session.exec(select(func.min(Outbox.next_attempt_at)).where(
                Outbox.state == PENDING, ~_behind(None)))).first()
        return float("inf") if due is None else (due - self.clock()).total_seconds()

    # -- 1. claim ---------------------------------------------------------------------------

    async def _claim(self, now: datetime, limit: int) -> tuple[list[_ClaimedMessage], int, int]:
        """Take and lease due messages; returns the jobs to send, how many rows were taken and
        how many of those were finished here (coalesced, or dead after too many leases)."""
        async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
            s = uow.session
            stmt = (select(Outbox)
                    .where(Outbox.state == PENDING, Outbox.next_attempt_at <= now,
                           ~_behind(now))
                    .order_by(col(Outbox.id)).limit(limit))
            rows = await self._in_order(
                s, list(await s.exec(for_update_skip_locked(stmt, uow.dialect, of=Outbox))))
            if not rows:
                return [], 0, 0
            repo_ids = {r.payload.get("repo_id") for r in rows}
            repos = {r.id: r for r in (await s.exec(select(Repo).where(
                col(Repo.id).in_(repo_ids)))).all()}
            jobs: list[_ClaimedMessage] = []
            dead: list[Outbox] = []
            summaries: dict[int | None, int] = {}  # task id -> the summary message sent for it
            for row in rows:
                if row.kind == SUMMARY and row.task_id in summaries:
                    continue  # coalesced below
                row.attempts += 1
                if row.attempts > self.max_attempts:
                    # Leased this often and never finished: its senders keep dying on it.
                    _die(row, f"gave up after {row.attempts - 1} attempts that never finished")
                    dead.append(row)
                    continue
                row.next_attempt_at = now + timedelta(seconds=self.lease)
                if row.kind == SUMMARY:
                    summaries[row.task_id] = id_of(row)
                jobs.append(self._job(row, repos.get(row.payload.get("repo_id"))))
            coalesced = await _coalesce(s, summaries, now) if summaries else []
        for row in dead:
            self.metrics.outbox_outcome(row.kind, "dead")
            _log_dead(row)
        for row in coalesced:
            event(log, "outbox.coalesced", id=row.id, task=row.task_id,
                  into=summaries[row.task_id])
        return jobs, len(rows), len(dead) + len(coalesced)

    async def _in_order(self, s: AsyncSession, rows: list[Outbox]) -> list[Outbox]:
        """Drop the rows with an earlier pending lane-mate that is not among `rows` (locked by
        another sender that is claiming it right now; only on PostgreSQL), and the rows behind
        them. The claim query already left out those behind a leased or retrying lane-mate."""
        if not rows:
            return rows
        taken = {id_of(r) for r in rows}
        others = (await s.exec(select(Outbox).where(
            Outbox.state == PENDING, col(Outbox.lane).in_({r.lane for r in rows}),
            col(Outbox.id) < max(taken), col(Outbox.id).not_in(taken)))).all()
        first_other: dict[str, int] = {}
        for o in others:
            lane = o.lane
            first_other[lane] = min(first_other.get(lane, id_of(o)), id_of(o))
        return [r for r in rows if id_of(r) < first_other.get(r.lane, id_of(r) + 1)]

    def _job(self, row: Outbox, repo: Repo | None) -> _ClaimedMessage:
        p = row.payload
        ref = None if repo is None else repo_ref(repo)
        number = p.get("number")  # never trusted to exist: a bad row must not stop the claim
        return _ClaimedMessage(
            id=id_of(row), kind=row.kind, task_id=row.task_id,
            number=number if isinstance(number, int) else 0,
            comment_id=p.get("comment_id"), text=p.get("text"), attempts=row.attempts,
            look_first=row.attempts > 1 or row.last_error is not None, repo=ref,
            locale=None if repo is None else repo.locale, lane=row.lane,
            leased_until=row.next_attempt_at)

    # -- 2. call the forge ------------------------------------------------------------------

    async def _run_lane(self, jobs: list[_ClaimedMessage]) -> list[_Tried]:
        done: list[_Tried] = []
        for i, job in enumerate(jobs):
            if self.clock() >= job.leased_until - timedelta(seconds=self.lease / 2):
                # Half the lease is gone (a slow forge, rate limits): give the rest back rather
                # than send it so late that another sender may take it meanwhile.
                done.append((job, _Outcome("postponed", at=self.clock()), jobs[i + 1:]))
                break
            outcome = await self._attempt(job)
            blocked = outcome.what in ("retry", "postponed") and not outcome.alone
            # The rest of the lane goes back, untried, to wait behind this one.
            done.append((job, outcome, jobs[i + 1:] if blocked else []))
            if blocked:
                break
        return done

    async def _attempt(self, job: _ClaimedMessage) -> _Outcome:
        try:
            summary_id, found = await self._deliver(job)
        except Busy as busy:
            at = self.clock() + timedelta(seconds=busy.retry_in)
            return _Outcome("postponed", at=at, alone=job.kind == REACTION)
        except ForgeError as error:
            return self._failed(job, str(error), error.retryable, error.retry_after)
        except Exception as error:
            # A bug or an unexpected library error: retried, never allowed to stop the loop.
            # Its text may quote a URL or a header, so only its type is stored.
            log.warning("outbox.client_error id=%s kind=%s", job.id, job.kind, exc_info=error)
            return self._failed(job, f"unexpected {type(error).__name__}", True, None)
        return _Outcome("sent", summary_id=summary_id, found=found)

    def _failed(self, job: _ClaimedMessage, error: str, retryable: bool,
                retry_after: float | None) -> _Outcome:
        if not retryable or job.attempts >= self.max_attempts:
            return _Outcome("dead", error=error)
        if retry_after is not None:
            delay = retry_after
        else:
            delay = backoff(job.attempts, self.base_delay, self.max_delay, self.rng)
        return _Outcome("retry", at=self.clock() + timedelta(seconds=delay), error=error)

    @staticmethod
    def _key(repo: RepoRef) -> str:
        # GitHub counts an app's writes per installation, and a token's per token (one token
        # serves every repo of this service).
        return repo.installation_id or token_key(repo.forge)

    async def _call(self, job: _ClaimedMessage, write: bool, call: Callable[[], Awaitable[T]]) -> T:
        assert job.repo is not None
        key = self._key(job.repo)
        # Wait a little for the rate limits, not for long: the lease would run out.
        async with self.governor.slot(key, write, max_wait=self.lease / 4):
            if write:
                self.metrics.forge_write(job.repo.forge)
            return await call()

    async def _deliver(self, job: _ClaimedMessage) -> tuple[str | None, bool]:
        """Send one message; returns the summary's comment id, and whether it was found already
        on the forge."""
        repo = job.repo
        if repo is None:
            raise ForgeError("its repo is no longer known")
        if job.number <= 0:
            raise ForgeError("no issue number")
        client = self.clients.get(repo.forge)
        if client is None:
            raise ForgeError(f"no client for forge {repo.forge!r} (is it configured?)")
        if job.kind == SUMMARY:
            return await self._summary(job, client, repo)
        if job.kind == REACTION:
            await self._react(job, client, repo)
            return None, False
        if job.kind in (REPLY, NOTICE):
            return None, await self._comment(job, client, repo)
        raise ForgeError(f"unknown message kind {job.kind!r}")

    async def _react(self, job: _ClaimedMessage, client: ForgeClient, repo: RepoRef) -> None:
        """Acknowledge a command comment with a reaction, if the write budget keeps its reserve
        after it; else `Busy` says when it would (the reaction is deferred until then)."""
        comment_id = job.comment_id
        if not comment_id:
            raise ForgeError("a reaction without a comment id")
        key = self._key(repo)
        reserve = (self.governor.limits_for(key)[0] // 2 if self.reaction_reserve is None
                   else self.reaction_reserve)
        # A reaction only acknowledges; the summary shows the command too. When the write
        # budget runs short (a burst of pledges), the summaries and replies go first, and the
        # reactions follow as the windows free up. It waits for nothing here: what it would
        # wait for is written down as its due time, and the sender goes on with other lanes.
        now = self.clock()
        until = self._reactions_wait.get(key)
        if until is not None and until > now:
            # Asked already: the budget only fills up meanwhile (the windows slide one way),
            # so a burst's other reactions need not ask the governor (the database) again.
            raise Busy(key, (until - now).total_seconds())
        try:
            async with self.governor.slot(key, True, max_wait=0, keep=reserve):
                self.metrics.forge_write(repo.forge)
                await client.react(repo, job.number, comment_id)
        except Busy as busy:
            self._reactions_wait[key] = now + timedelta(seconds=busy.retry_in)
            raise

    async def _comment(self, job: _ClaimedMessage, client: ForgeClient, repo: RepoRef) -> bool:
        """Post a reply or a notice; returns whether it was found already on the forge."""
        if not job.text:
            raise ForgeError(f"a {job.kind} without text")
        marker = message_marker(job.id)
        if job.look_first:
            found = await self._call(
                job, False, lambda: client.find_comment(repo, job.number, marker))
            if found:
                return True
        body = fit_comment(job.text, f"\n\n{marker}", repo.forge)
        await self._call(job, True, lambda: client.create_comment(repo, job.number, body))
        return False

    async def _summary(self, job: _ClaimedMessage, client: ForgeClient,
                       repo: RepoRef) -> tuple[str | None, bool]:
        """Create or edit the task's summary, rendered from the task as it is now."""
        if job.task_id is None:
            raise ForgeError("a summary without a task")
        async with self.sessionmaker() as session:  # read only: takes no write lock
            bounty = await load_bounty_by_id(session, job.task_id)
            task = await session.get(Task, job.task_id)
        if bounty is None or task is None:
            raise ForgeError(f"task {job.task_id} is gone")
        policy = policy_from_settings(self.settings, locale=job.locale)
        marker = summary_marker(job.task_id)
        text = render_summary(bounty, policy.locale, policy.fee_bp,
                              public_url=self.settings.server.public_url)
        body = fit_comment(marker + text.removeprefix(SUMMARY_MARKER), "", repo.forge)
        comment_id = task.summary_comment_id
        if comment_id:
            try:
                await self._call(job, True,
                                 lambda: client.edit_comment(repo, job.number, comment_id, body))
                return comment_id, False
            except ForgeError as error:
                if error.status != 404:
                    raise
                # Someone deleted it: look for another, else post it again.
        found = await self._call(job, False, lambda: client.find_comment(repo, job.number, marker))
        if found:
            await self._call(job, True, lambda: client.edit_comment(repo, job.number, found, body))
            return found, False
        created = await self._call(job, True,
                                   lambda: client.create_comment(repo, job.number, body))
        return created, False

    # -- 3. finish --------------------------------------------------------------------------

    async def _finish_all(self, items: list[_Tried]) -> int:
        """Write what happened to each job (and give back the untried jobs behind it), in one
        unit of work; returns how many messages are finished (sent or dead)."""
        if not items:
            return 0
        now = self.clock()
        mine: list[bool] = []
        rows: list[Outbox | None] = []
        async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
            s = uow.session
            for job, outcome, behind in items:
                row, ours = await self._write_outcome(s, now, job, outcome, behind)
                rows.append(row)
                mine.append(ours)
        return sum(self._log_outcome(job, outcome, row, ours)
                   for (job, outcome, _), row, ours in zip(items, rows, mine, strict=True))

    async def _write_outcome(self, s: AsyncSession, now: datetime, job: _ClaimedMessage,
                             outcome: _Outcome,
                             behind: Sequence[_ClaimedMessage]) -> tuple[Outbox | None, bool]:
        row = await s.get(Outbox, job.id, with_for_update=True)
        # Ours unless the lease ran out and another sender took it meanwhile.
        ours = row is not None and row.state == PENDING and row.attempts == job.attempts
        for other in behind:
            back = await s.get(Outbox, other.id, with_for_update=True)
            if back and back.state == PENDING and back.attempts == other.attempts:
                back.attempts -= 1
                back.next_attempt_at = now  # due, but waits behind `job` (see `_behind`)
        if outcome.what == "sent":
            if row is not None and row.state == PENDING:
                row.state, row.sent_at = SENT, now
            if outcome.summary_id and job.task_id is not None:
                # Keep updated_at: the summary's id is no change of the task.
                await s.exec(update(Task).where(
                    col(Task.id) == job.task_id,
                    or_(col(Task.summary_comment_id).is_(None),
                        col(Task.summary_comment_id) != outcome.summary_id),
                ).values(summary_comment_id=outcome.summary_id, updated_at=Task.updated_at))
        elif ours and row is not None:
            if outcome.what == "dead":
                _die(row, outcome.error or "")
            elif outcome.what == "retry":
                assert outcome.at is not None
                row.next_attempt_at, row.last_error = outcome.at, outcome.error
            else:  # postponed by the rate limits: this was no attempt
                assert outcome.at is not None
                row.attempts -= 1
                row.next_attempt_at = outcome.at
                if outcome.alone:
                    row.lane = f"reaction:{row.id}"  # its own lane: nothing waits behind it
        return row, ours

    def _log_outcome(self, job: _ClaimedMessage, outcome: _Outcome, row: Outbox | None,
                     ours: bool) -> int:
        self.metrics.outbox_outcome(job.kind, outcome.what)
        if not ours:
            event(log, "outbox.lease_lost", logging.WARNING, id=job.id, kind=job.kind,
                  attempt=job.attempts, outcome=outcome.what)
        if outcome.what == "sent":
            event(log, "outbox.sent", id=job.id, kind=job.kind, task=job.task_id,
                  attempt=job.attempts, **({"comment": job.comment_id} if job.comment_id else {}),
                  **({"found": "marker"} if outcome.found else {}))
            return 1
        if not ours:
            return 0
        if outcome.what == "dead":
            assert row is not None
            _log_dead(row)
        elif outcome.what == "retry":
            assert outcome.at is not None
            event(log, "outbox.retry", logging.WARNING, id=job.id, kind=job.kind,
                  attempt=job.attempts, next=outcome.at.isoformat(timespec="seconds"),
                  error=outcome.error)
        elif outcome.what == "postponed":
            assert outcome.at is not None
            event(log, "outbox.postponed", id=job.id, kind=job.kind,
                  until=outcome.at.isoformat(timespec="seconds"))
        return 1 if outcome.what == "dead" else 0


async def _coalesce(s: AsyncSession, summaries: dict[int | None, int],
                    now: datetime) -> list[Outbox]:
    """Mark sent the other pending summaries of the tasks whose summary is being sent."""
    others = list(await s.exec(select(Outbox).where(
        Outbox.kind == SUMMARY, Outbox.state == PENDING,
        col(Outbox.task_id).in_(list(summaries)),
        col(Outbox.id).not_in(list(summaries.values())))))
    for row in others:
        row.state, row.sent_at = SENT, now
    return others


def _die(row: Outbox, error: str) -> None:
    row.state, row.last_error = DEAD, error[:2000]


def _log_dead(row: Outbox) -> None:
    event(log, "outbox.dead", logging.ERROR, id=row.id, kind=row.kind, task=row.task_id,
          attempts=row.attempts, error=row.last_error)
