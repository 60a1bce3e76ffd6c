"""The webhook endpoints: check who sent it, check it parses, store it once, answer 202.

Nothing is decided here: a delivery is written to the inbox (`delivery` table, unique by the
forge's delivery id, so a redelivery is answered 200 and changes nothing) and the worker is
woken after the commit. The answer never says more than it must, and never echoes a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from bountybot.app import SESSIONMAKER, SETTINGS
from bountybot.logs import event
from bountybot.storage import tables as t
from bountybot.storage.bounties import insert_ignoring_duplicates
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

WAKE_WORKER: web.AppKey[Callable[[], None]] = web.AppKey("wake_worker")


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
    """Write the delivery to the inbox once; 202 when new, 200 when already there."""
    async with UnitOfWork(request.app[SESSIONMAKER]) as uow:
        fresh = await insert_ignoring_duplicates(uow.session, t.Delivery, dict(
            forge=forge, delivery_id=delivery_id[:255], event=kind[:64],
            payload=body.decode(), state=t.DeliveryState.PENDING, attempts=0,
            received_at=datetime.now(UTC)))
        if fresh and WAKE_WORKER in request.app:
            uow.after_commit(request.app[WAKE_WORKER])
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
        event(log, "webhook.bad_signature", level=logging.WARNING, forge="github",
              remote=request.remote)
        return _json_error(401, "bad or missing X-Hub-Signature-256")
    delivery_id = request.headers.get("X-GitHub-Delivery")
    kind = request.headers.get("X-GitHub-Event")
    if not delivery_id or not kind:
        return _json_error(400, "X-GitHub-Delivery and X-GitHub-Event headers are required")
    if not _parses(body):
        return _json_error(400, "the body is not a JSON object")
    return await store_delivery(request, "github", delivery_id, kind, body)


def setup(app: web.Application) -> None:
    app.router.add_post("/webhooks/github", github_webhook)
