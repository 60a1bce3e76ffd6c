"""Alembic environment for bountybot: runs the migrations on a connection `migrate.py` hands in.

`bountybot.storage.migrate` opens an async connection (foreign keys off on SQLite) and passes
its sync face in `config.attributes["connection"]`, so there is no `alembic.ini` and no URL in a
file. Use `migrate.upgrade(url)`, `migrate.downgrade(url, rev)` or, for a new migration,
`migrate.revision(url, message)`, rather than the `alembic` command.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from bountybot.storage.tables import metadata


def run_migrations(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            # Foreign keys are off while migrating (batch mode needs it): check that the
            # migrations left none dangling before committing.
            broken = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
            if broken:
                raise RuntimeError(f"the migration left broken foreign keys: {broken[:5]}")


connection = context.config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError("run bountybot's migrations with bountybot.storage.migrate (`bountybot db`)")
run_migrations(connection)
