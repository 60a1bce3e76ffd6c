"""The aiohttp application: `create_app(settings)` wires the resources and the features' routes.

Long-lived resources live in `app.cleanup_ctx` under typed `web.AppKey`s (aiohttp-demos style),
so they are opened when the server starts and closed when it stops, and tests get the same
wiring. A feature (the webhooks, the pages, the API) is a `setup(app)` function that adds its
routes and resources; `default_features()` lists the ones the service runs with.

Public reads go through a database pool of their own (`READER`), never the one the webhooks
and workers write through (`SESSIONMAKER`), and the heavy ones (exports, statements, ledgers,
task lists) take a turn from `READ_GATE` first: however many people download the books at once,
a webhook is still stored at once and `/healthz` still answers.

`/metrics` shows the service's Prometheus metrics (`bountybot.metrics`): the `observe`
middleware times every request by its route template and counts the webhook doors' answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from sqlalchemy import case, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from bountybot import __version__, service
from bountybot.api import routes as api
from bountybot.bodies import DOOR
from bountybot.config import Settings
from bountybot.connections import ConnectionGuard
from bountybot.forges.registry import FORGES
from bountybot.logs import event
from bountybot.metrics import (
    CONTENT_TYPE,
    UNMATCHED,
    Metrics,
    Pool,
    ScrapeFacts,
    bearer_matches,
    outbox_states,
    pool_of,
)
from bountybot.resources import (
    CONNECTIONS,
    ENGINE,
    METRICS,
    READ_ENGINE,
    READ_GATE,
    READER,
    SESSIONMAKER,
    SETTINGS,
    Feature,
    ReadGate,
)
from bountybot.storage import tables as t
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.web import badges, feeds, pages

log = logging.getLogger(__name__)

# A health check must answer before a load balancer gives up on it.
HEALTH_DB_TIMEOUT = 3.0
# Connections of the read pool beyond the heavy reads' turns, for the light reads (one task).
LIGHT_READS = 4


# What `serve --role` runs: everything; the HTTP side alone (webhooks stored, pages, API); the
# background work alone (the delivery worker, the outbox, payments, the scheduler).
ROLES = ("all", "web", "worker")


def default_features(role: str = "all") -> list[Feature]:
    """The features `serve` runs with in `role`; each later module adds its `setup` here."""
    if role == "worker":  # no doors, no pages: its port answers /healthz and /metrics
        return [functools.partial(service.setup, doors=False)]
    work: Feature = service.setup
    if role == "web":
        # Deliveries are stored and the workers of other processes told (`bountybot.wakes`).
        work = functools.partial(service.setup, background=False, scheduler=False,
                                 payment_loop=False)
    # The badges and feeds before the pages: their routes are the more specific.
    return [api.setup, badges.setup, feeds.setup, work, pages.setup]


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    read_engine: AsyncEngine | None = None,
    features: Iterable[Feature] | None = None,
) -> web.Application:
    """The application for `settings`. An `engine` (and a `read_engine`) passed in stay the
    caller's to dispose; otherwise they are made from `database.url` at startup and disposed at
    cleanup. Given an `engine` and no `read_engine`, the public reads share it (tests)."""
    server = settings.server
    guard = ConnectionGuard(max_connections=server.max_connections,
                            header_timeout=server.header_timeout_seconds)
    app = web.Application(client_max_size=server.max_body_bytes,
                          middlewares=[observe, guard.middleware, read_body_in_time])
    app[SETTINGS] = settings
    app[CONNECTIONS] = guard
    app[METRICS] = Metrics()
    app[READ_GATE] = ReadGate(server.read_concurrency, server.read_wait_seconds)
    app.cleanup_ctx.append(_database(engine, read_engine))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    for setup in default_features() if features is None else features:
        setup(app)
    return app


def _read_engine(settings: Settings) -> AsyncEngine | None:
    """The public reads' own engine: `read_concurrency` connections for the heavy reads plus a
    few for the light ones, none beyond (a read that finds none free in time is a 503, never a
    wait on the writers' pool). None for an in-memory SQLite database, which a second engine
    could not see."""
    server = settings.server
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return None
    return create_engine(settings.database.url, pool_size=server.read_concurrency + LIGHT_READS,
                         max_overflow=0, pool_timeout=max(server.read_wait_seconds, 0.5))


def _database(
    given: AsyncEngine | None, given_reader: AsyncEngine | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def database(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        engine = given if given is not None else create_engine(settings.database.url)
        reader = given_reader
        if reader is None and given is None:
            reader = _read_engine(settings)
        owned = [e for e, mine in ((engine, given is None), (reader, given_reader is None))
                 if mine and e is not None]
        app[ENGINE] = engine
        app[SESSIONMAKER] = create_sessionmaker(engine)
        app[READ_ENGINE] = reader or engine
        app[READER] = create_sessionmaker(reader or engine)
        try:
            yield
        finally:
            for owned_engine in owned:
                await owned_engine.dispose()

    return database


async def _queue(engine: AsyncEngine, now: datetime) -> tuple[int, float | None]:
    """Pending deliveries, and how long the one due the longest has been due (seconds), in one
    query on the `(state, id)` index: a delivery is due when it has no retry time or it is past."""
    due = or_(col(t.Delivery.next_attempt_at).is_(None), col(t.Delivery.next_attempt_at) <= now)
    since = func.coalesce(t.Delivery.next_attempt_at, t.Delivery.received_at)
    stmt = select(func.count(), func.min(case((due, since)))).where(
        col(t.Delivery.state) == t.DeliveryState.PENDING)
    async with engine.connect() as conn:
        pending, oldest = (await conn.execute(stmt)).one()
    if oldest is None:
        return int(pending), None
    return int(pending), max(0.0, round((now - oldest).total_seconds(), 1))


async def healthz(request: web.Request) -> web.Response:
    """200 when the database answers and no delivery has waited past `server.queue_stall_seconds`
    since it was due; 503 `unavailable` or `stalled` otherwise. Says which forges are on."""
    settings = request.app[SETTINGS]
    queue: dict[str, Any] | None = None
    status = "ok"
    try:
        async with asyncio.timeout(HEALTH_DB_TIMEOUT):
            pending, oldest = await _queue(request.app[ENGINE], datetime.now(UTC))
        database = "ok"
        queue = {"pending": pending, "oldest_due_seconds": oldest}
        if oldest is not None and oldest > settings.server.queue_stall_seconds:
            status = "stalled"
            event(log, "health.queue_stalled", logging.WARNING, pending=pending,
                  oldest_due_seconds=oldest)
    except Exception as e:  # noqa: BLE001 - any failure means unhealthy; the reason is logged
        reason = (str(e).splitlines() or [""])[0][:200]
        event(
            log, "health.database_unreachable", logging.WARNING,
            error=type(e).__name__, reason=reason,
        )
        database = "unreachable"
        status = "unavailable"
    body = {
        "status": status,
        "database": database,
        "queue": queue,
        "forges": settings.forges_enabled(),
        "version": __version__,
    }
    return web.json_response(body, status=200 if status == "ok" else 503)


async def _facts(app: web.Application) -> ScrapeFacts:
    """What a scrape reads besides the counters: the queue and the outbox from the database
    (through the read pool, under the health check's deadline; left out if it does not
    answer), the forges' write budgets, the pools."""
    engine, reader = app[ENGINE], app[READ_ENGINE]
    pools: dict[str, Pool] = {}
    for name, pooled in (("write", engine), ("read", reader if reader is not engine else None)):
        pool = pool_of(pooled) if pooled is not None else None
        if pool is not None:
            pools[name] = pool
    runtime = app.get(service.RUNTIME)
    budgets = runtime.governor.budgets() if runtime is not None else {}
    try:
        async with asyncio.timeout(HEALTH_DB_TIMEOUT):
            pending, oldest = await _queue(reader, datetime.now(UTC))
            outbox = await outbox_states(reader)
    except Exception as e:  # noqa: BLE001 - the counters are still worth a scrape
        event(log, "metrics.database_unreachable", logging.WARNING, error=type(e).__name__)
        return ScrapeFacts(budgets=budgets, pools=pools)
    return ScrapeFacts(pending=pending, oldest_due_seconds=oldest, outbox=outbox,
                       budgets=budgets, pools=pools)


async def metrics_page(request: web.Request) -> web.Response:
    """The Prometheus text format of `bountybot.metrics`; with `server.metrics_token` set,
    only for `Authorization: Bearer <token>` (401 otherwise, saying nothing more)."""
    token = request.app[SETTINGS].server.metrics_token
    if token is not None and not bearer_matches(request.headers.get("Authorization"),
                                                token.get_secret_value()):
        return web.json_response({"error": "a bearer token is needed"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
    body = request.app[METRICS].render(await _facts(request.app))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _route(request: web.Request) -> str:
    """The route's template (`/api/v1/statements/{forge}/backers/{login}`), never the path
    asked for, which may name a user or a repo; `unmatched` for a path no route has."""
    resource = request.match_info.route.resource
    if request.match_info.http_exception is not None or resource is None:
        return UNMATCHED
    return resource.canonical


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request by its route template, and count what the forges' doors answered."""
    started = time.perf_counter()
    status = 500  # what the server answers for an error no handler caught
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        metrics = request.app[METRICS]
        metrics.request(_route(request), status, time.perf_counter() - started)
        # A forge's door only: Stripe's applies its events at once, and answers 200 for both.
        forge = (request.match_info.route.name or "").removeprefix(DOOR)
        if forge in FORGES:
            metrics.delivery_received(forge, status)


@web.middleware
async def read_body_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request body (a webhook's payload) must arrive within `server.body_timeout_seconds`:
    read here, under that deadline, before the handler (whose `read()` then gets it at once).
    Only for a route that exists, and only up to the size limit, so nothing is read in vain.
    Not for the webhook doors (routes named `door:...`): they read their own bodies under the
    same deadline, counted against the budget of unverified bytes (`bountybot.bodies`), since
    reading a stranger's body whole before anything is checked is what that budget prevents."""
    name = request.match_info.route.name
    if name is not None and name.startswith("door:"):
        return await handler(request)
    server = request.app[SETTINGS].server
    length = request.content_length
    if (request.body_exists and request.match_info.http_exception is None
            and (length is None or length <= server.max_body_bytes)):
        try:
            async with asyncio.timeout(server.body_timeout_seconds):
                await request.read()
        except TimeoutError:
            event(log, "http.body_timeout", logging.INFO, path=request.path,
                  remote=request.remote or "-")
            response = web.json_response(
                {"error": f"the body did not arrive within {server.body_timeout_seconds:g}"
                          " seconds"}, status=408)
            response.force_close()  # the stream stopped mid-body: nothing after it can be read
            return response
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(
                {"error": f"the body is larger than {server.max_body_bytes} bytes"}, status=413)
    return await handler(request)


class AccessLogger(AbstractAccessLogger):
    """One `http.request` event per request; healthy health checks only at DEBUG, so a load
    balancer polling every few seconds does not drown the log. The query string is left out:
    it is the one part of a URL where someone might put a token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # Prometheus scrapes every few seconds too.
        quiet = request.path in ("/healthz", "/metrics") and response.status == 200
        event(
            self.logger, "http.request", logging.DEBUG if quiet else logging.INFO,
            method=request.method, path=request.path, status=response.status,
            seconds=f"{time:.3f}", remote=request.remote or "-",
        )
