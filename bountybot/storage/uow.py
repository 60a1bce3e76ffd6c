"""The unit of work: one transaction per delivery, sweep or request; the only place that commits.

    async with UnitOfWork(sessionmaker) as uow:
        uow.session.add(...)                  # services write through uow.session, never commit
        uow.after_commit(wake_outbox_worker)  # runs only if the commit succeeds

A clean exit commits, an exception rolls back (and re-raises); callbacks registered with
`after_commit` run after a successful commit, in order, and are dropped on rollback, so no job
is ever started for work that did not happen. Calling `session.commit()` inside a unit of work
is a bug and raises: services never commit. Savepoints (`session.begin_nested()`) are allowed.

The transaction begins on entry. On SQLite that takes the database's single write lock, so
units of work run one at a time (a second one waits, up to the busy timeout): keep them short,
and never wait inside one for another. Plain sessions that only read do not take the lock.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from bountybot.storage.engine import WRITE_LOCK

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[Any] | Any]
_COMMITTING = "bountybot.uow.committing"

S = TypeVar("S", Select[Any], SelectOfScalar[Any])


class CommitOutsideUnitOfWork(RuntimeError):
    """A service called `session.commit()`; only `UnitOfWork` commits."""


def _refuse_foreign_commit(session: Session) -> None:
    # before_commit also fires when a savepoint is released; those are fine.
    if not session.info.get(_COMMITTING) and not session.in_nested_transaction():
        raise CommitOutsideUnitOfWork("only UnitOfWork commits; leave the `async with` instead")


class UnitOfWork:
    """One database transaction, committed on a clean exit and rolled back on an exception."""

    session: AsyncSession

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._callbacks: list[AfterCommit] = []
        self._entered = False

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a UnitOfWork is used once; make a new one")
        self._entered = True
        self.session = self._sessionmaker()
        event.listen(self.session.sync_session, "before_commit", _refuse_foreign_commit)
        try:
            # Begin now; on SQLite this takes the write lock, so units of work take turns.
            await self.session.connection(execution_options={WRITE_LOCK: True})
        except BaseException:
            await self.session.close()
            raise
        return self

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
            if not committed:
                self._callbacks.clear()
                await self.session.rollback()
            await self.session.close()
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
