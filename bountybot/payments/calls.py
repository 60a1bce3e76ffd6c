"""The provider calls of one payment operation, made with no database lock held: what to send
(`LeasedOp`, read when the operation was leased) and what came of it (`Outcome`).

Never twice: every call carries the operation's idempotency key, the same on every try, so
Stripe answers a repeat with its first answer. And since Stripe forgets a key after a day, a
transfer tried again first asks Stripe whether it was made (`find_transfers` by the payout's
transfer group) and only calls again when it was not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from bountybot.payments.stripe_api import (
    AccountStatus,
    CheckoutSession,
    PaymentError,
    RefundResult,
    StripeGateway,
    TransferResult,
)
from bountybot.providers.base import PaymentKind

T = TypeVar("T")
# Our platform balance lacks the money for now (card payments take days to become available):
# the transfer waits, without counting as a failure.
WAIT_FOR_FUNDS = frozenset({"balance_insufficient"})
# The destination cannot take transfers (yet): the transfer waits for the account.
WAIT_FOR_ACCOUNT = frozenset({"insufficient_capabilities_for_transfer", "account_invalid"})


@dataclass(frozen=True)
class LeasedOp:
    """A leased operation, as read in the lease's transaction (no ORM row crosses a call)."""

    id: int
    kind: PaymentKind
    key: str
    attempts: int
    unknown: bool  # a call before this one may have been done: ask before calling again
    pledge_id: int | None = None
    payout_id: int | None = None
    task_id: int | None = None
    forge: str | None = None
    login: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    payment_intent: str | None = None  # refund: the payment to give back
    account_id: str | None = None  # transfer: the destination; account: the existing one
    description: str = ""
    return_url: str | None = None  # where Stripe's pages send people back (the issue)


@dataclass(frozen=True)
class Outcome:
    """What came of a job. `what`: done; retry (failed, may work later); unknown (the call may
    have been done); postponed (not a failure: try later, not counted); waiting (for the
    developer's account); failed (refused for good)."""

    what: Literal["done", "retry", "unknown", "postponed", "waiting", "failed"]
    session: CheckoutSession | None = None
    refund: RefundResult | None = None
    transfer: TransferResult | None = None
    account: AccountStatus | None = None
    url: str | None = None
    error: str | None = None
    already: bool = False  # done before: found at Stripe, not made by this call


def failed_outcome(error: PaymentError, kind: PaymentKind) -> Outcome:
    if error.code in WAIT_FOR_FUNDS and kind == PaymentKind.TRANSFER:
        return Outcome("postponed", error=str(error))
    if error.code in WAIT_FOR_ACCOUNT and kind == PaymentKind.TRANSFER:
        return Outcome("waiting", error=str(error))
    if error.outcome_unknown:
        return Outcome("unknown", error=str(error))
    return Outcome("retry" if error.retryable else "failed", error=str(error))


class Caller:
    """Makes the calls of a job through a gateway, each in a worker thread."""

    def __init__(self, gateway: StripeGateway) -> None:
        self.gateway = gateway

    async def _run(self, call: Callable[..., T], **kwargs: Any) -> T:
        return await asyncio.to_thread(call, **kwargs)

    async def perform(self, job: LeasedOp) -> Outcome:
        try:
            if job.kind == PaymentKind.CHECKOUT:
                return await self._checkout(job)
            if job.kind == PaymentKind.REFUND:
                return await self._refund(job)
            if job.kind == PaymentKind.TRANSFER:
                return await self._transfer(job)
            return await self._account(job)
        except PaymentError as error:
            return failed_outcome(error, job.kind)
        except ValueError as error:  # a request the gateway refused to send: ours is wrong
            return Outcome("failed", error=f"not sent: {error}")

    async def _checkout(self, job: LeasedOp) -> Outcome:
        if job.return_url is None:
            return Outcome("failed", error="server.public_url is not set")
        assert job.amount_minor is not None and job.currency is not None
        session = await self._run(
            self.gateway.create_checkout_session, amount_minor=job.amount_minor,
            currency=job.currency, description=job.description, success_url=job.return_url,
            cancel_url=job.return_url, idempotency_key=job.key,
            metadata={"bountybot": "pledge", "pledge_id": str(job.pledge_id),
                      "task_id": str(job.task_id)})
        return Outcome("done", session=session, url=session.url)

    async def _refund(self, job: LeasedOp) -> Outcome:
        if not job.payment_intent:
            return Outcome("failed", error="no payment on record to refund")
        try:
            refund = await self._run(
                self.gateway.refund, payment_intent=job.payment_intent,
                amount_minor=job.amount_minor, idempotency_key=job.key,
                metadata={"bountybot": "refund", "pledge_id": str(job.pledge_id)})
        except PaymentError as error:
            if error.code == "charge_already_refunded":
                # Our earlier try did it (and Stripe has forgotten the key since), or someone
                # refunded it on Stripe's dashboard: either way the backer has it back.
                return Outcome("done", already=True, error=str(error))
            raise
        return Outcome("done", refund=refund)

    async def _transfer(self, job: LeasedOp) -> Outcome:
        if not job.account_id:
            return Outcome("waiting", error="the developer has no ready payout account")
        assert job.amount_minor is not None and job.currency is not None
        group = f"payout-{job.payout_id}"
        if job.unknown:
            made = await self._run(self.gateway.find_transfers, transfer_group=group)
            if made:
                # Newest first; more than one would be a bug the audit reports.
                return Outcome("done", transfer=made[-1], already=True)
        transfer = await self._run(
            self.gateway.create_transfer, amount_minor=job.amount_minor, currency=job.currency,
            destination=job.account_id, transfer_group=group, idempotency_key=job.key,
            metadata={"bountybot": "payout", "payout_id": str(job.payout_id),
                      "task_id": str(job.task_id)})
        return Outcome("done", transfer=transfer)

    async def _account(self, job: LeasedOp) -> Outcome:
        assert job.forge is not None and job.login is not None
        from bountybot.payments.ops import account_key

        account_id = job.account_id or await self._run(
            self.gateway.create_express_account, login=job.login, forge=job.forge,
            idempotency_key=account_key(job.forge, job.login))
        status = await self._run(self.gateway.retrieve_account, account_id=account_id)
        if status.transfers_active:
            return Outcome("done", account=status)
        if job.return_url is None:
            return Outcome("failed", account=status, error="server.public_url is not set")
        url = await self._run(self.gateway.create_account_link, account=account_id,
                              refresh_url=job.return_url, return_url=job.return_url)
        return Outcome("done", account=status, url=url)
