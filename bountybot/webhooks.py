"""The webhook endpoints: check who sent it, check it parses, store it once, answer 202.

Nothing is decided here: a delivery is written to the inbox (`delivery` table, unique by the
forge's delivery id, so a redelivery is answered 200 and changes nothing) and the worker is
woken after the commit. The answer never says more than it must, and never echoes a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
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
    stmt = (insert_for(session)(table).values(rows).on_conflict_do_nothing()
            .returning(table.c.forge, table.c.delivery_id))
    result = await session.exec(stmt)
    return {(forge, delivery) for forge, delivery in result.all()}


def _json_error(status: int, message: str) -> web.Response:
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


async def _read_body(request: web.Request) -> bytes | web.Response:
    limit = request.app[SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _json_error(413, f"the body is larger than {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _json_error(413, f"the body is larger than {limit} bytes")


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
        return _json_error(503, "the delivery could not be stored; please deliver it again")
    if not fresh:
        event(log, "webhook.duplicate", forge=forge, delivery=delivery_id, kind=kind)
        return web.json_response({"status": "duplicate", "delivery": delivery_id}, status=200)
    event(log, "webhook.stored", forge=forge, delivery=delivery_id, kind=kind)
    return web.json_response({"status": "accepted", "delivery": delivery_id}, status=202)


async def github_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    secret = settings.github.webhook_secret
    if secret is None or not settings.github.enabled():
        return _json_error(404, "GitHub is off on this service: set BOUNTYBOT_GITHUB_WEBHOOK_SECRET"
                                " and a token or app to turn it on")
    body = await _read_body(request)
    if isinstance(body, web.Response):
        return body
    if not github_signature_ok(secret.get_secret_value(), body,
                               request.headers.get("X-Hub-Signature-256")):
        event(log, "webhook.bad_signature", logging.WARNING, forge="github",
              remote=request.remote)
        return _json_error(401, "bad or missing X-Hub-Signature-256")
    delivery_id = request.headers.get("X-GitHub-Delivery")
    kind = request.headers.get("X-GitHub-Event")
    if not delivery_id or not kind:
        return _json_error(400, "X-GitHub-Delivery and X-GitHub-Event headers are required")
    if not _parses(body):
        return _json_error(400, "the body is not a JSON object")
    return await store_delivery(request, "github", delivery_id, kind, body)


async def gitlab_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    secret = settings.gitlab.webhook_secret
    if secret is None or not settings.gitlab.enabled():
        return _json_error(404, "GitLab is off on this service: set BOUNTYBOT_GITLAB_WEBHOOK_SECRET"
                                " and BOUNTYBOT_GITLAB_TOKEN to turn it on")
    body = await _read_body(request)
    if isinstance(body, web.Response):
        return body
    if not gitlab_token_ok(secret.get_secret_value(), request.headers.get("X-Gitlab-Token")):
        event(log, "webhook.bad_token", logging.WARNING, forge="gitlab", remote=request.remote)
        return _json_error(401, "bad or missing X-Gitlab-Token")
    kind = request.headers.get("X-Gitlab-Event")
    if not kind:
        return _json_error(400, "the X-Gitlab-Event header is required")
    # Idempotency-Key is stable across GitLab's own retries (17.4+); before that, the event
    # UUID names one delivery of one kind.
    delivery_id = request.headers.get("Idempotency-Key")
    if not delivery_id:
        uuid = request.headers.get("X-Gitlab-Event-UUID")
        if not uuid:
            return _json_error(400, "Idempotency-Key or X-Gitlab-Event-UUID is required")
        delivery_id = f"{uuid}:{kind}"
    if not _parses(body):
        return _json_error(400, "the body is not a JSON object")
    return await store_delivery(request, "gitlab", delivery_id, kind, body)


def setup(app: web.Application) -> None:
    app.router.add_post("/webhooks/github", github_webhook)
    app.router.add_post("/webhooks/gitlab", gitlab_webhook)
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
