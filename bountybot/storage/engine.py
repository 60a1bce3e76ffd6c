"""The async engine and session factory, set up the same way for SQLite and PostgreSQL.

SQLite (aiosqlite): foreign keys on, WAL journal, a 5 s busy timeout, and real transactions:
the driver's own implicit BEGIN (which it only emits before a write, so a read-then-write
was not atomic and DDL ran outside any transaction) is turned off and SQLAlchemy's begin
emits ours. A connection carrying the `WRITE_LOCK` execution option, as every `UnitOfWork`
does, opens with `BEGIN IMMEDIATE`: it takes SQLite's single write lock at the start, so two
units of work never interleave; the second waits (up to the busy timeout) instead of failing
with "database is locked" when it tries to upgrade a stale read. This is how "the single
writer serialises" on SQLite, where `FOR UPDATE SKIP LOCKED` does not exist. Other sessions
(pages, reports) open with a plain `BEGIN`: in WAL mode they read a snapshot and neither wait
for writers nor hold them up.

PostgreSQL (asyncpg): a modest pool with pre-ping. A URL may carry `?search_path=<schema>`
to keep bountybot's tables in a schema of their own (asyncpg has no such URL option, so it is
turned into a server setting here); the tests use it to give each test session its own schema.
Always build engines through `create_engine` so both work.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

SQLITE_BUSY_TIMEOUT_MS = 5000
WRITE_LOCK = "bountybot_write_lock"  # execution option: begin with SQLite's write lock


def create_engine(
    url: str | URL,
    *,
    echo: bool = False,
    foreign_keys: bool = True,
    **kwargs: Any,
) -> AsyncEngine:
    """An AsyncEngine for `url` (`sqlite+aiosqlite://...` or `postgresql+asyncpg://...`).

    `foreign_keys=False` is for migrations only: alembic's batch mode rebuilds SQLite tables,
    which foreign key enforcement would block or cascade through (see `migrations/env.py`).
    Extra keyword arguments go to `create_async_engine` (e.g. `poolclass`).
    """
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, echo=echo, **kwargs)
        _setup_sqlite(engine, foreign_keys=foreign_keys)
        return engine
    if url.get_backend_name() == "postgresql":
        search_path = url.query.get("search_path")
        if search_path is not None:
            if not isinstance(search_path, str):
                raise ValueError("search_path must be given once in the database URL")
            url = url.difference_update_query(["search_path"])
            connect_args = dict(kwargs.pop("connect_args", {}))
            settings = dict(connect_args.get("server_settings", {}))
            settings["search_path"] = search_path
            connect_args["server_settings"] = settings
            kwargs["connect_args"] = connect_args
        if "poolclass" not in kwargs:
            kwargs = {
                "pool_size": 5,
                "max_overflow": 10,
                "pool_pre_ping": True,
                "pool_recycle": 1800,
                **kwargs,
            }
        return create_async_engine(url, echo=echo, **kwargs)
    raise ValueError(
        f"unsupported database {url.get_backend_name()!r}: "
        "use sqlite+aiosqlite://... or postgresql+asyncpg://..."
    )


def _setup_sqlite(engine: AsyncEngine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    # The signature of SQLAlchemy's connect event.
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:  # noqa: ARG001
        # Stop the driver from emitting its own (late) BEGIN; `on_begin` emits ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL syncs at checkpoints rather than at every commit: a crash of the
        # process loses nothing; a power cut may lose the last commits (never corrupts). Those
        # are deliveries the reconciliation sweep fetches again. PostgreSQL is for more.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(WRITE_LOCK, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for `UnitOfWork`: SQLModel's AsyncSession (with `.exec`), no expiry on commit.

    `expire_on_commit=False` keeps loaded rows readable after the commit (no lazy reload,
    which async sessions cannot do implicitly).
    """
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
