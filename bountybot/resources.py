"""What the features of the app share: the typed keys of its long-lived resources (aiohttp
`web.AppKey`s, filled by `bountybot.app.create_app`), and the gate of the heavy public reads.

A feature (the webhooks, the pages, the API, the service's loops) imports its keys from here,
never from `bountybot.app`, which imports the features: so nothing imports in a circle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.config import Settings
from bountybot.connections import ConnectionGuard
from bountybot.metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])
READ_ENGINE = web.AppKey("read_engine", AsyncEngine)
READER = web.AppKey("reader", async_sessionmaker[AsyncSession])
CONNECTIONS = web.AppKey("connections", ConnectionGuard)
METRICS = web.AppKey("metrics", Metrics)

Feature = Callable[[web.Application], object]
"""Adds a feature's routes (and its own cleanup_ctx entries) to the app."""

# What a refused public read is told: long enough for a turn to free up (an export of large
# books takes seconds), short enough for a dashboard to come back soon.
RETRY_AFTER_SECONDS = 5


class Busy(Exception):
    """Every turn for a heavy public read stayed taken for `server.read_wait_seconds`."""

    retry_after = RETRY_AFTER_SECONDS


class ReadGate:
    """At most `turns` heavy public reads at once (each holds a read connection, and on
    PostgreSQL a snapshot, for as long as it runs); the next waits up to `wait` seconds for a
    turn, then is refused with `Busy` rather than queued without end."""

    def __init__(self, turns: int, wait: float) -> None:
        self.turns = turns
        self.wait = wait
        self._free = asyncio.Semaphore(turns)
        # Exports also take turns page by page (see `bountybot.export`): the event loop then
        # has one export's page at most to do between two steps of a webhook.
        self.pace = asyncio.Lock()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.wait):
                await self._free.acquire()
        except TimeoutError:
            raise Busy from None
        try:
            yield
        finally:
            self._free.release()


READ_GATE = web.AppKey("read_gate", ReadGate)
