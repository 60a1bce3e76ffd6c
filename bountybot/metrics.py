"""The service's Prometheus metrics: what `/metrics` shows, and the one-line helpers that count.

Each app has a `Metrics` of its own, on a registry of its own (never the process's default one:
tests run many apps in one process). Events are counted where they happen (the webhook doors,
the delivery worker, the outbox, the payment worker, every HTTP request). Facts that live in
the database (deliveries pending, the oldest due, outbox messages by state) are read when
`/metrics` is scraped (`ScrapeFacts`), so every replica tells the same, current truth; so are
the forges' write budgets (which refill with time alone) and the database pools.

Labels only ever hold values from fixed sets (forge names, command names, message and
payment kinds, outcomes, route templates, status classes) or a governor's key (a GitHub
installation id, or `<forge>:token`): never a user name, a repo path or a secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from bountybot.commands import CommandName
from bountybot.storage import tables as t

CONTENT_TYPE = CONTENT_TYPE_LATEST
COMMANDS = frozenset(name.value for name in CommandName)
UNMATCHED = "unmatched"
# What a forge's door answered says of the delivery, by status: anything else is `refused`
# (4xx: not signed, misnamed, too large...) or `unavailable` (5xx: the sender delivers it again).
ANSWERS = {202: "stored", 200: "duplicate"}
# Outbox states counted at scrape time: those that need someone's eyes. `sent` grows forever.
OUTBOX_STATES = (t.OutboxState.PENDING, t.OutboxState.DEAD)


def answer_of(status: int) -> str:
    """What a door's HTTP status says of the delivery."""
    return ANSWERS.get(status, "unavailable" if status >= 500 else "refused")


def command_label(name: str) -> str:
    """A command's name as a label: only one of the bot's own commands, else `unknown`."""
    return name if name in COMMANDS else "unknown"


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an `Authorization` header is `Bearer <token>`, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@dataclass(frozen=True)
class Pool:
    """A database pool: connections checked out now, and its size (None: no fixed size)."""

    in_use: int
    size: int | None


def pool_of(engine: AsyncEngine) -> Pool | None:
    """What `engine`'s pool says of itself; None for a pool that keeps no count (SQLite's
    in-memory database shares one connection)."""
    pool = engine.pool
    checked_out = getattr(pool, "checkedout", None)
    if checked_out is None:
        return None
    size = getattr(pool, "size", None)
    return Pool(int(checked_out()), int(size()) if callable(size) else None)


@dataclass(frozen=True)
class ScrapeFacts:
    """What a scrape reads besides the counters: the queue and the outbox from the database
    (`pending` None: it did not answer), the governor's budgets, the pools."""

    pending: int | None = None
    oldest_due_seconds: float | None = None
    outbox: Mapping[str, int] = field(default_factory=dict)
    budgets: Mapping[str, int] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)

    def families(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("bountybot_database_up",
                               "1 when the database answered this scrape's queries, else 0")
        up.add_metric([], 0 if self.pending is None else 1)
        yield up
        if self.pending is not None:
            yield GaugeMetricFamily("bountybot_deliveries_pending",
                                    "Deliveries stored and not yet handled or failed",
                                    value=self.pending)
            yield GaugeMetricFamily(
                "bountybot_deliveries_oldest_due_seconds",
                "How long the pending delivery due the longest has waited since it was due"
                " (0: none is due)", value=self.oldest_due_seconds or 0.0)
            outbox = GaugeMetricFamily("bountybot_outbox_messages",
                                       "Outbox messages by state (pending, dead)",
                                       labels=["state"])
            for state in OUTBOX_STATES:
                outbox.add_metric([state.value], self.outbox.get(state.value, 0))
            yield outbox
        budget = GaugeMetricFamily(
            "bountybot_forge_write_budget",
            "Forge writes that could start now within the rate limits, by governor key"
            " (a GitHub installation id, or <forge>:token)", labels=["key"])
        for key, left in sorted(self.budgets.items()):
            budget.add_metric([key], left)
        yield budget
        in_use = GaugeMetricFamily("bountybot_db_connections_in_use",
                                   "Database connections checked out of the pool",
                                   labels=["pool"])
        size = GaugeMetricFamily("bountybot_db_pool_size",
                                 "Connections the pool keeps (its overflow not counted)",
                                 labels=["pool"])
        for name, pool in sorted(self.pools.items()):
            in_use.add_metric([name], pool.in_use)
            if pool.size is not None:
                size.add_metric([name], pool.size)
        yield in_use
        yield size


async def outbox_states(engine: AsyncEngine) -> dict[str, int]:
    """Outbox messages pending and dead, in one query on the `(state, next_attempt_at)`
    index."""
    state = col(t.Outbox.state)
    stmt = select(state, func.count()).where(state.in_(OUTBOX_STATES)).group_by(state)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return {str(name): int(count) for name, count in rows}


class _Scrape:
    """The registry's metrics and one scrape's facts, as one collector."""

    def __init__(self, registry: CollectorRegistry, facts: ScrapeFacts) -> None:
        self.registry = registry
        self.facts = facts

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.facts.families()


class Metrics:
    """One app's counters and histograms, on their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # memory, CPU, open files (Linux)
        self.received = Counter(
            "bountybot_deliveries_received", "Webhook deliveries a forge's door answered, by forge"
            " and answer (stored, duplicate, refused, unavailable)", ["forge", "answer"],
            registry=r)
        self.handled = Counter("bountybot_deliveries_handled",
                               "Deliveries applied by the worker", ["forge"], registry=r)
        self.failed = Counter("bountybot_deliveries_failed",
                              "Deliveries given up on after their last attempt", ["forge"],
                              registry=r)
        self.retried = Counter("bountybot_deliveries_retried",
                               "Failed attempts at a delivery that is tried again later",
                               ["forge"], registry=r)
        self.commands = Counter("bountybot_commands",
                                "Commands applied or refused, by command name and outcome",
                                ["command", "outcome"], registry=r)
        self.outbox = Counter("bountybot_outbox_outcomes",
                              "Outbox messages tried, by kind and outcome (sent, retry, dead,"
                              " postponed)", ["kind", "outcome"], registry=r)
        self.forge_writes = Counter("bountybot_forge_writes",
                                    "Writes started on a forge (comments, edits, reactions)",
                                    ["forge"], registry=r)
        self.payment_calls = Counter("bountybot_payment_calls",
                                     "Payment provider calls by operation kind and outcome",
                                     ["kind", "outcome"], registry=r)
        self.latency = Histogram("bountybot_http_request_duration_seconds",
                                 "HTTP request time by route template", ["route"], registry=r)
        self.responses = Counter("bountybot_http_responses",
                                 "HTTP responses by route template and status class",
                                 ["route", "status"], registry=r)

    # -- the one-liners ---------------------------------------------------------------------

    def request(self, route: str, status: int, seconds: float) -> None:
        self.latency.labels(route).observe(seconds)
        self.responses.labels(route, f"{status // 100}xx").inc()

    def delivery_received(self, forge: str, status: int) -> None:
        self.received.labels(forge, answer_of(status)).inc()

    def delivery_handled(self, forge: str, applied: Iterable[str],
                         refused: Iterable[str]) -> None:
        self.handled.labels(forge).inc()
        for name in applied:
            self.commands.labels(command_label(name), "applied").inc()
        for name in refused:
            self.commands.labels(command_label(name), "refused").inc()

    def delivery_failed(self, forge: str, *, final: bool) -> None:
        (self.failed if final else self.retried).labels(forge).inc()

    def outbox_outcome(self, kind: str, outcome: str) -> None:
        self.outbox.labels(kind, outcome).inc()

    def forge_write(self, forge: str) -> None:
        self.forge_writes.labels(forge).inc()

    def payment_call(self, kind: str, outcome: str) -> None:
        self.payment_calls.labels(kind, outcome).inc()

    # -- the scrape -------------------------------------------------------------------------

    def render(self, facts: ScrapeFacts) -> bytes:
        """The text format of everything counted, with `facts` read for this scrape."""
        return generate_latest(_Scrape(self.registry, facts))
