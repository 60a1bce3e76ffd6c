"""The rules with a provider that moves the money (Stripe): what they ask it to do (checkouts,
refunds, onboarding links) and what they make of its answers (a payment that never came, a
disputed payment, a payout waiting for its developer's account). Pure: no database, no Stripe."""

from __future__ import annotations

from bountybot.providers.base import PaymentKind
from bountybot.providers.stripe import StripeProvider
from bountybot.rules import (
    Decision,
    LabelAdded,
    LinkClosed,
    PaymentDisputed,
    PayoutAwaitingAccount,
    PayoutPaid,
    PledgeConfirmed,
    PledgeLapsed,
    Policy,
    Tick,
)
from bountybot.states import PayoutState, PledgeState, TaskState

from memory_books import Story, notices, reacted, replies


def stripe_story(goal: str = "50", **policy: object) -> Story:
    story = Story(Policy(provider=StripeProvider(), **policy))  # type: ignore[arg-type]
    story.event(LabelAdded())
    story.say("maya", f"/goal {goal}")
    return story


def asks(decision: Decision) -> list[tuple[PaymentKind, object]]:
    return [(r.kind, r.ref) for r in decision.payments]


def paid(story: Story, backer: str, amount: str) -> None:
    """`backer` pledges and pays on the checkout page."""
    d = story.say(backer, f"/pledge {amount}")
    (pledge,) = [ref for kind, ref in asks(d) if kind == PaymentKind.CHECKOUT]
    story.event(PledgeConfirmed(pledge.id, "pi_test"))  # type: ignore[attr-defined]


def test_a_pledge_waits_for_its_payment_and_asks_for_a_checkout():
    story = stripe_story()
    d = story.say("alice", "/pledge 50")
    (pledge,) = story.task.pledges
    assert pledge.state == PledgeState.PENDING and not d.postings
    assert asks(d) == [(PaymentKind.CHECKOUT, pledge)]
    assert d.payments[0].comment_id == pledge.comment_id
    assert reacted(d) and not replies(d)  # the link is replied once Stripe made it
    story.event(PledgeConfirmed(pledge.id))  # type: ignore[arg-type]
    assert story.task.state == TaskState.FUNDED
    assert story.books.balance(f"escrow:task:{story.task.id}") == 5000


def test_held_money_goes_back_through_the_provider_and_pending_money_never_came():
    story = stripe_story()
    paid(story, "alice", "30")
    story.say("bob", "/pledge 20")  # never paid
    d = story.say("maya", "/cancel")
    alice, bob = story.task.pledges
    assert (alice.state, bob.state) == (PledgeState.REFUNDED, PledgeState.WITHDRAWN)
    assert asks(d) == [(PaymentKind.REFUND, alice)]
    d = story.say("carol", "/pledge 5")
    assert not d.payments  # the task is over: no checkout for a refused pledge


def test_a_withdrawal_of_paid_money_is_refunded():
    story = stripe_story()
    paid(story, "alice", "30")
    d = story.say("alice", "/withdraw")
    assert asks(d) == [(PaymentKind.REFUND, story.task.pledges[0])]
    assert [p.kind for p in d.postings] == ["pledge.withdrawn"]


def test_a_dispute_decided_by_cancel_refunds_the_paid_out_pledges():
    story = stripe_story(release_after_days=3)
    paid(story, "alice", "50")
    story.say("dave", "/claim")
    story.event(LinkClosed(5, "dave", merged=True))
    story.say("alice", "/dispute it does not work")
    d = story.say("maya", "/cancel")
    assert story.task.state == TaskState.CANCELLED
    assert asks(d) == [(PaymentKind.REFUND, story.task.pledges[0])]
    assert story.books.audit().ok


def test_a_refused_command_keeps_the_requests_of_those_before_it():
    story = stripe_story()
    d = story.say("alice", "/pledge 10\n/claim")  # the claim is refused: not funded
    (pledge,) = story.task.pledges
    assert asks(d) == [(PaymentKind.CHECKOUT, pledge)]
    assert d.payments[0].ref is pledge  # the pledge of the decision, given its id by storage
    assert len(replies(d)) == 1


def test_a_payment_that_never_came_lets_the_pledge_lapse():
    story = stripe_story()
    story.say("alice", "/pledge 50")
    pledge_id = story.task.pledges[0].id
    assert pledge_id is not None
    d = story.event(PledgeLapsed(pledge_id, "expired"))
    assert story.task.pledges[0].state == PledgeState.WITHDRAWN
    assert not d.postings and not notices(d) and not d.payments
    story.say("bob", "/pledge 50")
    bob = story.task.pledges[1].id
    assert bob is not None
    d = story.event(PledgeLapsed(bob, "payment_unavailable", "Stripe refused it"))
    (said,) = notices(d)
    assert "@bob" in said and "Stripe refused it" in said
    assert story.event(PledgeLapsed(bob, "expired")).trail == []  # once only


def test_a_disputed_payment_is_told_and_moves_nothing():
    story = stripe_story()
    paid(story, "alice", "50")
    pledge_id = story.task.pledges[0].id
    assert pledge_id is not None
    d = story.event(PaymentDisputed(pledge_id, "fraudulent"))
    (said,) = notices(d)
    assert "@alice" in said and "€50.00" in said and "fraudulent" in said
    assert not d.postings and [i.action for i in d.trail] == ["pledge.payment_disputed"]
    assert not story.event(PaymentDisputed(999, "fraudulent")).trail


def test_a_payout_waiting_for_an_account_tells_its_developer_once_it_is_due():
    story = stripe_story()
    paid(story, "alice", "50")
    story.say("dave", "/claim")
    story.event(LinkClosed(5, "dave", merged=True))
    (payout,) = story.task.payouts
    assert payout.id is not None and payout.state == PayoutState.PENDING
    d = story.event(PayoutAwaitingAccount(payout.id))
    (said,) = notices(d)
    assert "@dave" in said and "/payout-account" in said and "€50.00" in said
    story.event(PayoutPaid(payout.id, "tr_1"))
    assert not story.event(PayoutAwaitingAccount(payout.id)).trail  # paid: nothing to say
    assert story.books.audit().ok


def test_payout_account_asks_the_provider_for_a_link_even_without_a_task():
    story = Story(Policy(provider=StripeProvider()))
    d = story.say("dave", "/payout-account")
    (request,) = d.payments
    assert (request.kind, request.login, request.ref) == (PaymentKind.ACCOUNT, "dave", None)
    assert request.comment_id is not None and reacted(d) and d.bounty is None
    story.event(Tick())


def test_payout_account_with_the_manual_provider_says_there_is_none():
    story = Story()
    d = story.say("dave", "/payout-account")
    (said,) = replies(d)
    assert "paid by hand" in said and not d.payments
