"""Reconciliation: what the webhooks missed, read from each repo and queued in the inbox.

For each known repo of a forge that is on: take the repo's lease (a conditional UPDATE of its
`sync_cursor` row, so several replicas never read one repo at once, and no lock is held over
HTTP), ask the forge what changed since the cursor (`ForgeClient.changes`, with the ETags of the
last read, so an unchanged list is a 304), store each thing found as an inbox delivery of kind
`bountybot.sync`, then move the cursor and release the lease in that same transaction.

The delivery id names what was found for good (`sync:github:comment:<id>:<updated_at>`,
`sync:github:merge:<pull request id>`, `sync:github:label:<issue id>`): reading it again stores
nothing. The one worker applies it, in order with the webhooks' deliveries; a comment that both
a webhook and a sync bring is applied once (`handled_comment`), and a label or a merge twice is
no change. The cursor is where the read began, less `overlap`: something stamped while the repo
was being read, or by a forge clock a little behind ours, is read again rather than missed.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.clock import Clock, utc_now
from bountybot.config import Settings
from bountybot.forges.base import ForgeClient, ForgeError
from bountybot.forges.events import SYNC_EVENT, Changes, happenings_to_json
from bountybot.inbox_writer import insert_new
from bountybot.logs import event
from bountybot.storage import tables as t
from bountybot.storage.bounties import repo_ref
from bountybot.storage.dialect import insert_for
from bountybot.storage.uow import BACKGROUND, UnitOfWork

log = logging.getLogger(__name__)


# Longer than reading one repo takes; a process that dies holding a lease holds it this long.
LEASE = timedelta(minutes=5)
OVERLAP = timedelta(minutes=2)
_MAX_ERROR = 2000



class UnknownRepo(LookupError):
    """`run_once(repo=...)` named no repo the bot knows."""


@dataclass
class RepoSync:
    """What one repo's sync did."""

    forge: str
    repo: str
    found: int = 0
    queued: int = 0  # new deliveries: what was found less what was already in the inbox
    requests: int = 0
    not_modified: int = 0  # requests the forge answered 304
    busy: bool = False  # another process held its lease
    error: str | None = None

    def line(self) -> str:
        where = f"{self.forge} {self.repo}"
        if self.busy:
            return f"{where}: skipped, another process is syncing it"
        if self.error is not None:
            return f"{where}: failed: {self.error}"
        return (f"{where}: {self.found} found, {self.queued} queued "
                f"({self.requests} requests, {self.not_modified} unchanged)")


@dataclass
class SyncReport:
    """What a `run_once` did, repo by repo."""

    repos: list[RepoSync] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return sum(r.queued for r in self.repos)

    @property
    def failed(self) -> list[RepoSync]:
        return [r for r in self.repos if r.error is not None]

    def total(self) -> str:
        found = sum(r.found for r in self.repos)
        requests = sum(r.requests for r in self.repos)
        unchanged = sum(r.not_modified for r in self.repos)
        return (f"{len(self.repos)} repos: {found} found, {self.queued} queued, "
                f"{requests} requests ({unchanged} unchanged), {len(self.failed)} failed")


class Reconciler:
    """Reads each repo's changes since its cursor and queues what the webhooks missed. Safe
    to run at once in several processes (and several times in one): each repo is leased."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                 clients: Mapping[str, ForgeClient], clock: Clock = utc_now, *,
                 owner: str | None = None, on_stored: Callable[[], Any] | None = None,
                 lease: timedelta = LEASE, overlap: timedelta = OVERLAP) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.clients = clients
        self.clock = clock
        self.owner = (owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")[:64]
        self.on_stored = on_stored  # e.g. wake the delivery worker
        self.lease = lease
        self.overlap = overlap

    async def run_once(self, repo: str | None = None, *,
                       progress: Callable[[RepoSync], Any] | None = None) -> SyncReport:
        """Sync every known repo of a forge that is on, or the one at path `repo` (on any
        forge); `progress` is called with each repo's result as it comes."""
        report = SyncReport()
        for row in await self._repos(repo):
            result = await self.sync_repo(row)
            report.repos.append(result)
            if progress is not None:
                progress(result)
        return report

    async def _repos(self, path: str | None) -> list[t.Repo]:
        stmt = select(t.Repo).where(col(t.Repo.forge).in_(list(self.clients)))
        if path is not None:
            stmt = stmt.where(func.lower(t.Repo.full_path) == path.strip("/").lower())
        async with self.sessionmaker() as session:
            rows = list((await session.exec(stmt.order_by(col(t.Repo.id)))).all())
        if path is not None and not rows:
            on = " or ".join(self.clients) or "no forge"
            raise UnknownRepo(f"no repo {path} is known on {on} (the bot learns a repo from its"
                              " first webhook)")
        return rows

    async def sync_repo(self, row: t.Repo) -> RepoSync:
        result = RepoSync(row.forge, row.full_path)
        repo_id = t.id_of(row)
        leased = await self._take_lease(repo_id)
        if leased is None:
            result.busy = True
            event(log, "sync.busy", logging.DEBUG, forge=row.forge, repo=row.full_path)
            return result
        since, etags = leased
        # A repo read for the first time is read from when the bot first heard of it: what
        # happened before is not the bot's to apply.
        since = since or row.created_at - self.overlap
        started = self.clock()
        try:
            changes = await self.clients[row.forge].changes(
                repo_ref(row), label=self.settings.bot.label, since=since, etags=etags)
            result.found = len(changes.found)
            result.requests, result.not_modified = changes.requests, changes.not_modified
            result.queued = await self._store(row, changes, max(since, started - self.overlap))
        except Exception as error:
            if isinstance(error, ForgeError):
                result.error = str(error)
            else:  # a bug or the database: the whole story in the log, one line in the report
                log.exception("sync.error", extra={"repo": row.full_path})
                result.error = f"{type(error).__name__}: {error}"
            result.error = result.error.splitlines()[0][:_MAX_ERROR] if result.error else "?"
            event(log, "sync.failed", logging.WARNING, forge=row.forge, repo=row.full_path,
                  error=result.error)
            await self._release(repo_id, result.error)
            return result
        event(log, "sync.repo", forge=row.forge, repo=row.full_path, found=result.found,
              queued=result.queued, requests=result.requests, not_modified=result.not_modified)
        return result

    async def _take_lease(self, repo_id: int) -> tuple[datetime | None, dict[str, str]] | None:
        """(since, etags) when this process now holds the repo's lease; None when another
        does. A conditional UPDATE, committed at once: no lock is held while reading."""
        now = self.clock()
        cursor = t.SyncCursor
        async with UnitOfWork(self.sessionmaker, priority=BACKGROUND) as uow:
            session = uow.session
            await session.exec(insert_for(session)(cursor.__table__)  # type: ignore[attr-defined]
                               .values(repo_id=repo_id, etags={}).on_conflict_do_nothing())
            taken = (await session.exec(
                update(cursor)
                .where(col(cursor.repo_id) == repo_id,
                       or_(col(cursor.leased_until).is_(None), col(cursor.leased_until) < now))
                .values(leased_until=now + self.lease, lease_owner=self.owner)
                .returning(col(cursor.since), col(cursor.etags)))).first()
        if taken is None:
            return None
        return taken[0], {str(k): str(v) for k, v in (taken[1] or {}).items()}

    async def _store(self, row: t.Repo, changes: Changes, cursor_to: datetime) -> int:
        """Queue what was found, labels first (a task exists before the comments that fund
        it), then in the order it happened; move the cursor to `cursor_to`; release the
        lease. One commit."""
        now = self.clock()
        found = sorted(changes.found, key=lambda f: (f.kind != "label", f.at))
        deliveries = [dict(forge=row.forge, delivery_id=f"sync:{row.forge}:{f.key}"[:255],
                           event=SYNC_EVENT, payload=happenings_to_json(f.happenings),
                           state=t.DeliveryState.PENDING, attempts=0, received_at=now)
                      for f in found]
        cursor = t.SyncCursor
        async with UnitOfWork(self.sessionmaker, priority=BACKGROUND) as uow:
            stored = await insert_new(uow.session, deliveries) if deliveries else set()
            moved = (await uow.session.exec(
                update(cursor)
                .where(col(cursor.repo_id) == row.id, col(cursor.lease_owner) == self.owner)
                .values(since=cursor_to, etags=changes.etags,
                        synced_at=now, last_error=None, leased_until=None, lease_owner=None)
                .returning(col(cursor.repo_id)))).first()
            if moved is None:  # the lease ran out and another process took the repo
                event(log, "sync.lease_lost", logging.WARNING, forge=row.forge,
                      repo=row.full_path)
            if stored and self.on_stored is not None:
                uow.after_commit(self.on_stored)
        return len(stored)

    async def _release(self, repo_id: int, error: str) -> None:
        """Let the repo go after a failure, cursor and ETags unchanged: the next run reads
        the same changes again."""
        cursor = t.SyncCursor
        try:
            async with UnitOfWork(self.sessionmaker, priority=BACKGROUND) as uow:
                await uow.session.exec(
                    update(cursor)
                    .where(col(cursor.repo_id) == repo_id, col(cursor.lease_owner) == self.owner)
                    .values(leased_until=None, lease_owner=None, last_error=error))
        except Exception:  # the database is down too: the lease runs out by itself
            log.exception("sync.release_failed", extra={"repo_id": repo_id})
