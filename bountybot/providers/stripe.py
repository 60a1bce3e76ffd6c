"""The Stripe provider as the rules see it: pledges are paid on a Checkout page, refunds and
payouts are calls to Stripe (made by the payment worker, `bountybot.payments.worker`)."""

from __future__ import annotations

from dataclasses import dataclass

from bountybot.providers.base import PledgeStart
from bountybot.states import PayoutState, PledgeState


@dataclass(frozen=True)
class StripeProvider:
    """A pledge is pending until Stripe says the backer paid its Checkout Session; held money
    goes back by a Stripe refund; a payout is a transfer to the developer's connected account."""

    name: str = "stripe"
    moves_money: bool = True

    # The Provider protocol's signature: not every argument is needed here.
    def start_pledge(self, backer: str, minor: int, currency: str) -> PledgeStart:  # noqa: ARG002
        return PledgeStart(PledgeState.PENDING, checkout=True)

    def start_payout(self) -> PayoutState:
        return PayoutState.PENDING
