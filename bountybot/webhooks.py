"""The webhook endpoints: check who sent it, check it parses, store it once, answer 202.

Nothing is decided here: a delivery is written to the inbox (`delivery` table, unique by the
forge's delivery id, so a redelivery is answered 200 and changes nothing), with its topic (the
issue it is about, `bountybot.forges.topics`), and the worker is woken after the commit. The
answer never says more than it must, and never echoes a secret.

What a door takes, and why: only its forge's event kinds (GitHub's names, GitLab's documented
`X-Gitlab-Event` values), so the reconciler's internal `bountybot.sync` and its `sync:` ids
can never come in from outside; a delivery id stored as given, never cut (cutting could make
two ids one): printable ASCII, at most 255 characters. Headers are compared as bytes, so no
header value can break a comparison. Bodies are read against a budget and parsed strictly
(`bountybot.bodies`). GitLab's token is checked before the body is read; besides the
instance's secret it may be one of `gitlab.project_secrets`, good only for deliveries about
that project or a project of that group.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlmodel import select

from bountybot.bodies import (
    BODY_BUDGET,
    DOOR,
    RETRY_AFTER_SECONDS,
    Refusal,
    json_error,
    parse_object,
    read_body,
    setup_doors,
)
from bountybot.forges.door import UNPROVEN, within
from bountybot.forges.forge import Forge
from bountybot.forges.registry import FORGES
from bountybot.inbox_writer import InboxWriter, running
from bountybot.logs import event
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.storage import tables as t

log = logging.getLogger(__name__)

WAKE_WORKER: web.AppKey[Callable[[], None]] = web.AppKey("wake_worker")


INBOX = web.AppKey("inbox", InboxWriter)


async def about_own_repo(request: web.Request, forge: Forge, payload: dict[str, Any],
                         scopes: tuple[str, ...]) -> bool:
    """Whether a delivery shown a repo's (or group's) own secret is about that repo.

    The worker knows a repo by its id and takes its path from the payload (a rename), so both
    must be the secret's: the path named, and the path the id is already stored under, if it
    is. Else a repo's secret could speak for any other repo by naming its id."""
    named = forge.edge.scoped_repo(payload)
    if named is None or not within(named[1], scopes):
        return False
    async with request.app[SESSIONMAKER]() as session:
        stored = (await session.exec(select(t.Repo.full_path).where(
            t.Repo.forge == forge.name, t.Repo.forge_repo_id == named[0]))).first()
    return stored is None or within(stored, scopes)


async def store_delivery(request: web.Request, forge: str, delivery_id: str, kind: str,
                         text: str, topic: str | None) -> web.Response:
    """Write the delivery to the inbox once; 202 when new, 200 when already there, 503 when
    the database cannot take it (the forge delivers it again later). Deliveries that arrive
    together share one INSERT and one commit (`InboxWriter`); each is answered after it."""
    values = dict(forge=forge, delivery_id=delivery_id, event=kind, payload=text, topic=topic,
                  state=t.DeliveryState.PENDING, attempts=0, received_at=datetime.now(UTC))
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


async def receive(request: web.Request, forge: Forge) -> web.Response:
    """The door of every forge, in this order: off (404), unnamed or misnamed (400), a token
    that is no secret (401), too large (413) or no room to read it (503), not signed (401),
    not a JSON object (400), a repo's own secret for another repo (403); else stored once
    (202, or 200 for a repeat). Nothing is read of a body whose headers already fail."""
    settings = request.app[SETTINGS]
    edge = forge.edge
    section = getattr(settings, forge.name)
    if section.webhook_secret is None or not section.enabled():
        return json_error(404, f"{forge.title} is off on this service: set {edge.turn_on}"
                                " to turn it on")
    named = edge.identify(request.headers)
    if isinstance(named, str):
        return json_error(400, named)
    delivery_id, kind = named
    sender = edge.sender(section, request.headers)
    if sender is None:
        return _refuse(request, forge)
    try:
        async with request.app[BODY_BUDGET].holding(counted=not sender.proven) as hold:
            body = await read_body(request, limit=settings.server.max_body_bytes, hold=hold,
                                   timeout=settings.server.body_timeout_seconds)
            if sender == UNPROVEN:
                signer = edge.signer(section, body, request.headers)
                if signer is None:
                    return _refuse(request, forge)
                sender = signer
                hold.release()
            payload, text = parse_object(body)
            del body  # the text is what is stored
            if sender.scopes and not await _checked_scope(request, forge, payload,
                                                          sender.scopes):
                event(log, "webhook.token_out_of_scope", logging.WARNING, forge=forge.name,
                      remote=request.remote)
                return json_error(403, edge.out_of_scope)
    except Refusal as refusal:
        return refusal.response()
    return await store_delivery(request, forge.name, delivery_id, kind, text,
                                forge.topic(kind, payload))


async def _checked_scope(request: web.Request, forge: Forge, payload: dict[str, Any],
                         scopes: tuple[str, ...]) -> bool:
    try:
        return await about_own_repo(request, forge, payload, scopes)
    except Exception:  # the database is down: the sender tries again, as for a failed store
        log.exception("webhook.scope_check_failed", extra={"forge": forge.name})
        raise Refusal(503, "the delivery could not be checked; please deliver it again",
                      retry_after=RETRY_AFTER_SECONDS) from None


def _refuse(request: web.Request, forge: Forge) -> web.Response:
    event(log, forge.edge.refused_event, logging.WARNING, forge=forge.name,
          remote=request.remote)
    return json_error(401, forge.edge.refused)


def setup(app: web.Application) -> None:
    setup_doors(app)
    for forge in FORGES.values():
        app.router.add_post(f"/webhooks/{forge.name}", functools.partial(receive, forge=forge),
                            name=f"{DOOR}{forge.name}")
    app.cleanup_ctx.append(_inbox)


async def _inbox(app: web.Application) -> AsyncIterator[None]:
    async with running(InboxWriter(app[SESSIONMAKER], app.get(WAKE_WORKER))) as writer:
        app[INBOX] = writer
        yield
