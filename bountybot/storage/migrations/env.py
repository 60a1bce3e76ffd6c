"""Alembic environment for bountybot: runs the migrations on a connection `migrate.py` hands in.

`bountybot.storage.migrate` opens an async connection and passes its sync face in
`config.attributes["connection"]`, so no `alembic.ini` and no URL in a file are needed. Run
from the `alembic` command line instead (for developers), the URL comes from `-x url=...` or
the `sqlalchemy.url` option, and this file opens the async engine itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection

from bountybot.storage.engine import create_engine
from bountybot.storage.tables import metadata

config = context.config
target_metadata = metadata


def do_run_migrations(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            # Foreign keys are off while migrating (batch mode needs it); check that the
            # migrations left none dangling before committing.
            broken = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
            if broken:
                raise RuntimeError(f"migration left broken foreign keys: {broken[:5]}")


async def run_async_migrations(url: str) -> None:
    engine = create_engine(url, foreign_keys=False, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database: pass -x url=... or use bountybot.storage.migrate")
    asyncio.run(run_async_migrations(url))


if context.is_offline_mode():
    raise RuntimeError("bountybot's migrations run online only (they check the database)")
run_migrations_online()
