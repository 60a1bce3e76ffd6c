"""The forges' write budget in PostgreSQL: one budget per installation or token for every
replica, checked and spent atomically (the governor's `WriteLog` on a shared database).

Each write started is a row (key, started_at) of `write_budget`. Taking a write is one short
transaction: a transaction-level advisory lock on the key (so replicas check and record one at
a time for that key, and never wait on each other for other keys), the database's time, the
key's rows of the last hour (older ones deleted on the way), the governor's judgement, and the
new row if the write fits. The time is the database's `clock_timestamp()`, read once the lock is
held: one clock for every replica (their own monotonic clocks have nothing in common), and the
rows of a key come in time order whoever writes them. Tests pass a clock of their own instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col

from bountybot.storage.tables import WriteBudget

# The longest window the governor counts: rows older than this are no longer needed.
HOUR = timedelta(hours=1)
# One lock per key and schema: two deployments (or test sessions) in one database, each in its
# own schema, do not wait on each other's keys.
_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':write_budget:' || :key))")


def is_postgresql(engine: AsyncEngine) -> bool:
    """Whether `engine` is PostgreSQL (a shared budget), not SQLite (one process)."""
    return engine.dialect.name == "postgresql"


class PgWriteLog:
    """The write start times of every key, in PostgreSQL (see the module's docstring)."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`clock`: seconds since the epoch to use instead of the database's (tests)."""
        self.engine = engine
        self._clock = clock
        self._monotonic = monotonic
        # What this process last saw of each key: starts, the time then, and its own
        # monotonic time then (to tell the time now without asking the database).
        self._seen: dict[str, tuple[list[float], float, float]] = {}

    async def _now(self, conn: AsyncConnection) -> datetime:
        if self._clock is not None:
            return datetime.fromtimestamp(self._clock(), UTC)
        now = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
        assert isinstance(now, datetime)
        return now.astimezone(UTC)

    async def take(self, key: str, judge: Callable[[Sequence[float], float], float]) -> float:
        """Judge the key's starts of the last hour now; record a write now if it fits."""
        table = col(WriteBudget.key), col(WriteBudget.started_at)
        async with self.engine.begin() as conn:
            await conn.execute(_LOCK, {"key": key})
            moment = await self._now(conn)
            await conn.execute(delete(WriteBudget).where(table[0] == key,
                                                         table[1] <= moment - HOUR))
            rows = await conn.execute(select(table[1]).where(table[0] == key)
                                      .order_by(table[1]))
            starts = [started.timestamp() for started in rows.scalars()]
            now = moment.timestamp()
            wait = judge(starts, now)
            if wait <= 0:
                await conn.execute(insert(WriteBudget).values(key=key, started_at=moment))
                starts.append(now)
        self._seen[key] = (starts, now, self._monotonic())
        return wait

    def view(self, key: str) -> tuple[Sequence[float], float] | None:
        """The key's starts as this process last saw them, and the time now (estimated from
        this process's clock since then, to spare the database a query)."""
        seen = self._seen.get(key)
        if seen is None:
            return None
        starts, then, at = seen
        now = self._clock() if self._clock is not None else then + self._monotonic() - at
        return starts, now
