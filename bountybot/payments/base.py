"""The seam between the rules and whoever moves the money (manual books, Stripe, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bountybot.states import PayoutState, PledgeState


@dataclass(frozen=True, slots=True)
class PledgeStart:
    """How a new pledge begins: held at once, or pending until payment, with a link to pay."""

    state: PledgeState
    payment_url: str | None = None


class PaymentProvider(Protocol):
    """What the rules ask of a provider. Decisions only: the calls that move money happen
    after the commit, from the outbox, keyed by our ids (`bountybot:payout:<id>`)."""

    @property
    def name(self) -> str: ...

    def start_pledge(self, backer: str, minor: int, currency: str) -> PledgeStart: ...

    def start_payout(self) -> PayoutState: ...

    def idempotency_key(self, kind: str, object_id: int) -> str: ...
