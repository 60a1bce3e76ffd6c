"""`bountybot audit --provider`: our books against Stripe's own records, one sentence a
difference.

- A pledge whose money is in escrow, paid out or refunded was paid: its checkout session at
  Stripe is complete and paid, for the same amount and currency.
- A pledge paid at Stripe whose money is not with us any more (refunded, or withdrawn after it
  was held, or paid after it lapsed) was given back: a refund of the whole amount, to that
  payment, that did not fail.
- A pledge whose money is in escrow or paid out still has all of it: nothing of its payment was
  refunded at Stripe (in its dashboard, say: the books would still count the money), and no
  dispute has taken it (a chargeback open or lost). A dispute settled with no money taken (won,
  or an inquiry closed) is no difference: it is listed as a note.
- A paid payout has exactly one transfer in its transfer group (`payout-<id>`), for the same
  amount and currency, to the developer's account, and it is the payout's reference; a payout
  not paid has none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.payments.stripe_api import PaymentError, StripeGateway
from bountybot.providers.base import PaymentKind
from bountybot.states import PayoutState, PledgeState
from bountybot.storage import tables as t

T = TypeVar("T")
IN_HAND = (PledgeState.HELD, PledgeState.PAID_OUT, PledgeState.REFUNDED)
KEPT = (PledgeState.HELD, PledgeState.PAID_OUT)  # the books count its money as ours, or paid
_HELD_BY_STRIPE = "Stripe holds the amount until the bank decides"
# Disputes that end with the money where the books say it is.
_SETTLED_KEPT = frozenset({"won", "warning_closed"})
_DISPUTE_MEANS = {  # what a dispute's status means for the money the books count
    "needs_response": _HELD_BY_STRIPE, "under_review": _HELD_BY_STRIPE,
    "appeal_needs_response": _HELD_BY_STRIPE, "appeal_under_review": _HELD_BY_STRIPE,
    "lost": "the backer's bank took the money back",
    "won": "the money came back to us",
    "warning_needs_response": "an inquiry: no money taken yet",
    "warning_under_review": "an inquiry: no money taken yet",
    "warning_closed": "an inquiry, closed: no money taken",
}


@dataclass
class ProviderReport:
    problems: list[str] = field(default_factory=list)
    # What is worth knowing but no difference (a dispute won).
    notes: list[str] = field(default_factory=list)
    pledges: int = 0
    payouts: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = f"checked {self.pledges} pledges and {self.payouts} payouts against Stripe: "
        notes = [f"  note: {n}" for n in self.notes]
        if self.ok:
            return "\n".join([head + "our books and Stripe's records agree", *notes])
        return "\n".join([head + f"{len(self.problems)} difference(s)",
                          *(f"  - {p}" for p in self.problems), *notes])


async def _ask(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(call, *args)


async def audit_provider(sessionmaker: async_sessionmaker[AsyncSession],
                         gateway: StripeGateway) -> ProviderReport:
    """Compare every Stripe-paid pledge and every payout with what Stripe holds."""
    async with sessionmaker() as s:
        pledges = list((await s.exec(select(t.Pledge).order_by(col(t.Pledge.id)))).all())
        payouts = list((await s.exec(select(t.Payout).order_by(col(t.Payout.id)))).all())
        ops = list((await s.exec(select(t.PaymentOp).order_by(col(t.PaymentOp.id)))).all())
        accounts = {(a.forge, a.login): a.account_id
                    for a in (await s.exec(select(t.PayoutAccount))).all()}
        forges = {task.id: repo.forge for task, repo in (await s.exec(
            select(t.Task, t.Repo).where(col(t.Task.repo_id) == t.Repo.id))).all()}
    by_pledge: dict[tuple[str, int | None], t.PaymentOp] = {
        (op.kind, op.pledge_id): op for op in ops if op.pledge_id is not None}
    report = ProviderReport(pledges=len(pledges), payouts=len(payouts))
    for pledge in pledges:
        try:
            await _pledge(gateway, pledge, by_pledge, report.problems, report.notes)
        except PaymentError as error:
            report.problems.append(f"pledge {pledge.id}: Stripe could not be asked: {error}")
    for payout in payouts:
        account = accounts.get((forges.get(payout.task_id, ""), payout.developer.lower()))
        try:
            await _payout(gateway, payout, account, report.problems)
        except PaymentError as error:
            report.problems.append(f"payout {payout.id}: Stripe could not be asked: {error}")
    return report


async def _pledge(gateway: StripeGateway, pledge: t.Pledge,
                  by_pledge: dict[tuple[str, int | None], t.PaymentOp], bad: list[str],
                  notes: list[str]) -> None:
    name = f"pledge {pledge.id} (@{pledge.backer}, {pledge.amount_minor} {pledge.currency})"
    checkout = by_pledge.get((PaymentKind.CHECKOUT.value, pledge.id))
    if checkout is None or checkout.session_id is None:
        if pledge.state in IN_HAND:
            bad.append(f"{name} is {pledge.state} but was never paid through Stripe")
        return
    session = await _ask(gateway.retrieve_checkout_session, checkout.session_id)
    paid = session.status == "complete" and session.payment_status == "paid"
    if paid and (session.amount_total, (session.currency or "").upper()) != (
            pledge.amount_minor, pledge.currency):
        bad.append(f"{name}: Stripe was paid {session.amount_total} {session.currency}")
    if pledge.state in IN_HAND and not paid:
        bad.append(f"{name} is {pledge.state} but its checkout session is {session.status},"
                   f" {session.payment_status}")
    if pledge.state == PledgeState.PENDING and paid:
        bad.append(f"{name} is pending but Stripe says it was paid (a missed webhook?)")
    if not paid:
        return
    if pledge.state in KEPT:
        if session.payment_intent is not None:
            await _kept(gateway, name, pledge, session.payment_intent, bad, notes)
        return
    refund = by_pledge.get((PaymentKind.REFUND.value, pledge.id))
    await _refunded(gateway, name, pledge, refund, session.payment_intent, bad)


async def _refunded(gateway: StripeGateway, name: str, pledge: t.Pledge,
                    refund: t.PaymentOp | None, payment_intent: str | None,
                    bad: list[str]) -> None:
    """A pledge paid at Stripe that the books gave back: its refund, as Stripe has it."""
    if refund is None or refund.refund_id is None:
        if refund is not None and refund.status == "already_refunded":
            return  # Stripe said so when we asked for it
        bad.append(f"{name} is {pledge.state}, paid at Stripe, but no refund was made")
        return
    found = await _ask(gateway.retrieve_refund, refund.refund_id)
    if found.status in ("failed", "canceled"):
        bad.append(f"{name}: its refund {found.id} {found.status}")
    if found.amount_minor != pledge.amount_minor or found.payment_intent not in (
            None, payment_intent):
        bad.append(f"{name}: its refund {found.id} gave back {found.amount_minor} of payment"
                   f" {found.payment_intent}, not {pledge.amount_minor} of"
                   f" {payment_intent}")


async def _kept(gateway: StripeGateway, name: str, pledge: t.Pledge, payment_intent: str,
                bad: list[str], notes: list[str]) -> None:
    """What Stripe's dashboard or the backer's bank did to a payment the books still count."""
    status = await _ask(gateway.payment_status, payment_intent)
    if status.amount_refunded:
        how = "in full" if status.amount_refunded >= status.amount_received else "in part"
        bad.append(f"{name} is {pledge.state} but Stripe refunded {status.amount_refunded}"
                   f" {(status.currency or pledge.currency).upper()} of its payment"
                   f" {payment_intent} ({how}); the books have no refund of it (made outside"
                   " bountybot?)")
    for dispute in status.disputes:
        means = _DISPUTE_MEANS.get(dispute.status, "see Stripe's dashboard")
        (notes if dispute.status in _SETTLED_KEPT else bad).append(
                   f"{name} is {pledge.state} but its payment {payment_intent} is disputed:"
                   f" {dispute.id}, {dispute.amount_minor}"
                   f" {(dispute.currency or pledge.currency).upper()},"
                   f" {dispute.reason or 'no reason given'}, {dispute.status} ({means})")
    if status.disputed and not status.disputes:
        bad.append(f"{name} is {pledge.state} but its payment {payment_intent} is disputed"
                   " and Stripe lists no dispute for it")


async def _payout(gateway: StripeGateway, payout: t.Payout, account: str | None,
                  bad: list[str]) -> None:
    name = f"payout {payout.id} (@{payout.developer}, {payout.amount_minor} {payout.currency})"
    transfers = await _ask(gateway.find_transfers, f"payout-{payout.id}")
    if payout.state != PayoutState.PAID:
        if transfers:
            bad.append(f"{name} is {payout.state} but Stripe has {len(transfers)} transfer(s)"
                       f" for it: {', '.join(tr.id for tr in transfers)}")
        return
    if len(transfers) != 1:
        bad.append(f"{name} is paid but Stripe has {len(transfers)} transfers for it")
        if not transfers:
            return
    transfer = transfers[0]
    if (transfer.amount_minor, (transfer.currency or "").upper()) != (payout.amount_minor,
                                                                     payout.currency):
        bad.append(f"{name}: transfer {transfer.id} sent {transfer.amount_minor}"
                   f" {transfer.currency}")
    if transfer.destination != account:
        bad.append(f"{name}: transfer {transfer.id} went to {transfer.destination}, not to the"
                   f" developer's account {account}")
    if payout.reference != transfer.id:
        bad.append(f"{name}: its reference is {payout.reference}, the transfer is {transfer.id}")
