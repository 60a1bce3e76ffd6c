"""The unit of work: one transaction per delivery, sweep or request; the only place that commits.

    async with UnitOfWork(sessionmaker) as uow:
        uow.session.add(...)                  # services write through uow.session, never commit
        uow.after_commit(wake_outbox_worker)  # runs only if the commit succeeds

A clean exit commits, an exception rolls back (and re-raises); callbacks registered with
`after_commit` run after a successful commit, in order, and are dropped on rollback, so no job
is ever started for work that did not happen. Calling `session.commit()` inside a unit of work
is a bug and raises: services never commit. Savepoints (`session.begin_nested()`) are allowed.

Every commit that wrote something, by a unit of work or by any other session or connection of
this process, bumps `WRITES` (a process-wide generation counter): the public page cache
(`bountybot/web/cache.py`) keeps a page only while the counter is where it was when the page was
computed, so a page read after this process's own write is always recomputed.

The transaction begins on entry. On SQLite that takes the database's single write lock, so
units of work run one at a time (a second one waits, up to the busy timeout): keep them short,
and never wait inside one for another. Plain sessions that only read do not take the lock.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool
from sqlalchemy.sql import Select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from bountybot.storage.engine import WRITE_LOCK

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[Any] | Any]
_COMMITTING = "bountybot.uow.committing"

S = TypeVar("S", Select[Any], SelectOfScalar[Any])


class Generation:
    """A counter bumped by every commit of this process that wrote to the books."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


WRITES = Generation()
_WROTE = "bountybot.uow.wrote"
_COMMITTED = "bountybot.uow.committed"
# Statements that never change the books; anything else that touched a row (or whose count of
# rows is unknown, -1) marks its connection's transaction as a write.
_READS = ("select", "pragma", "show", "set", "savepoint", "release", "rollback", "begin")


# Engine-wide (every engine of the process, the read pool's too), not only UnitOfWork: tests and
# the CLI also commit plain sessions, and a missed bump would serve a page from before a write.
@event.listens_for(Engine, "after_cursor_execute")
def _note_write(conn: Connection, cursor: Any, statement: str, _parameters: Any, context: Any,
                _executemany: bool) -> None:
    # A SELECT that SQLAlchemy compiled says so (even one that begins `WITH`); text() and
    # driver SQL are judged by their first word.
    if getattr(getattr(getattr(context, "compiled", None), "statement", None), "is_select",
               False):
        return
    if statement.lstrip()[:9].lower().startswith(_READS):
        return
    if getattr(cursor, "rowcount", -1) != 0:
        conn.info[_WROTE] = True


# Bumped twice: as the commit begins (the "commit" event comes before the database's COMMIT),
# and again once it is over, when the connection goes back to its pool, so that a page computed
# on a snapshot taken during the COMMIT is not kept as if it were after it.
@event.listens_for(Engine, "commit")
def _bump_on_commit(conn: Connection) -> None:
    if conn.info.pop(_WROTE, False):
        conn.info[_COMMITTED] = True
        WRITES.bump()


@event.listens_for(Pool, "checkin")
def _bump_after_commit(_dbapi_connection: Any, record: Any) -> None:
    if record is not None and record.info.pop(_COMMITTED, False):
        WRITES.bump()


@event.listens_for(Engine, "rollback")
def _forget_on_rollback(conn: Connection) -> None:
    conn.info.pop(_WROTE, None)


class CommitOutsideUnitOfWork(RuntimeError):
    """A service called `session.commit()`; only `UnitOfWork` commits."""


# SQLite has one write lock per database. Units of work of one process queue for it here, in
# the event loop, where a turn passes at once; otherwise they would wait inside SQLite, whose
# busy handler sleeps in growing steps (up to 100 ms) and makes webhook answers slow under load.
class _Turn:
    """A lock handed out by priority, then in arrival order: the webhooks storing deliveries
    (URGENT, a forge waits for the answer) go before the background workers (BACKGROUND)."""

    def __init__(self) -> None:
        self.held = False
        self.queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def waiting_before(self, priority: int) -> int:
        """How many wait with a more urgent priority than `priority`."""
        return sum(1 for p, _, _ in self.queue if p < priority)

    async def acquire(self, priority: int) -> None:
        if not self.held and not self.queue:
            self.held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.queue, (priority, next(self.arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the turn was handed over as we were cancelled: pass it on
            else:
                self.queue = [item for item in self.queue if item[2] is not future]
                heapq.heapify(self.queue)
            raise

    def release(self) -> None:
        while self.queue:
            _, _, future = heapq.heappop(self.queue)
            if not future.done():
                future.set_result(None)  # the turn passes directly; `held` stays True
                return
        self.held = False


# Webhooks first (a forge waits for the answer), then the delivery worker, then the outbox
# (whose summaries coalesce better the later they are sent).
URGENT, BACKGROUND, LATER = 0, 1, 2
_SQLITE_TURNS: weakref.WeakKeyDictionary[Any, _Turn] = weakref.WeakKeyDictionary()


def _sqlite_turn(sessionmaker: async_sessionmaker[AsyncSession]) -> _Turn | None:
    bind = sessionmaker.kw.get("bind")
    engine = getattr(bind, "sync_engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return None
    turn = _SQLITE_TURNS.get(engine)
    if turn is None:
        turn = _SQLITE_TURNS[engine] = _Turn()
    return turn


def _refuse_foreign_commit(session: Session) -> None:
    # before_commit also fires when a savepoint is released; those are fine.
    if not session.info.get(_COMMITTING) and not session.in_nested_transaction():
        raise CommitOutsideUnitOfWork("only UnitOfWork commits; leave the `async with` instead")


class UnitOfWork:
    """One database transaction, committed on a clean exit and rolled back on an exception."""

    session: AsyncSession

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *,
                 priority: int = URGENT) -> None:
        self._sessionmaker = sessionmaker
        self._priority = priority
        self._callbacks: list[AfterCommit] = []
        self._entered = False
        self._turn: _Turn | None = None

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a UnitOfWork is used once; make a new one")
        self._entered = True
        self._turn = _sqlite_turn(self._sessionmaker)
        if self._turn is not None:
            await self._turn.acquire(self._priority)
        self.session = self._sessionmaker()
        event.listen(self.session.sync_session, "before_commit", _refuse_foreign_commit)
        try:
            # Begin now; on SQLite this takes the write lock, so units of work take turns.
            await self.session.connection(execution_options={WRITE_LOCK: True})
        except BaseException:
            await self.session.close()
            self._release()
            raise
        return self

    def _release(self) -> None:
        if self._turn is not None:
            turn, self._turn = self._turn, None
            turn.release()

    @property
    def contended(self) -> bool:
        """A more urgent unit of work of this process waits for SQLite's write lock: a long
        batch should commit what it has and let it in (always False on PostgreSQL)."""
        return self._turn is not None and self._turn.waiting_before(self._priority) > 0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        committed = False
        try:
            if exc_type is None:
                self.session.sync_session.info[_COMMITTING] = True
                await self.session.commit()
                committed = True
        finally:
            try:
                if not committed:
                    self._callbacks.clear()
                    await self.session.rollback()
                await self.session.close()
            finally:
                self._release()
        if committed:
            await self._run_callbacks()

    def after_commit(self, callback: AfterCommit) -> None:
        """Run `callback()` (a function or a coroutine function) once the commit has succeeded.

        A failing callback is logged and the others still run: the commit has happened, so the
        unit of work has not failed (the outbox and the sweeps catch up whatever was missed).
        """
        self._callbacks.append(callback)

    @property
    def dialect(self) -> Dialect:
        """The database dialect (`uow.dialect.name` is `sqlite` or `postgresql`)."""
        return self.session.get_bind().dialect

    async def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("uow.after_commit_failed", extra={"callback": repr(callback)})


# SQLSTATEs of a clash between two transactions that is over once either has finished:
# deadlock_detected, serialization_failure, lock_not_available.
_CLASHES = frozenset({"40P01", "40001", "55P03"})
# Tables whose rows two workers may both create for the same first event (the repo of its
# first webhook, the task of a new issue, the record of a comment's command line that a webhook
# and a reconciliation bring at once): the loser of the race finds the winner's row when it
# tries again. A duplicate anywhere else (a ledger key) is a real failure.
_CREATED_TOGETHER = frozenset({"repo", "task", "handled_comment"})


def is_conflict(error: BaseException) -> bool:
    """`error` is a clash with another transaction (another replica's, on PostgreSQL) that is
    over as soon as that one has finished: the work should be tried again at once, and it
    counts as no failure. SQLite never raises these: its units of work take turns."""
    orig = getattr(error, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in _CLASHES:
        return True
    if state == "23505":  # unique_violation: which table asyncpg says, on the driver's error
        table = getattr(orig, "table_name", None) or getattr(
            getattr(orig, "__cause__", None), "table_name", None)
        return table in _CREATED_TOGETHER
    return False


def for_update_skip_locked(stmt: S, dialect: Dialect | str, **kwargs: Any) -> S:
    """`stmt` with `FOR UPDATE SKIP LOCKED` on PostgreSQL; unchanged elsewhere.

    Lets several workers take different rows (deliveries, outbox messages, due claims) at once
    on PostgreSQL. SQLite has no row locks: there each unit of work begins with the database's
    write lock (see `engine.py`), so the rows one worker reads are not taken by another.
    `kwargs` go to `with_for_update` (e.g. `of=Delivery`).
    """
    name = dialect if isinstance(dialect, str) else dialect.name
    if name == "postgresql":
        return stmt.with_for_update(skip_locked=True, **kwargs)
    return stmt
