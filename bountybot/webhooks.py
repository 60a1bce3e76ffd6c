"""The webhook endpoints: check who sent it, check it parses, store it once, answer 202.

Nothing is decided here: a delivery is written to the inbox (`delivery` table, unique by the
forge's delivery id, so a redelivery is answered 200 and changes nothing) and the worker is
woken after the commit. The answer never says more than it must, and never echoes a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bountybot.app import SESSIONMAKER, SETTINGS
from bountybot.logs import event
from bountybot.storage import tables as t
from bountybot.storage.bounties import insert_for
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

WAKE_WORKER: web.AppKey[Callable[[], None]] = web.AppKey("wake_worker")


class InboxWriter:
    """Stores deliveries with group commit: the requests that arrive while one transaction
    commits are written together by the next one, so a burst costs one commit (one fsync, one
    SQLite write lock) per batch instead of one per delivery; no request waits on a timer.
    Each request is answered only after the commit that holds its delivery."""

    def __init__(self, sessionmaker: Any, wake: Callable[[], None] | None,
                 max_batch: int = 500) -> None:
        self.sessionmaker = sessionmaker
        self.wake = wake
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[bool]]] = asyncio.Queue()

    async def store(self, values: dict[str, Any]) -> bool:
        """True when the delivery is new, False when it was already in the inbox."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((values, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                async with UnitOfWork(self.sessionmaker) as uow:
                    stored = await insert_new(uow.session, [values for values, _ in batch])
                    if stored and self.wake is not None:
                        uow.after_commit(self.wake)
                # A delivery id twice in one batch: the first is new, the second a repeat.
                fresh = []
                for values, _ in batch:
                    key = (values["forge"], values["delivery_id"])
                    fresh.append(key in stored)
                    stored.discard(key)
            except Exception as error:  # the database is down: every waiting request says so
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), new in zip(batch, fresh, strict=True):
                if not future.done():
                    future.set_result(new)


INBOX = web.AppKey("inbox", InboxWriter)


async def insert_new(session: Any, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert deliveries in one statement, skipping those already stored; returns the
    (forge, delivery id) of the rows written."""
    table = t.Delivery.__table__  # type: ignore[attr-defined]
    # In key order: two replicas storing the same redelivered ids at once then wait for each
    # other in the same order, instead of each holding one the other needs (a deadlock).
    rows = sorted(rows, key=lambda r: (r["forge"], r["delivery_id"]))
    stmt = (insert_for(session)(table).values(rows).on_conflict_do_nothing()
            .returning(table.c.forge, table.c.delivery_id))
    result = await session.exec(stmt)
    return {(forge, delivery) for forge, delivery in result.all()}


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def github_signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the raw body; compared in
    constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


def gitlab_token_ok(secret: str, header: str | None) -> bool:
    """`X-Gitlab-Token` is the secret itself; compared in constant time."""
    return header is not None and hmac.compare_digest(secret.encode(), header.encode())


async def read_body(request: web.Request) -> bytes | web.Response:
    limit = request.app[SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return json_error(413, f"the body is larger than {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"the body is larger than {limit} bytes")


def _parses(body: bytes) -> bool:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict)


async def store_delivery(request: web.Request, forge: str, delivery_id: str, kind: str,
                         body: bytes) -> web.Response:
    """Write the delivery to the inbox once; 202 when new, 200 when already there, 503 when
    the database cannot take it (the forge delivers it again later)."""
    values = dict(forge=forge, delivery_id=delivery_id[:255], event=kind[:64],
                  payload=body.decode(), state=t.DeliveryState.PENDING, attempts=0,
                  received_at=datetime.now(UTC))
    try:
        fresh = await request.app[INBOX].store(values)
    except Exception:
        log.exception("webhook.store_failed", extra={"forge": forge, "delivery": delivery_id})
        return json_error(503, "the delivery could not be stored; please deliver it again")
    if not fresh:
        event(log, "webhook.duplicate", forge=forge, delivery=delivery_id, kind=kind)
        return web.json_response({"status": "duplicate", "delivery": delivery_id}, status=200)
    event(log, "webhook.stored", forge=forge, delivery=delivery_id, kind=kind)
    return web.json_response({"status": "accepted", "delivery": delivery_id}, status=202)


@dataclass(frozen=True)
class Edge:
    """What differs between the forges at the door: how a delivery proves who sent it, and
    how it names itself (its id, for deduplication, and its kind)."""

    forge: str
    name: str
    turn_on: str  # what to set when the forge is off
    authentic: Callable[[str, bytes, Mapping[str, str]], bool]
    refused: str  # the 401 answer
    refused_event: str  # the warning logged then
    # (delivery id, kind), or the sentence of a 400 answer
    identify: Callable[[Mapping[str, str]], tuple[str, str] | str]


def _github_id(headers: Mapping[str, str]) -> tuple[str, str] | str:
    delivery_id, kind = headers.get("X-GitHub-Delivery"), headers.get("X-GitHub-Event")
    if not delivery_id or not kind:
        return "X-GitHub-Delivery and X-GitHub-Event headers are required"
    return delivery_id, kind


def _gitlab_id(headers: Mapping[str, str]) -> tuple[str, str] | str:
    kind = headers.get("X-Gitlab-Event")
    if not kind:
        return "the X-Gitlab-Event header is required"
    # Idempotency-Key is stable across GitLab's own retries (17.4+); before that, the event
    # UUID names one delivery of one kind.
    delivery_id = headers.get("Idempotency-Key")
    if delivery_id:
        return delivery_id, kind
    uuid = headers.get("X-Gitlab-Event-UUID")
    if not uuid:
        return "Idempotency-Key or X-Gitlab-Event-UUID is required"
    return f"{uuid}:{kind}", kind


GITHUB = Edge(
    "github", "GitHub", "BOUNTYBOT_GITHUB_WEBHOOK_SECRET and a token or app",
    lambda secret, body, headers: github_signature_ok(
        secret, body, headers.get("X-Hub-Signature-256")),
    "bad or missing X-Hub-Signature-256", "webhook.bad_signature", _github_id)
GITLAB = Edge(
    "gitlab", "GitLab", "BOUNTYBOT_GITLAB_WEBHOOK_SECRET and BOUNTYBOT_GITLAB_TOKEN",
    lambda secret, body, headers: gitlab_token_ok(secret, headers.get("X-Gitlab-Token")),
    "bad or missing X-Gitlab-Token", "webhook.bad_token", _gitlab_id)


async def receive(request: web.Request, edge: Edge) -> web.Response:
    """The door of every forge, in this order: off (404), too large (413), not from the forge
    (401), unnamed (400), not JSON (400); else stored once (202, or 200 for a repeat)."""
    forge = getattr(request.app[SETTINGS], edge.forge)
    secret = forge.webhook_secret
    if secret is None or not forge.enabled():
        return json_error(404, f"{edge.name} is off on this service: set {edge.turn_on}"
                                " to turn it on")
    body = await read_body(request)
    if isinstance(body, web.Response):
        return body
    if not edge.authentic(secret.get_secret_value(), body, request.headers):
        event(log, edge.refused_event, logging.WARNING, forge=edge.forge, remote=request.remote)
        return json_error(401, edge.refused)
    named = edge.identify(request.headers)
    if isinstance(named, str):
        return json_error(400, named)
    if not _parses(body):
        return json_error(400, "the body is not a JSON object")
    return await store_delivery(request, edge.forge, *named, body)


def setup(app: web.Application) -> None:
    for edge in (GITHUB, GITLAB):
        app.router.add_post(f"/webhooks/{edge.forge}", functools.partial(receive, edge=edge))
    app.cleanup_ctx.append(_inbox)


async def _inbox(app: web.Application) -> AsyncIterator[None]:
    writer = InboxWriter(app[SESSIONMAKER], app.get(WAKE_WORKER))
    app[INBOX] = writer
    task = asyncio.create_task(writer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
