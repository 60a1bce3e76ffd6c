"""What differs between the two databases, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession


def insert_for(session: AsyncSession) -> Any:
    """The dialect's INSERT (with `on_conflict_do_nothing`), for multi-row inserts."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
