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
from bountybot.config import ConfigError, Settings
from bountybot.payments.provider_audit import audit_provider
from bountybot.payments.stripe_api import StripeGateway
from bountybot.payments.worker import PaymentOptions
from bountybot.resources import SESSIONMAKER
from bountybot.service import RUNTIME
from bountybot.states import PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from clocks import Clock
from fakes.stripe import FakeStripe, stripe_server  # noqa: F401
from github_harness import MAINTAINER, REPO, GitHubBot

WHSEC = "whsec_test_bountybot0123456789"
CONNECT = "whsec_test_connect9876543210"  # the Connect endpoint's: events on connected accounts
PUBLIC_URL = "https://bounties.example.org"
ISSUE_URL = f"https://github.com/{REPO}/issues/1"
TRANSFERS = r"^/v1/transfers$"


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
                   "Stripe-Signature": self.stripe.sign(body, secret) if signature is None
                   else signature,
                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
        return await self.bot.client.post("/webhooks/stripe", data=body, headers=headers)

    def move(self, **delta: float) -> None:
        self.clock.now += timedelta(**delta)

    async def ops(self, kind: str | None = None) -> list[t.PaymentOp]:
        return [op for op in await self.bot.rows(t.PaymentOp) if kind in (None, op.kind)]

    def sessions(self) -> list[dict[str, Any]]:
        """The checkout sessions at Stripe, in pledge order (they are made concurrently)."""
        return sorted(self.stripe.sessions.values(),
                      key=lambda s: int(s["metadata"]["pledge_id"]))

    def said(self, words: str) -> list[str]:
        return [c.body for c in self.bot.bot_comments(1) if words in c.body]

    async def audit(self) -> None:
        books = await run_audit(self.bot.app[SESSIONMAKER])
        assert books.ok, books.render()
        against = await audit_provider(self.bot.app[SESSIONMAKER], self.gateway)
        assert against.ok, against.render()


async def start(db_url: str, github: Any, stripe: FakeStripe, **bot: Any) -> Stripy:
    clock = Clock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    gateway = StripeGateway(stripe.api_key, api_base=stripe.url, timeout=0.5)
    started = await GitHubBot.start(
        db_url, github, clock=clock, payments={"provider": "stripe"},
        sections={"stripe": {"api_key": stripe.api_key, "webhook_secret": WHSEC,
                             "connect_webhook_secret": CONNECT, "api_base": stripe.url},
                  "server": {"public_url": PUBLIC_URL}},
        gateway=gateway, payment_loop=False,
        payment_options=PaymentOptions(base_delay=2.0, max_delay=30.0, max_attempts=4,
                                       rng=random.Random(6)),
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


async def pending(p: Stripy, *, made: bool = True) -> dict[str, Any]:
    """A task with Alice's pledge of €50 waiting for her payment; its checkout session."""
    await p.bot.label(1)
    await p.bot.comment("alice", "/pledge 50")
    await p.settle()
    return next(iter(p.stripe.sessions.values())) if made else {}


async def pledged(p: Stripy, *amounts: tuple[str, str], goal: str = "50") -> list[dict]:
    """A task with a goal and pledges, each paid on its checkout page; returns the sessions."""
    await p.bot.label(1)
    await p.bot.comment(MAINTAINER, f"/goal {goal}")
    for backer, amount in amounts:
        await p.bot.comment(backer, f"/pledge {amount}")
    await p.settle()
    sessions = p.sessions()
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
    assert (await p.post(p.stripe.complete_onboarding(account), secret=CONNECT)).status == 200
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
    (pledge,) = (await p.bot.existing_task(1)).pledges
    assert pledge.state == PledgeState.PENDING
    (session,) = stripe.sessions.values()
    assert (session["amount_total"], session["currency"]) == (5000, "eur")
    assert session["metadata"]["pledge_id"] == str(pledge.id)
    assert session["success_url"] == session["cancel_url"] == ISSUE_URL
    (create,) = stripe.recorded("POST", "/v1/checkout/sessions")
    assert create.headers["idempotency-key"] == f"bountybot:checkout:pledge:{pledge.id}"
    (link,) = p.said(session["url"])
    assert "@alice" in link and "€50.00" in link
    assert (await p.bot.existing_task(1)).state == TaskState.OPEN

    # Alice pays: Stripe's webhook puts the money in escrow.
    assert (await p.post(stripe.pay(session["id"]))).status == 200
    await p.settle()
    task = await p.bot.task(1)
    assert task is not None
    assert task.state == TaskState.FUNDED and task.pledges[0].state == PledgeState.HELD
    assert task.held().minor == 5000

    # The work is merged: the payout is due, and waits for Dave's payout account.
    await merged(p)
    task = await p.bot.task(1)
    assert task is not None
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

    # Stripe says the account can take transfers (to the Connect endpoint): the payout goes,
    # once.
    assert (await p.post(stripe.complete_onboarding(account), secret=CONNECT)).status == 200
    await p.settle()
    (transfer,) = stripe.transfers.values()
    assert (transfer["amount"], transfer["currency"], transfer["destination"]) == (
        5000, "eur", account)
    assert transfer["transfer_group"] == f"payout-{payout.id}"
    (sent,) = stripe.recorded("POST", "/v1/transfers")
    assert sent.headers["idempotency-key"] == f"bountybot:transfer:payout:{payout.id}"
    (payout,) = (await p.bot.existing_task(1)).payouts
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


# -- calls that fail or time out -------------------------------------------------------------


async def due_payout(p: Stripy) -> tuple[str, int]:
    """A merged task whose payout is due to Dave, onboarded: (his account, the payout id)."""
    await pledged(p, ("alice", "50"))
    await merged(p)
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.id is not None
    return await onboarded(p), payout.id


async def test_a_transfer_that_times_out_is_settled_by_asking_stripe_and_pays_once(
        paying: Stripy):
    p, stripe = paying, paying.stripe
    # Stripe does the transfer at once but answers after the gateway has given up waiting.
    stripe.delay_next("POST", TRANSFERS, 2.0)
    account, payout_id = await due_payout(p)
    (op,) = await p.ops("transfer")
    assert op.state == t.PaymentOpState.UNKNOWN and "Timeout" in (op.last_error or "")
    assert len(stripe.transfers) == 1  # done at Stripe, unknown here
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PENDING

    p.move(minutes=1)  # the retry comes due: Stripe is asked before anything is sent again
    await p.settle()
    (transfer,) = stripe.transfers.values()
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PAID and payout.reference == transfer["id"]
    assert len(stripe.recorded("POST", "/v1/transfers")) == 1
    (asked,) = stripe.recorded("GET", "/v1/transfers")
    assert asked.query["transfer_group"] == f"payout-{payout_id}"
    assert stripe.balance(account) == {"eur": 5000}
    await p.audit()


async def test_a_transfer_that_fails_is_sent_again_with_the_same_key_and_pays_once(
        paying: Stripy):
    p, stripe = paying, paying.stripe
    stripe.fail_next("POST", TRANSFERS, 500)  # refused before any work: nothing was sent
    stripe.fail_next("POST", TRANSFERS, 429)  # then rate limited
    account, payout_id = await due_payout(p)
    assert not stripe.transfers
    for _ in range(2):
        p.move(minutes=1)
        await p.settle()
    (transfer,) = stripe.transfers.values()
    sent = stripe.recorded("POST", "/v1/transfers")
    assert len(sent) == 3
    assert {r.headers["idempotency-key"] for r in sent} == {
        f"bountybot:transfer:payout:{payout_id}"}
    assert len({json.dumps(r.json, sort_keys=True) for r in sent}) == 1  # the same request
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PAID and payout.reference == transfer["id"]
    assert stripe.balance(account) == {"eur": 5000}
    await p.audit()


async def test_a_transfer_that_never_gets_through_is_dead_and_the_payout_failed(paying: Stripy):
    p, stripe = paying, paying.stripe
    stripe.fail_next("POST", TRANSFERS, 503, times=10)
    await due_payout(p)
    for _ in range(6):
        p.move(minutes=5)
        await p.settle()
    (op,) = await p.ops("transfer")
    assert op.state == t.PaymentOpState.DEAD and op.attempts == 4
    assert not stripe.transfers
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.FAILED
    books = await run_audit(p.bot.app[SESSIONMAKER])
    assert books.ok, books.render()


# -- refunds -----------------------------------------------------------------------------------


async def test_cancel_refunds_every_held_pledge_to_its_payment_in_full(paying: Stripy):
    p, stripe = paying, paying.stripe
    await pledged(p, ("alice", "30"), ("bob", "20.50"))
    assert (await p.bot.existing_task(1)).state == TaskState.FUNDED
    await p.bot.comment(MAINTAINER, "/cancel")
    await p.settle()
    task = await p.bot.task(1)
    assert task is not None
    assert task.state == TaskState.CANCELLED
    assert {pl.state for pl in task.pledges} == {PledgeState.REFUNDED}
    intents = {s["metadata"]["pledge_id"]: s["payment_intent"] for s in stripe.sessions.values()}
    refunds = sorted((r["payment_intent"], r["amount"]) for r in stripe.refunds.values())
    assert refunds == sorted((intents[str(pl.id)], pl.amount.minor) for pl in task.pledges)
    for request in stripe.recorded("POST", "/v1/refunds"):
        pledge_id = request.json["metadata"]["pledge_id"]
        assert request.headers["idempotency-key"] == f"bountybot:refund:pledge:{pledge_id}"
    kinds = [txn.kind for txn in await p.bot.rows(t.LedgerTransaction)]
    assert kinds.count("pledge.refunded") == 2
    await p.settle()
    assert len(stripe.refunds) == 2
    await p.audit()


async def test_withdrawn_money_goes_back_and_a_late_payment_is_refunded(paying: Stripy):
    p, stripe = paying, paying.stripe
    await p.bot.label(1)
    await p.bot.comment("alice", "/pledge 40")
    await p.bot.comment("bob", "/pledge 15")
    await p.settle()
    alice, bob = p.sessions()
    assert (await p.post(stripe.pay(alice["id"]))).status == 200
    await p.bot.comment("alice", "/withdraw")
    await p.bot.comment("bob", "/withdraw")
    await p.settle()
    # Bob pays the link he still has, after withdrawing: that money is not ours to keep.
    assert (await p.post(stripe.pay(bob["id"]))).status == 200
    await p.settle()
    task = await p.bot.task(1)
    assert task is not None
    assert [pl.state for pl in task.pledges] == [PledgeState.WITHDRAWN] * 2
    refunds = {r["payment_intent"]: r["amount"] for r in stripe.refunds.values()}
    assert refunds == {stripe.sessions[alice["id"]]["payment_intent"]: 4000,
                       stripe.sessions[bob["id"]]["payment_intent"]: 1500}
    kinds = [txn.kind for txn in await p.bot.rows(t.LedgerTransaction)]
    assert kinds == ["pledge.held", "pledge.withdrawn"]  # Bob's money never reached the escrow
    await p.audit()


# -- the door ----------------------------------------------------------------------------------


async def test_a_bad_signature_is_refused_and_changes_nothing(paying: Stripy):
    p, stripe = paying, paying.stripe
    session = await pending(p)
    paid = json.dumps(stripe.pay(session["id"])).encode()
    assert (await p.post(paid, secret="whsec_someone_else_0123")).status == 401
    assert (await p.post(paid, signature="t=1,v1=00")).status == 401
    assert (await p.post(paid, signature="")).status == 401
    assert (await p.bot.client.post("/webhooks/stripe", data=paid)).status == 401  # none
    old = stripe.sign(paid, WHSEC, timestamp=int(stripe.clock()) - 3600)
    assert (await p.post(paid, signature=old)).status == 401  # a replay
    assert (await p.post(b"{not json", signature=stripe.sign(b"{not json", WHSEC))).status == 400
    await p.settle()
    assert [d for d in await p.bot.rows(t.Delivery) if d.forge == "stripe"] == []
    assert (await p.bot.existing_task(1)).pledges[0].state == PledgeState.PENDING
    assert not [txn for txn in await p.bot.rows(t.LedgerTransaction)]


async def test_a_redelivered_event_changes_nothing(paying: Stripy):
    p, stripe = paying, paying.stripe
    session = await pending(p)
    paid = json.dumps(stripe.pay(session["id"])).encode()
    first = await p.post(paid)
    again = await p.post(paid)
    assert (first.status, again.status) == (200, 200)
    assert (await again.json())["status"] == "duplicate"
    await p.settle()
    assert [txn.kind for txn in await p.bot.rows(t.LedgerTransaction)] == ["pledge.held"]
    assert len([d for d in await p.bot.rows(t.Delivery) if d.forge == "stripe"]) == 1
    # A new event saying the same (a webhook and a look-up both) is no payment twice either.
    assert (await p.post(stripe.event("checkout.session.completed",
                                      stripe.sessions[session["id"]]))).status == 200
    await p.settle()
    assert [txn.kind for txn in await p.bot.rows(t.LedgerTransaction)] == ["pledge.held"]
    assert not stripe.refunds
    await p.audit()


async def test_stripe_is_off_with_the_manual_provider(db_url, github_server):
    bot = await GitHubBot.start(db_url, github_server)
    try:
        answer = await bot.client.post("/webhooks/stripe", data=b"{}")
        assert answer.status == 404 and "Stripe is off" in (await answer.json())["error"]
        await bot.label(1)
        await bot.comment("dave", "/payout-account")
        await bot.settle()
        (reply,) = [c.body for c in bot.bot_comments(1) if "bountybot:summary" not in c.body]
        assert "paid by hand" in reply
        assert await bot.rows(t.PaymentOp) == []
    finally:
        await bot.close()


# -- payments that never come, and disputes ----------------------------------------------------


async def test_an_expired_checkout_lets_the_pledge_lapse(paying: Stripy):
    p, stripe = paying, paying.stripe
    session = await pending(p)
    assert (await p.post(stripe.expire(session["id"]))).status == 200
    await p.settle()
    task = await p.bot.task(1)
    assert task is not None
    assert task.pledges[0].state == PledgeState.WITHDRAWN and task.state == TaskState.OPEN
    assert not await p.bot.rows(t.LedgerTransaction) and not stripe.refunds


async def test_a_checkout_stripe_refuses_drops_the_pledge_and_says_so(paying: Stripy):
    p, stripe = paying, paying.stripe
    stripe.fail_next("POST", r"^/v1/checkout/sessions$", 400)
    await pending(p, made=False)
    assert (await p.bot.existing_task(1)).pledges[0].state == PledgeState.WITHDRAWN
    (said,) = p.said("could not be made")
    assert "@alice" in said and "nothing was charged" in said


async def test_a_missed_payment_webhook_is_caught_by_looking_at_the_session(paying: Stripy):
    p, stripe = paying, paying.stripe
    session = await pending(p)
    stripe.pay(session["id"])  # its webhook never arrives
    await p.settle()
    assert (await p.bot.existing_task(1)).pledges[0].state == PledgeState.PENDING
    p.move(hours=1, seconds=1)
    await p.settle()
    assert (await p.bot.existing_task(1)).pledges[0].state == PledgeState.HELD
    await p.audit()


async def onboarded_quietly(p: Stripy) -> None:
    """Dave's payout is due; he asks for an account and finishes onboarding, but the webhook
    that says so never arrives."""
    await pledged(p, ("alice", "50"))
    await merged(p)
    await p.bot.comment("dave", "/payout-account")
    await p.settle()
    (account,) = p.stripe.accounts
    p.stripe.complete_onboarding(account)


async def test_a_missed_account_webhook_is_caught_by_looking_at_the_account(paying: Stripy):
    p, stripe = paying, paying.stripe
    await onboarded_quietly(p)
    await p.settle()
    assert not stripe.transfers
    p.move(hours=1, seconds=1)
    await p.settle()
    (transfer,) = stripe.transfers.values()
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PAID and payout.reference == transfer["id"]
    await p.audit()


async def test_asking_again_for_a_ready_account_says_so_and_sends_what_waits(paying: Stripy):
    p, stripe = paying, paying.stripe
    await onboarded_quietly(p)  # Dave asks again instead
    await p.bot.comment("Dave", "/payout-account")
    await p.settle()
    (ready,) = p.said("your payout account is ready")
    assert "@Dave" in ready
    assert len(stripe.accounts) == 1 and len(stripe.transfers) == 1
    await p.audit()


async def test_a_disputed_payment_is_on_the_record_and_on_the_issue(paying: Stripy):
    p, stripe = paying, paying.stripe
    (session,) = await pledged(p, ("alice", "50"))
    intent = stripe.sessions[session["id"]]["payment_intent"]
    dispute = {"id": "dp_1Fk000001", "object": "dispute", "amount": 5000, "currency": "eur",
               "payment_intent": intent, "reason": "fraudulent", "status": "needs_response"}
    assert (await p.post(stripe.event("charge.dispute.created", dispute))).status == 200
    await p.settle()
    (said,) = p.said("disputed with their bank")
    assert "@alice" in said and "fraudulent" in said
    trail = [e.action for e in await p.bot.rows(t.AuditEvent)]
    assert "pledge.payment_disputed" in trail
    assert (await p.bot.existing_task(1)).pledges[0].state == PledgeState.HELD
