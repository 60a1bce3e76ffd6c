"""The knobs of the rules for one repo, as plain values (built from the settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bountybot.providers.base import PaymentProvider
from bountybot.providers.manual import ManualProvider


@dataclass(frozen=True)
class Policy:
    """What the rules need to know about the repo and the service."""

    bot_login: str = "bountybot"
    label: str = "bounty"
    currency: str = "EUR"
    locale: str = "en"
    min_pledge: int | None = None
    max_pledge: int | None = None
    claim_days: int = 14
    release_after_days: int = 0
    # The fee in basis points (hundredths of a percent): 250 is 2.5 %. Integers, no floats.
    fee_bp: int = 0
    provider: PaymentProvider = field(default_factory=ManualProvider)

    def __post_init__(self) -> None:
        if not 0 <= self.fee_bp <= 10_000:
            raise ValueError("fee_bp must be between 0 and 10000")
        if self.claim_days < 1:
            raise ValueError("claim_days must be at least 1")


def policy_from_settings(settings: Any, *, locale: str | None = None,
                         currency: str | None = None) -> Policy:
    """The policy for one repo: the service's settings, with the repo's own locale and currency
    when it has them. (Takes `bountybot.config.Settings`; typed loosely to keep the rules free
    of the configuration library.)"""
    bot = settings.bot
    provider: PaymentProvider = ManualProvider(confirm=settings.payments.manual_confirm)
    if settings.payments.provider == "stripe":
        from bountybot.providers.stripe import StripeProvider

        provider = StripeProvider()
    return Policy(
        bot_login=bot.login,
        label=bot.label,
        currency=currency or bot.currency,
        locale=locale or bot.locale,
        min_pledge=bot.min_pledge_minor(),
        max_pledge=bot.max_pledge_minor(),
        claim_days=bot.claim_days,
        release_after_days=bot.release_after_days,
        fee_bp=bot.fee_basis_points(),
        provider=provider,
    )
