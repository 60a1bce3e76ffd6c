"""The working copy a decision is made on, and the decision it returns.

Every rule takes a `Work`: a private copy of the bounty plus the lists the decision collects
(ledger postings, forge messages, audit trail). State changes go through `move_*`, which checks
the move against the tables of `bountybot.states` and records it in the trail, so no rule can
take a path the state diagram does not have, and every transition is on the record.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bountybot.i18n import translate
from bountybot.ledger import Posting
from bountybot.providers.base import PaymentRequest
from bountybot.rules.model import Actor, Bounty, Claim, Payout, Pledge
from bountybot.rules.policy import Policy
from bountybot.rules.summary import state_word
from bountybot.states import ClaimState, PayoutState, PledgeState, TaskState, check_move


class Refused(Exception):
    """A command the rules turn down; carries the sentence the bot replies with."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params

    def message(self, locale: str) -> str:
        params = {k: state_word(locale, v) if k == "state" else v for k, v in self.params.items()}
        return translate(locale, self.key, **params)


@dataclass(frozen=True, slots=True)
class Message:
    """Something for the bot to write on the forge, sent later through the outbox.

    kind: `summary` (create or edit the task's one summary comment), `reaction` (acknowledge
    the comment `comment_id`), `reply` (answer that comment with `text`), `notice` (a new
    comment on the issue with `text`, for what no comment asked, like an expiry)."""

    kind: str
    comment_id: str | None = None
    text: str | None = None
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class Trail:
    """One line of the audit trail: who did what (a command, a transition) and its details."""

    actor: str
    action: str
    detail: dict[str, Any]


@dataclass
class Decision:
    """What the rules decided: the new bounty and everything to write with it."""

    bounty: Bounty | None
    created: bool = False
    postings: list[Posting] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    trail: list[Trail] = field(default_factory=list)
    # Calls the payment provider makes after the commit (checkouts, refunds, onboarding).
    payments: list[PaymentRequest] = field(default_factory=list)
    # The bounty as it was before (untouched), so storage writes only the rows that changed.
    before: Bounty | None = None

    @property
    def changed(self) -> bool:
        return self.created or bool(self.postings) or any(
            not t.action.startswith("command.") for t in self.trail
        )


@dataclass
class Checkpoint:
    bounty: Bounty | None
    memo: dict[int, Any]
    created: bool
    postings: int
    messages: int
    trail: int
    words: int
    pristine: bool = False
    payments: int = 0


class Work:
    """A copy of the bounty being decided on, and what the decision has collected so far."""

    def __init__(self, bounty: Bounty | None, policy: Policy, now: datetime,
                 actor: Actor | None = None) -> None:
        if now.tzinfo is None:
            raise ValueError("the clock must give timezone-aware times")
        self.original = bounty
        self.bounty = copy.deepcopy(bounty)
        self.created = False
        self.policy = policy
        self.now = now
        self.actor = actor
        self.postings: list[Posting] = []
        self.messages: list[Message] = []
        self.trail_items: list[Trail] = []
        self.payments: list[PaymentRequest] = []
        # Sentences for the one reply to the comment being decided (joined by the caller).
        self.words: list[str] = []
        # Logins the forge said have no account (see `Comment.unknown_users`).
        self.unknown_users: frozenset[str] = frozenset()

    @property
    def who(self) -> str:
        return self.actor.login if self.actor else "system"

    def task(self) -> Bounty:
        if self.bounty is None:
            raise Refused("rules.no_task", label=self.policy.label)
        return self.bounty

    def trail(self, action: str, **detail: Any) -> None:
        self.trail_items.append(Trail(self.who, action, detail))

    def post(self, posting: Posting) -> None:
        self.postings.append(posting)

    def say(self, message: Message) -> None:
        self.messages.append(message)

    def pay(self, request: PaymentRequest) -> None:
        """Ask the payment provider for a call once the decision is committed."""
        self.payments.append(request)

    def reply(self, key: str, **params: Any) -> None:
        self.words.append(translate(self.policy.locale, key, **params))

    def notice(self, key: str, **params: Any) -> None:
        self.say(Message("notice", text=translate(self.policy.locale, key, **params)))

    def move_task(self, new: TaskState, why: str) -> None:
        task = self.task()
        if task.state == new:
            return
        check_move(task.state, new)
        self.trail(f"task.{new}", **{"from": str(task.state), "why": why})
        task.state = new

    def move_pledge(self, pledge: Pledge, new: PledgeState) -> None:
        check_move(pledge.state, new)
        self.trail(f"pledge.{new}", backer=pledge.backer, amount=pledge.amount.minor,
                   **{"from": str(pledge.state)})
        pledge.state = new

    def move_claim(self, claim: Claim, new: ClaimState) -> None:
        check_move(claim.state, new)
        self.trail(f"claim.{new}", developer=claim.developer, **{"from": str(claim.state)})
        claim.state = new
        if new not in (ClaimState.ACTIVE, ClaimState.IN_REVIEW):
            claim.ended_at = self.now

    def move_payout(self, payout: Payout, new: PayoutState) -> None:
        check_move(payout.state, new)
        self.trail(f"payout.{new}", developer=payout.developer, amount=payout.amount.minor,
                   **{"from": str(payout.state)})
        payout.state = new

    # Each command runs on its own: a refused one leaves no trace of what it half did.
    def checkpoint(self) -> Checkpoint:
        if not (self.created or self.postings or self.messages or self.trail_items
                or self.payments):
            # Nothing has happened yet: the untouched original is the checkpoint, and a
            # refusal copies it again (most comments hold one command; this saves a copy).
            return Checkpoint(None, {}, False, 0, 0, 0, len(self.words), pristine=True)
        memo: dict[int, Any] = {}
        snapshot = copy.deepcopy(self.bounty, memo)
        return Checkpoint(snapshot, memo, self.created, len(self.postings), len(self.messages),
                          len(self.trail_items), len(self.words), payments=len(self.payments))

    def restore(self, point: Checkpoint) -> None:
        if point.pristine:
            self.bounty = copy.deepcopy(self.original)
            self.created = False
            self.postings.clear()
            self.messages.clear()
            self.trail_items.clear()
            self.payments.clear()
            del self.words[point.words:]
            return
        self.bounty, self.created = point.bounty, point.created
        # Postings made before the checkpoint point at objects of the bounty as it was then;
        # make them point at the restored copies, which are now the live ones.
        kept = [dataclasses.replace(p, ref=point.memo.get(id(p.ref), p.ref))
                for p in self.postings[:point.postings]]
        self.postings[:] = kept
        self.payments[:] = [dataclasses.replace(r, ref=point.memo.get(id(r.ref), r.ref))
                            for r in self.payments[:point.payments]]
        del self.messages[point.messages:]
        del self.trail_items[point.trail:]
        del self.words[point.words:]

    def decision(self) -> Decision:
        return Decision(self.bounty, self.created, self.postings, self.messages,
                        self.trail_items, self.payments, self.original)
