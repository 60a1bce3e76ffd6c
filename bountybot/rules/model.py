"""The bounty aggregate: one task with its pledges, claims, waiting list, links and payouts.

These are plain dataclasses with no database in them: the rules take one, copy it, and return
the new one; `bountybot.storage.bounties` maps it to and from the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from bountybot.money import Money, sum_money
from bountybot.states import (
    LIVE_CLAIM_STATES,
    ClaimState,
    LinkState,
    PayoutState,
    PledgeState,
    TaskState,
)

# Pledge states as counted: money in escrow now, and money the backers gave and kept in.
IN_ESCROW = frozenset({PledgeState.HELD})
RAISED = frozenset({PledgeState.HELD, PledgeState.PAID_OUT})


def same_login(a: str, b: str) -> bool:
    """Logins (and repo paths) compare without case: GitHub and GitLab both ignore it, so
    `@DAVE` is dave."""
    return a.casefold() == b.casefold()


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something on the forge; `is_maintainer` is asked of the forge by the adapter."""

    login: str
    is_maintainer: bool = False
    is_bot: bool = False


@dataclass(frozen=True, slots=True)
class IssueRef:
    """The forge issue a task is about (enough to create the task)."""

    forge: str
    repo: str
    number: int
    title: str = ""
    url: str = ""


def _copy_fields(obj: Any, memo: dict[int, Any]) -> Any:
    """A fast deep copy for the aggregate's dataclasses: their fields are immutable values
    (str, int, Money, datetime, enums) or lists of such objects, so copying the lists and the
    objects is enough; `memo` is kept up to date so callers can map old objects to new. The
    fields are copied as one dict (a pledge, claim, link or payout has no list): a task with
    thousands of pledges is copied for every command it gets. Only `Bounty` copies itself so:
    its pledges, claims, links and payouts are copied with it, never alone."""
    new = object.__new__(type(obj))
    memo[id(obj)] = new
    fields = obj.__dict__.copy()
    for name, value in fields.items():
        if type(value) is list:
            fields[name] = [_copy_fields(v, memo) if hasattr(v, "__dataclass_fields__") else v
                            for v in value]
    new.__dict__.update(fields)
    return new


@dataclass
class Pledge:
    """Money a backer puts toward a task; `amount` in the task's currency."""

    backer: str
    amount: Money
    state: PledgeState
    created_at: datetime
    comment_id: str | None = None
    id: int | None = None


@dataclass
class Claim:
    """A developer's exclusive, time-limited right to be paid for the task."""

    developer: str
    state: ClaimState
    created_at: datetime
    expires_at: datetime | None
    paused_seconds: int | None = None
    ended_at: datetime | None = None
    id: int | None = None
    # When to remind the claimant (half of `claim_days`); None once reminded, or in review.
    remind_at: datetime | None = None


@dataclass
class Link:
    """A pull/merge request that says it closes the task's issue."""

    number: int
    author: str
    state: LinkState
    url: str | None = None
    id: int | None = None
    # Empty for a pull request of the task's own repo; else the path of the other repo (same
    # forge) it was opened in. Such a link is shown, but never puts a claim in review nor
    # pays by itself: a maintainer of the task's repo confirms it with /award.
    repo_path: str = ""

    @property
    def own(self) -> bool:
        return not self.repo_path


@dataclass
class Payout:
    """Money released from the task's escrow to one developer."""

    developer: str
    amount: Money
    state: PayoutState
    created_at: datetime
    reference: str | None = None
    paid_at: datetime | None = None
    id: int | None = None
    # The merge plus `release_after_days`: until then a backer or maintainer may /dispute.
    due_at: datetime | None = None
    # Set once the release time passed with no dispute: from then on the payout is due.
    released_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Dispute:
    """A backer's or maintainer's objection to paying out, raised before the release."""

    by: str
    reason: str
    at: datetime


@dataclass
class Bounty:
    """A task and everything that hangs from it."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return _copy_fields(self, memo)

    forge: str
    repo: str
    number: int
    currency: str
    state: TaskState = TaskState.OPEN
    title: str = ""
    url: str = ""
    goal: Money | None = None
    deadline: date | None = None
    created_at: datetime | None = None
    pledges: list[Pledge] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    payouts: list[Payout] = field(default_factory=list)
    id: int | None = None
    dispute: Dispute | None = None
    # The bot's label was seen on the issue (the task was opened by it, or it came later).
    labelled: bool = False

    def held(self) -> Money:
        """The sum of held pledges: what the escrow must hold."""
        return sum_money(
            (p.amount for p in self.pledges if p.state == PledgeState.HELD), self.currency
        )

    def raised(self) -> Money:
        """What the backers gave and kept in: held pledges plus those paid out to developers
        (refunded and withdrawn money is not counted). `held()` drops to zero at the payout;
        this is what a finished task shows."""
        return sum_money(
            (p.amount for p in self.pledges if p.state in RAISED), self.currency
        )

    def pending(self) -> Money:
        return sum_money(
            (p.amount for p in self.pledges if p.state == PledgeState.PENDING), self.currency
        )

    def backers(self, states: frozenset[PledgeState] = IN_ESCROW) -> list[str]:
        """Distinct backers with money in `states` (held by default), in the order they first
        pledged; `backers(RAISED)` are those behind `raised()`."""
        seen: dict[str, str] = {}
        for p in self.pledges:
            if p.state in states:
                seen.setdefault(p.backer.casefold(), p.backer)
        return list(seen.values())

    def backer_total(self, login: str, states: frozenset[PledgeState]) -> Money:
        return sum_money(
            (p.amount for p in self.pledges if same_login(p.backer, login) and p.state in states),
            self.currency,
        )

    def live_claim(self) -> Claim | None:
        """The active or in-review claim, if any (there is at most one)."""
        for claim in self.claims:
            if claim.state in LIVE_CLAIM_STATES:
                return claim
        return None

    def shown_claim(self) -> Claim | None:
        """The claim the task shows (summary, API): the live one while the task runs; once it
        is done, the last claim that ended `done`, the one the task was done under. None for
        a task never claimed, cancelled or expired."""
        live = self.live_claim()
        if live is not None or self.state != TaskState.DONE:
            return live
        done = [c for c in self.claims if c.state == ClaimState.DONE]
        return done[-1] if done else None

    def link(self, number: int, repo_path: str = "") -> Link | None:
        """The link of pull request `number` of the task's repo (or of `repo_path`)."""
        for link in self.links:
            if link.number == number and same_login(link.repo_path, repo_path):
                return link
        return None

    def payout(self, payout_id: int) -> Payout | None:
        for payout in self.payouts:
            if payout.id == payout_id:
                return payout
        return None

    def funded_enough(self) -> bool:
        """The goal is reached; without a goal, any held money is enough."""
        held = self.held()
        if self.goal is None:
            return held.minor > 0
        return held >= self.goal
