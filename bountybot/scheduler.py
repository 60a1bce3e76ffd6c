"""The scheduler: APScheduler ticks the jobs whose due times live in the tables.

It holds no state of its own: every job reads what is due from the database and is idempotent,
so several replicas can each run a scheduler on one PostgreSQL database. A job never overlaps
itself in one process (`max_instances=1`), and a tick missed while the process was busy is run
once, not once per miss (`coalesce`).

Jobs:
- `sweep` every `scheduler.sweep_seconds`: claim reminders and expiry, funding deadlines,
  payout release (`bountybot.sweeps`), then a nudge to the outbox and the worker, whose own
  loops retry what failed, with backoff, when its time comes.
- `sync` every `scheduler.sync_minutes` (0: off): reconciliation with the forges, for the
  webhooks that never arrived (`bountybot.reconcile`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bountybot.logs import event

log = logging.getLogger(__name__)

# What the scheduler runs at each tick of a job: a coroutine function taking nothing.
ScheduledJob = Callable[[], Awaitable[Any]]


def _guarded(name: str, job: ScheduledJob) -> ScheduledJob:
    """A job that logs its failure instead of raising: the next tick tries again."""

    async def run() -> None:
        try:
            await job()
        except Exception:
            log.exception("scheduler.job_failed", extra={"job": name})

    return run


def start(jobs: dict[str, tuple[float, ScheduledJob]]) -> AsyncIOScheduler:
    """Start a scheduler running each job every `seconds` (first run soon, jittered, so
    replicas started together do not all sweep at the same instant)."""
    # APScheduler logs every run of every job at INFO: a line a minute that says nothing. Our
    # jobs log what they did when they did something, and their failures.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scheduler = AsyncIOScheduler(timezone=UTC)
    now = datetime.now(UTC)
    for name, (seconds, job) in jobs.items():
        first = now + timedelta(seconds=min(seconds, 1.0 + random.random() * 4))
        scheduler.add_job(_guarded(name, job), IntervalTrigger(seconds=seconds, timezone=UTC),
                          id=name, name=name, max_instances=1, coalesce=True,
                          next_run_time=first, misfire_grace_time=max(1, int(seconds)))
    scheduler.start()
    event(log, "scheduler.started",
          jobs=", ".join(f"{name} every {seconds:g}s" for name, (seconds, _) in jobs.items()))
    return scheduler


def stop(scheduler: AsyncIOScheduler) -> None:
    if scheduler.running:
        scheduler.shutdown(wait=False)
