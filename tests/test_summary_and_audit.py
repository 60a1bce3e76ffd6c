"""The summary comment shows the whole bounty; the audit names each way the books can be wrong."""

from __future__ import annotations

import dataclasses

from bountybot.ledger.audit import JournalEntry, JournalTransaction, audit
from bountybot.money import Money
from bountybot.rules import LabelAdded, LinkClosed, LinkOpened, Policy
from bountybot.rules.summary import SUMMARY_MARKER, progress_bar, render_summary, status_text
from bountybot.states import PayoutState

from memory_books import Story


def told(**policy: object) -> Story:
    story = Story(Policy(**policy))  # type: ignore[arg-type]
    story.event(LabelAdded())
    story.say("maya", "/goal 100\n/deadline 2026-12-31")
    story.say("alice", "/pledge 60")
    story.say("bob", "/pledge 40")
    story.say("carol", "/claim")
    story.say("dave", "/claim")
    story.event(LinkOpened(12, "carol"))
    return story


def test_the_summary_shows_money_people_claim_links_and_fee():
    story = told(fee_bp=250)
    text = render_summary(story.task, "en", 250)
    assert text.startswith(SUMMARY_MARKER)
    assert "€100.00 pledged of €100.00" in text and "[" + "█" * 20 + "] 100%" in text
    assert "| @alice | €60.00 |" in text and "| @bob | €40.00 |" in text
    assert "**Claimed by:** @carol (in review, clock stopped)" in text
    assert "**Waiting list:** @dave" in text and "#12 @carol (open)" in text
    assert "2.5%" in text and "/pledge" in text
    story.event(LinkClosed(12, "carol", merged=True))
    done = render_summary(story.task, "en", 250)
    assert "@carol €97.50 (pending)" in done and "/pledge <amount>" not in done


def test_the_summary_and_status_in_french():
    story = told()
    text = render_summary(story.task, "fr", 0)
    assert "100,00\u00a0€ promis sur 100,00\u00a0€" in text and "Aucuns frais" in text
    assert "en revue" in status_text(story.task, "fr")


def test_the_progress_bar():
    assert progress_bar(Money(2500, "EUR"), Money(10000, "EUR")).startswith("`[█████░")
    assert "25%" in progress_bar(Money(2500, "EUR"), Money(10000, "EUR"))
    assert progress_bar(Money(20000, "EUR"), Money(10000, "EUR")).endswith("200%`")
    assert progress_bar(Money(1, "EUR"), None) == ""


def books_after_payout() -> Story:
    story = told()
    story.event(LinkClosed(12, "carol", merged=True))
    return story


def test_a_doubled_payment_is_caught():
    story = books_after_payout()
    payout = story.task.payouts[0]
    payout.state = PayoutState.PAID
    paid = JournalTransaction(f"payout.paid:{payout.id}", "payout.paid", story.task.id, (
        JournalEntry("developer:github:carol", -10000, "EUR"),
        JournalEntry("external", 10000, "EUR")))
    report = audit(list(story.books.bounties.values()), [*story.books.journal, paid, paid])
    assert not report.ok
    text = report.render()
    assert "written 2 times" in text and "external received 20000" in text


def test_an_unbalanced_or_missing_transaction_is_caught():
    story = books_after_payout()
    journal = list(story.books.journal)
    first = journal[0]
    journal[0] = dataclasses.replace(first, entries=(first.entries[0],))
    report = audit(list(story.books.bounties.values()), journal)
    assert "does not balance" in report.render() and "sum to" in report.render()
    report = audit(list(story.books.bounties.values()),
                   [t for t in story.books.journal if t.kind != "task.done"])
    text = report.render()
    assert "payout transaction is not on the books" in text
    assert "has payouts but no payout transaction" in text


def test_clean_books_say_so():
    report = books_after_payout().books.audit()
    assert report.ok and "all invariants hold" in report.render()
    assert report.transactions == 3 and report.tasks == 1


def test_an_escrow_that_differs_from_its_held_pledges_is_caught():
    """Money taken out of a task's escrow by a balanced transaction: only the headline check
    (escrow = held pledges) can see it."""
    story = told()
    escrow = f"escrow:task:{story.task.id}"
    skim = JournalTransaction("skim:1", "skim", story.task.id, (
        JournalEntry(escrow, -500, "EUR"), JournalEntry("fees", 500, "EUR")))
    report = audit(list(story.books.bounties.values()), [*story.books.journal, skim])
    assert report.problems == [
        f"task {story.task.id} (commons/garden#7): escrow holds 9500 EUR but its held pledges"
        " make 10000"]
