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

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
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
from bountybot.config import GitLabSettings
from bountybot.forges.events import SYNC_EVENT
from bountybot.forges.topics import topic_of
from bountybot.inbox_writer import InboxWriter
from bountybot.logs import event
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.storage import tables as t

log = logging.getLogger(__name__)

WAKE_WORKER: web.AppKey[Callable[[], None]] = web.AppKey("wake_worker")


INBOX = web.AppKey("inbox", InboxWriter)


def header_bytes(value: str) -> bytes:
    """A header value as the bytes that came over the wire: aiohttp decodes them as UTF-8 with
    surrogateescape, so `str.encode()` alone would fail on what is not UTF-8."""
    return value.encode("utf-8", "surrogateescape")


def github_signature(secret: str, body: bytes | bytearray) -> str:
    """The `X-Hub-Signature-256` GitHub sends with `body`: `sha256=` and the HMAC-SHA256 of the
    raw body in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_signature_ok(secret: str, body: bytes | bytearray, header: str | None) -> bool:
    """Whether `header` is `body`'s `X-Hub-Signature-256`; compared in constant time, as bytes
    (a header may hold anything)."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(github_signature(secret, body).encode(), header_bytes(header))


@dataclass(frozen=True)
class Sender:
    """Who a delivery is from, as far as its headers tell before the body is read."""

    # The forge's own secret was shown (GitLab's instance token): the body is read as trusted.
    proven: bool = False
    # Paths of projects or groups whose own secret was shown: trusted once the payload is
    # about a project there.
    scopes: tuple[str, ...] = ()


# Who GitHub's deliveries are from is only known from the body's signature.
UNPROVEN = Sender()
_GITHUB_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")


def github_sender(settings: Any, headers: Mapping[str, str]) -> Sender | None:
    """Unproven until the body is read, but a request with no signature worth checking is
    refused before any of its body is."""
    signature = headers.get("X-Hub-Signature-256")
    return UNPROVEN if signature and _GITHUB_SIGNATURE.fullmatch(signature) else None


def within(path: str, scopes: tuple[str, ...]) -> bool:
    """Whether a project path is one of `scopes` or under one (a group); without case, as
    GitLab compares paths. `group/x/../../other` is no GitLab path, and under no group."""
    path = path.lower()
    if any(part in ("", ".", "..") for part in path.split("/")):
        return False
    return any(path == scope or path.startswith(scope + "/") for scope in scopes)


def gitlab_sender(settings: GitLabSettings, headers: Mapping[str, str]) -> Sender | None:
    """The instance's secret, or the secrets of the projects and groups that share this token;
    None when the token is none of them. Every secret is compared, in constant time."""
    header = headers.get("X-Gitlab-Token")
    if header is None or settings.webhook_secret is None:
        return None
    given = header_bytes(header)
    proven = hmac.compare_digest(given, settings.webhook_secret.get_secret_value().encode())
    scopes = tuple(path for path, secret in settings.project_secrets.items()
                   if secret.get_secret_value()  # never an empty one (the settings refuse it)
                   and hmac.compare_digest(given, secret.get_secret_value().encode()))
    if proven:
        return Sender(proven=True)
    return Sender(scopes=scopes) if scopes else None


async def about_own_project(request: web.Request, payload: dict[str, Any],
                            scopes: tuple[str, ...]) -> bool:
    """Whether a delivery shown a project's (or group's) secret is about that project.

    The worker knows a project by its id and takes its path from the payload (a rename), so
    both must be the secret's: the path named, and the path the id is already stored under,
    if it is. Else a project's secret could speak for any other project by naming its id."""
    project = payload.get("project")
    if not isinstance(project, dict):
        return False
    project_id, path = project.get("id"), project.get("path_with_namespace")
    if (not isinstance(project_id, int) or isinstance(project_id, bool)
            or not 0 < project_id < 2**63 or not isinstance(path, str)
            or not within(path, scopes)):
        return False
    async with request.app[SESSIONMAKER]() as session:
        stored = (await session.exec(select(t.Repo.full_path).where(
            t.Repo.forge == "gitlab", t.Repo.forge_repo_id == str(project_id)))).first()
    return stored is None or within(stored, scopes)


async def store_delivery(request: web.Request, forge: str, delivery_id: str, kind: str,
                         text: str, topic: str | None) -> web.Response:
    """Write the delivery to the inbox once; 202 when new, 200 when already there, 503 when
    the database cannot take it (the forge delivers it again later)."""
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


# -- naming: what a delivery says it is --------------------------------------------------------

# GitHub's event names: lower case words joined by underscores, some with a digit
# (`projects_v2_item`). Anything else is not GitHub's, and never the reconciler's
# `bountybot.sync`.
GITHUB_EVENT = re.compile(r"[a-z][a-z0-9_]{0,63}")
# The X-Gitlab-Event values GitLab documents for project, group and system hooks
# (docs.gitlab.com: user/project/integrations/webhook_events, administration/system_hooks).
GITLAB_EVENTS = frozenset({
    "Push Hook", "Tag Push Hook", "Issue Hook", "Confidential Issue Hook", "Note Hook",
    "Confidential Note Hook", "Merge Request Hook", "Wiki Page Hook", "Pipeline Hook",
    "Job Hook", "Deployment Hook", "Feature Flag Hook", "Release Hook", "Emoji Hook",
    "Resource Access Token Hook", "Member Hook", "Subgroup Hook", "Project Hook",
    "Milestone Hook", "Vulnerability Hook", "System Hook",
})
MAX_DELIVERY_ID = 255  # the column's size: an id is refused, never cut (two would become one)
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
# Reconciliation's own deliveries (`sync:<forge>:...`), the only ones the worker reads as
# already checked against the forge's API.
RESERVED_PREFIX = "sync:"


def delivery_id_problem(header: str, value: str) -> str | None:
    """Why a delivery id cannot be stored as given, if it cannot."""
    if len(value) > MAX_DELIVERY_ID:
        return f"{header} is longer than {MAX_DELIVERY_ID} characters"
    if not _PRINTABLE.fullmatch(value):
        return f"{header} must be printable ASCII"
    if value[:len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX:
        return f"{header} may not start with {RESERVED_PREFIX} (kept for the service's own)"
    return None


def _github_id(headers: Mapping[str, str]) -> tuple[str, str] | str:
    delivery_id, kind = headers.get("X-GitHub-Delivery"), headers.get("X-GitHub-Event")
    if not delivery_id or not kind:
        return "X-GitHub-Delivery and X-GitHub-Event headers are required"
    if kind == SYNC_EVENT or not GITHUB_EVENT.fullmatch(kind):
        return "X-GitHub-Event is not a GitHub event name (such as issue_comment)"
    return delivery_id_problem("X-GitHub-Delivery", delivery_id) or (delivery_id, kind)


def _gitlab_id(headers: Mapping[str, str]) -> tuple[str, str] | str:
    kind = headers.get("X-Gitlab-Event")
    if not kind:
        return "the X-Gitlab-Event header is required"
    if kind == SYNC_EVENT or kind not in GITLAB_EVENTS:
        return "X-Gitlab-Event is not one of GitLab's webhook events (such as Note Hook)"
    # Idempotency-Key is stable across GitLab's own retries (17.4+); before that, the event
    # UUID names one delivery of one kind.
    delivery_id = headers.get("Idempotency-Key")
    if delivery_id:
        return delivery_id_problem("Idempotency-Key", delivery_id) or (delivery_id, kind)
    uuid = headers.get("X-Gitlab-Event-UUID")
    if not uuid:
        return "Idempotency-Key or X-Gitlab-Event-UUID is required"
    composite = f"{uuid}:{kind}"
    return delivery_id_problem("X-Gitlab-Event-UUID", composite) or (composite, kind)


@dataclass(frozen=True)
class Edge:
    """What differs between the forges at the door: how a delivery proves who sent it, and
    how it names itself (its id, for deduplication, and its kind)."""

    forge: str
    name: str
    turn_on: str  # what to set when the forge is off
    # Who the headers say the delivery is from, before its body is read; None: nobody (401).
    sender: Callable[[Any, Mapping[str, str]], Sender | None]
    # Whether the body is signed by the forge (for a sender the headers could not prove).
    signed: Callable[[str, bytes | bytearray, Mapping[str, str]], bool]
    refused: str  # the 401 answer
    refused_event: str  # the warning logged then
    # (delivery id, kind), or the sentence of a 400 answer
    identify: Callable[[Mapping[str, str]], tuple[str, str] | str]


GITHUB = Edge(
    "github", "GitHub", "BOUNTYBOT_GITHUB_WEBHOOK_SECRET and a token or app",
    github_sender,
    lambda secret, body, headers: github_signature_ok(
        secret, body, headers.get("X-Hub-Signature-256")),
    "bad or missing X-Hub-Signature-256", "webhook.bad_signature", _github_id)
GITLAB = Edge(
    "gitlab", "GitLab", "BOUNTYBOT_GITLAB_WEBHOOK_SECRET and BOUNTYBOT_GITLAB_TOKEN",
    gitlab_sender,
    lambda secret, body, headers: False,  # the token alone proves a GitLab delivery
    "bad or missing X-Gitlab-Token", "webhook.bad_token", _gitlab_id)


async def receive(request: web.Request, edge: Edge) -> web.Response:
    """The door of every forge, in this order: off (404), unnamed or misnamed (400), a token
    that is no secret (401), too large (413) or no room to read it (503), not signed (401),
    not a JSON object (400), a project's secret for another project (403); else stored once
    (202, or 200 for a repeat). Nothing is read of a body whose headers already fail."""
    settings = request.app[SETTINGS]
    forge = getattr(settings, edge.forge)
    secret = forge.webhook_secret
    if secret is None or not forge.enabled():
        return json_error(404, f"{edge.name} is off on this service: set {edge.turn_on}"
                                " to turn it on")
    named = edge.identify(request.headers)
    if isinstance(named, str):
        return json_error(400, named)
    delivery_id, kind = named
    sender = edge.sender(forge, request.headers)
    if sender is None:
        return _refuse(request, edge)
    try:
        async with request.app[BODY_BUDGET].holding(counted=not sender.proven) as hold:
            body = await read_body(request, limit=settings.server.max_body_bytes, hold=hold,
                                   timeout=settings.server.body_timeout_seconds)
            if sender == UNPROVEN:
                if not edge.signed(secret.get_secret_value(), body, request.headers):
                    return _refuse(request, edge)
                hold.release()
            payload, text = parse_object(body)
            del body  # the text is what is stored
            if sender.scopes and not await _checked_scope(request, payload, sender.scopes):
                event(log, "webhook.token_out_of_scope", logging.WARNING, forge=edge.forge,
                      remote=request.remote)
                return json_error(403, "this X-Gitlab-Token is the secret of another project"
                                       " or group than the delivery's")
    except Refusal as refusal:
        return refusal.response()
    return await store_delivery(request, edge.forge, delivery_id, kind, text,
                                topic_of(edge.forge, kind, payload))


async def _checked_scope(request: web.Request, payload: dict[str, Any],
                         scopes: tuple[str, ...]) -> bool:
    try:
        return await about_own_project(request, payload, scopes)
    except Exception:  # the database is down: the sender tries again, as for a failed store
        log.exception("webhook.scope_check_failed", extra={"forge": "gitlab"})
        raise Refusal(503, "the delivery could not be checked; please deliver it again",
                      retry_after=RETRY_AFTER_SECONDS) from None


def _refuse(request: web.Request, edge: Edge) -> web.Response:
    event(log, edge.refused_event, logging.WARNING, forge=edge.forge, remote=request.remote)
    return json_error(401, edge.refused)


def setup(app: web.Application) -> None:
    setup_doors(app)
    for edge in (GITHUB, GITLAB):
        app.router.add_post(f"/webhooks/{edge.forge}", functools.partial(receive, edge=edge),
                            name=f"{DOOR}{edge.forge}")
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
