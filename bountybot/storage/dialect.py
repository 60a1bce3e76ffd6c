"""What differs between the two databases, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession


def insert_for(session: AsyncSession) -> Any:
    """The dialect's INSERT (with `on_conflict_do_nothing`), for multi-row inserts."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def insert_rows(session: AsyncSession, table: Any, rows: list[dict[str, Any]], *,
                      skip_conflicts: bool = False, returning: tuple[Any, ...] = ()) -> list[Any]:
    """Insert `rows` into `table` (a model or a Table) in the session's transaction, as one
    statement with the rows as parameters: SQLAlchemy compiles it once and caches it, and sends
    the rows in multi-row batches ("insertmanyvalues"). `.values([...])` would embed the rows in
    the statement, which then has no cache key and is compiled again at every call (a fifth of
    the worker's time). `skip_conflicts`: rows already there are skipped; `returning`: the
    columns to read back from the rows written (in no particular order)."""
    if not rows:
        return []
    stmt = insert_for(session)(table)
    if skip_conflicts:
        stmt = stmt.on_conflict_do_nothing()
    if returning:
        stmt = stmt.returning(*returning)
    connection = await session.connection()
    result = await connection.execute(stmt, rows)
    return list(result.all()) if returning else []
