"""Wakes across processes: a web process that stores a delivery tells the workers of the other
processes at once, through PostgreSQL's LISTEN/NOTIFY.

In one process the inbox writer wakes the worker directly. With `serve --role web` and
`--role worker` (or several replicas), the worker that will handle a delivery runs elsewhere:
the inbox writer's transaction also sends `NOTIFY bountybot_inbox` (delivered at its commit,
never for a rolled-back one), and each process with a worker keeps one connection LISTENing
that sets the worker's wake event. The writer asks for it in its INSERT's RETURNING
(`notice`): the wake costs no statement of its own, and goes only with a row written. Lost
notifications cost nothing but time: a worker also looks for due work every few seconds, and
the listener reconnects after the database comes back. SQLite has no NOTIFY; one file
serves one host, where the workers' polling suffices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncEngine

from bountybot.logs import event

log = logging.getLogger(__name__)

CHANNEL = "bountybot_inbox"
# How often the listener checks that its connection is alive, and waits before reconnecting.
CHECK_SECONDS = 5.0


def notice(dialect: str) -> tuple[Any, ...]:
    """What an INSERT adds to its RETURNING to send the wake with the rows it writes: one
    `pg_notify` per row written, none for a row skipped as already there; PostgreSQL sends
    one notification per transaction for them all, at the commit (never for a rolled-back
    one). A channel is the whole database's: the notification names its schema, so that
    instances in other schemas of the same database (tests, staging beside production) are
    not woken. Nothing on SQLite."""
    return _NOTICE if dialect == "postgresql" else ()


# One expression, kept: the INSERT that returns it is then built once (`insert_rows`).
_NOTICE = (func.pg_notify(CHANNEL, func.current_schema()),)


async def listen(engine: AsyncEngine, wake: Callable[[], None], stop: asyncio.Event, *,
                 check: float = CHECK_SECONDS) -> None:
    """Call `wake` on every notification until `stop` is set; on PostgreSQL only (returns at
    once on SQLite). Holds one of the engine's connections while it listens; `check` is how
    often it looks that the connection is alive, and how long it waits to reconnect."""
    if engine.dialect.name != "postgresql":
        return
    while not stop.is_set():
        try:
            await _listen_once(engine, wake, stop, check)
        except Exception as error:  # noqa: BLE001 - the database went away, however it failed
            event(log, "wakes.listen_failed", logging.WARNING, error=str(error).splitlines()[0]
                  if str(error) else type(error).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), check)


async def _listen_once(engine: AsyncEngine, wake: Callable[[], None], stop: asyncio.Event,
                       check: float) -> None:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection  # asyncpg's connection
        schema = await driver.fetchval("SELECT current_schema()")

        def heard(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
            if payload == schema:
                wake()

        await driver.add_listener(CHANNEL, heard)
        try:
            wake()  # what was stored while nobody listened
            while not stop.is_set() and not driver.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), check)
        finally:
            if not driver.is_closed():
                await driver.remove_listener(CHANNEL, heard)
