"""The delivery worker: takes stored webhook deliveries in order and applies them.

For each delivery: read it, turn the payload into normalized happenings (the forge adapter),
ask the forge whether a commenter maintains the repo when a command needs it (outside any
transaction, so no lock is held over HTTP), then in one unit of work: take the delivery again
(`FOR UPDATE SKIP LOCKED` on PostgreSQL; skipped if another worker handled it meanwhile), load
each task, decide, write the decision, mark the delivery handled. The outbox sends afterwards.

A delivery that fails for a passing reason (the forge is down) is tried again later; one that
fails for any other reason is tried a few times, then marked failed with the reason, and the
worker goes on: one bad delivery never stops the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, tuple_, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.clock import Clock, backoff, utc_now
from bountybot.config import Settings
from bountybot.forges.base import ForgeClient, ForgeError, RepoRef
from bountybot.forges.events import (
    SYNC_EVENT,
    Happening,
    Normalized,
    Transfer,
    happenings_from_payload,
)
from bountybot.forges.github_events import normalize as normalize_github
from bountybot.logs import event
from bountybot.loops import wait_any
from bountybot.rules import (
    Bounty,
    Comment,
    IssueRef,
    LinkClosed,
    LinkOpened,
    decide_comment,
    decide_event,
    needs_maintainer,
)
from bountybot.rules.policy import policy_from_settings
from bountybot.storage import tables as t
from bountybot.storage.bounties import (
    ensure_repo,
    insert_for,
    load_bounty,
    policy_of,
    save_decision,
)
from bountybot.storage.uow import BACKGROUND, UnitOfWork, for_update_skip_locked, is_conflict

log = logging.getLogger(__name__)




def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return (text.splitlines() or [""])[0][:200]


def normalize(forge: str, kind: str, payload: dict[str, Any], settings: Settings) -> Normalized:
    if kind == SYNC_EVENT:  # stored by reconciliation, already normalized
        return Normalized(happenings=happenings_from_payload(payload))
    if forge == "github":
        return normalize_github(kind, payload, label=settings.bot.label,
                                bot_login=settings.bot.login)
    if forge == "gitlab":
        from bountybot.forges.gitlab_events import normalize as normalize_gitlab

        return normalize_gitlab(kind, payload, label=settings.bot.label,
                                bot_login=settings.bot.login)
    return Normalized(ignored=f"no adapter for {forge}")


@dataclass
class _Cache:
    """What one batch has read or written, so the next delivery about the same task starts from
    the bounty as the last one left it instead of reading it again (the batch holds its lock)."""

    repos: dict[tuple[str, str], t.Repo] = field(default_factory=dict)
    bounties: dict[tuple[int, int], Bounty | None] = field(default_factory=dict)

    def clear(self) -> None:
        self.repos.clear()
        self.bounties.clear()


class DeliveryWorker:
    """Applies stored deliveries, oldest first."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                 clients: Mapping[str, ForgeClient], *, clock: Clock = utc_now,
                 on_written: Callable[[], None] | None = None, max_attempts: int = 5,
                 retry_delay: float = 30.0, summary_delay: float = 1.0) -> None:
        self.sessionmaker = sessionmaker
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

    async def due(self, limit: int) -> list[int]:
        now = self.clock()
        # A plain read (no unit of work): on SQLite it takes no write lock, so the webhooks
        # storing new deliveries are not held up by the worker looking for work. On PostgreSQL
        # it skips the rows another replica is applying right now (their lock is only
        # glanced at: the session ends at once), so each replica takes the next ones instead
        # of all reading the same batch and all but one finding it taken.
        async with self.sessionmaker() as session:
            stmt = (select(t.Delivery.id)
                    .where(t.Delivery.state == t.DeliveryState.PENDING,
                           or_(col(t.Delivery.next_attempt_at).is_(None),
                               col(t.Delivery.next_attempt_at) <= now))
                    .order_by(col(t.Delivery.id)).limit(limit))
            rows = await session.exec(for_update_skip_locked(stmt, session.get_bind().dialect))
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
        rolls back alone. Returns how many were finished (handled, or failed for good)."""
        async with self.sessionmaker() as session:
            rows = (await session.exec(select(t.Delivery).where(
                col(t.Delivery.id).in_(ids), t.Delivery.state == t.DeliveryState.PENDING)
                .order_by(col(t.Delivery.id)))).all()
            work = [(r.id, r.forge, r.event, r.payload, r.delivery_id) for r in rows]
        ready: list[tuple[int, str, str, Normalized, list[Happening]]] = []
        finished = 0
        for delivery_id, forge, kind, body, name in work:
            assert delivery_id is not None
            try:
                normalized = normalize(forge, kind, json.loads(body), self.settings)
                happenings = [await self._who(forge, h) for h in normalized.happenings]
            except ForgeError as error:  # the forge could not say who maintains the repo
                finished += await self._failed(delivery_id, name, error,
                                               passing=error.retryable)
                # Later deliveries may be about the same task: keep their order.
                break
            except Exception as error:
                log.exception("delivery.unreadable", extra={"delivery": name})
                finished += await self._failed(delivery_id, name, error, passing=False)
                continue
            ready.append((delivery_id, forge, name, normalized, happenings))
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
        if not needs_maintainer(what, policy):
            return h
        client = self.clients.get(h.repo.forge)
        maintainer = client is not None and await client.is_maintainer(h.repo, what.author.login)
        return replace(h, what=replace(what, author=replace(what.author,
                                                               is_maintainer=maintainer)))

    async def _apply(self, batch: list[tuple[int, str, str, Normalized, list[Happening]]]
                     ) -> int:
        now = self.clock()
        done = 0
        failures: list[tuple[int, str, Exception]] = []
        async with UnitOfWork(self.sessionmaker, priority=BACKGROUND) as uow:
            session = uow.session
            stmt = for_update_skip_locked(select(t.Delivery).where(
                col(t.Delivery.id).in_([item[0] for item in batch])), uow.dialect)
            rows = {r.id: r for r in (await session.exec(stmt)).all()}
            await self._lock_tasks(session, [item for item in batch if item[0] in rows])
            written = False
            cache = _Cache()
            for delivery_id, forge, name, normalized, happenings in batch:
                if done and uow.contended:
                    break  # webhooks wait to store deliveries: commit, do the rest next turn
                row = rows.get(delivery_id)
                if row is None or row.state != t.DeliveryState.PENDING:
                    continue  # taken or finished by another worker meanwhile
                try:
                    async with session.begin_nested():
                        written |= await self._one(session, cache, forge, name, normalized,
                                                   happenings, now)
                except Exception as error:
                    cache.clear()  # what it held may be what was just rolled back
                    if is_conflict(error):
                        # Another replica's transaction was in the way (a deadlock, the same
                        # new task created twice): no failure. This delivery and the rest of
                        # the batch stay due, in order, and are tried again at once.
                        event(log, "delivery.conflict", delivery=name,
                              error=_first_line(error))
                        self.clashed = True
                        break
                    log.exception("delivery.error", extra={"delivery": name})
                    failures.append((delivery_id, name, error))
                    continue
                row.state = t.DeliveryState.HANDLED
                row.handled_at = now
                row.error = normalized.ignored
                done += 1
                event(log, "delivery.handled", forge=forge, delivery=name,
                      happenings=len(happenings), note=normalized.ignored or "")
            if written and self.on_written is not None:
                uow.after_commit(self.on_written)
        for delivery_id, name, failure in failures:
            done += await self._failed(delivery_id, name, failure, passing=False)
        return done

    async def _lock_tasks(self, session: AsyncSession,
                          batch: list[tuple[int, str, str, Normalized, list[Happening]]]
                          ) -> None:
        """On PostgreSQL, lock every existing task the batch is about, in id order, before
        deciding anything. Two batches on two replicas then wait for each other, instead of
        each holding a task the other needs next (a deadlock, which costs a second to detect)."""
        if session.get_bind().dialect.name != "postgresql":
            return
        by_id: set[tuple[str, str, int]] = set()
        by_path: set[tuple[str, int]] = set()
        for *_, happenings in batch:
            for h in happenings:
                if h.repo is not None:
                    by_id.add((h.repo.forge, h.repo.forge_repo_id, h.number))
                else:
                    by_path.add((h.repo_path.lower(), h.number))
        which = []
        if by_id:
            which.append(tuple_(t.Repo.forge, t.Repo.forge_repo_id, t.Task.number)
                         .in_(sorted(by_id)))
        if by_path:
            which.append(tuple_(func.lower(t.Repo.full_path), t.Task.number)
                         .in_(sorted(by_path)))
        if which:
            await session.exec(select(t.Task.id).join(t.Repo, col(t.Task.repo_id) == t.Repo.id)
                               .where(or_(*which)).order_by(col(t.Task.id))
                               .with_for_update(of=t.Task))

    async def _one(self, session: AsyncSession, cache: _Cache, forge: str, name: str,
                   normalized: Normalized, happenings: list[Happening], now: datetime) -> bool:
        source = f"delivery:{forge}:{name}"
        for ref in normalized.repos:
            await ensure_repo(session, ref.forge, ref.forge_repo_id, ref.full_path,
                              ref.installation_id)
        if normalized.transfer is not None:
            cache.clear()
            await self._transfer(session, normalized.transfer)
        written = False
        for h in happenings:
            written |= await self._decide(session, cache, h, source, now)
        return written

    async def _repo(self, session: AsyncSession, cache: _Cache, h: Happening) -> t.Repo | None:
        if h.repo is not None:
            key = (h.repo.forge, h.repo.forge_repo_id)
            known = cache.repos.get(key)
            if known is not None and known.full_path == h.repo.full_path and (
                    known.installation_id == h.repo.installation_id
                    or not h.repo.installation_id):
                return known
            repo = await ensure_repo(session, h.repo.forge, h.repo.forge_repo_id,
                                     h.repo.full_path, h.repo.installation_id)
            cache.repos[key] = repo
            return repo
        # A reference by path to another repo: only one we already know.
        stmt = select(t.Repo).where(func.lower(t.Repo.full_path) == h.repo_path.lower())
        return (await session.exec(stmt)).first()

    async def _decide(self, session: AsyncSession, cache: _Cache, h: Happening, source: str,
                      now: datetime) -> bool:
        repo = await self._repo(session, cache, h)
        if repo is None:
            return False
        policy = policy_of(self.settings, repo)
        issue = IssueRef(repo.forge, repo.full_path, h.number, h.title, h.url)
        key = (t.id_of(repo), h.number)
        if key in cache.bounties:
            bounty = cache.bounties[key]  # as this batch left it: no need to read it again
        else:
            bounty = await load_bounty(session, repo, h.number, lock=True)
        handled: int | None = None
        if isinstance(h.what, Comment):
            decision = decide_comment(bounty, issue, h.what, policy, now)
        else:
            decision = decide_event(bounty, issue, h.what, policy, now)
        if decision.bounty is None and not decision.messages:
            cache.bounties[key] = None
            return False
        if isinstance(h.what, Comment) and (decision.messages or decision.changed):
            handled = await _first_time(session, repo.forge, h.what, bounty, now)
            if handled is None:  # applied before (a webhook and a sync, or a redelivery)
                event(log, "comment.repeat", forge=repo.forge, comment=h.what.id,
                      source=source)
                return False
        task_id = await save_decision(session, repo, issue, decision, source=source, now=now,
                                      summary_delay=self.summary_delay)
        if handled is not None and bounty is None and task_id is not None:
            await session.exec(update(t.HandledComment)  # type: ignore[call-overload]
                               .where(col(t.HandledComment.id) == handled)
                               .values(task_id=task_id))
        cache.bounties[key] = decision.bounty
        return bool(decision.messages)

    async def _transfer(self, session: AsyncSession, move: Transfer) -> None:
        """The issue moved: its task (and so its money) follows it to the new repo."""
        old = await ensure_repo(session, move.old.forge, move.old.forge_repo_id,
                                move.old.full_path, move.old.installation_id)
        new = await ensure_repo(session, move.new.forge, move.new.forge_repo_id,
                                move.new.full_path, move.new.installation_id)
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

    async def _failed(self, delivery_id: int, name: str, error: Exception,
                      *, passing: bool) -> bool:
        now = self.clock()
        async with UnitOfWork(self.sessionmaker) as uow:
            row = await uow.session.get(t.Delivery, delivery_id)
            if row is None or row.state != t.DeliveryState.PENDING:
                return False
            row.attempts += 1
            row.error = f"{type(error).__name__}: {error}"[:2000]
            if row.attempts >= self.max_attempts and not passing:
                row.state = t.DeliveryState.FAILED
                finished = True
            else:
                delay = (error.retry_after if isinstance(error, ForgeError)
                         and error.retry_after else backoff(row.attempts, self.retry_delay,
                                                            3600.0))
                row.next_attempt_at = now + timedelta(seconds=min(delay, 3600.0))
                finished = False
        event(log, "delivery.failed" if finished else "delivery.retry", logging.WARNING,
              delivery=name, attempts=row.attempts, error=row.error)
        return finished


async def _first_time(session: AsyncSession, forge: str, comment: Comment,
                      bounty: Bounty | None, now: datetime) -> int | None:
    """Record that this comment (this edit of it) is applied; None when it already was. In
    the deciding transaction: the record and what the comment did commit together, and a
    second worker applying the same comment at once waits on the unique key, then finds it."""
    table = t.HandledComment.__table__  # type: ignore[attr-defined]
    stmt = (insert_for(session)(table)
            .values(forge=forge, comment_id=comment.id[:t.FORGE_ID],
                    revision=(comment.revision or "")[:255],
                    task_id=bounty.id if bounty is not None else None, handled_at=now)
            .on_conflict_do_nothing().returning(table.c.id))
    return (await session.exec(stmt)).scalar()
