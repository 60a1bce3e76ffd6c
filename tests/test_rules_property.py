"""A hypothesis state machine throws random commands from random people at a task.

After every step the books must audit clean (entries sum to zero, escrow equals held pledges,
nothing paid twice, no money created or lost) and every state must have moved only along an
arrow of DESIGN.md's diagrams (the tables in `bountybot.states`).
"""

from __future__ import annotations

from enum import StrEnum

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bountybot.providers.manual import ManualProvider
from bountybot.rules import (
    IssueClosed,
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
from bountybot.states import FINAL_TASK_STATES, TASK_MOVES, TaskState, allowed

from memory_books import Story

PEOPLE = ["alice", "bob", "carol", "dave", "maya"]
people = st.sampled_from(PEOPLE)
amounts = st.sampled_from(["1", "5", "10", "20.50", "33,33", "€50", "99.99 EUR", "25", "0", "-3",
                           "1e3", "12.345", "$5"])


class BountyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.story: Story | None = None
        self.seen_task_moves: set[tuple[str, str]] = set()

    @rule(fee=st.sampled_from([0, 0, 250, 1000]), confirm=st.booleans(),
          goal=st.sampled_from([None, "10", "20", "50"]), release=st.sampled_from([0, 3]))
    @precondition(lambda self: self.story is None)
    def start(self, fee: int, confirm: bool, goal: str | None, release: int) -> None:
        self.story = Story(Policy(fee_bp=fee, claim_days=7, release_after_days=release,
                                  provider=ManualProvider(confirm=confirm)))
        self.step(lambda s: s.event(LabelAdded()))
        if goal:
            self.step(lambda s: s.say("maya", f"/goal {goal}"))

    def step(self, action) -> None:  # type: ignore[no-untyped-def]
        story = self.story
        assert story is not None
        before = self.snapshot()
        try:
            decision = action(story)
        except Refused:
            decision = None
        after = self.snapshot()
        for item in decision.trail if decision else []:
            if item.action.startswith("task.") and "from" in item.detail:
                self.seen_task_moves.add((item.detail["from"], item.action[5:]))
        for key, new in after.items():
            old = before.get(key)
            if old is not None:
                assert allowed(old, new) or self.chained(old, new), f"{key}: {old} -> {new}"

    @staticmethod
    def chained(old: object, new: object) -> bool:
        """One event may take two arrows in a row (a merge seen before its link was opened:
        claimed -> in_review -> done); both must be arrows."""
        table = {TASK_MOVES}
        return any((old, mid) in moves and (mid, new) in moves
                   for moves in table for (_, mid) in moves)

    def snapshot(self) -> dict[tuple[str, int | None], StrEnum]:
        story = self.story
        if story is None or story.books.get(story.issue) is None:
            return {}
        t = story.task
        shot: dict[tuple[str, int | None], StrEnum] = {("task", t.id): t.state}
        shot.update({("pledge", p.id): p.state for p in t.pledges})
        shot.update({("claim", c.id): c.state for c in t.claims})
        shot.update({("payout", p.id): p.state for p in t.payouts})
        return shot

    @precondition(lambda self: self.story is not None)
    @rule(who=people, amount=amounts)
    def pledge(self, who: str, amount: str) -> None:
        self.step(lambda s: s.say(who, f"/pledge {amount}"))

    @precondition(lambda self: self.story is not None)
    @rule(who=people)
    def withdraw(self, who: str) -> None:
        self.step(lambda s: s.say(who, "/withdraw"))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, step=st.sampled_from(["/unclaim", "/claim", "/withdraw", "/status"]))
    def ordinary(self, who: str, step: str) -> None:
        self.step(lambda s: s.say(who, step))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, amount=amounts)
    def goal(self, who: str, amount: str) -> None:
        self.step(lambda s: s.say(who, f"/goal {amount}"))

    @precondition(lambda self: self.story is not None)
    @rule(who=people)
    def claim(self, who: str) -> None:
        self.step(lambda s: s.say(who, "/claim"))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, whom=st.none() | people)
    def unclaim(self, who: str, whom: str | None) -> None:
        self.step(lambda s: s.say(who, "/unclaim" + (f" @{whom}" if whom else "")))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, dice=st.integers(0, 5))
    def cancel(self, who: str, dice: int) -> None:
        # Ending a bounty is one roll in six, so that most runs live long enough to get far.
        if dice == 0:
            self.step(lambda s: s.say(who, "/cancel"))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, day=st.integers(1, 20))
    def deadline(self, who: str, day: int) -> None:
        self.step(lambda s: s.say(who, f"/deadline 2026-12-{day:02d}"))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, shares=st.sampled_from(
        ["@carol", "@carol 50% @dave 50%", "@carol 10 @dave", "@carol 1 @dave 1",
         "@carol 70% @dave 20%", "@alice 33.33% @bob 33.33% @carol 33.34%"]))
    def award(self, who: str, shares: str) -> None:
        self.step(lambda s: s.say(who, f"/award {shares}"))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, number=st.integers(1, 3))
    def link_opened(self, who: str, number: int) -> None:
        self.step(lambda s: s.event(LinkOpened(number, who)))

    @precondition(lambda self: self.story is not None)
    @rule(who=people, number=st.integers(1, 3), merged=st.booleans())
    def link_closed(self, who: str, number: int, merged: bool) -> None:
        self.step(lambda s: s.event(LinkClosed(number, who, merged)))

    @precondition(lambda self: self.story is not None and self.story.books.get(
        self.story.issue) is not None and self.story.task.live_claim() is not None)
    @rule(number=st.integers(1, 3), action=st.sampled_from(["open", "merge", "close"]))
    def claimant_works(self, number: int, action: str) -> None:
        assert self.story is not None
        claim = self.story.task.live_claim()
        assert claim is not None
        dev = claim.developer
        if action == "open":
            self.step(lambda s: s.event(LinkOpened(number, dev)))
        else:
            self.step(lambda s: s.event(LinkClosed(number, dev, merged=action == "merge")))

    @precondition(lambda self: self.story is not None and self.story.books.get(
        self.story.issue) is not None and self.story.task.state not in FINAL_TASK_STATES)
    @rule(dev=st.sampled_from(["carol", "dave"]))
    def fund_claim_and_merge(self, dev: str) -> None:
        """A shortcut to the end of the road, so runs often get to what follows a merge."""
        self.step(lambda s: s.say("bob", "/pledge 99.99"))
        self.step(lambda s: s.say(dev, "/claim"))
        claim = self.story.task.live_claim() if self.story else None
        if claim is not None:
            author = claim.developer
            self.step(lambda s: s.event(LinkOpened(9, author)))
            self.step(lambda s: s.event(LinkClosed(9, author, merged=True)))

    # Disputes matter once the work is merged; drawn only then, so the machine gets there.
    @precondition(lambda self: self.story is not None and self.story.books.get(
        self.story.issue) is not None and self.story.task.state == TaskState.DONE)
    @rule(who=st.sampled_from(["bob", "maya", "bob", "erin"]),
          reason=st.sampled_from(["it does not work", "it does not work", ""]),
          then=st.sampled_from(["/cancel", "", "/cancel", "/award @dave",
                                "/award @carol 50% @dave 50%"]))
    def dispute(self, who: str, reason: str, then: str) -> None:
        self.step(lambda s: s.say(who, f"/dispute {reason}"))
        if then:
            self.step(lambda s: s.say("maya", then))

    @precondition(lambda self: self.story is not None)
    @rule(days=st.sampled_from([0.5, 1, 3, 8]))
    def time_passes(self, days: float) -> None:
        assert self.story is not None
        self.story.wait(days)
        self.step(lambda s: s.event(Tick()))

    @precondition(lambda self: self.story is not None)
    @rule(event=st.sampled_from([LabelRemoved(), IssueClosed(True), IssueClosed(False)]),
          dice=st.integers(0, 5))
    def issue_event(self, event: object, dice: int) -> None:
        if dice == 0:
            self.step(lambda s: s.event(event))  # type: ignore[arg-type]

    @precondition(lambda self: self.story is not None and self.story.books.get(
        self.story.issue) is not None and bool(self.story.task.payouts))
    @rule(index=st.integers(0, 3), again=st.booleans())
    def mark_paid(self, index: int, again: bool) -> None:
        assert self.story is not None
        payouts = self.story.task.payouts
        payout_id = payouts[index % len(payouts)].id
        assert payout_id is not None
        self.step(lambda s: s.event(PayoutPaid(payout_id, f"ref-{payout_id}")))
        if again:
            self.step(lambda s: s.event(PayoutPaid(payout_id, "again")))

    @precondition(lambda self: self.story is not None and self.story.books.get(
        self.story.issue) is not None and bool(self.story.task.pledges))
    @rule(index=st.integers(0, 5))
    def confirm(self, index: int) -> None:
        assert self.story is not None
        pledges = self.story.task.pledges
        pledge_id = pledges[index % len(pledges)].id
        assert pledge_id is not None
        self.step(lambda s: s.event(PledgeConfirmed(pledge_id), actor="maya"))

    @invariant()
    def books_balance(self) -> None:
        if self.story is None:
            return
        report = self.story.books.audit()
        assert report.ok, report.render()
        if self.story.books.get(self.story.issue) is not None:
            task = self.story.task
            assert self.story.books.balance(f"escrow:task:{task.id}") == task.held().minor
            # Every pledge that ever reached escrow is accounted for exactly once: still held,
            # paid out, or returned to its backer.
            contributed = -sum(self.story.books.balance(f"backer:github:{p}") for p in PEOPLE)
            owed = sum(self.story.books.balance(f"developer:github:{p}") for p in PEOPLE)
            assert contributed == (task.held().minor + owed + self.story.books.balance("fees")
                                   + self.story.books.balance("external"))

    def teardown(self) -> None:
        for move in self.seen_task_moves:
            assert move in TASK_MOVES


BountyMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBounty = BountyMachine.TestCase

