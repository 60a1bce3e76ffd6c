"""A hypothesis state machine throws random commands from random people at a task.

After every step the books must audit clean (entries sum to zero, escrow equals held pledges,
nothing paid twice, no money created or lost) and every state must have moved only along an
arrow of DESIGN.md's diagrams (the tables in `bountybot.states`).

The machine says what it reached (`event()` in hypothesis's statistics) and steers toward the
rare paths (`target()`): disputes and how they are decided, awards, splits between developers.
`test_the_machine_reaches_disputes_awards_and_splits` proves it gets there.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

from hypothesis import HealthCheck, event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bountybot.providers.manual import ManualProvider
from bountybot.rules import (
    Decision,
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

# What the machine reached, over every run in this process (read by the reach test).
REACHED: Counter[str] = Counter()
# The rare paths `target()` pushes toward.
GOALS = ("dispute decided by cancel", "dispute decided by award", "dispute", "split", "award")


def reached(decision: Decision) -> list[str]:
    """The paths worth knowing that a step took: from its trail and its ledger postings."""
    found = []
    for item in decision.trail:
        if item.action == "task.disputed":
            found.append("dispute")
        elif item.action == "dispute.resolved":
            found.append(f"dispute decided by {item.detail['decision']}")
    if any(p.kind == "task.done" and p.memo == "award" for p in decision.postings):
        found.append("award")
    if sum(item.action == "payout.pending" for item in decision.trail) >= 2:
        found.append("split")
    return found


class BountyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.story: Story | None = None
        self.seen_task_moves: set[tuple[str, str]] = set()
        self.reached: Counter[str] = Counter()

    # A waiting period (3 days) first: hypothesis leans toward the first of a list, and only a
    # payout that waits can be disputed.
    @rule(fee=st.sampled_from([0, 0, 250, 1000]), confirm=st.booleans(),
          goal=st.sampled_from([None, "10", "20", "50"]), release=st.sampled_from([3, 0]))
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
        for path in reached(decision) if decision else []:
            event(f"reached: {path}")
            self.reached[path] += 1
            REACHED[path] += 1
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
    @rule(dev=st.sampled_from(["carol", "dave"]),
          end=st.sampled_from(["merge", "dispute", "award", "split"]))
    def fund_claim_and_merge(self, dev: str, end: str) -> None:
        """A shortcut to the end of the road, so runs often get to what follows a merge: the
        claimant's pull request merged (and at once disputed by its backer), or a maintainer's
        /award, to one or split in two."""
        self.step(lambda s: s.say("bob", "/pledge 99.99"))
        self.step(lambda s: s.say(dev, "/claim"))
        claim = self.story.task.live_claim() if self.story else None
        if claim is None:
            return
        author = claim.developer
        self.step(lambda s: s.event(LinkOpened(9, author)))
        if end in ("merge", "dispute"):
            self.step(lambda s: s.event(LinkClosed(9, author, merged=True)))
            if end == "dispute":
                self.step(lambda s: s.say("bob", "/dispute it does not work"))
        else:
            other = "dave" if author == "carol" else "carol"
            shares = f"@{author}" if end == "award" else f"@{author} 50% @{other} 50%"
            self.step(lambda s: s.say("maya", f"/award {shares}"))

    # Disputes matter once the work is merged; drawn only then, so the machine gets there.
    @precondition(lambda self: self.story is not None and self.story.books.get(
        self.story.issue) is not None and self.story.task.state == TaskState.DONE)
    @rule(who=st.sampled_from(["bob", "maya", "bob", "erin"]),
          reason=st.sampled_from(["it does not work", "it does not work", ""]))
    def dispute(self, who: str, reason: str) -> None:
        self.step(lambda s: s.say(who, f"/dispute {reason}"))

    # A maintainer decides a dispute; drawn only while one waits, so that each way is reached.
    @precondition(lambda self: self.story is not None and self.story.books.get(
        self.story.issue) is not None and self.story.task.dispute is not None)
    @rule(who=st.sampled_from(["maya", "maya", "bob"]),
          then=st.sampled_from(["/award @dave", "/cancel", "/award @carol 50% @dave 50%",
                                "/award @carol 1 @dave 1"]))
    def decide_dispute(self, who: str, then: str) -> None:
        self.step(lambda s: s.say(who, then))

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
        # One score per run (hypothesis allows one target() per label and run): how many of the
        # rare paths the run took, so it climbs toward runs that take them all.
        target(float(sum(1 for path in GOALS if self.reached[path])), label="rare paths taken")


BountyMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBounty = BountyMachine.TestCase



def test_the_machine_reaches_disputes_awards_and_splits():
    """A fixed, derandomized run of the machine (the same draws each time) gets to every rare
    path at least once."""
    REACHED.clear()
    run_state_machine_as_test(BountyMachine, settings=settings(
        max_examples=150, stateful_step_count=40, deadline=None, derandomize=True,
        database=None, suppress_health_check=[HealthCheck.too_slow]))
    assert {path: REACHED[path] > 0 for path in GOALS} == dict.fromkeys(GOALS, True)
