"""Books tampered with one way at a time, and the exact sentences the audit says about each:
these kill the mutants of `make mutate` in `bountybot.ledger` that the other tests let through
(tests/MUTANTS.md). Each case breaks one invariant, so the whole problem list is known."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from bountybot.ledger import (
    ESCROW,
    FEES,
    Account,
    Leg,
    Posting,
    UnbalancedTransaction,
    check_balanced,
    move,
)
from bountybot.ledger.audit import JournalEntry, JournalTransaction, audit
from bountybot.money import Money
from bountybot.rules import LabelAdded, PayoutPaid, Policy
from bountybot.rules.model import Bounty
from bountybot.states import PayoutState, PledgeState, TaskState

from memory_books import ISSUE, Story, merged_story

TASK = "task 1 (commons/garden#7)"


def paid_story(fee_bp: int = 1000) -> Story:
    """Task 1: alice 60 (pledge 2) and bob 40 (pledge 3); carol's payout 6 of 90, fee 10."""
    return merged_story(fee_bp=fee_bp)


def books(story: Story) -> tuple[list[Bounty], list[JournalTransaction]]:
    """A copy of the story's books to tamper with."""
    return ([dataclasses.replace(b, pledges=[dataclasses.replace(p) for p in b.pledges],
                                 payouts=[dataclasses.replace(p) for p in b.payouts])
             for b in story.books.bounties.values()], list(story.books.journal))


def txn(key: str, *entries: tuple[str, int]) -> JournalTransaction:
    return JournalTransaction(key, key.split(":")[0], 1,
                              tuple(JournalEntry(a, m, "EUR") for a, m in entries))


def without(journal: list[JournalTransaction], key: str) -> list[JournalTransaction]:
    assert any(t.key == key for t in journal)
    return [t for t in journal if t.key != key]


def test_clean_books_are_counted_and_rendered():
    report = paid_story().books.audit()
    assert (report.tasks, report.transactions, report.entries) == (1, 3, 7)
    assert report.render() == (
        "checked 1 tasks, 3 ledger transactions, 7 entries: all invariants hold")


def test_a_task_with_no_money_yet_audits_clean():
    story = Story()
    story.event(LabelAdded())
    story.say("maya", "/goal 100")
    assert story.books.journal == [] and story.books.audit().problems == []


def test_a_transaction_that_does_not_balance_and_the_money_it_makes():
    bounties, journal = books(paid_story())
    report = audit(bounties, [*journal, txn("gift:1", ("fees", 100), ("fees", 25))])
    assert report.problems == [
        "ledger transaction gift:1 does not balance: {'EUR': 125}",
        "all entries in EUR sum to 125, not 0: money was created or lost",
    ]
    assert report.render() == (
        "checked 1 tasks, 4 ledger transactions, 9 entries: 2 problem(s)\n"
        "  - ledger transaction gift:1 does not balance: {'EUR': 125}\n"
        "  - all entries in EUR sum to 125, not 0: money was created or lost")


def test_a_balanced_transaction_of_one_entry_is_still_wrong():
    bounties, journal = books(paid_story())
    report = audit(bounties, [*journal, txn("zero:1", ("fees", 0))])
    assert report.problems == ["ledger transaction zero:1 does not balance: {'EUR': 0}"]


@pytest.mark.parametrize(("entries", "problem"), [
    ((("backer:github:alice", -100), ("fees", 100)),
     "backer:github:alice balance is -6100 EUR but its pledges in escrow or paid out make -6000"),
    ((("developer:github:carol", 100), ("fees", -100)),
     "developer:github:carol balance is 9100 EUR but its unpaid payouts make 9000"),
    ((("developer:github:erin", 100), ("fees", -100)),
     "developer:github:erin balance is 100 EUR but its unpaid payouts make 0"),
    ((("backer:github:erin", -100), ("fees", 100)),
     "backer:github:erin balance is -100 EUR but its pledges in escrow or paid out make 0"),
    ((("external", 1), ("fees", -1)),
     "external received 1 EUR but paid payouts make 0"),
])
def test_each_account_off_by_a_little_is_named(entries, problem):
    bounties, journal = books(paid_story())
    assert audit(bounties, [*journal, txn("skim:1", *entries)]).problems == [problem]


def test_an_account_with_no_entries_at_all_is_named():
    bounties, journal = books(paid_story())
    journal = [t for t in journal if t.key != "task.done:1"] + [
        txn("task.done:1", ("escrow:task:1", -10000), ("fees", 10000))]
    assert audit(bounties, journal).problems == [
        f"{TASK}: payouts (9000) and fee (10000) do not add up to what left the escrow (10000)",
        "developer:github:carol should hold 9000 EUR but has no entries",
    ]


def test_a_pledge_in_escrow_against_its_state():
    bounties, journal = books(paid_story())
    bounties[0].pledges[1].state = PledgeState.WITHDRAWN
    assert f"{TASK}: pledge 3 is withdrawn but its money was put in escrow" \
        in audit(bounties, journal).problems
    bounties[0].pledges[1].state = PledgeState.PAID_OUT
    assert f"{TASK}: pledge 3 is paid_out but its money was never put in escrow" \
        in audit(bounties, without(journal, "pledge.held:3")).problems


def test_a_withdrawn_pledge_counts_as_held_only_with_its_withdrawal():
    """A pledge withdrawn before any money came has no escrow posting, and needs none."""
    story = Story(Policy())
    story.event(LabelAdded())
    story.say("maya", "/goal 100")
    story.say("alice", "/pledge 60")
    story.say("alice", "/withdraw")
    assert [t.key for t in story.books.journal] == ["pledge.held:2", "pledge.withdrawn:2"]
    assert story.books.audit().ok
    bounties, journal = books(story)
    report = audit(bounties, without(journal, "pledge.withdrawn:2"))
    assert f"{TASK}: escrow holds 6000 EUR but its held pledges make 0" in report.problems
    assert f"{TASK}: pledge 2 is withdrawn but its money was put in escrow" in report.problems


def test_a_refund_missing_or_made_for_a_pledge_that_was_paid_out():
    bounties, journal = books(paid_story())
    refund = txn("pledge.refunded:2", ("escrow:task:1", -1), ("escrow:task:1", 1))
    assert audit(bounties, [*journal, refund]).problems == [
        f"{TASK}: pledge 2 is paid_out but a refund is on the books"]
    bounties[0].pledges[0].state = PledgeState.REFUNDED
    problems = audit(bounties, journal).problems
    assert f"{TASK}: pledge 2 is refunded but a refund is not on the books" in problems


def test_a_payout_transaction_missing_or_made_for_a_task_not_done():
    bounties, journal = books(paid_story())
    bounties[0].state = TaskState.CLAIMED
    assert f"{TASK} is claimed but its payout transaction is on the books" \
        in audit(bounties, journal).problems
    bounties[0].state = TaskState.DONE
    problems = audit(bounties, without(journal, "task.done:1")).problems
    assert f"{TASK} is done but its payout transaction is not on the books" in problems
    assert f"{TASK} has payouts but no payout transaction" in problems


def test_a_payout_reversal_missing_or_made_for_a_live_payout():
    bounties, journal = books(paid_story())
    reversal = txn("payout.reversed:6", ("fees", -1), ("fees", 1))
    assert audit(bounties, [*journal, reversal]).problems == [
        f"{TASK}: payout 6 is pending but a reversal is on the books"]
    bounties[0].payouts[0].state = PayoutState.CANCELLED
    assert f"{TASK}: payout 6 is cancelled but a reversal is not on the books" \
        in audit(bounties, journal).problems


def test_what_left_the_escrow_against_the_paid_out_pledges_and_the_payouts():
    bounties, journal = books(paid_story())
    bounties[0].pledges[1].state = PledgeState.HELD
    problems = audit(bounties, journal).problems
    assert f"{TASK}: 10000 left the escrow at payout but paid-out pledges make 6000" in problems
    bounties, journal = books(paid_story())
    bounties[0].payouts[0].amount = Money(8000, "EUR")
    problems = audit(bounties, journal).problems
    assert f"{TASK}: payouts (8000) and fee (1000) do not add up to what left the escrow" \
        " (10000)" in problems


def cancelled_after_dispute() -> Story:
    story = merged_story(fee_bp=1000, release_after_days=3)
    story.say("bob", "/dispute it does not work")
    story.say("maya", "/cancel")
    return story


def test_a_dispute_cancelled_gives_back_the_whole_fee():
    story = cancelled_after_dispute()
    assert story.books.audit().ok
    bounties, journal = books(story)
    short = [t if t.key != "fee.reversed:1" else txn(
        "fee.reversed:1", ("fees", -600), ("escrow:task:1", 600)) for t in journal]
    problems = audit(bounties, short).problems
    assert f"{TASK}: a fee of 1000 was taken but 600 given back on cancel" in problems
    problems = audit(bounties, without(journal, "fee.reversed:1")).problems
    assert f"{TASK}: a fee of 1000 was taken but 0 given back on cancel" in problems


def test_a_dispute_cancelled_refunds_what_left_the_escrow():
    bounties, journal = books(cancelled_after_dispute())
    bounties[0].pledges[1].state = PledgeState.PAID_OUT
    problems = audit(bounties, journal).problems
    assert f"{TASK}: 10000 left the escrow at payout but refunded pledges make 6000" in problems


def test_a_payment_missing_made_twice_over_or_of_another_amount():
    story = paid_story()
    payout_id = story.task.payouts[0].id
    assert payout_id is not None
    story.event(PayoutPaid(payout_id, "tr_1"))
    assert story.books.audit().ok
    bounties, journal = books(story)
    bounties[0].payouts[0].state = PayoutState.PENDING
    assert f"{TASK}: payout 6 is pending but a payment is on the books" \
        in audit(bounties, journal).problems
    bounties[0].payouts[0].state = PayoutState.PAID
    assert f"{TASK}: payout 6 is paid but a payment is not on the books" \
        in audit(bounties, without(journal, "payout.paid:6")).problems
    other = [t if t.key != "payout.paid:6" else txn(
        "payout.paid:6", ("developer:github:carol", -9000), ("external", 8999),
        ("fees", 1)) for t in journal]
    assert f"{TASK}: payout 6 is 9000 but 8999 was paid" in audit(bounties, other).problems


def test_two_tasks_paying_one_developer_add_up():
    """Expected balances are sums over every task, not the last one seen."""
    first = paid_story()
    second = Story(Policy(fee_bp=1000), issue=dataclasses.replace(ISSUE, number=8))
    second.books = first.books
    second.event(LabelAdded())
    second.say("maya", "/goal 10")
    second.say("alice", "/pledge 10")
    second.say("maya", "/award @carol")
    assert first.books.balance("developer:github:carol") == 9900
    assert first.books.audit().ok
    for story in (first, second):
        payout_id = story.task.payouts[0].id
        assert payout_id is not None
        story.event(PayoutPaid(payout_id, f"tr_{payout_id}"))
    assert first.books.balance("external") == 9900 and first.books.audit().ok


# -- the ledger's own checks ------------------------------------------------------------------


@dataclass
class Thing:
    id: int | None


def test_the_ledger_refuses_with_what_is_wrong():
    with pytest.raises(UnbalancedTransaction, match="^a transaction needs at least two entries$"):
        check_balanced([Money(0, "EUR")])
    with pytest.raises(UnbalancedTransaction, match=r"^entries do not sum to zero: \{'EUR': 5\}$"):
        check_balanced([Money(10, "EUR"), Money(-5, "EUR")])
    with pytest.raises(ValueError, match="^an escrow account needs the task's id$"):
        ESCROW.render(None)
    with pytest.raises(ValueError, match="subject has no id yet"):
        move("pledge.held", Thing(None), Money(1, "EUR"), FEES, ESCROW).key()
    assert Account("backer", "github", "alice").render(None) == "backer:github:alice"


def test_a_move_has_no_memo_unless_given():
    posting = move("pledge.held", Thing(1), Money(5, "EUR"), FEES, ESCROW)
    assert posting.memo == "" and posting.legs == (
        Leg(FEES, Money(-5, "EUR")), Leg(ESCROW, Money(5, "EUR")))
    assert Posting("x", Thing(1), posting.legs, "why").memo == "why"
