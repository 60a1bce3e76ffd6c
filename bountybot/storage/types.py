"""Column types that behave the same on SQLite and PostgreSQL: UTC timestamps and state strings."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp, stored as `timestamptz` on PostgreSQL.

    SQLite has no time zones: SQLAlchemy would write an aware datetime's wall clock and drop its
    offset, and read back a naive one. So every value is converted to UTC on the way in (stored
    naive on SQLite) and comes back aware, in UTC, from both databases. A naive datetime is
    refused: it is a bug (the clock hands out aware UTC times), and guessing its zone would
    silently shift claim expiries and deadlines.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    # TypeDecorator's signature: the dialect does not matter here.
    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StateString(TypeDecorator[Any]):
    """A state stored as its StrEnum value (plain `VARCHAR`, no database enum type).

    Values are checked against the enum on the way in (a typo fails the statement instead of
    writing a state the diagram does not have) and come back as enum members.
    """

    impl = String
    cache_ok = True

    def __init__(self, enum: type[StrEnum], length: int = 20) -> None:
        super().__init__(length)
        self.enum = enum
        self.length = length

    # TypeDecorator's signature: the dialect does not matter here.
    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:  # noqa: ARG002
        if value is None:
            return None
        return self.enum(value).value

    # TypeDecorator's signature: the dialect does not matter here.
    def process_result_value(self, value: Any, dialect: Dialect) -> StrEnum | None:  # noqa: ARG002
        if value is None:
            return None
        return self.enum(value)

    def __repr__(self) -> str:
        return f"StateString({self.enum.__name__}, length={self.length})"
