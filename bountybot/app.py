"""The aiohttp application: `create_app(settings)` wires the resources and the features' routes.

Long-lived resources live in `app.cleanup_ctx` under typed `web.AppKey`s (aiohttp-demos style),
so they are opened when the server starts and closed when it stops, and tests get the same
wiring. A feature (the webhooks, the pages, the API) is a `setup(app)` function that adds its
routes and resources; `default_features()` lists the ones the service runs with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot import __version__
from bountybot.config import Settings
from bountybot.logs import event
from bountybot.storage.engine import create_engine, create_sessionmaker

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])

Feature = Callable[[web.Application], object]
"""Adds a feature's routes (and its own cleanup_ctx entries) to the app."""

# A health check must answer before a load balancer gives up on it.
HEALTH_DB_TIMEOUT = 3.0


def default_features() -> list[Feature]:
    """The features `serve` runs with; each later module adds its `setup` here."""
    # Imported here, not at the top: the features import this module.
    from bountybot import service
    from bountybot.api import routes as api

    return [api.setup, service.setup]


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    features: Iterable[Feature] | None = None,
) -> web.Application:
    """The application for `settings`. An `engine` passed in stays the caller's to dispose;
    otherwise one is made from `database.url` at startup and disposed at cleanup."""
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_database(engine))
    app.router.add_get("/healthz", healthz)
    for setup in default_features() if features is None else features:
        setup(app)
    return app


def _database(
    given: AsyncEngine | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def database(app: web.Application) -> AsyncIterator[None]:
        engine = given if given is not None else create_engine(app[SETTINGS].database.url)
        app[ENGINE] = engine
        app[SESSIONMAKER] = create_sessionmaker(engine)
        try:
            yield
        finally:
            if given is None:
                await engine.dispose()

    return database


async def healthz(request: web.Request) -> web.Response:
    """200 when the database answers `SELECT 1`, else 503; says which forges are on."""
    settings = request.app[SETTINGS]
    try:
        async with asyncio.timeout(HEALTH_DB_TIMEOUT):
            async with request.app[ENGINE].connect() as conn:
                await conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as e:  # any failure means unhealthy; the reason goes to the log only
        reason = (str(e).splitlines() or [""])[0][:200]
        event(
            log, "health.database_unreachable", logging.WARNING,
            error=type(e).__name__, reason=reason,
        )
        database = "unreachable"
    healthy = database == "ok"
    body = {
        "status": "ok" if healthy else "unavailable",
        "database": database,
        "forges": settings.forges_enabled(),
        "version": __version__,
    }
    return web.json_response(body, status=200 if healthy else 503)


class AccessLogger(AbstractAccessLogger):
    """One `http.request` event per request; healthy health checks only at DEBUG, so a load
    balancer polling every few seconds does not drown the log. The query string is left out:
    it is the one part of a URL where someone might put a token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        quiet = request.path == "/healthz" and response.status == 200
        event(
            self.logger, "http.request", logging.DEBUG if quiet else logging.INFO,
            method=request.method, path=request.path, status=response.status,
            seconds=f"{time:.3f}", remote=request.remote or "-",
        )
