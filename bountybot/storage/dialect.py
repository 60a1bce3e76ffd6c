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


# Statements built by `insert_kept`, by dialect, table, conflict handling and columns returned.
_KEPT: dict[tuple[Any, ...], Any] = {}
_KEEP = 64


async def insert_kept(session: AsyncSession, table: Any, rows: list[dict[str, Any]], *,
                      skip_conflicts: bool = False, returning: tuple[Any, ...] = ()) -> list[Any]:
    """`insert_rows` for a statement run many times a second (the inbox's): built once per
    dialect and kept, so it is neither built again nor walked for its cache key at each call
    (SQLAlchemy remembers a statement's key on the statement). `returning` must then be the
    same objects at each call (columns, or expressions kept by the caller), else every call
    keeps one more statement (up to `_KEEP`, then builds as `insert_rows` does)."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    key = (dialect, table, skip_conflicts, returning)
    stmt = _KEPT.get(key)
    if stmt is None:
        stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
        if skip_conflicts:
            stmt = stmt.on_conflict_do_nothing()
        if returning:
            stmt = stmt.returning(*returning)
        if len(_KEPT) < _KEEP:
            _KEPT[key] = stmt
    connection = await session.connection()
    result = await connection.execute(stmt, rows)
    return list(result.all()) if returning else []
