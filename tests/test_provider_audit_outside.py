"""`bountybot audit --provider` against what happens to a payment outside the bot: a refund made
in Stripe's dashboard (in full or in part) and a chargeback, on a pledge the books still count
as held or paid out; and a clean audit that asks Stripe a bounded number of questions. Through
the real app, the local fake GitHub and the local fake Stripe, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections import Counter

from test_payment_ops_cli import paying, run  # noqa: F401
from test_stripe_flow import Stripy, merged, onboarded, pledged

from bountybot.payments.provider_audit import ProviderReport, audit_provider
from bountybot.resources import SESSIONMAKER
from bountybot.rules import Pledge
from bountybot.states import PayoutState, PledgeState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from fakes.stripe import FakeStripe, stripe_server  # noqa: F401
from github_harness import MAINTAINER

STRIPE_ID = re.compile(r"/(?:cs_test|pi|ch|re|dp|tr|acct)_\w+$")


async def pledges(p: Stripy) -> dict[str, Pledge]:
    """The task's pledges by backer."""
    return {pl.backer: pl for pl in (await p.bot.existing_task(1)).pledges}


def intent(p: Stripy, pledge: Pledge) -> str:
    """The payment intent that paid a pledge."""
    (session,) = [s for s in p.stripe.sessions.values()
                  if s["metadata"]["pledge_id"] == str(pledge.id)]
    return str(session["payment_intent"])


async def audited(p: Stripy) -> tuple[ProviderReport, Counter[tuple[str, str]]]:
    """The books audited (they must be right), then compared with Stripe: the report, and the
    requests that comparison made, by method and path (ids as `{id}`)."""
    books = await run_audit(p.bot.app[SESSIONMAKER])
    assert books.ok, books.render()
    before = len(p.stripe.requests)
    report = await audit_provider(p.bot.app[SESSIONMAKER], p.gateway)
    asked = Counter((r.method, STRIPE_ID.sub("/{id}", r.path))
                    for r in p.stripe.requests[before:])
    return report, asked


async def test_a_held_pledge_refunded_in_the_dashboard_fails_the_provider_audit(
        paying: Stripy, capsys):  # noqa: F811
    p, stripe = paying, paying.stripe
    await pledged(p, ("alice", "30"), ("bob", "20.50"))
    alice, bob = (await pledges(p))["alice"], (await pledges(p))["bob"]
    assert alice.state == bob.state == PledgeState.HELD

    # An operator refunds Alice in Stripe's dashboard; the webhook says so, the books stay.
    assert (await p.post(stripe.refund_in_dashboard(intent(p, alice)))).status == 200
    await p.settle()
    (trail,) = [e for e in await p.bot.rows(t.AuditEvent) if e.action == "stripe.refund"]
    assert trail.detail == {"pledge": alice.id, "status": "succeeded", "requested": False}
    assert (await pledges(p))["alice"].state == PledgeState.HELD

    report, _ = await audited(p)
    (line,) = report.problems
    assert line == (f"pledge {alice.id} (@alice, 3000 EUR) is held but Stripe refunded 3000 EUR"
                    f" of its payment {intent(p, alice)} (in full); the books have no refund"
                    " of it (made outside bountybot?)")

    # The command line: the books are fine, Stripe's records are not, exit 1.
    capsys.readouterr()
    assert await run("audit", "--provider") == 1
    out = capsys.readouterr().out
    assert "1 difference(s)" in out and f"  - {line}" in out
    assert await run("audit") == 0


async def test_a_paid_out_pledge_refunded_in_part_is_reported(paying: Stripy):  # noqa: F811
    p, stripe = paying, paying.stripe
    await pledged(p, ("alice", "50"))
    await merged(p)
    await onboarded(p)
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PAID
    alice = (await pledges(p))["alice"]
    assert alice.state == PledgeState.PAID_OUT

    stripe.refund_in_dashboard(intent(p, alice), 1500)  # its webhook never arrives
    report, _ = await audited(p)
    (line,) = report.problems
    assert line.startswith(f"pledge {alice.id} (@alice, 5000 EUR) is paid_out but Stripe"
                           " refunded 1500 EUR of its payment")
    assert "(in part)" in line


async def test_a_chargeback_is_reported_with_its_status_until_the_bank_decides(
        paying: Stripy):  # noqa: F811
    p, stripe = paying, paying.stripe
    await pledged(p, ("alice", "30"), ("bob", "20.50"), ("carol", "5"))
    backers = await pledges(p)
    alice, bob = backers["alice"], backers["bob"]
    disputed = stripe.dispute(intent(p, alice))
    assert (await p.post(disputed)).status == 200
    await p.settle()
    assert "pledge.payment_disputed" in [e.action for e in await p.bot.rows(t.AuditEvent)]
    won = stripe.dispute(intent(p, bob), reason="product_not_received")["data"]["object"]
    stripe.close_dispute(won["id"], "won")

    report, asked = await audited(p)
    dispute = disputed["data"]["object"]["id"]
    assert report.problems == [
        f"pledge {alice.id} (@alice, 3000 EUR) is held but its payment {intent(p, alice)} is"
        f" disputed: {dispute}, 3000 EUR, fraudulent, needs_response (Stripe holds the amount"
        " until the bank decides)",
    ]
    # A dispute won took no money: worth a note, no difference.
    assert report.notes == [
        f"pledge {bob.id} (@bob, 2050 EUR) is held but its payment {intent(p, bob)} is"
        f" disputed: {won['id']}, 2050 EUR, product_not_received, won (the money came back to"
        " us)",
    ]
    assert asked[("GET", "/v1/disputes")] == 2  # asked for the two disputed payments only

    stripe.close_dispute(dispute, "lost")
    report, _ = await audited(p)
    assert report.problems[0].endswith(
        "fraudulent, lost (the backer's bank took the money back)")
    assert (await pledges(p))["alice"].state == PledgeState.HELD  # the books never moved


async def test_clean_books_pass_and_the_audit_asks_stripe_a_bounded_number_of_times(
        paying: Stripy):  # noqa: F811
    p = paying
    await pledged(p, ("alice", "30"), ("bob", "20.50"), ("carol", "5"))
    await p.bot.comment("carol", "/withdraw")  # refunded by the bot, in full
    await p.settle()
    await merged(p)
    await onboarded(p)
    states = {backer: pl.state for backer, pl in (await pledges(p)).items()}
    assert states == {"alice": PledgeState.PAID_OUT, "bob": PledgeState.PAID_OUT,
                      "carol": PledgeState.WITHDRAWN}

    before = len(p.stripe.requests)
    report, asked = await audited(p)
    assert report.ok, report.render()
    # Per pledge: its checkout session, and its payment (with the charge expanded) when the
    # books count the money, or its refund when they gave it back; per payout: its transfers.
    # A dispute list is asked for only for a disputed payment; nothing is written.
    assert asked == Counter({("GET", "/v1/checkout/sessions/{id}"): 3,
                             ("GET", "/v1/payment_intents/{id}"): 2,
                             ("GET", "/v1/refunds/{id}"): 1,
                             ("GET", "/v1/transfers"): 1})
    for request in p.stripe.requests[before:]:
        if request.path.startswith("/v1/payment_intents/"):
            assert request.json == {"expand": ["latest_charge"]}
    assert await run("audit", "--provider") == 0


async def test_a_refund_the_bot_made_is_not_a_refund_from_outside(paying: Stripy):  # noqa: F811
    p = paying
    await pledged(p, ("alice", "50"))
    await p.bot.comment(MAINTAINER, "/cancel")
    await p.settle()
    assert (await pledges(p))["alice"].state == PledgeState.REFUNDED
    report, asked = await audited(p)
    assert report.ok, report.render()
    assert ("GET", "/v1/payment_intents/{id}") not in asked


async def test_a_payment_stripe_cannot_tell_about_is_a_difference(paying: Stripy):  # noqa: F811
    p = paying
    await pledged(p, ("alice", "50"))
    alice = (await pledges(p))["alice"]
    p.stripe.fail_next("GET", r"^/v1/payment_intents/", 500)
    report, _ = await audited(p)
    (line,) = report.problems
    assert line.startswith(f"pledge {alice.id}: Stripe could not be asked: Stripe payment"
                           " lookup failed")
