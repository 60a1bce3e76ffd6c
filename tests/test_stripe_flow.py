"""The Stripe provider end to end: pledges by GitHub comment paid on Stripe Checkout, confirmed
by Stripe's webhooks (signed for real), refunds to the payment they came from, payouts as
transfers to the developer's Express account once it is onboarded; calls that time out are
tried again with the same idempotency key and pay once; `audit --provider` compares the books
with Stripe's records. Through the real app, the local fake GitHub and the local fake Stripe
(stripe-python over loopback), on SQLite and PostgreSQL. Nothing sleeps: the clock is moved."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bountybot import cli
from bountybot.app import SESSIONMAKER
from bountybot.config import ConfigError, Settings
from bountybot.ledger.audit import run_audit
from bountybot.payments.provider_audit import audit_provider
from bountybot.payments.stripe_api import StripeGateway
from bountybot.service import RUNTIME
from bountybot.states import PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t

from fakes.stripe import FakeStripe, stripe_server  # noqa: F401
from github_harness import MAINTAINER, REPO, GitHubBot

WHSEC = "whsec_test_bountybot0123456789"
PUBLIC_URL = "https://bounties.example.org"
ISSUE_URL = f"https://github.com/{REPO}/issues/1"
TRANSFERS = r"^/v1/transfers$"


class Clock:
    """The bot's time, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Stripy:
    """A bot on the Stripe provider, the fake Stripe it pays through, and its clock."""

    bot: GitHubBot
    stripe: FakeStripe
    gateway: StripeGateway
    clock: Clock

    async def settle(self) -> None:
        """Deliveries handled, payment calls made, forge writes sent: until nothing is due."""
        payments = self.bot.app[RUNTIME].payments
        assert payments is not None
        for _ in range(20):
            await self.bot.settle()
            if not await payments.run_once():
                return
        raise AssertionError("the payment worker never ran out of work")

    async def post(self, event: dict[str, Any] | bytes, *, secret: str = WHSEC,
                   signature: str | None = None) -> Any:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Stripe-Signature": signature or self.stripe.sign(body, secret),
                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
        return await self.bot.client.post("/webhooks/stripe", data=body, headers=headers)

    def move(self, **delta: float) -> None:
        self.clock.now += timedelta(**delta)

    async def ops(self, kind: str | None = None) -> list[t.PaymentOp]:
        return [op for op in await self.bot.rows(t.PaymentOp) if kind in (None, op.kind)]

    def said(self, words: str) -> list[str]:
        return [c.body for c in self.bot.bot_comments(1) if words in c.body]

    async def audit(self) -> None:
        books = await run_audit(self.bot.app[SESSIONMAKER])
        assert books.ok, books.render()
        against = await audit_provider(self.bot.app[SESSIONMAKER], self.gateway)
        assert against.ok, against.render()


async def start(db_url: str, github: Any, stripe: FakeStripe, **bot: Any) -> Stripy:
    clock = Clock()
    gateway = StripeGateway(stripe.api_key, api_base=stripe.url, timeout=0.5)
    started = await GitHubBot.start(
        db_url, github, clock=clock, payments={"provider": "stripe"},
        sections={"stripe": {"api_key": stripe.api_key, "webhook_secret": WHSEC,
                             "api_base": stripe.url},
                  "server": {"public_url": PUBLIC_URL}},
        service={"gateway": gateway, "payment_loop": False,
                 "payment_options": {"base_delay": 2.0, "max_delay": 30.0, "max_attempts": 4,
                                     "rng": random.Random(6)}},
        **bot)
    return Stripy(started, stripe, gateway, clock)


@pytest.fixture
async def paying(db_url, github_server, stripe_server) -> AsyncIterator[Stripy]:  # noqa: F811
    bot = await start(db_url, github_server, stripe_server)
    try:
        yield bot
    finally:
        await bot.bot.close()
        bot.gateway.close()


async def pledged(p: Stripy, *amounts: tuple[str, str], goal: str = "50") -> list[dict]:
    """A task with a goal and pledges, each paid on its checkout page; returns the sessions."""
    await p.bot.label(1)
    await p.bot.comment(MAINTAINER, f"/goal {goal}")
    for backer, amount in amounts:
        await p.bot.comment(backer, f"/pledge {amount}")
    await p.settle()
    sessions = list(p.stripe.sessions.values())
    for session in sessions:
        assert (await p.post(p.stripe.pay(session["id"]))).status == 200
    await p.settle()
    return sessions


async def merged(p: Stripy, developer: str = "dave") -> None:
    await p.bot.comment(developer, "/claim")
    await p.bot.pull_request("opened", developer, 5, "Fixes #1")
    await p.bot.pull_request("closed", developer, 5, "Fixes #1", merged=True)
    await p.settle()


async def onboarded(p: Stripy, developer: str = "dave") -> str:
    """The developer asks for a payout account and finishes Stripe's onboarding."""
    await p.bot.comment(developer, "/payout-account")
    await p.settle()
    account = list(p.stripe.accounts)[-1]
    assert (await p.post(p.stripe.complete_onboarding(account))).status == 200
    await p.settle()
    return account


# -- the whole story ---------------------------------------------------------------------------


async def test_a_bounty_paid_in_and_out_through_stripe(paying: Stripy, db_url, monkeypatch):
    p, stripe = paying, paying.stripe
    await p.bot.label(1)
    await p.bot.comment(MAINTAINER, "/goal 50")
    await p.bot.comment("alice", "/pledge 50")
    await p.settle()

    # A checkout session for the pledge, keyed by it, with its ids; its link in the reply.
    (pledge,) = (await p.bot.task(1)).pledges
    assert pledge.state == PledgeState.PENDING
    (session,) = stripe.sessions.values()
    assert (session["amount_total"], session["currency"]) == (5000, "eur")
    assert session["metadata"]["pledge_id"] == str(pledge.id)
    assert session["success_url"] == session["cancel_url"] == ISSUE_URL
    (create,) = stripe.recorded("POST", "/v1/checkout/sessions")
    assert create.headers["idempotency-key"] == f"bountybot:checkout:pledge:{pledge.id}"
    (link,) = p.said(session["url"])
    assert "@alice" in link and "€50.00" in link
    assert (await p.bot.task(1)).state == TaskState.OPEN

    # Alice pays: Stripe's webhook puts the money in escrow.
    assert (await p.post(stripe.pay(session["id"]))).status == 200
    await p.settle()
    task = await p.bot.task(1)
    assert task.state == TaskState.FUNDED and task.pledges[0].state == PledgeState.HELD
    assert task.held().minor == 5000

    # The work is merged: the payout is due, and waits for Dave's payout account.
    await merged(p)
    task = await p.bot.task(1)
    (payout,) = task.payouts
    assert task.state == TaskState.DONE and payout.state == PayoutState.PENDING
    (waiting,) = await p.ops("transfer")
    assert waiting.state == t.PaymentOpState.WAITING
    (asked,) = p.said("/payout-account")
    assert "@dave" in asked and "€50.00" in asked
    assert not stripe.transfers
    await p.settle()
    assert len(p.said("/payout-account")) == 1  # said once

    # Dave asks for the account: an Express account, and an onboarding link in the reply.
    await p.bot.comment("dave", "/payout-account")
    await p.settle()
    (account,) = stripe.accounts
    (onboarding,) = stripe.account_links
    (reply,) = p.said(onboarding["url"])
    assert "@dave" in reply
    (made,) = stripe.recorded("POST", "/v1/accounts")
    assert made.headers["idempotency-key"] == "bountybot:account:github:dave"
    assert not stripe.transfers

    # Stripe says the account can take transfers: the payout goes, once.
    assert (await p.post(stripe.complete_onboarding(account))).status == 200
    await p.settle()
    (transfer,) = stripe.transfers.values()
    assert (transfer["amount"], transfer["currency"], transfer["destination"]) == (
        5000, "eur", account)
    assert transfer["transfer_group"] == f"payout-{payout.id}"
    (sent,) = stripe.recorded("POST", "/v1/transfers")
    assert sent.headers["idempotency-key"] == f"bountybot:transfer:payout:{payout.id}"
    (payout,) = (await p.bot.task(1)).payouts
    assert payout.state == PayoutState.PAID and payout.reference == transfer["id"]
    assert stripe.balance(account) == {"eur": 5000}
    await p.settle()
    assert len(stripe.transfers) == 1
    await p.audit()

    # The same through the command line.
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
    monkeypatch.setenv("BOUNTYBOT_PAYMENTS_PROVIDER", "stripe")
    monkeypatch.setenv("BOUNTYBOT_STRIPE_API_KEY", stripe.api_key)
    monkeypatch.setenv("BOUNTYBOT_STRIPE_API_BASE", stripe.url)
    assert await asyncio.to_thread(cli.main, ["audit", "--provider"]) == 0


# -- configuration -----------------------------------------------------------------------------


def test_serve_takes_stripe_with_its_keys_and_a_public_url() -> None:
    stripe = {"api_key": "sk_test_0123456789abcdef", "webhook_secret": WHSEC}
    settings = Settings.load(None, payments={"provider": "stripe"}, stripe=stripe,
                             server={"public_url": PUBLIC_URL})
    settings.check_for_serve()
    with pytest.raises(ConfigError, match="server.public_url is not set"):
        Settings.load(None, payments={"provider": "stripe"}, stripe=stripe).check_for_serve()
