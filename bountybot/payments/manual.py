"""The manual provider: the bot keeps the books and people settle outside it."""

from __future__ import annotations

from dataclasses import dataclass

from bountybot.payments.base import PledgeStart
from bountybot.states import PayoutState, PledgeState


@dataclass(frozen=True)
class ManualProvider:
    """A pledge is a trusted promise, held at once, or pending until a maintainer confirms
    receipt when `confirm` is set; a payout is pending until someone marks it paid."""

    confirm: bool = False
    name: str = "manual"

    def start_pledge(self, backer: str, minor: int, currency: str) -> PledgeStart:
        return PledgeStart(PledgeState.PENDING if self.confirm else PledgeState.HELD)

    def start_payout(self) -> PayoutState:
        return PayoutState.PENDING

    def idempotency_key(self, kind: str, object_id: int) -> str:
        return f"bountybot:{kind}:{object_id}"
