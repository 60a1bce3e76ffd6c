"""The seam between the rules and whoever moves the money (manual books, Stripe, ...).

The rules stay pure: they never call a provider. They ask it how a pledge begins
(`start_pledge`) and whether money passes through it (`moves_money`), and they write what the
provider must do as `PaymentRequest`s in their decision, next to the ledger postings. Storage
turns each request into a `payment_op` row in the same transaction, under an idempotency key
built from our ids (`bountybot:transfer:payout:42`); the payment worker makes the call after
the commit, retrying with the same key, and reports the outcome back to the rules as an event:

- `checkout`, when a pledge starts pending (`/pledge`): paid -> `PledgeConfirmed` (held);
  expired, or impossible to make -> `PledgeLapsed` (withdrawn).
- `refund`, when held money goes back (withdraw, cancel, expiry, a dispute decided by
  `/cancel`): the ledger moved at the decision; the operation records what Stripe did.
- `transfer`, when a payout is released and its developer has a ready account (the worker
  queues it): -> `PayoutPaid(reference)`, or `PayoutFailed`; without an account,
  `PayoutAwaitingAccount` tells the developer to run `/payout-account`.
- `account`, when a developer asks `/payout-account`: an onboarding link in a reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bountybot.states import PayoutState, PledgeState


class HasId(Protocol):
    id: int | None


class PaymentKind(StrEnum):
    """What a payment operation does at the provider."""

    CHECKOUT = "checkout"  # collect a pledge's money on a hosted payment page
    REFUND = "refund"  # give a pledge's money back to the card or account it came from
    TRANSFER = "transfer"  # pay a payout to the developer's connected account
    ACCOUNT = "account"  # set up the account a developer is paid to (an onboarding link)


@dataclass(frozen=True, slots=True)
class PledgeStart:
    """How a new pledge begins: held at once, or pending until payment. `checkout`: the
    provider collects the money online, so a checkout request goes with the pledge (its link
    is replied once the provider made it). `payment_url`: a link known at once, if any."""

    state: PledgeState
    payment_url: str | None = None
    checkout: bool = False


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A call the provider must make once the decision is committed.

    `ref` is the pledge (checkout, refund) or the payout (transfer); its id exists once
    storage has written it, which is when the idempotency key is made. `login` names the
    developer of an account request; `comment_id` (and the edit's `revision`) is the comment to
    answer with a link."""

    kind: PaymentKind
    ref: HasId | None = None
    login: str | None = None
    comment_id: str | None = None
    revision: str | None = None


class PaymentProvider(Protocol):
    """What the rules ask of a provider. Decisions only: the calls that move money happen
    after the commit, from the payment worker, keyed by our ids."""

    @property
    def name(self) -> str: ...

    @property
    def moves_money(self) -> bool:
        """True when the money passes through the provider: held money is refunded and
        payouts are sent by calls to it. False when people settle outside the bot."""
        ...

    def start_pledge(self, backer: str, minor: int, currency: str) -> PledgeStart: ...

    def start_payout(self) -> PayoutState: ...
