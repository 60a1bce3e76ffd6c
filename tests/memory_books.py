"""In-memory books for the rule tests: apply decisions as the database would, minus SQL.

Ids are handed out like autoincrement columns, postings get their keys and entries exactly as
`bountybot.storage` writes them, and a second posting with the same key fails like the unique
constraint does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bountybot.ledger.audit import AuditReport, JournalEntry, JournalTransaction, audit
from bountybot.rules import (
    Actor,
    Bounty,
    Claim,
    Comment,
    Decision,
    Event,
    IssueRef,
    LabelAdded,
    Link,
    LinkClosed,
    LinkOpened,
    Message,
    Payout,
    Pledge,
    Policy,
    decide_comment,
    decide_event,
)

ISSUE = IssueRef("github", "commons/garden", 7, "Add a seed library", "https://github.com/commons/garden/issues/7")


class DuplicateKey(AssertionError):
    pass


@dataclass
class MemoryBooks:
    bounties: dict[tuple[str, str, int], Bounty] = field(default_factory=dict)
    journal: list[JournalTransaction] = field(default_factory=list)
    sent: list[tuple[int | None, Message]] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def get(self, issue: IssueRef) -> Bounty | None:
        return self.bounties.get((issue.forge, issue.repo, issue.number))

    def apply(self, decision: Decision, issue: IssueRef) -> None:
        b = decision.bounty
        if b is None:
            return
        objs: list[Bounty | Pledge | Claim | Link | Payout] = [
            b, *b.pledges, *b.claims, *b.links, *b.payouts]
        for obj in objs:
            if obj.id is None:
                obj.id = next(self._ids)
        keys = {t.key for t in self.journal}
        for posting in decision.postings:
            key = posting.key()
            if key in keys:
                raise DuplicateKey(key)
            keys.add(key)
            entries = tuple(JournalEntry(*e) for e in posting.entries(b.id))
            self.journal.append(JournalTransaction(key, posting.kind, b.id, entries))
        self.bounties[(issue.forge, issue.repo, issue.number)] = b
        self.sent += [(b.id, m) for m in decision.messages]

    def audit(self) -> AuditReport:
        return audit(list(self.bounties.values()), self.journal)

    def balance(self, account: str) -> int:
        return sum(e.minor for t in self.journal for e in t.entries if e.account == account)


class Story:
    """A bounty told step by step: people comment, time passes, the forge sends events."""

    def __init__(self, policy: Policy | None = None, issue: IssueRef = ISSUE,
                 maintainers: frozenset[str] = frozenset({"maya"})) -> None:
        self.policy = policy or Policy()
        self.issue = issue
        self.books = MemoryBooks()
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        self.maintainers = maintainers
        self._comments = itertools.count(1000)

    @property
    def task(self) -> Bounty:
        b = self.books.get(self.issue)
        assert b is not None, "no task yet"
        return b

    def actor(self, login: str) -> Actor:
        return Actor(login, is_maintainer=login in self.maintainers)

    def say(self, login: str, body: str) -> Decision:
        comment = Comment(str(next(self._comments)), self.actor(login), body)
        decision = decide_comment(self.books.get(self.issue), self.issue, comment, self.policy,
                                  self.now)
        self.books.apply(decision, self.issue)
        return decision

    def event(self, event: Event, actor: str | None = None) -> Decision:
        decision = decide_event(self.books.get(self.issue), self.issue, event, self.policy,
                                self.now, self.actor(actor) if actor else None)
        self.books.apply(decision, self.issue)
        return decision

    def wait(self, days: float) -> None:
        self.now += timedelta(days=days)


def merged_story(fee_bp: int = 0, release_after_days: int = 0) -> Story:
    """alice 60 (pledge 2) and bob 40 (pledge 3) fund the goal of 100; carol claims, and her
    pull request #12 is merged: with a fee of `fee_bp`, her payout waits `release_after_days`."""
    story = Story(Policy(fee_bp=fee_bp, release_after_days=release_after_days))
    story.event(LabelAdded())
    story.say("maya", "/goal 100")
    story.say("alice", "/pledge 60")
    story.say("bob", "/pledge 40")
    story.say("carol", "/claim")
    story.event(LinkOpened(12, "carol"))
    story.event(LinkClosed(12, "carol", merged=True))
    return story


def replies(decision: Decision) -> list[str]:
    return [m.text or "" for m in decision.messages if m.kind == "reply"]


def notices(decision: Decision) -> list[str]:
    return [m.text or "" for m in decision.messages if m.kind == "notice"]


def reacted(decision: Decision) -> bool:
    return any(m.kind == "reaction" for m in decision.messages)
