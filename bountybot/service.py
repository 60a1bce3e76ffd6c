"""The running service: webhooks in, the delivery worker and the outbox sender in the background,
and the payment worker when the Stripe provider is on.

`setup(app)` adds the webhook routes and, in `cleanup_ctx`, starts the loops when the
server starts and stops them (letting the current step finish) when it stops. The forge clients
come from the settings, or from `app[CLIENTS]` when a test or the demo puts its own there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot import wakes, webhooks
from bountybot.clock import utc_now
from bountybot.config import Settings
from bountybot.forges.base import ForgeClient
from bountybot.forges.registry import FORGES
from bountybot.governor import SERVED_MINUTE, Governor, token_key
from bountybot.inbox import DeliveryWorker, WorkerOptions
from bountybot.outbox import OutboxSender, SenderOptions
from bountybot.payments import stripe_events
from bountybot.payments.stripe_api import StripeGateway
from bountybot.payments.worker import PaymentOptions, PaymentWorker
from bountybot.resources import ENGINE, METRICS, SESSIONMAKER, SETTINGS
from bountybot.scheduler import ScheduledJob
from bountybot.scheduler import start as start_scheduler
from bountybot.scheduler import stop as stop_scheduler
from bountybot.storage.write_budget import PgWriteLog, is_postgresql
from bountybot.sweeps import Sweeper

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the background loops share with the request handlers (and the tests)."""

    clients: dict[str, ForgeClient] = field(default_factory=dict)
    # GitHub allows 80 content-creating requests a minute and 500 an hour. The governor counts
    # a write when its slot is granted; the request itself leaves a moment later (a worker
    # thread must pick it up), so a tenth is kept in hand for that drift.
    governor: Governor = field(default_factory=lambda: Governor(per_minute=72, per_hour=450))
    wake_worker: asyncio.Event = field(default_factory=asyncio.Event)
    wake_outbox: asyncio.Event = field(default_factory=asyncio.Event)
    wake_payments: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    worker: DeliveryWorker | None = None
    sender: OutboxSender | None = None
    sweeper: Sweeper | None = None
    # The Stripe provider's worker (None with the manual provider), and its gateway (a test's
    # own, or one made from the settings at startup).
    payments: PaymentWorker | None = None
    gateway: StripeGateway | None = None
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    # The one clock of the worker, the sweeps and the outbox: tests move it instead of sleeping.
    clock: Callable[[], datetime] = utc_now
    background: bool = True
    scheduled: bool = True
    sender_options: SenderOptions = field(default_factory=SenderOptions)
    worker_options: WorkerOptions = field(default_factory=WorkerOptions)
    payment_options: PaymentOptions = field(default_factory=PaymentOptions)
    payment_loop: bool = True

    def written(self) -> None:
        """A decision was committed: it may have queued forge writes and payment calls."""
        self.wake_outbox.set()
        self.wake_payments.set()


RUNTIME = web.AppKey("runtime", Runtime)


def forge_clients(settings: Settings) -> dict[str, ForgeClient]:
    """A client for each forge that is on."""
    clients: dict[str, ForgeClient] = {}
    for forge in FORGES.values():
        client = forge.client(settings)
        if client is not None:
            clients[forge.name] = client
    return clients


def setup(app: web.Application, *, clients: Mapping[str, ForgeClient] | None = None,
          governor: Governor | None = None, background: bool = True,
          sender_options: SenderOptions | None = None,
          worker_options: WorkerOptions | None = None,
          clock: Callable[[], datetime] | None = None, scheduler: bool | None = None,
          gateway: StripeGateway | None = None, payment_options: PaymentOptions | None = None,
          payment_loop: bool | None = None, doors: bool = True) -> Runtime:
    """Webhooks plus the worker and the outbox (`doors=False`: no webhooks, for a process that
    only works, `serve --role worker`). `background=False` leaves the loops to the
    caller (`runtime.worker.run_once()`), for tests that step through a story;
    `sender_options` tune the `OutboxSender` (e.g. a short `base_delay` in tests) and
    `worker_options` the `DeliveryWorker`; `clock` is the time everything reads (tests move
    it); `scheduler` runs the APScheduler jobs (by default when `background` is on);
    `gateway` is the Stripe gateway to use (default: one made from the settings),
    `payment_options` tune the `PaymentWorker`, and `payment_loop` runs its loop (by default
    when `background` is on; tests that step it turn it off)."""
    runtime = Runtime(background=background, sender_options=sender_options or SenderOptions(),
                      worker_options=worker_options or WorkerOptions(), gateway=gateway,
                      payment_options=payment_options or PaymentOptions())
    if clock is not None:
        runtime.clock = clock
    runtime.scheduled = background if scheduler is None else scheduler
    runtime.payment_loop = background if payment_loop is None else payment_loop
    if clients is not None:
        runtime.clients.update(clients)
    if governor is not None:
        runtime.governor = governor
    else:
        settings = app[SETTINGS]
        runtime.governor = Governor(per_minute=settings.scheduler.writes_per_minute,
                                    per_hour=settings.scheduler.writes_per_hour,
                                    limits=forge_write_limits(settings), minute=SERVED_MINUTE)
        # Before the loops start: on PostgreSQL the budget is kept in the database.
        app.cleanup_ctx.append(_shared_budget)
    app[RUNTIME] = runtime
    if doors:
        app[webhooks.WAKE_WORKER] = runtime.wake_worker.set
        webhooks.setup(app)
        app[stripe_events.WAKE] = runtime.written
        app[stripe_events.CLOCK] = lambda: runtime.clock()
        stripe_events.setup(app)
    app.cleanup_ctx.append(_loops)
    return runtime


async def _shared_budget(app: web.Application) -> AsyncIterator[None]:
    """On PostgreSQL, every replica draws on one write budget per installation or token, kept
    in the database (GitHub counts them together); on SQLite, the one process counts alone."""
    engine = app[ENGINE]
    if is_postgresql(engine):
        app[RUNTIME].governor.store = PgWriteLog(engine)
    yield


def forge_write_limits(settings: Settings) -> dict[str, tuple[int, int]]:
    """The write limits of the forges that set their own (`[forgejo] writes_per_minute`), by
    their token's governor key."""
    return {token_key(name): limits for name in FORGES
            if (limits := getattr(settings, name).write_limits()) is not None}


def sync_intervals(settings: Settings, forges: list[str]) -> dict[int, list[str]]:
    """The forges to reconcile, by how many minutes apart (0: never): `scheduler.sync_minutes`,
    or the forge's own (Forgejo never redelivers, so it is read back more often)."""
    by: dict[int, list[str]] = {}
    for name in forges:
        own = getattr(settings, name).sync_every_minutes()
        by.setdefault(settings.scheduler.sync_minutes if own is None else own, []).append(name)
    return by


def scheduled_jobs(runtime: Runtime,
                   settings: Settings) -> dict[str, tuple[float, ScheduledJob]]:
    """The scheduler's jobs for this runtime (see `bountybot.scheduler`)."""

    async def sweep() -> None:
        assert runtime.sweeper is not None
        await runtime.sweeper.run_once()
        # The loops retry failed work when its time comes; a nudge costs nothing.
        runtime.wake_worker.set()
        runtime.wake_outbox.set()

    jobs: dict[str, tuple[float, ScheduledJob]] = {
        "sweep": (float(settings.scheduler.sweep_seconds), sweep)}
    if runtime.payments is not None:
        payments = runtime.payments

        async def pay() -> None:
            # Retries come due and missed webhooks are looked for even with no new decision.
            await payments.run_once()

        jobs["payments"] = (float(settings.scheduler.sweep_seconds), pay)
    for minutes, forges in sync_intervals(settings, list(runtime.clients)).items():
        if minutes:
            # `sync` for the forges on the common interval, `sync:<forge>` for one of its own.
            name = "sync" if minutes == settings.scheduler.sync_minutes else f"sync:{forges[0]}"
            jobs[name] = (minutes * 60.0, _sync_job(runtime, settings, forges))
    return jobs


def _sync_job(runtime: Runtime, settings: Settings, forges: list[str]) -> ScheduledJob:
    """Reconciliation of the repos of `forges` (each repo leased, so replicas share it)."""
    from bountybot.reconcile import Reconciler

    assert runtime.sessionmaker is not None  # set when the loops start
    reconciler = Reconciler(runtime.sessionmaker, settings,
                            {name: runtime.clients[name] for name in forges}, runtime.clock,
                            on_stored=runtime.wake_worker.set)

    async def sync() -> None:
        await reconciler.run_once()

    return sync


def gateway_from_settings(settings: Settings) -> StripeGateway:
    """The Stripe gateway for the configured key and API address."""
    key = settings.stripe.api_key
    assert key is not None
    return StripeGateway(key.get_secret_value(), api_base=settings.stripe.api_base)


def _start_loops(runtime: Runtime, worker: DeliveryWorker, sender: OutboxSender,
                 engine: AsyncEngine) -> list[asyncio.Task[Any]]:
    """The delivery worker's, the outbox sender's and (if on) the payment worker's loops, and
    on PostgreSQL the listener that wakes the worker when another process stores a delivery."""
    tasks = [asyncio.create_task(worker.run_forever(runtime.wake_worker, runtime.stop)),
             asyncio.create_task(sender.run_forever(runtime.wake_outbox, runtime.stop)),
             asyncio.create_task(wakes.listen(engine, runtime.wake_worker.set, runtime.stop))]
    if runtime.payments is not None and runtime.payment_loop:
        tasks.append(asyncio.create_task(
            runtime.payments.run_forever(runtime.wake_payments, runtime.stop)))
    return tasks


async def _stopped(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for the loops to see the stop, a while; cancel those that do not."""
    for task in tasks:
        try:
            await asyncio.wait_for(task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _loops(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    settings = app[SETTINGS]
    sessionmaker = app[SESSIONMAKER]
    metrics = app.get(METRICS)  # None in an app not made by `create_app`: counted for no one
    # The forge libraries are blocking and run in threads (asyncio.to_thread); enough of them
    # that a granted write does not wait long in a queue before it leaves.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=32, thread_name_prefix="forge"))
    own_clients = not runtime.clients
    if own_clients:
        runtime.clients.update(forge_clients(settings))
    so = runtime.sender_options
    runtime.sender = OutboxSender(
        sessionmaker, runtime.clients, settings=settings, governor=runtime.governor,
        clock=runtime.clock,
        max_attempts=(settings.scheduler.outbox_max_attempts if so.max_attempts is None
                      else so.max_attempts),
        base_delay=so.base_delay, max_delay=so.max_delay, lease=so.lease, rng=so.rng,
        reaction_reserve=so.reaction_reserve, metrics=metrics)
    wo = runtime.worker_options
    runtime.worker = DeliveryWorker(
        sessionmaker, settings, runtime.clients, clock=runtime.clock,
        on_written=runtime.written, max_attempts=wo.max_attempts, retry_delay=wo.retry_delay,
        summary_delay=wo.summary_delay, metrics=metrics)
    runtime.sessionmaker = sessionmaker
    runtime.sweeper = Sweeper(sessionmaker, settings, clock=runtime.clock,
                              on_written=runtime.written)
    own_gateway: StripeGateway | None = None
    if stripe_events.stripe_on(settings):
        if runtime.gateway is None:
            runtime.gateway = own_gateway = gateway_from_settings(settings)
        po = runtime.payment_options
        runtime.payments = PaymentWorker(
            sessionmaker, settings, runtime.gateway, clock=runtime.clock,
            on_written=runtime.wake_outbox.set, max_attempts=po.max_attempts,
            base_delay=po.base_delay, max_delay=po.max_delay, lease=po.lease,
            wait_delay=po.wait_delay, poll_every=po.poll_every, batch=po.batch, rng=po.rng,
            metrics=metrics)
    jobs = scheduled_jobs(runtime, settings)
    scheduler = start_scheduler(jobs) if runtime.scheduled else None
    tasks = (_start_loops(runtime, runtime.worker, runtime.sender, app[ENGINE])
             if runtime.background else [])
    try:
        yield
    finally:
        if scheduler is not None:
            stop_scheduler(scheduler)
        runtime.stop.set()
        await _stopped(tasks)
        if own_gateway is not None:
            own_gateway.close()
        if own_clients:
            for client in runtime.clients.values():
                close = getattr(client, "close", None)
                if close is not None:
                    await close()
