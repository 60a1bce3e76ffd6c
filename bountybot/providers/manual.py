"""The manual provider: the bot keeps the books and people settle outside it."""

from __future__ import annotations

from dataclasses import dataclass

from bountybot.providers.base import PledgeStart
from bountybot.states import PayoutState, PledgeState


@dataclass(frozen=True)
class ManualProvider:
    """A pledge is a trusted promise, held at once, or pending until a maintainer confirms
    receipt when `confirm` is set; a payout is pending until someone marks it paid. No money
    passes through the bot, so a refund or a payout is a line in the books, not a call."""

    confirm: bool = False
    name: str = "manual"
    moves_money: bool = False

    # The Provider protocol's signature: not every argument is needed here.
    def start_pledge(self, backer: str, minor: int, currency: str) -> PledgeStart:  # noqa: ARG002
        return PledgeStart(PledgeState.PENDING if self.confirm else PledgeState.HELD)

    def start_payout(self) -> PayoutState:
        return PayoutState.PENDING
