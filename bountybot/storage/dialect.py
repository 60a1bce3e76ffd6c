"""What differs between the two databases, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession


def insert_for(session: AsyncSession) -> Any:
    """The dialect's INSERT (with `on_conflict_do_nothing`), for multi-row inserts."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


# Statements built by `insert_rows`, by dialect, table, conflict handling and columns returned.
_KEPT: dict[tuple[Any, ...], Any] = {}
_KEEP = 64


async def insert_rows(session: AsyncSession, table: Any, rows: list[dict[str, Any]], *,
                      skip_conflicts: bool = False, returning: tuple[Any, ...] = ()) -> list[Any]:
    """Insert `rows` into `table` (a model or a Table) in the session's transaction, as one
    statement with the rows as parameters: SQLAlchemy sends them in multi-row batches
    ("insertmanyvalues"). `.values([...])` would embed the rows in the statement, which then
    has no cache key and is compiled again at every call (a fifth of the worker's time).
    `skip_conflicts`: rows already there are skipped; `returning`: the columns to read back
    from the rows written (in no particular order).

    The statement is built once per dialect, table, conflict handling and `returning`, and
    kept, so it is neither built again nor walked for its cache key at each call (the inbox
    writes many times a second). `returning` must then be the same objects at each call
    (columns, or expressions kept by the caller), else every call keeps one more statement, up
    to `_KEEP`; past that, statements are built at each call."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    key = (dialect, table, skip_conflicts, returning)
    stmt = _KEPT.get(key)
    if stmt is None:
        stmt = insert_for(session)(table)
        if skip_conflicts:
            stmt = stmt.on_conflict_do_nothing()
        if returning:
            stmt = stmt.returning(*returning)
        if len(_KEPT) < _KEEP:
            _KEPT[key] = stmt
    connection = await session.connection()
    result = await connection.execute(stmt, rows)
    return list(result.all()) if returning else []
