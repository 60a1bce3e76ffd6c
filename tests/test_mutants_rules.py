"""Money paths of the rules pinned down to the cent, the ledger line and the sentence: each test
here kills mutants of `make mutate` that the stories let through (tests/MUTANTS.md).

Each asserts the whole of what a step decided (the postings with their memos, the trail, the
messages), so that a changed amount, account, state or word shows."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bountybot.providers.manual import ManualProvider
from bountybot.rules import (
    Actor,
    Comment,
    Decision,
    IssueClosed,
    IssueDeleted,
    IssueRetitled,
    LabelAbsent,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
    PayoutFailed,
    PayoutPaid,
    PledgeConfirmed,
    PledgeLapsed,
    Policy,
    Refused,
    Tick,
    decide_comment,
    needs_maintainer,
)
from bountybot.rules.summary import badge_version, render_summary
from bountybot.states import ClaimState, LinkState, PayoutState, PledgeState, TaskState

from memory_books import Story, merged_story, notices, replies


def ledger(decision: Decision, task_id: int | None) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(kind, memo, entries) of each posting, as the books write them."""
    assert task_id is not None
    return [(p.kind, p.memo, tuple((a, m) for a, m, _ in p.entries(task_id)))
            for p in decision.postings]


def trail(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    return [(t.action, t.detail) for t in decision.trail]


def merged_with_fee(release_after_days: int = 3, fee_bp: int = 1000) -> Story:
    """alice 60 and bob 40 fund carol's work, merged with a 10 % fee: carol's 90 waits 3 days."""
    return merged_story(fee_bp=fee_bp, release_after_days=release_after_days)


# -- complete: the payout at the merge or the /award --------------------------------------------


def test_the_merge_posts_the_payout_with_its_memo_trail_and_dates():
    story = Story(Policy(fee_bp=1000, release_after_days=3))
    story.event(LabelAdded())
    story.say("maya", "/goal 100")
    story.say("alice", "/pledge 100")
    story.say("carol", "/claim")
    story.event(LinkOpened(12, "carol"))
    d = story.event(LinkClosed(12, "carol", merged=True))
    task = story.task
    assert ledger(d, task.id) == [("task.done", "merge", (
        (f"escrow:task:{task.id}", -10000), ("fees", 1000), ("developer:github:carol", 9000)))]
    assert ("payout.pending", {"developer": "carol", "amount": 9000}) in trail(d)
    assert ("task.done", {"from": "in_review", "why": "merge"}) in trail(d)
    payout = task.payouts[0]
    assert (payout.developer, payout.amount.minor, payout.state) == (
        "carol", 9000, PayoutState.PENDING)
    assert payout.created_at == story.now
    assert payout.due_at == story.now + timedelta(days=3) and payout.released_at is None


def test_an_award_of_one_cent_pays_it():
    """The smallest escrow there is still pays out (only an empty one has nothing to award)."""
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 0.01")
    story.say("alice", "/pledge 0.01")
    d = story.say("maya", "/award @carol")
    assert story.task.state == TaskState.DONE and replies(d) == []
    assert ledger(d, story.task.id) == [("task.done", "award", (
        (f"escrow:task:{story.task.id}", -1), ("developer:github:carol", 1)))]
    assert ("task.done", {"from": "funded", "why": "award"}) in trail(d)


def test_a_pledge_never_paid_lapses_when_the_task_is_done():
    story = Story(Policy(provider=ManualProvider(confirm=True)))
    story.event(LabelAdded())
    story.say("maya", "/goal 10")
    story.say("alice", "/pledge 10")
    alice_id = story.task.pledges[0].id
    assert alice_id is not None
    story.event(PledgeConfirmed(alice_id), actor="maya")
    story.say("bob", "/pledge 5")
    d = story.say("maya", "/award @carol")
    alice, bob = story.task.pledges
    assert (alice.state, bob.state) == (PledgeState.PAID_OUT, PledgeState.WITHDRAWN)
    assert ("pledge.withdrawn", {"backer": "bob", "amount": 500, "from": "pending"}) in trail(d)
    assert story.task.payouts[0].amount.minor == 1000
    assert story.books.audit().ok


def test_award_on_a_task_that_is_over_says_so():
    story = merged_with_fee(release_after_days=0)
    d = story.say("maya", "/award @dave")
    assert replies(d) == ["This bounty is done: there is nothing left to award."]
    assert len(story.task.payouts) == 1


# -- split: /award shares to the cent ---------------------------------------------------------


def funded(amount: str, **policy: Any) -> Story:
    story = Story(Policy(**policy))
    story.event(LabelAdded())
    story.say("maya", f"/goal {amount}")
    story.say("alice", f"/pledge {amount}")
    return story


def paid(story: Story) -> list[tuple[str, int]]:
    return [(p.developer, p.amount.minor) for p in story.task.payouts]


def test_percentages_that_make_100_give_the_rounding_cents_to_the_first_share():
    story = funded("99.99")
    story.say("maya", "/award @carol 50% @dave 50%")
    assert paid(story) == [("carol", 5000), ("dave", 4999)]
    assert story.books.audit().ok


def test_percentages_mixed_with_an_amount_are_not_rounded_into_place():
    """50 % + 50 % + €1 is more than the escrow: refused, not squeezed to fit."""
    story = funded("99.99")
    d = story.say("maya", "/award @carol 50% @dave 50% @erin 1")
    assert story.task.state == TaskState.FUNDED and not story.task.payouts
    assert replies(d) == [
        "The shares add up to €100.98 but the escrow holds €99.99 to pay out. Give amounts that"
        " add up, percentages that make 100 %, or leave one developer without an amount to give"
        " them the rest: `/award @alice 60% @bob 40%` or `/award @alice 30 @bob`."]


def test_shares_that_do_not_add_up_name_the_fee():
    story = funded("100", fee_bp=250)
    d = story.say("maya", "/award @carol 50 @dave 50")
    assert replies(d) == [
        "The shares add up to €100.00 but the escrow holds €97.50 to pay out (after the €2.50"
        " fee). Give amounts that add up, percentages that make 100 %, or leave one developer"
        " without an amount to give them the rest: `/award @alice 60% @bob 40%` or"
        " `/award @alice 30 @bob`."]


def test_the_rest_is_refused_when_nothing_is_left_and_paid_when_a_cent_is():
    story = funded("100")
    d = story.say("maya", "/award @carol 100 @dave")
    assert replies(d) == [
        "The other shares take all of the €100.00 to pay out: nothing is left for @dave."]
    assert not story.task.payouts
    story.say("maya", "/award @carol 99.99 @dave")
    assert paid(story) == [("carol", 9999), ("dave", 1)]


def test_a_disputed_award_split_gets_no_fee_note():
    """Deciding a dispute splits what the payouts held, the fee already taken: no fee named."""
    story = merged_with_fee()
    story.say("bob", "/dispute it does not work")
    d = story.say("maya", "/award @carol 50 @dave 50")
    assert replies(d) == [
        "The shares add up to €100.00 but the escrow holds €90.00 to pay out. Give amounts that"
        " add up, percentages that make 100 %, or leave one developer without an amount to give"
        " them the rest: `/award @alice 60% @bob 40%` or `/award @alice 30 @bob`."]


# -- _payee: who may be paid ------------------------------------------------------------------


@pytest.mark.parametrize(("bot_login", "named"), [
    ("bountybot", "bountybot"), ("bountybot[bot]", "BountyBot"),
])
def test_the_bot_and_other_bots_cannot_be_awarded(bot_login, named):
    story = funded("10", bot_login=bot_login)
    d = story.say("maya", f"/award @{named}")
    assert replies(d) == [f"@{named} is a bot: it cannot be awarded a bounty. Name the developers"
                          " who did the work."]
    assert not story.task.payouts


def test_a_login_the_forge_does_not_know_cannot_be_awarded():
    story = funded("10")
    comment = Comment("99", Actor("maya", is_maintainer=True), "/award @Ghost",
                      unknown_users=frozenset({"ghost"}))
    d = decide_comment(story.task, story.issue, comment, story.policy, story.now)
    assert replies(d) == ["@Ghost is no account on this forge: check the spelling of the login."]
    assert d.postings == []


def test_an_award_pays_the_login_as_the_task_knows_it():
    story = funded("10")
    story.say("Carol", "/claim")
    story.say("maya", "/award @CAROL")
    assert paid(story) == [("Carol", 1000)]


# -- disputes: decided by /award or /cancel ----------------------------------------------------


def test_a_dispute_decided_by_award_reverses_and_pays_as_said_at_once():
    story = merged_with_fee()
    story.wait(1)
    story.say("bob", "/dispute it does not work")
    d = story.say("maya", "/award @carol 50% @dave 50%")
    task = story.task
    held, carol, dave = task.payouts
    assert ledger(d, task.id) == [
        ("payout.reversed", "dispute decided", (
            ("developer:github:carol", -9000), (f"escrow:task:{task.id}", 9000))),
        ("payout.awarded", "dispute decided", (
            (f"escrow:task:{task.id}", -4500), ("developer:github:carol", 4500))),
        ("payout.awarded", "dispute decided", (
            (f"escrow:task:{task.id}", -4500), ("developer:github:dave", 4500))),
    ]
    assert [p.key() for p in d.postings] == [
        f"payout.reversed:{held.id}", f"payout.awarded:{carol.id}", f"payout.awarded:{dave.id}"]
    assert trail(d)[:4] == [
        ("payout.cancelled", {"developer": "carol", "amount": 9000, "from": "pending"}),
        ("payout.pending", {"developer": "carol", "amount": 4500}),
        ("payout.pending", {"developer": "dave", "amount": 4500}),
        ("dispute.resolved", {"decision": "award"}),
    ]
    assert notices(d) == [
        "A maintainer decided the dispute: the payouts are released (@carol €45.00, @dave"
        " €45.00)."]
    assert held.state == PayoutState.CANCELLED and task.dispute is None
    for payout in (carol, dave):
        assert (payout.state, payout.created_at, payout.due_at, payout.released_at) == (
            PayoutState.PENDING, story.now, story.now, story.now)
    assert task.state == TaskState.DONE
    assert story.books.balance("fees") == 1000
    assert story.books.audit().ok


def test_a_dispute_decided_by_cancel_gives_back_the_fee_and_every_pledge():
    story = merged_with_fee()
    story.say("bob", "/dispute it does not work")
    d = story.say("maya", "/cancel")
    task = story.task
    alice, bob = task.pledges
    escrow = f"escrow:task:{task.id}"
    assert ledger(d, task.id) == [
        ("payout.reversed", "dispute decided", (("developer:github:carol", -9000), (escrow, 9000))),
        ("fee.reversed", "dispute decided", (("fees", -1000), (escrow, 1000))),
        ("pledge.refunded", "back to alice", ((escrow, -6000), ("backer:github:alice", 6000))),
        ("pledge.refunded", "back to bob", ((escrow, -4000), ("backer:github:bob", 4000))),
    ]
    assert [p.key() for p in d.postings][1] == f"fee.reversed:{task.id}"
    assert (alice.state, bob.state, task.state) == (
        PledgeState.REFUNDED, PledgeState.REFUNDED, TaskState.CANCELLED)
    assert ("task.cancelled", {"from": "done", "why": "dispute"}) in trail(d)
    assert ("dispute.resolved", {"decision": "cancel"}) in trail(d)
    assert notices(d) == [
        "A maintainer decided the dispute: the task is cancelled and every backer is refunded."]
    assert task.dispute is None and story.books.balance("fees") == 0
    assert story.books.audit().ok


def test_a_dispute_cancelled_without_a_fee_posts_no_fee_reversal():
    story = merged_with_fee(fee_bp=0)
    story.say("bob", "/dispute it does not work")
    d = story.say("maya", "/cancel")
    assert [p.kind for p in d.postings] == [
        "payout.reversed", "pledge.refunded", "pledge.refunded"]


# -- release: the waiting period ------------------------------------------------------------


def test_payouts_are_released_at_the_very_instant_they_are_due():
    story = merged_with_fee()
    due = story.task.payouts[0].due_at
    assert due is not None
    story.now = due - timedelta(microseconds=1)
    assert story.event(Tick()).trail == [] and story.task.payouts[0].released_at is None
    story.now = due
    d = story.event(Tick())
    assert story.task.payouts[0].released_at == story.now
    assert trail(d) == [("payout.released", {"developer": "carol", "amount": 9000})]
    assert notices(d) == [
        "The waiting period is over with no dispute: the payouts are released (@carol €90.00)."]


def test_a_disputed_payout_is_not_released_when_due():
    story = merged_with_fee()
    story.say("bob", "/dispute it does not work")
    story.wait(30)
    story.event(Tick())
    assert story.task.payouts[0].released_at is None


# -- mark_paid, mark_failed: what the payment provider says ----------------------------------


def test_a_released_payout_is_paid_once_with_its_reference():
    story = merged_with_fee(release_after_days=0)
    payout_id = story.task.payouts[0].id
    assert payout_id is not None
    d = story.event(PayoutPaid(payout_id, "tr_1"))
    assert ledger(d, story.task.id) == [("payout.paid", "tr_1", (
        ("developer:github:carol", -9000), ("external", 9000)))]
    payout = story.task.payouts[0]
    assert (payout.state, payout.reference, payout.paid_at) == (
        PayoutState.PAID, "tr_1", story.now)
    with pytest.raises(Refused) as again:
        story.event(PayoutPaid(payout.id, "tr_2"))
    assert again.value.message("en") == f"Payout {payout.id} is paid: it cannot be marked paid."
    with pytest.raises(Refused) as unknown:
        story.event(PayoutPaid(999, "tr_3"))
    assert unknown.value.message("en") == "Payout 999 is unknown: it cannot be marked paid."
    assert story.books.audit().ok


def test_a_held_payout_cannot_be_paid_before_its_release():
    story = merged_with_fee()
    payout = story.task.payouts[0]
    assert payout.id is not None
    with pytest.raises(Refused) as held:
        story.event(PayoutPaid(payout.id, "tr_1"))
    assert held.value.key == "payout.not_released"
    assert held.value.params == {"payout": payout.id, "due": payout.due_at}
    assert story.task.payouts[0].state == PayoutState.PENDING


def test_a_failed_transfer_marks_the_payout_failed_once():
    story = merged_with_fee(release_after_days=0)
    payout_id = story.task.payouts[0].id
    assert payout_id is not None
    d = story.event(PayoutFailed(payout_id, "x" * 300))
    payout = story.task.payouts[0]
    assert payout.state == PayoutState.FAILED and d.postings == []
    assert trail(d) == [
        ("payout.failed", {"developer": "carol", "amount": 9000, "from": "pending"}),
        ("payout.error", {"developer": "carol", "error": "x" * 200}),
    ]
    with pytest.raises(Refused) as again:
        story.event(PayoutFailed(payout.id, "again"))
    assert again.value.message("en") == (
        f"Payout {payout.id} is failed: it cannot be marked paid.")
    with pytest.raises(Refused) as unknown:
        story.event(PayoutFailed(999, "nobody"))
    assert unknown.value.params == {"payout": 999, "state": "unknown"}



# -- pledges: escrow in and out, funding ---------------------------------------------------------


def test_pledges_cross_the_goal_both_ways_with_their_postings():
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 10")
    d = story.say("alice", "/pledge 10")
    task = story.task
    assert ledger(d, task.id) == [("pledge.held", "alice pledges", (
        ("backer:github:alice", -1000), (f"escrow:task:{task.id}", 1000)))]
    assert ("task.funded", {"from": "open", "why": "pledge"}) in trail(d)
    d = story.say("bob", "/pledge 5")
    assert story.task.state == TaskState.FUNDED
    assert not [t for t in trail(d) if t[0].startswith("task.")]
    story.say("bob", "/withdraw")
    assert story.task.state == TaskState.FUNDED
    d = story.say("alice", "/withdraw")
    assert ledger(d, task.id) == [("pledge.withdrawn", "back to alice", (
        (f"escrow:task:{task.id}", -1000), ("backer:github:alice", 1000)))]
    assert ("task.open", {"from": "funded", "why": "withdraw"}) in trail(d)
    assert story.books.audit().ok


def test_withdraw_says_why_it_cannot():
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 10")
    assert replies(story.say("bob", "/withdraw")) == [
        "@bob, you have no pledge on this bounty to withdraw."]
    story.say("alice", "/pledge 10")
    story.say("carol", "/claim")
    assert replies(story.say("alice", "/withdraw")) == [
        "@alice, pledges can no longer be withdrawn: @carol has claimed the task and the money"
        " is locked while they work."]
    story.say("maya", "/award @carol")
    assert replies(story.say("alice", "/withdraw")) == [
        "This bounty is done: there is nothing left to withdraw."]


# -- merged: what a merge pays, and what it only says ------------------------------------------


def test_a_merge_on_a_task_short_of_its_goal_pays_nobody_and_says_so():
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 100")
    story.say("alice", "/pledge 40")
    d = story.event(LinkClosed(12, "carol", merged=True, url="https://x/pull/12"))
    assert notices(d) == [
        "Pull request #12 by @carol was merged, but this task has not reached its goal (€40.00"
        " of €100.00). A maintainer can lower the goal with `/goal` and `/award` it, or `/cancel`"
        " to refund the backers."]
    assert ("link.merged", {"number": 12, "author": "carol"}) in trail(d)
    assert story.task.link(12).url == "https://x/pull/12"
    assert d.postings == [] and story.task.state == TaskState.OPEN


def test_a_merge_in_another_repo_is_shown_and_pays_nobody():
    story = funded("10")
    story.say("carol", "/claim")
    d = story.event(LinkClosed(3, "carol", merged=True, repo="carol/fork"))
    assert notices(d) == [
        "Pull request carol/fork#3 by @carol was merged in another repository and says it closes"
        " this task. A merge elsewhere pays nobody by itself: a maintainer of this repository who"
        " accepts the work pays it with `/award @carol` (or a split), or `/cancel`."]
    assert ("link.merged", {"number": 3, "author": "carol", "repo": "carol/fork"}) in trail(d)
    assert d.postings == [] and story.task.state == TaskState.CLAIMED


def test_a_merge_by_another_developer_asks_for_an_award_in_full():
    story = funded("10")
    story.say("carol", "/claim")
    d = story.event(LinkClosed(9, "frank", merged=True))
    assert notices(d) == [
        "Pull request #9 by @frank was merged and closes this task, but @frank did not hold the"
        " claim. A maintainer decides who is paid with `/award @frank` (or a split,"
        " `/award @frank 50% @other 50%`), or `/cancel`."]
    assert story.task.link(9).number == 9 and d.postings == []


def test_a_merge_read_after_the_fact_counts_only_for_a_linked_task():
    story = funded("10")
    story.say("carol", "/claim")
    d = story.event(LinkClosed(12, "carol", merged=True, only_linked=True))
    assert d.trail == [] and story.task.state == TaskState.CLAIMED
    story.event(LinkOpened(12, "carol"))
    story.event(LinkClosed(12, "carol", merged=True, only_linked=True))
    assert story.task.state == TaskState.DONE and paid(story) == [("carol", 1000)]


# -- deadlines and cancels: everyone refunded --------------------------------------------------


def test_a_deadline_runs_to_the_end_of_its_day_then_refunds_everyone():
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 100\n/deadline 2026-11-30")
    story.say("alice", "/pledge 40")
    story.now = story.now.replace(day=30, hour=23, minute=59)
    assert story.event(Tick()).postings == [] and story.task.state == TaskState.OPEN
    story.now = story.now.replace(day=1, month=12, hour=0, minute=0)
    d = story.event(Tick())
    task = story.task
    assert task.state == TaskState.EXPIRED
    assert ("task.expired", {"from": "open", "why": "deadline"}) in trail(d)
    assert ledger(d, task.id) == [("pledge.refunded", "back to alice", (
        (f"escrow:task:{task.id}", -4000), ("backer:github:alice", 4000)))]
    assert notices(d) == [
        "The funding deadline (November 30, 2026) has passed below the goal (€40.00 of €100.00):"
        " this bounty has expired and every pledge is refunded in full."]


def test_a_cancel_refunds_and_says_why_and_a_second_one_says_it_is_over():
    story = funded("10")
    d = story.say("maya", "/cancel")
    assert ("task.cancelled", {"from": "funded", "why": "/cancel"}) in trail(d)
    assert notices(d) == ["This bounty is cancelled (/cancel). Every pledge is refunded in full."]
    assert replies(story.say("maya", "/cancel")) == ["This bounty is already cancelled."]
    assert story.books.balance("backer:github:alice") == 0


# -- claims: the clock and the line --------------------------------------------------------------


def test_a_claim_starts_now_and_is_reminded_half_way():
    story = funded("10", claim_days=14)
    d = story.say("carol", "/claim")
    claim = story.task.claims[0]
    assert (claim.created_at, claim.expires_at, claim.remind_at) == (
        story.now, story.now + timedelta(days=14), story.now + timedelta(days=7))
    assert trail(d)[:2] == [("claim.active", {"developer": "carol"}),
                            ("task.claimed", {"from": "funded", "why": "claim"})]
    d = story.say("dave", "/claim")
    assert trail(d)[0] == ("waiting.joined", {"developer": "dave", "position": 1})
    assert replies(story.say("dave", "/claim")) == [
        "@dave, you are already number 1 on the waiting list."]


def test_a_promoted_claimant_with_a_pull_request_open_goes_straight_to_review():
    story = funded("10")
    story.say("carol", "/claim")
    story.say("dave", "/claim")
    story.say("erin", "/claim")
    story.event(LinkOpened(5, "frank"))
    story.event(LinkOpened(6, "dave"))
    story.event(LinkOpened(7, "erin"))
    story.event(LinkClosed(7, "erin", merged=False))
    story.say("carol", "/unclaim")
    assert story.task.state == TaskState.IN_REVIEW
    assert story.task.live_claim().developer == "dave"
    story.say("maya", "/unclaim @dave")
    claim = story.task.live_claim()
    assert (claim.developer, claim.state, story.task.state) == (
        "erin", ClaimState.ACTIVE, TaskState.CLAIMED)


def test_claims_refused_on_a_task_over_or_without_money():
    story = Story()
    story.event(LabelAdded())
    assert replies(story.say("carol", "/claim")) == [
        "Nobody has pledged to this task yet: it can be claimed once it holds money."]
    story.say("maya", "/goal 100")
    story.say("alice", "/pledge 40")
    assert replies(story.say("carol", "/claim")) == [
        "This task is not funded yet (€40.00 of €100.00): it can be claimed once it reaches its"
        " goal."]
    story.say("maya", "/cancel")
    assert replies(story.say("carol", "/claim")) == [
        "This bounty is cancelled: it can no longer be claimed."]


# -- dispute: who may, and when ------------------------------------------------------------------


def claimed_by_carol(release_after_days: int) -> Story:
    story = Story(Policy(release_after_days=release_after_days))
    story.event(LabelAdded())
    story.say("maya", "/goal 10")
    story.say("bob", "/pledge 10")
    story.say("carol", "/claim")
    return story


def test_a_dispute_is_refused_before_the_merge_to_strangers_and_twice():
    story = claimed_by_carol(3)
    assert replies(story.say("bob", "/dispute early")) == [
        "There is nothing to dispute yet: a payout can be disputed once the work is merged,"
        " before it is released."]
    story.event(LinkClosed(1, "carol", merged=True))
    assert replies(story.say("erin", "/dispute no")) == [
        "Only the backers of this task and its maintainers can dispute its payout."]
    d = story.say("bob", "/dispute " + "r" * 250)
    assert trail(d)[0] == ("task.disputed", {"reason": "r" * 200})
    assert replies(d) == [
        f'@bob disputes the payout: "{"r" * 200}". The payouts are held until a maintainer'
        " decides: `/award @dev` (or a split) to pay, or `/cancel` to refund every backer."]
    assert replies(story.say("maya", "/dispute again")) == [
        "The payout is already disputed by @bob; a maintainer decides with `/award` or"
        " `/cancel`."]


@pytest.mark.parametrize(("release_after_days", "reply"), [
    (0, "Payouts on this repository are released at the merge, so there is no time to dispute"
        " them. Ask a maintainer if something is wrong."),
    (3, "The payouts of this task were already released: they can no longer be disputed."),
])
def test_a_dispute_after_the_release_says_why(release_after_days, reply):
    story = claimed_by_carol(release_after_days)
    story.event(LinkClosed(1, "carol", merged=True))
    story.wait(release_after_days)
    story.event(Tick())
    assert replies(story.say("bob", "/dispute late")) == [reply]


# -- a refused command in a comment of several: nothing half done, the rest applied -------------


def test_a_refused_first_command_leaves_the_task_as_it_was_for_the_next():
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 100")
    d = story.say("alice", "/withdraw\n/pledge 10")
    assert replies(d) == ["@alice, you have no pledge on this bounty to withdraw."]
    assert not d.created
    assert [p.key() for p in d.postings] == [f"pledge.held:{story.task.pledges[0].id}"]
    assert story.task.held().minor == 1000 and story.books.audit().ok


def test_a_refused_command_between_two_keeps_what_came_before_it_on_the_live_task():
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 100")
    d = story.say("alice", "/pledge 10\n/award @carol\n/pledge 5")
    assert replies(d) == ["Only a maintainer of this repository can use `/award`."]
    first, second = story.task.pledges
    # The postings point at the task's live pledges (which got their ids when written).
    assert [p.ref for p in d.postings] == [first, second]
    assert [t.action for t in d.trail] == [
        "pledge.pending", "pledge.held", "command.pledge", "command.refused", "pledge.pending",
        "pledge.held", "command.pledge"]
    assert story.task.held().minor == 1500 and story.books.audit().ok


def test_a_comment_that_creates_the_task_keeps_it_when_a_later_command_is_refused():
    story = Story()
    d = story.say("maya", "/goal 10\n/claim")
    assert d.created and story.task.goal is not None and story.task.goal.minor == 1000
    assert replies(d) == [
        "This task is not funded yet (€0.00 of €10.00): it can be claimed once it reaches its"
        " goal."]


# -- what the edges ask of the core: who must be a maintainer, the badge, titles ----------------


@pytest.mark.parametrize(("author", "body", "asks"), [
    ("alice", "/pledge 5", False),
    ("alice", "/pledge 5\n/award @carol", True),
    ("carol", "/unclaim", False),
    ("carol", "/unclaim @Carol", False),
    ("carol", "/unclaim @dave", True),
    ("bountybot", "/award @carol", False),
])
def test_the_forge_is_asked_about_maintainers_only_when_it_matters(author, body, asks):
    comment = Comment("1", Actor(author), body)
    assert needs_maintainer(comment, Policy()) is asks


def test_the_summary_shows_the_badge_of_the_task_as_it_is_now():
    story = funded("10")
    page = "https://b.example/github/commons/garden/-/issues/7"
    version = badge_version(story.task)
    assert len(version) == 10
    assert f"[![bounty badge]({page}/badge.svg?v={version}&lang=en)]({page}) · [The task's page]" \
        f"({page})" in render_summary(story.task, "en", 0, "https://b.example/").split("\n")
    assert f"[![badge de la prime]({page}/badge.svg?v={version}&lang=fr)]({page})" \
        in render_summary(story.task, "fr", 0, "https://b.example")
    seen = {version}
    for step in ("/pledge 1", "/goal 12", "/goal 11", "/award @carol"):
        story.say("maya", step)
        assert badge_version(story.task) not in seen
        seen.add(badge_version(story.task))
    payout_id = story.task.payouts[0].id
    assert payout_id is not None
    story.event(PayoutPaid(payout_id, "tr_1"))
    assert badge_version(story.task) not in seen


def test_an_issue_closed_unpaid_and_retitled():
    story = funded("10")
    assert notices(story.event(IssueClosed(False))) == [
        "The issue was closed, but no merged pull request closed it: a maintainer can pay the"
        " work with `/award @developer`, or `/cancel` to refund the backers."]
    d = story.event(IssueRetitled("New " + "x" * 300))
    assert trail(d) == [("task.title", {"title": ("New " + "x" * 300)[:200]})]
    assert story.task.title == "New " + "x" * 300
    assert story.event(IssueRetitled("New " + "x" * 300)).trail == []
    assert story.event(IssueRetitled("")).trail == []


def test_the_backers_are_those_with_money_in_once_each():
    story = funded("10")
    story.say("Bob", "/pledge 3")
    story.say("alice", "/pledge 2")
    story.say("BOB", "/pledge 1")
    assert story.task.backers() == ["alice", "Bob"]


# -- the waiting line and the links --------------------------------------------------------------


def test_leaving_the_line_and_a_maintainer_revoking_a_claim():
    story = funded("10")
    story.say("carol", "/claim")
    story.say("dave", "/claim")
    story.say("erin", "/claim")
    d = story.say("dave", "/unclaim")
    assert trail(d)[0] == ("waiting.left", {"developer": "dave"})
    assert story.task.waiting == ["erin"]
    assert replies(story.say("maya", "/unclaim @frank")) == [
        "@frank holds no claim on this task and is not on its waiting list."]
    story.say("maya", "/unclaim @carol")
    assert story.task.claims[0].state == ClaimState.REVOKED
    assert story.task.live_claim().developer == "erin"
    d = story.say("erin", "/unclaim")
    assert ("task.funded", {"from": "claimed", "why": "unclaim"}) in trail(d)


def test_a_reopened_pull_request_stops_the_clock_again_and_a_merged_one_stays_merged():
    story = funded("10", claim_days=14)
    story.say("carol", "/claim")
    story.wait(4)
    story.event(LinkOpened(5, "carol"))
    story.event(LinkOpened(6, "carol"))
    story.event(LinkClosed(5, "carol", merged=False))
    assert story.task.state == TaskState.IN_REVIEW  # pull request 6 is still open
    d = story.event(LinkClosed(6, "carol", merged=False))
    claim = story.task.live_claim()
    assert ("task.claimed", {"from": "in_review", "why": "link closed"}) in trail(d)
    assert claim.expires_at == story.now + timedelta(days=10) and claim.paused_seconds is None
    d = story.event(LinkOpened(5, "carol"))
    assert trail(d)[0] == ("link.reopened", {"number": 5, "author": "carol"})
    assert story.task.link(5).state == LinkState.OPEN
    assert ("task.in_review", {"from": "claimed", "why": "link"}) in trail(d)
    assert story.task.live_claim().paused_seconds == 10 * 86400


def test_only_a_pending_pledge_of_the_task_can_be_confirmed():
    story = Story(Policy(provider=ManualProvider(confirm=True)))
    story.event(LabelAdded())
    story.say("maya", "/goal 10")
    story.say("alice", "/pledge 10")
    pledge_id = story.task.pledges[0].id
    assert pledge_id is not None
    d = story.event(PledgeConfirmed(pledge_id, "bank 42"), actor="maya")
    assert trail(d)[0] == ("pledge.confirmed", {
        "pledge": pledge_id, "backer": "alice", "amount": 1000, "reference": "bank 42"})
    assert ("task.funded", {"from": "open", "why": "confirm"}) in trail(d)
    for again in (pledge_id, 999):
        with pytest.raises(Refused) as refused:
            story.event(PledgeConfirmed(again), actor="maya")
        state = "held" if again == pledge_id else "unknown"
        assert refused.value.params == {"pledge": again, "state": state}


# -- the forge's events that end a task, and a comment with a bad line ---------------------------


@pytest.mark.parametrize(("event", "why"), [
    (LabelRemoved(), "label removed"),
    (LabelAbsent(), "label removed"),
    (IssueClosed(True), "closed as not planned"),
    (IssueDeleted(), "issue deleted"),
])
def test_the_forge_ending_a_task_refunds_it_unless_it_is_claimed(event, why):
    story = funded("10")
    d = story.event(event)
    assert story.task.state == TaskState.CANCELLED
    assert ("task.cancelled", {"from": "funded", "why": why}) in trail(d)
    assert notices(d) == [f"This bounty is cancelled ({why}). Every pledge is refunded in full."]
    story = funded("10")
    story.say("carol", "/claim")
    d = story.event(event)
    assert story.task.state == TaskState.CLAIMED and d.postings == []
    assert notices(d) == [
        "This task is claimed by @carol, so it stays open: a maintainer can release the claim"
        " with `/unclaim @carol` and then `/cancel`."]


def test_a_line_that_cannot_be_read_is_refused_and_the_next_applied():
    story = funded("10")
    d = story.say("bob", "/pledge abc\n/pledge 5")
    assert replies(d) == [
        "`abc` is not an amount bountybot can read. Write a number, with the currency or"
        " without, like `/pledge 50.50`."]
    assert trail(d)[0] == (
        "command.refused", {"line": "/pledge abc", "reason": "amount.not_a_number"})
    assert story.task.held().minor == 1500


# -- the rest of what a decision carries ---------------------------------------------------------


def test_the_policy_takes_stripe_the_label_the_login_and_the_waiting_period():
    from bountybot.config import Settings
    from bountybot.providers.stripe import StripeProvider
    from bountybot.rules.policy import policy_from_settings

    settings = Settings.model_validate({
        "bot": {"login": "paybot", "label": "funded", "release_after_days": 5},
        "payments": {"provider": "stripe"},
        "stripe": {"api_key": "sk_test_x", "webhook_secret": "whsec_x"},
        "server": {"public_url": "https://bounties.example.org"},
    })
    policy = policy_from_settings(settings)
    assert isinstance(policy.provider, StripeProvider)
    assert (policy.bot_login, policy.label, policy.release_after_days) == ("paybot", "funded", 5)


def test_reaction_and_reply_answer_the_comment_and_its_revision():
    story = funded("10")
    comment = Comment("c7", Actor("bob"), "/pledge 1\n/withdraw now please", revision="r2")
    d = decide_comment(story.task, story.issue, comment, story.policy, story.now)
    answers = [(m.kind, m.comment_id, m.revision) for m in d.messages if m.kind != "summary"]
    assert answers == [("reaction", "c7", "r2"), ("reply", "c7", "r2")]


def test_an_event_is_written_in_the_name_of_who_made_it():
    story = Story(Policy(provider=ManualProvider(confirm=True)))
    story.event(LabelAdded())
    story.say("alice", "/pledge 10")
    pledge_id = story.task.pledges[0].id
    assert pledge_id is not None
    d = story.event(PledgeConfirmed(pledge_id), actor="maya")
    assert {t.actor for t in d.trail} == {"maya"}


def test_without_a_goal_one_cent_held_is_funded():
    story = Story()
    story.event(LabelAdded())
    story.say("alice", "/pledge 0.01")
    assert story.task.state == TaskState.FUNDED
    assert story.task.pledges[0].created_at == story.now


def test_events_about_what_the_task_does_not_have_change_nothing():
    story = funded("10")
    for event in (PledgeLapsed(999, "expired"), LinkClosed(99, "carol", merged=False)):
        assert story.event(event).trail == []


def test_a_pull_request_in_another_repo_stays_apart_from_the_repos_own():
    story = funded("10")
    story.say("carol", "/claim")
    story.event(LinkOpened(4, "carol"))
    story.event(LinkOpened(4, "carol", repo="carol/fork"))
    story.event(LinkClosed(4, "carol", merged=False, repo="carol/fork"))
    assert story.task.link(4, "carol/fork").state == LinkState.CLOSED
    assert story.task.link(4).state == LinkState.OPEN
    story.event(LinkOpened(3, "carol", repo="carol/fork"))
    story.event(LinkClosed(3, "carol", merged=False))
    assert story.task.link(3, "carol/fork").state == LinkState.OPEN
    story.event(LinkOpened(3, "carol"))
    story.event(LinkClosed(3, "carol", merged=True, repo="carol/fork"))
    assert story.task.link(3).state == LinkState.OPEN and story.task.state == TaskState.IN_REVIEW


def test_a_link_opened_less_than_a_second_before_the_expiry_gives_back_no_time():
    story = funded("10", claim_days=14)
    story.say("carol", "/claim")
    expires = story.task.live_claim().expires_at
    story.now = expires - timedelta(milliseconds=500)
    story.event(LinkOpened(5, "carol"))
    assert story.task.live_claim().paused_seconds == 0
    story.wait(2)
    story.event(LinkClosed(5, "carol", merged=False))
    assert story.task.live_claim().expires_at == story.now


def test_a_pledge_above_the_repos_cap_is_refused():
    story = funded("10", max_pledge=10000)
    d = story.say("bob", "/pledge 200")
    assert replies(d) == [
        "`200` is above the largest amount accepted here, €100.00. Write at most that much,"
        " like `/pledge 100`."]
    assert story.task.held().minor == 1000


def test_the_policy_takes_a_fee_of_up_to_100_percent_and_claims_of_a_day():
    assert Policy(fee_bp=10_000, claim_days=1).fee_bp == 10_000
    for bad in ({"fee_bp": 10_001}, {"claim_days": 0}):
        with pytest.raises(ValueError):
            Policy(**bad)  # type: ignore[arg-type]


def test_a_share_that_rounds_to_nothing_gets_no_payout():
    story = funded("1")
    story.say("maya", "/award @carol 99.99% @dave 0.01%")
    assert paid(story) == [("carol", 100)]


def test_what_time_made_due_and_each_refusal_survive_the_refusals_that_follow():
    story = funded("10", claim_days=14)
    story.say("carol", "/claim")
    story.wait(15)
    d = story.say("bob", "/withdraw\n/unclaim")
    assert replies(d) == [
        "@bob, you have no pledge on this bounty to withdraw.\n\n@bob holds no claim on this"
        " task and is not on its waiting list."]
    assert notices(d) == ["The claim of @carol has expired: no pull request came within 14 days."]
    assert [t.action for t in d.trail] == [
        "claim.expired", "task.funded", "command.refused", "command.refused"]
