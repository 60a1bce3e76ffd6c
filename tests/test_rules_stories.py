"""Whole bounties told as stories through the rules, with the books audited at each end."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from bountybot.money import Money
from bountybot.providers.manual import ManualProvider
from bountybot.rules import (
    IssueClosed,
    LabelAbsent,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
    PayoutPaid,
    PledgeConfirmed,
    Policy,
    Refused,
    Tick,
)
from bountybot.states import ClaimState, LinkState, PayoutState, PledgeState, TaskState

from memory_books import Story, notices, reacted, replies


def eur(value: str) -> Money:
    units, _, cents = value.partition(".")
    return Money(int(units) * 100 + int((cents + "00")[:2]), "EUR")


def started(goal: str | None = "100", **policy: object) -> Story:
    story = Story(Policy(**policy))  # type: ignore[arg-type]
    story.event(LabelAdded())
    if goal:
        story.say("maya", f"/goal {goal}")
    return story


def test_label_opens_a_task_and_goal_sets_it():
    story = Story()
    d = story.event(LabelAdded())
    assert d.created and story.task.state == TaskState.OPEN and story.task.goal is None
    d = story.say("maya", "/goal 110.50")
    assert reacted(d) and not replies(d)
    assert story.task.goal == eur("110.50")
    assert any(m.kind == "summary" for m in d.messages)


def test_goal_creates_the_task_when_the_issue_has_no_label():
    story = Story()
    d = story.say("maya", "/bounty 50")
    assert d.created and story.task.goal == eur("50")


def test_a_non_maintainer_cannot_set_the_goal():
    story = started()
    d = story.say("mallory", "/goal 1")
    assert story.task.goal == eur("100")
    assert not reacted(d)
    assert "maintainer" in replies(d)[0]


def test_the_happy_path_alice_bob_carol_fund_dev_is_paid():
    """alice pledges 60, bob 50.50, carol is paid 110.50, the escrow is empty."""
    story = started("110.50")
    story.say("alice", "/pledge 60")
    assert story.task.state == TaskState.OPEN
    story.say("bob", "/pledge 50,50 €")
    assert story.task.state == TaskState.FUNDED
    assert story.books.balance(f"escrow:task:{story.task.id}") == 11050
    story.say("carol", "/claim")
    assert story.task.state == TaskState.CLAIMED
    d = story.say("dave", "/claim")
    assert reacted(d) and story.task.waiting == ["dave"]
    d = story.say("alice", "/withdraw")
    assert "locked" in replies(d)[0] and story.task.held() == eur("110.50")
    story.event(LinkOpened(12, "carol"))
    assert story.task.state == TaskState.IN_REVIEW
    assert story.task.live_claim().state == ClaimState.IN_REVIEW
    story.event(LinkClosed(12, "carol", merged=True))
    task = story.task
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount, p.state) for p in task.payouts] == [
        ("carol", eur("110.50"), PayoutState.PENDING)]
    assert all(p.state == PledgeState.PAID_OUT for p in task.pledges)
    assert task.waiting == []
    assert story.books.balance(f"escrow:task:{task.id}") == 0
    assert story.books.balance("developer:github:carol") == 11050
    story.event(PayoutPaid(task.payouts[0].id, "SEPA 2026-11-30"))
    assert story.task.payouts[0].state == PayoutState.PAID
    assert story.books.balance("developer:github:carol") == 0
    assert story.books.balance("external") == 11050
    assert story.books.balance("backer:github:alice") == -6000
    report = story.books.audit()
    assert report.ok, report.render()


def test_a_payout_is_never_marked_paid_twice():
    story = started("10")
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    story.event(LinkClosed(3, "carol", merged=True))
    payout_id = story.task.payouts[0].id
    story.event(PayoutPaid(payout_id, "ref-1"))
    with pytest.raises(Refused):
        story.event(PayoutPaid(payout_id, "ref-2"))
    assert story.books.balance("external") == 1000
    assert story.books.audit().ok


def test_a_task_without_goal_is_funded_by_its_first_held_pledge():
    story = started(goal=None)
    story.say("alice", "/pledge 5")
    assert story.task.state == TaskState.FUNDED
    story.say("alice", "/withdraw")
    assert story.task.state == TaskState.OPEN
    assert story.books.audit().ok


def test_pledges_raise_and_withdraw_returns_everything_before_a_claim():
    story = started("100")
    story.say("alice", "/pledge 30")
    story.say("alice", "/pledge 20")
    assert story.task.backer_total("alice", frozenset({PledgeState.HELD})) == eur("50")
    story.say("bob", "/pledge 60")
    assert story.task.state == TaskState.FUNDED
    d = story.say("alice", "/withdraw")
    assert reacted(d)
    assert story.task.state == TaskState.OPEN
    assert story.books.balance("backer:github:alice") == 0
    assert story.task.held() == eur("60")
    d = story.say("alice", "/withdraw")
    assert "no pledge" in replies(d)[0]
    assert story.books.audit().ok


def test_waiting_list_moves_up_when_the_claimant_lets_go():
    story = started("10")
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    story.say("dave", "/claim")
    story.say("erin", "/claim")
    d = story.say("dave", "/claim")
    assert "number 1" in replies(d)[0]
    d = story.say("carol", "/unclaim")
    assert story.task.live_claim().developer == "dave"
    assert story.task.waiting == ["erin"]
    assert any("@dave" in n for n in notices(d))
    assert [c.state for c in story.task.claims] == [ClaimState.RELEASED, ClaimState.ACTIVE]
    # a maintainer revokes dave's claim; erin is next; then erin leaves and the task is free
    story.say("maya", "/unclaim @dave")
    assert story.task.claims[1].state == ClaimState.REVOKED
    assert story.task.live_claim().developer == "erin"
    story.say("erin", "/unclaim")
    assert story.task.state == TaskState.FUNDED and story.task.live_claim() is None


def test_only_the_claimant_or_a_maintainer_can_unclaim_someone():
    story = started("10")
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    d = story.say("mallory", "/unclaim @carol")
    assert story.task.live_claim().developer == "carol" and replies(d)


def test_a_task_below_its_goal_cannot_be_claimed():
    story = started("100")
    story.say("alice", "/pledge 10")
    d = story.say("carol", "/claim")
    assert story.task.state == TaskState.OPEN and "not funded" in replies(d)[0]


def test_cancel_refunds_every_held_pledge():
    story = started("100")
    story.say("alice", "/pledge 10")
    story.say("bob", "/pledge 15")
    d = story.say("maya", "/cancel")
    assert story.task.state == TaskState.CANCELLED
    assert {p.state for p in story.task.pledges} == {PledgeState.REFUNDED}
    assert story.books.balance(f"escrow:task:{story.task.id}") == 0
    assert story.books.balance("backer:github:bob") == 0
    assert notices(d)
    d = story.say("alice", "/pledge 5")
    assert replies(d) and story.task.held().minor == 0
    assert story.books.audit().ok


def test_cancel_is_refused_while_someone_works_on_the_task():
    story = started("10")
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    d = story.say("maya", "/cancel")
    assert story.task.state == TaskState.CLAIMED and "/unclaim @carol" in replies(d)[0]
    story.event(LabelRemoved())
    assert story.task.state == TaskState.CLAIMED


def test_issue_closed_as_not_planned_and_label_removed_refund():
    for event in (IssueClosed(not_planned=True), LabelRemoved()):
        story = started("100")
        story.say("alice", "/pledge 40")
        story.event(event)
        assert story.task.state == TaskState.CANCELLED
        assert story.task.pledges[0].state == PledgeState.REFUNDED
        assert story.books.audit().ok


def test_labels_without_ours_cancel_only_a_task_that_carried_the_label():
    # Forgejo sends an issue's labels, not the change: `LabelAbsent` after the label was on is
    # a removal, and refunds.
    story = started("100")
    assert story.task.labelled
    story.say("alice", "/pledge 40")
    story.event(LabelAbsent())
    assert story.task.state == TaskState.CANCELLED
    assert story.task.pledges[0].state == PledgeState.REFUNDED
    assert story.books.audit().ok
    # A task `/goal` opened on an unlabelled issue stays funded when another label is added.
    story = Story()
    story.say("maya", "/goal 100")
    story.say("alice", "/pledge 40")
    assert not story.task.labelled
    d = story.event(LabelAbsent())
    assert story.task.state == TaskState.OPEN and not d.changed
    assert story.task.pledges[0].state == PledgeState.HELD
    # ...until the label comes, which the task remembers; then its removal cancels.
    d = story.event(LabelAdded())
    assert story.task.labelled and d.changed
    assert story.event(LabelAdded()).changed is False  # said once
    story.event(LabelAbsent())
    assert story.task.state == TaskState.CANCELLED


def test_deadline_all_or_nothing():
    story = started("100")
    story.say("maya", "/deadline 2026-12-01")
    assert story.task.deadline == date(2026, 12, 1)
    story.say("alice", "/pledge 40")
    story.wait(7)  # 2026-11-30: still time
    story.event(Tick())
    assert story.task.state == TaskState.OPEN
    story.wait(2)  # 2026-12-02: the deadline day is over
    d = story.event(Tick())
    assert story.task.state == TaskState.EXPIRED
    assert story.task.pledges[0].state == PledgeState.REFUNDED
    assert "expired" in notices(d)[0]
    assert story.books.audit().ok


def test_a_deadline_passed_when_funded_changes_nothing():
    story = started("10")
    story.say("maya", "/deadline 2026-11-25")
    story.say("alice", "/pledge 10")
    story.wait(10)
    story.event(Tick())
    assert story.task.state == TaskState.FUNDED


def test_a_deadline_in_the_past_is_refused():
    story = started("10")
    d = story.say("maya", "/deadline 2026-11-23")
    assert story.task.deadline is None and "future" in replies(d)[0]


def test_a_claim_expires_without_a_link_and_the_next_in_line_gets_it():
    story = started("10", claim_days=14)
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    story.say("dave", "/claim")
    story.wait(13)
    story.event(Tick())
    assert story.task.live_claim().developer == "carol"
    story.wait(1.5)
    d = story.event(Tick())
    assert story.task.claims[0].state == ClaimState.EXPIRED
    assert story.task.live_claim().developer == "dave"
    assert any("expired" in n for n in notices(d))


def test_the_clock_stops_in_review_and_runs_again_when_the_link_closes():
    story = started("10", claim_days=14)
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    story.wait(10)
    story.event(LinkOpened(5, "carol"))
    story.wait(30)
    story.event(Tick())
    assert story.task.live_claim().state == ClaimState.IN_REVIEW
    story.event(LinkClosed(5, "carol", merged=False))
    claim = story.task.live_claim()
    assert claim.state == ClaimState.ACTIVE and story.task.state == TaskState.CLAIMED
    assert story.task.link(5).state == LinkState.CLOSED
    assert (claim.expires_at - story.now).days == 4
    assert story.task.pledges[0].state == PledgeState.HELD


def test_a_merge_by_someone_else_asks_a_maintainer_to_award():
    story = started("100")
    story.say("alice", "/pledge 100")
    story.say("carol", "/claim")
    d = story.event(LinkClosed(9, "frank", merged=True))
    assert story.task.state == TaskState.CLAIMED and "/award @frank" in notices(d)[0]
    d = story.say("mallory", "/award @mallory")
    assert story.task.state == TaskState.CLAIMED and replies(d)
    story.say("maya", "/award @frank 60% @carol 40%")
    task = story.task
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor) for p in task.payouts] == [
        ("frank", 6000), ("carol", 4000)]
    assert task.claims[0].state == ClaimState.DONE
    assert story.books.audit().ok


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("/award @frank 30 @carol", [("frank", 3000), ("carol", 7000)]),
        ("/award @frank €70 @carol 30 EUR", [("frank", 7000), ("carol", 3000)]),
        ("/award @a 33.33% @b 33.33% @c 33.34%", [("a", 3333), ("b", 3333), ("c", 3334)]),
        ("/award @frank", [("frank", 10000)]),
    ],
)
def test_award_splits_add_up_to_the_escrow(command, expected):
    story = started("100")
    story.say("alice", "/pledge 100")
    story.say("maya", command)
    assert [(p.developer, p.amount.minor) for p in story.task.payouts] == expected
    assert story.books.audit().ok


@pytest.mark.parametrize(
    "command", ["/award @frank 30 @carol 30", "/award @frank 60% @carol 30%",
                "/award @frank 150 @carol"],
)
def test_award_splits_that_do_not_add_up_are_refused(command):
    story = started("100")
    story.say("alice", "/pledge 100")
    d = story.say("maya", command)
    assert story.task.state == TaskState.FUNDED and not story.task.payouts
    assert replies(d) and not reacted(d)


def test_the_fee_is_taken_once_at_payout_and_shown():
    story = started("100", fee_bp=250)
    story.say("alice", "/pledge 100")
    story.say("carol", "/claim")
    story.event(LinkClosed(2, "carol", merged=True))
    assert story.task.payouts[0].amount == eur("97.50")
    assert story.books.balance("fees") == 250
    assert story.books.audit().ok


def test_manual_confirm_keeps_pledges_pending_until_confirmed():
    story = started("10", provider=ManualProvider(confirm=True))
    story.say("alice", "/pledge 10")
    pledge = story.task.pledges[0]
    assert pledge.state == PledgeState.PENDING and story.task.state == TaskState.OPEN
    assert story.books.journal == []
    story.event(PledgeConfirmed(pledge.id), actor="maya")
    assert story.task.pledges[0].state == PledgeState.HELD
    assert story.task.state == TaskState.FUNDED
    assert story.books.audit().ok


def test_the_bot_never_reads_its_own_comments_nor_other_bots():
    story = started("10")
    for login in ("bountybot", "BountyBot", "dependabot[bot]"):
        d = story.say(login, "/pledge 10")
        assert d.messages == [] and d.postings == []
    assert story.task.held().minor == 0


def test_several_commands_one_reaction_and_one_reply():
    story = started("100")
    d = story.say("alice", "/pledge 10\n/claim\n/status\nthanks!\n/pledge -5")
    assert story.task.held() == eur("10")
    assert [m.kind for m in d.messages].count("reaction") == 1
    assert len(replies(d)) == 1
    text = replies(d)[0]
    assert "not funded" in text and "**State:**" in text


def test_replies_speak_french_for_a_french_repo():
    story = started("100", locale="fr")
    d = story.say("mallory", "/goal 5")
    assert "mainteneur" in replies(d)[0]
    d = story.say("alice", "/status")
    assert "ouverte" in replies(d)[0]


def test_commands_on_an_issue_without_a_bounty_explain_how_to_start_one():
    story = Story()
    d = story.say("alice", "/pledge 10")
    assert d.bounty is None and "/goal" in replies(d)[0]


def test_events_on_an_issue_without_a_task_change_nothing():
    story = Story()
    d = story.event(LinkOpened(1, "carol"))
    assert d.bounty is None and d.messages == []


def test_the_policy_follows_the_settings():
    from bountybot.config import Settings
    from bountybot.rules.policy import policy_from_settings

    settings = Settings.model_validate({
        "bot": {"currency": "JPY", "min_pledge": "100", "max_pledge": "50000",
                "fee_percent": "2.5", "claim_days": 3, "locale": "fr"},
        "payments": {"manual_confirm": True},
    })
    policy = policy_from_settings(settings)
    assert (policy.currency, policy.min_pledge, policy.max_pledge) == ("JPY", 100, 50000)
    assert (policy.fee_bp, policy.claim_days, policy.locale) == (250, 3, "fr")
    assert policy.provider.start_pledge("a", 100, "JPY").state == PledgeState.PENDING
    assert policy_from_settings(settings, locale="en").locale == "en"
    story = Story(policy)
    story.event(LabelAdded())
    d = story.say("alice", "/pledge 50")
    assert story.task.pledges == [] and replies(d)


def test_deciding_never_changes_the_bounty_it_was_given():
    from bountybot.rules import Comment, LinkClosed, decide_comment, decide_event

    story = started("10")
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    task = story.task
    before = repr(task)
    decide_comment(task, story.issue, Comment("c1", story.actor("maya"),
                                              "/pledge 5\n/unclaim @carol\n/cancel"),
                   story.policy, story.now)
    decide_event(task, story.issue, LinkClosed(1, "carol", merged=True), story.policy, story.now)
    assert repr(task) == before


# The day every date below falls on: the story starts 2026-11-23 09:00 UTC, claims last 14 days.
DAYS = {"en": ("December 7, 2026", "December 21, 2026"),
        "fr": ("7 décembre 2026", "21 décembre 2026")}


@pytest.mark.parametrize("locale", ["en", "fr"])
def test_replies_write_their_dates_for_the_repos_language(locale):
    """Claims, reminders, payouts and deadlines read "December 7, 2026" / "7 décembre 2026",
    never an ISO date, in replies as in notices."""
    from babel.dates import format_date

    day, later = DAYS[locale]
    story = started("10", claim_days=14, locale=locale, release_after_days=14)
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    story.say("dave", "/claim")
    (already,) = replies(story.say("carol", "/claim"))
    assert day in already and "2026-12-07" not in already
    assert ("until " + day) in already if locale == "en" else ("jusqu'au " + day) in already

    story.wait(7.5)  # half of the claim's time: one reminder, with the day it ends
    (reminder,) = notices(story.event(Tick()))
    assert day in reminder and "UTC" not in reminder and "2026-12" not in reminder

    story.wait(7)  # carol's claim expires on 2026-12-07 09:00; dave is promoted until 12-21
    promoted = [n for n in notices(story.event(Tick())) if "@dave" in n]
    assert len(promoted) == 1 and later in promoted[0] and "2026-12-21" not in promoted[0]

    story.event(LinkOpened(5, "dave"))
    (in_review,) = replies(story.say("dave", "/claim"))
    assert "@dave" in in_review and "2026" not in in_review  # in review: no end day to give
    story.event(LinkClosed(5, "dave", merged=True))
    payout = story.task.payouts[0]
    with pytest.raises(Refused) as refused:
        story.event(PayoutPaid(payout.id, "SEPA-1"))
    due = refused.value.message(locale)
    assert format_date(payout.due_at.date(), "long", locale=locale) in due
    assert payout.due_at.strftime("%Y-%m-%d") not in due


@pytest.mark.parametrize("locale", ["en", "fr"])
def test_an_expired_deadline_is_written_for_the_repos_language(locale):
    from babel.dates import format_date

    story = started("100", locale=locale)
    story.say("maya", "/deadline 2026-12-01")
    story.say("alice", "/pledge 40")
    story.wait(9)
    (said,) = notices(story.event(Tick()))
    assert format_date(date(2026, 12, 1), "long", locale=locale) in said
    assert "2026-12-01" not in said


def test_the_fee_is_rounded_down_to_the_cent():
    """2.5 % of €9.99 is 24.975 cents: the fee is 24, the developer gets 975, nothing is lost."""
    story = started("9.99", fee_bp=250)
    story.say("alice", "/pledge 9.99")
    story.say("carol", "/claim")
    story.event(LinkClosed(2, "carol", merged=True))
    assert story.task.payouts[0].amount == eur("9.75")
    assert story.books.balance("fees") == 24
    assert story.books.audit().ok


def test_a_claim_expires_at_the_very_instant_its_time_is_up():
    story = started("10", claim_days=14)
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    expires = story.task.live_claim().expires_at
    story.now = expires - timedelta(microseconds=1)
    story.event(Tick())
    assert story.task.live_claim().state == ClaimState.ACTIVE
    story.now = expires
    d = story.event(Tick())
    assert story.task.claims[0].state == ClaimState.EXPIRED
    assert story.task.state == TaskState.FUNDED
    assert ("task.funded", {"from": "claimed", "why": "claim expired"}) in [
        (t.action, t.detail) for t in d.trail]
    assert notices(d) == ["The claim of @carol has expired: no pull request came within 14 days."]


@pytest.mark.parametrize(
    ("locale", "reply"),
    [
        ("en", "This task has not reached its goal (€40.00 of €100.00): lower the goal with"
               " `/goal 40.00` first, or `/cancel` to refund the backers."),
        ("fr", "Cette tâche n'a pas atteint son objectif (40,00\u00a0€ sur 100,00\u00a0€)\u202f:"
               " baissez d'abord l'objectif avec `/goal 40.00`, ou `/cancel` pour rembourser"
               " les donateurs."),
    ],
)
def test_award_on_an_unfunded_task_is_refused_with_a_reply(locale, reply):
    story = started("100", locale=locale)
    story.say("alice", "/pledge 40")
    d = story.say("maya", "/award @carol")
    assert replies(d) == [reply]
    assert story.task.state == TaskState.OPEN and not story.task.payouts
    assert story.task.pledges[0].state == PledgeState.HELD
    assert story.books.audit().ok
