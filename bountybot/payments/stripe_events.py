"""`POST /webhooks/stripe`: Stripe's word on payments, checked, stored once and applied.

The door, in this order: Stripe off (404), a `Stripe-Signature` that is not printable ASCII
(401, before any byte of the body is read), too large (413: Stripe's events are a few
kilobytes, so at most `MAX_BODY`) or no room in the budget of unverified bodies (503, see
`bountybot.bodies`), signature (checked by stripe-python against `stripe.webhook_secret`: 401),
not a Stripe event in strict JSON (400). Then, in one unit of work: the event is stored in the
inbox (`delivery`, forge `stripe`, unique by the event id, so a redelivery is answered 200
and changes nothing) and applied at once, through the rules. Applied here rather than by the
delivery worker because an event needs no forge call (nothing to wait for) and Stripe
redelivers on any non-2xx for three days: a failure rolls everything back, answers 500, and
Stripe tries again.

What each event does:

- `checkout.session.completed` (paid), `checkout.session.async_payment_succeeded`: the pledge
  is confirmed, pending -> held (ledger `pledge.held`). A payment for a pledge that is no
  longer pending (withdrawn, its task cancelled) is money we are not owed: it is refunded in
  full (`bountybot:refund:pledge:<id>`), with no ledger entry, since it never reached the
  escrow.
- `checkout.session.expired`, `checkout.session.async_payment_failed`: the pending pledge lapses
  (withdrawn).
- `charge.refunded`, `refund.created`, `refund.updated`, `refund.failed`: the refund's status is
  kept on its operation; a failed refund is logged as an error and put on the audit trail.
- `charge.dispute.created`: logged, on the audit trail and on the issue (a notice).
- `account.updated`: a developer's account can take transfers: their waiting payouts are sent.

Events about objects bountybot did not make (another integration on the same Stripe account)
are stored and ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.bodies import (
    BODY_BUDGET,
    DOOR,
    EXPECTED,
    MAX_DEPTH,
    Refusal,
    json_error,
    parse_object,
    read_body,
    setup_doors,
)
from bountybot.inbox_writer import insert_new
from bountybot.logs import event as log_event
from bountybot.payments.ops import (
    insert_ops,
    op_values,
    ops_for,
    release_waiting_transfers,
)
from bountybot.payments.stripe_api import (
    WebhookPayloadError,
    WebhookSignatureError,
    idempotency_key,
    verify_webhook,
)
from bountybot.providers.base import PaymentKind
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.rules import PaymentDisputed, PledgeConfirmed, PledgeLapsed, Refused
from bountybot.states import PledgeState
from bountybot.storage import tables as t
from bountybot.storage.bounties import decide_on_task
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

# Wakes the payment worker and the outbox after an event queued work for them.
WAKE: web.AppKey[Callable[[], None]] = web.AppKey("stripe_wake")
# The time decisions are made at (the service's one clock).
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("stripe_clock")
# Stripe's events are a few kilobytes (an object and what changed in it); a megabyte leaves a
# wide margin and keeps what a stranger can send small.
MAX_BODY = 1024 * 1024
_SIGNATURE_HEADER = re.compile(r"[\x20-\x7e]{1,8192}")


def stripe_on(settings: Any) -> bool:
    s = settings.stripe
    return (settings.payments.provider == "stripe" and s.api_key is not None
            and s.webhook_secret is not None)


async def receive(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not stripe_on(settings):
        return json_error(404, "Stripe is off on this service: set payments.provider = stripe,"
                                " BOUNTYBOT_STRIPE_API_KEY and BOUNTYBOT_STRIPE_WEBHOOK_SECRET"
                                " to turn it on")
    header = request.headers.get("Stripe-Signature")
    if header is None or not _SIGNATURE_HEADER.fullmatch(header):
        # stripe-python compares signatures as str, which fails on anything but ASCII.
        return _bad_signature(request, "missing, or not printable ASCII")
    server = settings.server
    try:
        async with request.app[BODY_BUDGET].holding() as hold:
            raw = await read_body(request, limit=min(MAX_BODY, server.max_body_bytes),
                                  hold=hold, timeout=server.body_timeout_seconds)
            body = bytes(raw)
            try:
                stripe_event = _verified(settings, body, header)
            except WebhookPayloadError as e:
                return json_error(400, str(e))
            except (WebhookSignatureError, ValueError, TypeError) as e:
                # ValueError, TypeError: a header stripe-python could not take apart.
                return _bad_signature(request, str(e) if isinstance(e, WebhookSignatureError)
                                      else "malformed")
            except RecursionError:
                return json_error(400, f"the body is nested too deeply: {EXPECTED}, nested at"
                                       f" most {MAX_DEPTH} levels")
            hold.release()
            # Signed by Stripe, and still read as strictly as a forge's body (no NaN, no BOM).
            parse_object(body)
    except Refusal as refusal:
        return refusal.response()
    event_id, kind = stripe_event.get("id"), stripe_event["type"]
    if not isinstance(event_id, str) or not event_id:
        return json_error(400, "the event has no id")
    now = request.app[CLOCK]()
    try:
        async with UnitOfWork(request.app[SESSIONMAKER]) as uow:
            stored = await insert_new(uow.session, [dict(
                forge="stripe", delivery_id=event_id[:255], event=kind[:64],
                payload=body.decode(), state=t.DeliveryState.HANDLED, attempts=1,
                received_at=now, handled_at=now)])
            if not stored:
                log_event(log, "webhook.duplicate", forge="stripe", delivery=event_id,
                          kind=kind)
                return web.json_response({"status": "duplicate", "delivery": event_id})
            note = await apply_event(uow.session, settings, stripe_event, now)
            if note is not None:
                row = (await uow.session.exec(select(t.Delivery).where(
                    t.Delivery.forge == "stripe", t.Delivery.delivery_id == event_id))).one()
                row.error = note[:2000]
            wake = request.app.get(WAKE)
            if wake is not None:
                uow.after_commit(wake)
    except Exception:
        log.exception("stripe.event_failed", extra={"delivery": event_id, "kind": kind})
        return json_error(500, "the event could not be applied; Stripe delivers it again")
    log_event(log, "webhook.handled", forge="stripe", delivery=event_id, kind=kind,
              note=note or "")
    return web.json_response({"status": "handled", "delivery": event_id})


def _bad_signature(request: web.Request, why: str) -> web.Response:
    log_event(log, "webhook.bad_signature", logging.WARNING, forge="stripe",
              remote=request.remote, why=why)
    return json_error(401, "bad or missing Stripe-Signature")


def _verified(settings: Any, body: bytes, header: str | None) -> dict[str, Any]:
    """The event, signed with the endpoint's secret or the Connect endpoint's."""
    secrets = [s.get_secret_value() for s in (settings.stripe.webhook_secret,
                                              settings.stripe.connect_webhook_secret) if s]
    for secret in secrets[:-1]:
        try:
            return verify_webhook(body, header, secret)
        except WebhookSignatureError:
            continue  # perhaps the other endpoint's
    return verify_webhook(body, header, secrets[-1])


def setup(app: web.Application) -> None:
    setup_doors(app)
    app.router.add_post("/webhooks/stripe", receive, name=f"{DOOR}stripe")


# -- applying events -------------------------------------------------------------------------


async def apply_event(session: AsyncSession, settings: Any, stripe_event: dict[str, Any],
                      now: datetime) -> str | None:
    """Apply one verified event in the caller's transaction; returns why nothing came of it,
    if nothing did."""
    kind = stripe_event["type"]
    obj = stripe_event["data"].get("object")
    if not isinstance(obj, dict):
        return "no object in the event"
    source = f"stripe:{stripe_event['id']}"
    if kind.startswith("checkout.session."):
        op = await _checkout_op(session, obj)
        if op is None:
            return "not a checkout session of bountybot's"
        return await apply_session(session, settings, op, obj, kind, source=source, now=now)
    if kind in ("charge.refunded", "refund.created", "refund.updated", "refund.failed"):
        return await _refund(session, obj, kind, now)
    if kind == "charge.dispute.created":
        return await _dispute(session, settings, obj, source, now)
    if kind == "account.updated":
        return await _account(session, obj, now)
    return f"not used: {kind}"


async def _checkout_op(session: AsyncSession, obj: dict[str, Any]) -> t.PaymentOp | None:
    found = await ops_for(session, kind=PaymentKind.CHECKOUT.value, session_id=obj.get("id"))
    if not found:
        # The answer to our call may have been lost before we kept the session's id: the
        # session names its pledge in its metadata.
        pledge_id = str((obj.get("metadata") or {}).get("pledge_id", ""))
        if pledge_id.isdigit():
            found = await ops_for(session, idempotency_key=f"bountybot:checkout:pledge:{pledge_id}")
    return found[0] if found else None


async def apply_session(session: AsyncSession, settings: Any, op: t.PaymentOp,
                        obj: dict[str, Any], kind: str, *, source: str,
                        now: datetime) -> str | None:
    """What a checkout session (from an event, or looked up by the worker) says about its
    pledge. `kind` is the event's type, or `checkout.session.retrieved` for a look-up."""
    op.session_id = op.session_id or obj.get("id")
    op.payment_intent = obj.get("payment_intent") or op.payment_intent
    op.status = str(obj.get("status") or op.status)[:32]
    assert op.pledge_id is not None and op.task_id is not None
    paid = obj.get("payment_status") == "paid" and kind in (
        "checkout.session.completed", "checkout.session.async_payment_succeeded",
        "checkout.session.retrieved")
    if paid:
        pledge = await session.get(t.Pledge, op.pledge_id)
        if pledge is not None and pledge.state in (PledgeState.HELD, PledgeState.PAID_OUT,
                                                   PledgeState.REFUNDED):
            return f"pledge {op.pledge_id} is already {pledge.state}"
        if (obj.get("amount_total"), str(obj.get("currency", "")).upper()) != (
                op.amount_minor, op.currency):
            log_event(log, "stripe.amount_mismatch", logging.ERROR, op=op.id,
                      paid=obj.get("amount_total"), currency=obj.get("currency"),
                      pledged=op.amount_minor)
            return await _give_back(session, op, "paid another amount than pledged", now)
        try:
            await decide_on_task(session, settings, op.task_id,
                                 PledgeConfirmed(op.pledge_id, op.payment_intent),
                                 source=source, now=now, actor="stripe")
        except Refused as refusal:
            return await _give_back(session, op, refusal.message("en"), now)
        return None
    if kind in ("checkout.session.expired", "checkout.session.async_payment_failed") or (
            kind == "checkout.session.retrieved" and obj.get("status") == "expired"):
        await decide_on_task(session, settings, op.task_id,
                             PledgeLapsed(op.pledge_id, kind.removeprefix("checkout.session.")),
                             source=source, now=now, actor="stripe")
        return None
    return f"{kind}: nothing to do while the payment is {obj.get('payment_status')}"


async def _give_back(session: AsyncSession, op: t.PaymentOp, why: str, now: datetime) -> str:
    """Money arrived for a pledge that cannot take it: refund it in full, at once."""
    assert op.pledge_id is not None
    await insert_ops(session, [op_values(
        PaymentKind.REFUND, idempotency_key("refund", "pledge", op.pledge_id), now,
        task_id=op.task_id, pledge_id=op.pledge_id, repo_id=op.repo_id, number=op.number,
        forge=op.forge, amount_minor=op.amount_minor, currency=op.currency,
        payment_intent=op.payment_intent)])
    session.add(t.AuditEvent(task_id=op.task_id, actor="stripe", action="pledge.late_payment",
                             detail={"pledge": op.pledge_id, "why": why[:200]}, created_at=now))
    log_event(log, "stripe.late_payment", logging.WARNING, pledge=op.pledge_id, why=why)
    return f"refunded: {why}"


async def _refund(session: AsyncSession, obj: dict[str, Any], kind: str,
                  now: datetime) -> str | None:
    """A refund moved on at Stripe: keep its status on our operation."""
    if kind == "charge.refunded":
        intent = obj.get("payment_intent")
        ops = await ops_for(session, kind=PaymentKind.REFUND.value, payment_intent=intent) \
            if intent else []
        status = "succeeded" if obj.get("refunded") else "partially_refunded"
    else:
        ops = await ops_for(session, kind=PaymentKind.REFUND.value, refund_id=obj.get("id"))
        if not ops and obj.get("payment_intent"):
            ops = await ops_for(session, kind=PaymentKind.REFUND.value,
                                payment_intent=obj["payment_intent"])
        status = str(obj.get("status") or "unknown")
    if not ops:
        checkout = await ops_for(session, kind=PaymentKind.CHECKOUT.value,
                                 payment_intent=obj.get("payment_intent"))
        if not checkout:
            return "not a payment of bountybot's"
        # Refunded at Stripe (its dashboard), not by us: the books still say what they said.
        op = checkout[0]
        session.add(t.AuditEvent(task_id=op.task_id, actor="stripe", action="stripe.refund",
                                 detail={"pledge": op.pledge_id, "status": status,
                                         "requested": False}, created_at=now))
        log_event(log, "stripe.unrequested_refund", logging.WARNING, pledge=op.pledge_id,
                  status=status)
        return "a refund bountybot did not ask for: the books still count this money"
    for op in ops:
        op.status = status[:32]
        if status in ("failed", "canceled", "requires_action"):
            session.add(t.AuditEvent(task_id=op.task_id, actor="stripe",
                                     action="pledge.refund_failed",
                                     detail={"pledge": op.pledge_id, "status": status,
                                             "reason": str(obj.get("failure_reason"))},
                                     created_at=now))
            log_event(log, "stripe.refund_failed", logging.ERROR, pledge=op.pledge_id,
                      refund=op.refund_id, status=status, reason=obj.get("failure_reason"))
    return None


async def _dispute(session: AsyncSession, settings: Any, obj: dict[str, Any], source: str,
                   now: datetime) -> str | None:
    """A backer's bank disputes a payment: on the record, in the log and on the issue."""
    checkout = await ops_for(session, kind=PaymentKind.CHECKOUT.value,
                             payment_intent=obj.get("payment_intent"))
    if not checkout:
        return "not a payment of bountybot's"
    op = checkout[0]
    assert op.task_id is not None and op.pledge_id is not None
    reason = str(obj.get("reason") or "no reason given")
    log_event(log, "stripe.dispute", logging.WARNING, pledge=op.pledge_id, task=op.task_id,
              dispute=obj.get("id"), amount=obj.get("amount"), reason=reason)
    await decide_on_task(session, settings, op.task_id, PaymentDisputed(op.pledge_id, reason),
                         source=source, now=now, actor="stripe")
    return None


async def _account(session: AsyncSession, obj: dict[str, Any], now: datetime) -> str | None:
    """A developer's connected account changed: ready (or not) to receive transfers."""
    account = (await session.exec(select(t.PayoutAccount).where(
        t.PayoutAccount.account_id == obj.get("id")))).first()
    if account is None:
        return "not an account of bountybot's"
    ready = (obj.get("capabilities") or {}).get("transfers") == "active"
    return await set_ready(session, account, ready, now)


async def set_ready(session: AsyncSession, account: t.PayoutAccount, ready: bool,
                    now: datetime) -> str | None:
    """Record whether an account can receive transfers; when it can, its waiting transfers
    are due."""
    if account.ready != ready:
        account.ready = ready
        log_event(log, "payout_account.ready" if ready else "payout_account.not_ready",
                  forge=account.forge, login=account.login)
    if ready:
        released = await release_waiting_transfers(session, account.forge, account.login, now)
        return None if released else "ready; no payout was waiting"
    return "not ready to receive transfers yet"
