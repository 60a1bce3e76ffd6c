"""The delivery worker: takes stored webhook deliveries in order and applies them.

For each delivery: read it, turn the payload into normalized happenings (the forge adapter),
drop what no forge could have sent (`inbox_reading.checked`), ask the forge what the payload
cannot be trusted to say (a GitLab note's existence and author, whether a commenter maintains the
repo, whether an awarded login is an account; outside any transaction, so no lock is held over
HTTP), then in one unit of work: take the delivery again (`FOR UPDATE SKIP LOCKED` on
PostgreSQL; skipped if another worker handled it meanwhile), load each task, apply only the
command lines of a comment never applied before (`comment_lines.fresh_lines`), decide, write the
decision, mark the delivery handled. The outbox sends afterwards.

Deliveries about one issue (one `topic`) are applied in the order they were stored, whichever
replica takes them: none is taken while an earlier one of its topic is pending. A delivery that
fails for a passing reason (the forge is down) is tried again later; one that fails for any other
reason, inside or outside its savepoint, is tried a few times, then marked failed with the
reason, and the worker goes on: one bad delivery never stops the others (only its own issue
waits for it). `bountybot deliveries` lists, retries and fails them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, exists, func, or_, tuple_, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased, defer
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.clock import Clock, backoff, utc_now
from bountybot.commands import (
    Command,
    CommandName,
    command_named,
)
from bountybot.comment_lines import (
    confirmed_note,
    fresh_lines,
    lines_to_apply,
    recorded,
    with_lines,
)
from bountybot.config import Settings
from bountybot.forges.base import ForgeClient, ForgeError
from bountybot.forges.events import (
    Happening,
    Normalized,
    Transfer,
)
from bountybot.forges.registry import FORGES
from bountybot.inbox_reading import normalize
from bountybot.logs import event
from bountybot.loops import wait_any
from bountybot.metrics import Metrics
from bountybot.refs import RepoRef
from bountybot.rules import (
    Bounty,
    Comment,
    Decision,
    IssueRef,
    LinkClosed,
    LinkOpened,
    decide_comment,
    decide_event,
    needs_maintainer,
)
from bountybot.rules.decide import is_bot, read_commands
from bountybot.rules.policy import Policy, policy_from_settings
from bountybot.storage import tables as t
from bountybot.storage.batch import DecisionBatch, NewIds, load_many, load_rows
from bountybot.storage.bounties import (
    ensure_repo,
    load_bounty,
    policy_of,
    save_decision,
    stored_repo,
)
from bountybot.storage.uow import BACKGROUND, UnitOfWork, for_update_skip_locked, is_conflict

log = logging.getLogger(__name__)

# How long a batch decides while webhooks wait for SQLite's write lock (`yield_after`), and
# how often it lets the event loop run meanwhile (deciding in memory awaits nothing).
YIELD_AFTER = 0.025
PAUSE_EVERY = 0.005
# How long a delivery understood but not yet applied is kept understood (see `_understood`).
UNDERSTOOD_FOR = timedelta(seconds=60)


def _same_repo(known: t.Repo, ref: RepoRef) -> bool:
    """Whether the stored repo is as the delivery names it (else `ensure_repo` updates it)."""
    return known.full_path == ref.full_path and (
        known.installation_id == ref.installation_id or not ref.installation_id) and (
        ref.private is None or known.private == ref.private)


_BOUNTY_ROWS = (t.Task, t.Pledge, t.Claim, t.Waiting, t.Link, t.Payout)


def _forget_bounty_rows(session: AsyncSession) -> None:
    """Let go of the task rows this session holds as objects: a batch has just written over
    them with plain statements (`DecisionBatch.write`), so what they hold may be stale. They
    are dropped, not expired (an expired row would load itself again on first use, which an
    async session cannot do), and read again when next needed. None has unwritten changes:
    each savepoint's decision is flushed whole."""
    sync = session.sync_session
    for row in list(sync.identity_map.values()):
        if isinstance(row, _BOUNTY_ROWS):
            sync.expunge(row)
    loaded = sync.info.get("bountybot.loaded")
    if loaded:
        loaded[:] = [row for row in loaded if not isinstance(row, _BOUNTY_ROWS)]


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return (text.splitlines() or [""])[0][:200]


@dataclass
class _Cache:
    """What one batch has read or written, so the next delivery about the same task starts from
    the bounty as the last one left it instead of reading it again (the batch holds its lock)."""

    repos: dict[tuple[str, str], t.Repo] = field(default_factory=dict)
    bounties: dict[tuple[int, int], Bounty | None] = field(default_factory=dict)
    # The command lines recorded as applied, by (forge, comment id): read for the whole batch
    # at once, and added to as the batch applies more.
    lines: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def clear(self) -> None:
        self.repos.clear()
        self.bounties.clear()
        self.lines.clear()


class _Clash(Exception):
    """Writing a batch met another replica's transaction (`is_conflict`): it is tried again."""


class _Decided(NamedTuple):
    """What one happening decided, for the delivery's log line: the task (`repo#number`), the
    names of the commands applied and refused (never their text), the task's state after."""

    task: str
    commands: list[str]
    refused: list[str]
    state: str


def _decided(task: str, decision: Decision, policy: Policy) -> _Decided:
    applied, refused = [], []
    for item in decision.trail:
        if item.action == "command.refused":
            # The trail keeps the line as written (for the audit trail); the log, its name only.
            name = command_named(str(item.detail.get("line", "")), policy.bot_login)
            refused.append(name.value if name is not None else "unknown")
        elif item.action.startswith("command."):
            applied.append(item.action.removeprefix("command."))
    state = decision.bounty.state.value if decision.bounty is not None else "none"
    return _Decided(task, applied, refused, state)


def _log_fields(decided: list[_Decided]) -> dict[str, str]:
    """`task=owner/repo#7 commands=pledge,claim refused=withdraw state=claimed`: one field
    each, lists joined by commas (a delivery about several tasks names each once, with the
    state it was left in, in the same order)."""
    if not decided:
        return {}
    states: dict[str, str] = {}
    for item in decided:
        states.pop(item.task, None)
        states[item.task] = item.state
    fields = {"task": ",".join(states)}
    commands = [name for item in decided for name in item.commands]
    refused = [name for item in decided for name in item.refused]
    if commands:
        fields["commands"] = ",".join(commands)
    if refused:
        fields["refused"] = ",".join(refused)
    fields["state"] = ",".join(states.values())
    return fields


class _Ready(NamedTuple):
    """A delivery read and understood, waiting for its turn in the batch's transaction."""

    id: int
    forge: str
    name: str  # the forge's delivery id, for the logs
    topic: str | None
    normalized: Normalized
    happenings: list[Happening]


def _error_text(error: BaseException) -> str:
    """The reason kept on a failed delivery: storable whatever the error quotes (a NUL, half
    of a surrogate pair), or recording the failure would fail in turn."""
    text = f"{type(error).__name__}: {error}"[:2000]
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


@dataclass(frozen=True)
class WorkerOptions:
    """How `bountybot.service` tunes its `DeliveryWorker`: the worker's own arguments, whose
    defaults are these (tests send summaries at once)."""

    max_attempts: int = 5
    retry_delay: float = 30.0
    summary_delay: float = 1.0


class DeliveryWorker:
    """Applies stored deliveries, oldest first."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                 clients: Mapping[str, ForgeClient], *, clock: Clock = utc_now,
                 on_written: Callable[[], None] | None = None,
                 max_attempts: int = WorkerOptions.max_attempts,
                 retry_delay: float = WorkerOptions.retry_delay,
                 summary_delay: float = WorkerOptions.summary_delay,
                 metrics: Metrics | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.clients = clients
        self.clock = clock
        self.on_written = on_written
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        # Summaries are sent this long after a change, so a burst of pledges is one edit.
        self.summary_delay = summary_delay
        # A clash with another replica's transaction left deliveries due: go again soon.
        self.clashed = False
        # How long a batch goes on deciding while webhooks wait for SQLite's write lock before
        # it commits and lets them in: deciding in memory takes a millisecond or two a
        # delivery, and stopping after each one would write the batch one delivery at a time.
        self.yield_after = YIELD_AFTER
        # Deliveries read and understood but left for the next turn (a batch commits early
        # when webhooks wait for the database): not parsed, normalized and asked about again.
        self._understood: dict[int, tuple[datetime, Normalized, list[Happening]]] = {}

    async def due(self, limit: int) -> list[int]:
        """The deliveries to apply next, oldest first. A delivery about an issue (its `topic`)
        is never due while an earlier one about the same issue is pending, unless that one is
        in the same batch (a batch applies in order): not while it waits for its retry time,
        nor while another replica applies it (what that one does must be seen first)."""
        now = self.clock()
        d, earlier = t.Delivery, aliased(t.Delivery, name="earlier")
        pending = t.DeliveryState.PENDING
        # A plain read (no unit of work): on SQLite it takes no write lock, so the webhooks
        # storing new deliveries are not held up by the worker looking for work. On PostgreSQL
        # it skips the rows another replica is applying right now (their lock is only
        # glanced at: the session ends at once), so each replica takes the next ones instead
        # of all reading the same batch and all but one finding it taken.
        async with self.sessionmaker() as session:
            # Those behind a delivery waiting for its retry time go before the limit: they
            # would fill the batch with nothing to do.
            behind_waiting = exists().where(
                col(earlier.topic) == col(d.topic), col(earlier.id) < col(d.id),
                col(earlier.state) == pending, col(earlier.next_attempt_at) > now)
            first = (select(col(d.id), col(d.topic))
                     .where(d.state == pending,
                            or_(col(d.next_attempt_at).is_(None), col(d.next_attempt_at) <= now),
                            or_(col(d.topic).is_(None), ~behind_waiting))
                     .order_by(col(d.id)).limit(limit))
            candidates = for_update_skip_locked(  # type: ignore[type-var]  # S: one column
                first, session.get_bind().dialect).cte("candidate")
            # Then those behind one that is no candidate: another replica holds it (SKIP LOCKED
            # left it out), or it became pending meanwhile.
            behind_other = exists().where(
                col(earlier.topic) == candidates.c.topic, col(earlier.id) < candidates.c.id,
                col(earlier.state) == pending, col(earlier.id).not_in(select(candidates.c.id)))
            stmt = (select(candidates.c.id)
                    .where(or_(candidates.c.topic.is_(None), ~behind_other))
                    .order_by(candidates.c.id))
            rows = await session.exec(stmt)
            return [i for i in rows.all() if i is not None]

    async def run_once(self, limit: int = 100) -> int:
        """Handle what is due now, in order; returns how many deliveries were finished."""
        ids = await self.due(limit)
        return await self.handle_batch(ids) if ids else 0

    async def run_forever(self, wake: asyncio.Event, stop: asyncio.Event,
                          idle: float = 5.0) -> None:
        while not stop.is_set():
            try:
                handled = await self.run_once()
            except Exception as error:  # the loop must survive anything, e.g. the database
                if is_conflict(error):  # restarting; a clash is just tried again
                    event(log, "worker.conflict", error=_first_line(error))
                    self.clashed = True
                else:
                    log.exception("worker.loop_error")
                handled = 0
            if handled:
                continue
            if self.clashed:
                # What clashed is due again: after a short random pause, so that two replicas
                # that just met do not meet again in step.
                self.clashed = False
                await wait_any((stop,), random.uniform(0.01, 0.2))
                continue
            wake.clear()
            await wait_any((wake, stop), idle)

    async def handle_batch(self, ids: list[int]) -> int:
        """Apply deliveries in id order, in one transaction with a savepoint each: one commit
        (and on SQLite one turn of the write lock) for a batch, while a delivery that fails
        rolls back alone. Should the batch fail outside every savepoint (reading it, locking
        its tasks, committing), its deliveries are tried again one by one, so the one at fault
        is counted like any failure and the others are applied: no delivery, whatever it holds,
        stops the others. Returns how many were finished (handled, or failed for good)."""
        try:
            return await self._handle(ids)
        except Exception as error:
            if is_conflict(error):
                raise  # another replica was in the way: nobody's fault, the loop goes again
            log.exception("worker.batch_failed", extra={"deliveries": len(ids)})
            if len(ids) == 1:  # alone already: this one is at fault
                return await self._failed(ids[0], error, passing=False)
        return await self._one_by_one(ids)

    async def _one_by_one(self, ids: list[int]) -> int:
        now = self.clock()
        d = t.Delivery
        async with self.sessionmaker() as session:
            # Not the payloads: one of them may be what cannot be read.
            rows = (await session.exec(select(
                d.id, d.topic, or_(col(d.next_attempt_at).is_(None),
                                   col(d.next_attempt_at) <= now))
                .where(col(d.id).in_(ids), d.state == t.DeliveryState.PENDING)
                .order_by(col(d.id)))).all()
        finished = 0
        waiting: set[str] = set()  # topics whose earlier delivery stays pending
        for delivery_id, topic, due in rows:
            assert delivery_id is not None
            if topic is not None and topic in waiting:
                continue
            if not due:  # counted already by the batch that failed (unreadable, forge down)
                if topic is not None:
                    waiting.add(topic)
                continue
            try:
                done = await self._handle([delivery_id])
            except Exception as error:
                if is_conflict(error):
                    event(log, "delivery.conflict", delivery=delivery_id,
                          error=_first_line(error))
                    self.clashed = True
                    break
                log.exception("delivery.error", extra={"delivery": delivery_id})
                done = await self._failed(delivery_id, error, passing=False)
            finished += done
            if self.clashed:
                break  # another replica is in the way: the loop goes again at once
            if not done and topic is not None:
                waiting.add(topic)
        return finished

    async def _handle(self, ids: list[int]) -> int:
        async with self.sessionmaker() as session:
            rows = (await session.exec(select(t.Delivery).where(
                col(t.Delivery.id).in_(ids), t.Delivery.state == t.DeliveryState.PENDING)
                .order_by(col(t.Delivery.id)))).all()
            work = [(r.id, r.forge, r.event, r.payload, r.delivery_id, r.topic) for r in rows]
        now = self.clock()
        # What was understood for another batch, or too long ago (who maintains a repo may have
        # changed since it was asked), is forgotten.
        self._understood = {i: seen for i, seen in self._understood.items()
                            if i in ids and now - seen[0] < UNDERSTOOD_FOR}
        ready: list[_Ready] = []
        finished = 0
        # A delivery that stays pending holds back the later ones about the same issue, in this
        # batch as in `due`: they are applied after it, or after it has failed for good.
        waiting: set[str] = set()
        for delivery_id, forge, kind, body, name, topic in work:
            assert delivery_id is not None
            if topic is not None and topic in waiting:
                continue
            try:
                if delivery_id in self._understood:
                    _, normalized, happenings = self._understood[delivery_id]
                else:
                    normalized = normalize(forge, kind, json.loads(body), self.settings, name)
                    happenings = [await self._who(forge, h) for h in normalized.happenings]
                    self._understood[delivery_id] = (now, normalized, happenings)
                    # A batch reads up to a hundred payloads: the webhooks are answered between.
                    await asyncio.sleep(0)
            except ForgeError as error:  # the forge could not say who maintains the repo
                done = await self._failed(delivery_id, error, passing=error.retryable)
                finished += done
                if topic is None:
                    break  # about what, the inbox does not say: keep the order of all the rest
                if not done:
                    waiting.add(topic)
                continue
            except Exception as error:
                log.exception("delivery.unreadable", extra={"delivery": name})
                done = await self._failed(delivery_id, error, passing=False)
                finished += done
                if not done and topic is not None:
                    waiting.add(topic)
                continue
            ready.append(_Ready(delivery_id, forge, name, topic, normalized, happenings))
        if ready:
            finished += await self._apply(ready)
        return finished

    async def _who(self, forge: str, h: Happening) -> Happening:
        """Ask the forge what the payload does not say: a merge request author's name (GitLab
        gives only an id), and whether a commenter maintains the repo, only when it matters."""
        if h.author_id is not None and isinstance(h.what, LinkOpened | LinkClosed):
            ref = h.repo or RepoRef(forge, "", h.repo_path)
            client = self.clients.get(ref.forge)
            if client is None:
                raise ForgeError(f"no {ref.forge} client to name user {h.author_id}")
            login = await client.username(ref, h.author_id)
            return replace(h, what=replace(h.what, author=login), author_id=None)
        what = h.what
        if not isinstance(what, Comment) or h.repo is None:
            return h
        policy = policy_from_settings(self.settings)
        if is_bot(what.author, policy):
            return h
        commands = [item for item in read_commands(what.body, policy) if isinstance(item, Command)]
        if not commands:
            return h
        client = self.clients.get(h.repo.forge)
        confirms = h.repo.forge in FORGES and FORGES[h.repo.forge].confirms_comments
        if confirms and not what.verified and any(
                c.name not in (CommandName.HELP, CommandName.STATUS) for c in commands):
            if client is None:
                raise ForgeError(f"no {h.repo.forge} client to confirm a comment with")
            what = await confirmed_note(client, h, what, policy)
        if needs_maintainer(what, policy):
            maintainer = client is not None and await client.is_maintainer(
                h.repo, what.author.login)
            what = replace(what, author=replace(what.author, is_maintainer=maintainer))
        awarded = {share.login.lower(): share.login for c in commands
                   if c.name == CommandName.AWARD for share in c.shares}
        if awarded and client is not None:
            unknown = [login for login in awarded.values()
                       if await client.user_login(h.repo, login) is None]
            what = replace(what, unknown_users=frozenset(unknown))
        return replace(h, what=what)

    async def _apply(self, batch: list[_Ready]) -> int:
        now = self.clock()
        failures: list[tuple[int, Exception]] = []
        handled: list[tuple[str, list[_Decided]]] = []  # counted in the metrics once committed
        try:
            async with UnitOfWork(self.sessionmaker, priority=BACKGROUND) as uow:
                done = await self._apply_in(uow, batch, now, failures, handled)
        except _Clash:
            self.clashed = True
            return 0
        for forge, decided in handled:
            self.metrics.delivery_handled(forge, [n for d in decided for n in d.commands],
                                          [n for d in decided for n in d.refused])
        # Counted once the batch has committed: should the commit fail, the batch is tried
        # again one by one (`handle_batch`), and these fail again on their own.
        for delivery_id, failure in failures:
            done += await self._failed(delivery_id, failure, passing=False)
        return done

    async def _apply_in(self, uow: UnitOfWork, batch: list[_Ready], now: datetime,
                        failures: list[tuple[int, Exception]],
                        handled: list[tuple[str, list[_Decided]]]) -> int:
        """`_apply`'s transaction: returns how many deliveries it handled."""
        done = 0
        session = uow.session
        # Not the payloads again: they are understood already. (SQLModel types a column as
        # its value, which `defer` does not take.)
        not_payload = defer(t.Delivery.payload)  # type: ignore[arg-type]
        stmt = for_update_skip_locked(select(t.Delivery).options(not_payload).where(
            col(t.Delivery.id).in_([item.id for item in batch])), uow.dialect)
        rows = {r.id: r for r in (await session.exec(stmt)).all()}
        behind = await self._behind_others(session, [i for i in rows if i is not None])
        await self._lock_tasks(session, [item for item in batch
                                         if item.id in rows and item.id not in behind])
        started = time.monotonic()
        written = False
        cache = _Cache()
        kept = DecisionBatch(NewIds(await session.connection()))
        await self._recorded(session, cache, batch)
        await self._tasks(session, cache, batch)
        waiting: set[str] = set()  # topics of the deliveries that failed here
        paused = started
        for item in batch:
            if time.monotonic() - paused >= PAUSE_EVERY:
                # Deciding in memory awaits nothing: let the webhooks in between (they are
                # answered, or on SQLite queue for the write lock and make the batch commit).
                await asyncio.sleep(0)
                paused = time.monotonic()
            if done and uow.contended and time.monotonic() - started >= self.yield_after:
                break  # webhooks wait to store deliveries: commit, do the rest next turn
            row = rows.get(item.id)
            if row is None or row.state != t.DeliveryState.PENDING:
                continue  # taken or finished by another worker meanwhile
            if item.id in behind or (item.topic is not None and item.topic in waiting):
                continue  # after an earlier delivery about the same issue, next turn
            try:
                wrote, decided = await self._delivery(session, cache, kept, item, now,
                                                      spare=len(batch) - done)
            except Exception as error:
                if is_conflict(error):
                    # Another replica's transaction was in the way (a deadlock, the same
                    # new task created twice): no failure. The whole batch stays due, in
                    # order, and is tried again at once.
                    event(log, "delivery.conflict", delivery=item.name,
                          error=_first_line(error))
                    raise _Clash() from error
                log.exception("delivery.error", extra={"delivery": item.name})
                failures.append((item.id, error))
                if item.topic is not None:
                    waiting.add(item.topic)
                continue
            written |= wrote
            row.state = t.DeliveryState.HANDLED
            row.handled_at = now
            row.error = item.normalized.ignored
            done += 1
            handled.append((item.forge, decided))
            # What was decided, in one line: the task, the commands by name, its state.
            event(log, "delivery.handled", forge=item.forge, delivery=item.name,
                  **_log_fields(decided), happenings=len(item.happenings),
                  note=item.normalized.ignored or "")
        # What the batch decided, at last. Another replica's new task in the way of one of
        # its own is no failure: the whole batch is tried again at once.
        try:
            await kept.write(session, now)
        except Exception as error:
            if is_conflict(error):
                event(log, "worker.conflict", error=_first_line(error))
                raise _Clash() from error
            raise
        if written and self.on_written is not None:
            uow.after_commit(self.on_written)
        return done

    async def _behind_others(self, session: AsyncSession, taken: list[int]) -> set[int]:
        """Which of the deliveries this transaction has taken come after a pending delivery
        about the same issue that it has not: `due` leaves those out, but two replicas may both
        have read a batch before either took it, and each taken a part."""
        if not taken:
            return set()
        d, earlier = t.Delivery, aliased(t.Delivery, name="earlier")
        stmt = select(d.id).where(
            col(d.id).in_(taken), col(d.topic).is_not(None),
            exists().where(col(earlier.topic) == col(d.topic), col(earlier.id) < col(d.id),
                           col(earlier.state) == t.DeliveryState.PENDING,
                           col(earlier.id).not_in(taken)))
        return {i for i in (await session.exec(stmt)).all() if i is not None}

    async def _lock_tasks(self, session: AsyncSession, batch: list[_Ready]) -> None:
        """On PostgreSQL, lock every existing task the batch is about, in id order, before
        deciding anything. Two batches on two replicas then wait for each other, instead of
        each holding a task the other needs next (a deadlock, which costs a second to detect).
        Should this fail, the batch is tried again one by one (`handle_batch`)."""
        if session.get_bind().dialect.name != "postgresql":
            return
        by_id: set[tuple[str, str, int]] = set()
        by_path: set[tuple[str, str, int]] = set()
        for item in batch:
            for h in item.happenings:
                if h.repo is not None:
                    by_id.add((h.repo.forge, h.repo.forge_repo_id, h.number))
                else:  # a path names a repo of the delivery's own forge only
                    by_path.add((item.forge, h.repo_path.lower(), h.number))
        which = []
        if by_id:
            which.append(tuple_(t.Repo.forge, t.Repo.forge_repo_id, t.Task.number)
                         .in_(sorted(by_id)))
        if by_path:
            which.append(tuple_(t.Repo.forge, func.lower(t.Repo.full_path), t.Task.number)
                         .in_(sorted(by_path)))
        if which:
            await session.exec(select(t.Task.id).join(t.Repo, col(t.Task.repo_id) == t.Repo.id)
                               .where(or_(*which)).order_by(col(t.Task.id))
                               .with_for_update(of=t.Task))

    async def _one(self, session: AsyncSession, cache: _Cache, forge: str, name: str,
                   normalized: Normalized, happenings: list[Happening], now: datetime
                   ) -> tuple[bool, list[_Decided]]:
        """Apply one delivery; whether it queued forge writes, and what it decided."""
        source = f"delivery:{forge}:{name}"
        for ref in normalized.repos:
            await ensure_repo(session, ref.forge, ref.forge_repo_id, ref.full_path,
                              ref.installation_id, private=ref.private)
        if normalized.transfer is not None:
            cache.clear()
            await self._transfer(session, normalized.transfer)
        written = False
        decided: list[_Decided] = []
        for h in happenings:
            wrote, outcome = await self._decide(session, cache, forge, h, source, now)
            written |= wrote
            if outcome is not None:
                decided.append(outcome)
        return written, decided

    async def _repo(self, session: AsyncSession, cache: _Cache, forge: str,
                    h: Happening) -> t.Repo | None:
        if h.repo is not None:
            key = (h.repo.forge, h.repo.forge_repo_id)
            known = cache.repos.get(key)
            if known is not None and _same_repo(known, h.repo):
                return known
            repo = await ensure_repo(session, h.repo.forge, h.repo.forge_repo_id,
                                     h.repo.full_path, h.repo.installation_id,
                                     private=h.repo.private)
            cache.repos[key] = repo
            return repo
        # A reference by path to another repo: only one we already know, on the delivery's own
        # forge (a reference never crosses forges).
        stmt = select(t.Repo).where(t.Repo.forge == forge,
                                    func.lower(t.Repo.full_path) == h.repo_path.lower())
        return (await session.exec(stmt)).first()

    async def _decide(self, session: AsyncSession, cache: _Cache, forge: str, h: Happening,
                      source: str, now: datetime) -> tuple[bool, _Decided | None]:
        """Decide one happening and write the decision; whether it queued forge writes, and
        what was decided (None when nothing was)."""
        repo = await self._repo(session, cache, forge, h)
        if repo is None:
            return False, None
        policy = policy_of(self.settings, repo)
        issue = IssueRef(repo.forge, repo.full_path, h.number, h.title, h.url)
        key = (t.id_of(repo), h.number)
        if key in cache.bounties:
            bounty = cache.bounties[key]  # as this batch left it: no need to read it again
        else:
            bounty = await load_bounty(session, repo, h.number, lock=True)
        handled: list[int] = []
        if isinstance(h.what, Comment):
            fresh = await fresh_lines(session, repo.forge, h.what, policy, bounty, now)
            if fresh is None:  # applied before (a webhook, an edit, a sync, a redelivery)
                event(log, "comment.repeat", forge=repo.forge, comment=h.what.id,
                      source=source)
                return False, None
            comment, handled = fresh
            decision = decide_comment(bounty, issue, comment, policy, now)
        else:
            decision = decide_event(bounty, issue, h.what, policy, now)
        if decision.bounty is None and not decision.messages:
            cache.bounties[key] = None
            return False, None
        task_id = await save_decision(session, repo, issue, decision, source=source, now=now,
                                      summary_delay=self.summary_delay)
        if handled and bounty is None and task_id is not None:
            await session.exec(update(t.HandledComment)
                               .where(col(t.HandledComment.id).in_(handled))
                               .values(task_id=task_id))
        cache.bounties[key] = decision.bounty
        if not (decision.created or decision.trail or decision.messages):
            return False, None  # a comment with no command, say: nothing was decided
        return bool(decision.messages), _decided(f"{repo.full_path}#{h.number}", decision,
                                                 policy)

    async def _recorded(self, session: AsyncSession, cache: _Cache,
                        batch: list[_Ready]) -> None:
        """Read the command lines already applied of every comment in the batch, at once."""
        wanted: dict[str, list[str]] = {}
        for item in batch:
            for h in item.happenings:
                if isinstance(h.what, Comment):
                    forge = h.repo.forge if h.repo is not None else item.forge
                    wanted.setdefault(forge, []).append(h.what.id)
        for forge, ids in wanted.items():
            found = await recorded(session, forge, ids)
            for comment_id in ids:
                key = comment_id[:t.FORGE_ID]
                cache.lines[(forge, key)] = found.get(key, [])

    async def _tasks(self, session: AsyncSession, cache: _Cache, batch: list[_Ready]) -> None:
        """Read the batch's stored repos and the tasks its deliveries are about, at once (a task
        read one by one is six statements: a batch of a few deliveries about ten tasks paid
        more for reading them than for all the rest). What the batch does not find here (a
        repo named by path, a repo not stored yet) is read when it is met."""
        refs = {(h.repo.forge, h.repo.forge_repo_id)
                for item in batch for h in item.happenings if h.repo is not None}
        if not refs:
            return
        by_forge: dict[str, list[str]] = {}
        for forge, repo_id in refs:
            by_forge.setdefault(forge, []).append(repo_id)
        repos = (await session.exec(select(t.Repo).where(or_(*(
            and_(col(t.Repo.forge) == forge, col(t.Repo.forge_repo_id).in_(sorted(ids)))
            for forge, ids in sorted(by_forge.items())))))).all()
        wanted: dict[int, tuple[t.Repo, set[int]]] = {}
        for repo in repos:
            cache.repos[(repo.forge, repo.forge_repo_id)] = repo
            wanted[t.id_of(repo)] = (repo, set())
        for item in batch:
            for h in item.happenings:
                known = cache.repos.get((h.repo.forge, h.repo.forge_repo_id)) if h.repo else None
                if known is not None:
                    wanted[t.id_of(known)][1].add(h.number)
        # Only the tasks found: one missing may be created by another replica before this
        # batch decides on its issue (there is no row to lock yet), and is read then.
        cache.bounties.update((key, bounty) for key, bounty in (
            await load_many(session, wanted, lock=True)).items() if bounty is not None)

    async def _plain(self, session: AsyncSession, cache: _Cache, item: _Ready) -> bool:
        """Whether the rules can decide this delivery alone: no transfer, and every repo it
        names is stored already as it says (its path, installation, privacy)."""
        if item.normalized.transfer is not None:
            return False
        refs = [*item.normalized.repos, *(h.repo for h in item.happenings if h.repo)]
        for ref in refs:
            key = (ref.forge, ref.forge_repo_id)
            known = cache.repos.get(key)
            if known is None:
                known = await stored_repo(session, ref.forge, ref.forge_repo_id)
                if known is None:
                    return False
                cache.repos[key] = known
            if not _same_repo(known, ref):
                return False
        return True

    async def _delivery(self, session: AsyncSession, cache: _Cache, kept: DecisionBatch,
                        item: _Ready, now: datetime, *, spare: int
                        ) -> tuple[bool, list[_Decided]]:
        """Apply one delivery of the batch: whether it queued forge writes, what it decided."""
        if await self._plain(session, cache, item):
            # Decided in memory, written with the rest of the batch (`kept`).
            return await self._kept(session, cache, kept, item, now, spare=spare)
        return await self._at_once(session, cache, kept, item, now)

    async def _at_once(self, session: AsyncSession, cache: _Cache, kept: DecisionBatch,
                       item: _Ready, now: datetime) -> tuple[bool, list[_Decided]]:
        """Apply what the rules cannot decide alone (a new or renamed repo, a transfer): written
        at once, in a savepoint of its own, after what the batch has decided so far."""
        if kept:
            await kept.write(session, now)
            _forget_bounty_rows(session)
        cache.lines.clear()
        try:
            async with session.begin_nested():
                return await self._one(session, cache, item.forge, item.name, item.normalized,
                                       item.happenings, now)
        except Exception:
            cache.clear()  # what it held may be what was just rolled back
            raise
        finally:
            kept.ids.forget()

    async def _fresh(self, session: AsyncSession, cache: _Cache,
                     lines: dict[tuple[str, str], list[str]], repo: t.Repo, comment: Comment,
                     policy: Policy, source: str) -> tuple[Comment, list[str]] | None:
        """The comment with only its command lines never applied (by an earlier batch, or
        earlier in this one), and their keys; None when it has none left (`fresh_lines`)."""
        said = (repo.forge, comment.id[:t.FORGE_ID])
        if said not in cache.lines:  # a comment of another forge's repo, say
            found = await recorded(session, said[0], [said[1]])
            cache.lines[said] = found.get(said[1], [])
        done = [*cache.lines[said], *lines.get(said, [])]
        planned = lines_to_apply(repo.forge, comment, policy, done)
        if planned is None:  # applied before (a webhook, an edit, a sync, a redelivery)
            event(log, "comment.repeat", forge=repo.forge, comment=comment.id, source=source)
            return None
        if not planned[1]:
            return comment, []
        fresh = [line_key for line_key, _ in planned[1]]
        lines.setdefault(said, []).extend(fresh)
        return with_lines(comment, planned[0], planned[1], done), fresh

    async def _kept(self, session: AsyncSession, cache: _Cache, kept: DecisionBatch,
                    item: _Ready, now: datetime, *, spare: int) -> tuple[bool, list[_Decided]]:
        """Decide one delivery in memory and keep what it decided in `kept`, written with the
        batch: whether it queued forge writes, and what it decided. Should anything fail,
        neither `kept` nor `cache` has changed: the delivery is as if never tried."""
        source = f"delivery:{item.forge}:{item.name}"
        bounties: dict[tuple[int, int], Bounty | None] = {}  # this delivery's, over the cache
        lines: dict[tuple[str, str], list[str]] = {}
        decisions: list[tuple[t.Repo, IssueRef, Decision, Bounty | None]] = []
        handled: list[dict[str, Any]] = []
        decided: list[_Decided] = []
        written = False
        for h in item.happenings:
            repo = await self._repo(session, cache, item.forge, h)
            if repo is None:
                continue
            policy = policy_of(self.settings, repo)
            issue = IssueRef(repo.forge, repo.full_path, h.number, h.title, h.url)
            key = (t.id_of(repo), h.number)
            if key in bounties:
                bounty = bounties[key]
            elif key in cache.bounties:
                bounty = cache.bounties[key]
            else:
                bounty = await load_rows(session, repo, h.number, lock=True)
            fresh: list[str] = []
            if isinstance(h.what, Comment):
                applying = await self._fresh(session, cache, lines, repo, h.what, policy,
                                             source)
                if applying is None:
                    continue
                comment, fresh = applying
                decision = decide_comment(bounty, issue, comment, policy, now)
            else:
                decision = decide_event(bounty, issue, h.what, policy, now)
            if decision.bounty is not None:
                await kept.ids.name(decision.bounty, spare=min(spare, 100))
            task_id = bounty.id if bounty is not None else (
                decision.bounty.id if decision.bounty is not None else None)
            if isinstance(h.what, Comment):
                handled += [dict(forge=repo.forge, comment_id=h.what.id[:t.FORGE_ID],
                                 revision=line_key, task_id=task_id, handled_at=now)
                            for line_key in fresh]
            bounties[key] = decision.bounty
            if decision.bounty is None and not decision.messages:
                continue
            decisions.append((repo, issue, decision, bounty))
            written |= bool(decision.messages)
            if decision.created or decision.trail or decision.messages:
                decided.append(_decided(f"{repo.full_path}#{h.number}", decision, policy))
        kept.add(decisions, handled, source=source, now=now, summary_delay=self.summary_delay)
        cache.bounties.update(bounties)
        for said, keys in lines.items():
            cache.lines[said] = [*cache.lines.get(said, []), *keys]
        return written, decided

    async def _transfer(self, session: AsyncSession, move: Transfer) -> None:
        """The issue moved: its task (and so its money) follows it to the new repo."""
        old = await ensure_repo(session, move.old.forge, move.old.forge_repo_id,
                                move.old.full_path, move.old.installation_id,
                                private=move.old.private)
        new = await ensure_repo(session, move.new.forge, move.new.forge_repo_id,
                                move.new.full_path, move.new.installation_id,
                                private=move.new.private)
        task = (await session.exec(select(t.Task).where(
            t.Task.repo_id == old.id, t.Task.number == move.old_number))).first()
        if task is None:
            return
        task.repo_id = t.id_of(new)
        task.number = move.new_number
        task.url = move.new_url or task.url
        session.add(t.AuditEvent(task_id=task.id, actor="system", action="task.transferred",
                                 detail={"from": f"{old.full_path}#{move.old_number}",
                                         "to": f"{new.full_path}#{move.new_number}"}))

    async def _failed(self, delivery_id: int, error: Exception, *, passing: bool) -> bool:
        """Count a failed try of a pending delivery: tried again after a backoff, or marked
        failed after `max_attempts` (never for a passing reason). True when failed for good."""
        now = self.clock()
        d = t.Delivery
        async with UnitOfWork(self.sessionmaker) as uow:
            # Only these columns, never the row: its payload may be what cannot be read.
            found = (await uow.session.exec(select(d.delivery_id, d.attempts, d.forge).where(
                d.id == delivery_id, d.state == t.DeliveryState.PENDING).with_for_update())
                ).first()
            if found is None:
                return False
            name, attempts = found[0], found[1] + 1
            reason = _error_text(error)
            finished = attempts >= self.max_attempts and not passing
            values: dict[str, Any] = dict(attempts=attempts, error=reason)
            if finished:
                values["state"] = t.DeliveryState.FAILED
            else:
                delay = (error.retry_after if isinstance(error, ForgeError)
                         and error.retry_after else backoff(attempts, self.retry_delay, 3600.0))
                values["next_attempt_at"] = now + timedelta(seconds=min(delay, 3600.0))
            await uow.session.exec(update(d).where(
                col(d.id) == delivery_id).values(**values))
        self.metrics.delivery_failed(found[2], final=finished)
        event(log, "delivery.failed" if finished else "delivery.retry", logging.WARNING,
              delivery=name, attempts=attempts, error=reason)
        return finished
