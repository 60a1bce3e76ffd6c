"""Run the alembic migrations from code (`bountybot db upgrade`, `serve`, tests): no alembic.ini.

The alembic `Config` is built here, pointing at the `migrations` folder next to this file, so
it works from any working directory and from an installed package. Every command runs on a
connection opened here (foreign keys off on SQLite, as batch mode needs) and handed to
`migrations/env.py`.

The sync functions (`upgrade`, `downgrade`, `current`, `is_empty`, `revision`) suit the command
line; called while an event loop runs in this thread they do their work in a helper thread (and
block until done). From async code, prefer `upgrade_async`, which runs on the caller's loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, pool
from sqlalchemy.engine import Connection

from bountybot.storage.engine import create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

T = TypeVar("T")


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic Config for bountybot's migrations, optionally bound to an open connection."""
    config = Config()
    # Config options go through configparser, which treats `%` specially.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:
        raise RuntimeError("no migrations found")
    return revision


async def _with_connection(url: str, work: Callable[[Connection], T]) -> T:
    """Run `work(sync_connection)` on a fresh connection to `url`, then commit."""
    engine = create_engine(url, foreign_keys=False, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            result = await connection.run_sync(work)
            await connection.commit()
            return result
    finally:
        await engine.dispose()


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even if this thread's loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bountybot-migrate") as pool_:
        return pool_.submit(lambda: asyncio.run(make())).result()


def _upgrade_on(revision: str) -> Callable[[Connection], None]:
    return lambda connection: command.upgrade(alembic_config(connection), revision)


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (creating the tables of an empty one)."""
    _run(lambda: _with_connection(url, _upgrade_on(revision)))


async def upgrade_async(url: str, revision: str = "head") -> None:
    """`upgrade`, awaited on the running event loop."""
    await _with_connection(url, _upgrade_on(revision))


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at `url` to `revision` (`base` drops every table)."""

    def work(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), revision)

    _run(lambda: _with_connection(url, work))


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def current(url: str) -> str | None:
    """The database's revision, or None if it has never been migrated."""
    return _run(lambda: _with_connection(url, _current))


async def current_async(url: str) -> str | None:
    return await _with_connection(url, _current)


def _table_names(connection: Connection) -> list[str]:
    return [name for name in inspect(connection).get_table_names() if name != "alembic_version"]


def is_empty(url: str) -> bool:
    """Whether the database has no tables (a new SQLite file, a new schema, or one downgraded
    to base); alembic's own version table does not count."""
    return not _run(lambda: _with_connection(url, _table_names))


async def is_empty_async(url: str) -> bool:
    return not await _with_connection(url, _table_names)


def revision(url: str, message: str, *, autogenerate: bool = True,
             rev_id: str | None = None) -> None:
    """Write a new migration into `migrations/versions` (for developers, not at runtime).

    The database at `url` must be at head; with `autogenerate` the new file holds the
    differences between it and `tables.py` — to be read and fixed by hand, then tested.
    The id defaults to the next number (`0002`, `0003`, ...).
    """
    if rev_id is None:
        newest = head()
        rev_id = f"{int(newest) + 1:04d}" if re.fullmatch(r"\d+", newest) else None

    def work(connection: Connection) -> None:
        command.revision(
            alembic_config(connection), message, autogenerate=autogenerate, rev_id=rev_id
        )

    _run(lambda: _with_connection(url, work))
