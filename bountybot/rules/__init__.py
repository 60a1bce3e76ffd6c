"""The rules of a bounty, as pure functions: state + event -> new state, postings, messages."""

from bountybot.rules.decide import (
    Comment,
    Event,
    IssueClosed,
    IssueDeleted,
    IssueRetitled,
    LabelAbsent,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
    PaymentDisputed,
    PayoutAwaitingAccount,
    PayoutFailed,
    PayoutPaid,
    PledgeConfirmed,
    PledgeLapsed,
    Tick,
    decide_comment,
    decide_event,
    needs_maintainer,
)
from bountybot.rules.model import Actor, Bounty, Claim, IssueRef, Link, Payout, Pledge
from bountybot.rules.policy import Policy
from bountybot.rules.work import Decision, Message, Refused, Trail

__all__ = [
    "Actor", "Bounty", "Claim", "Comment", "Decision", "Event", "IssueClosed", "IssueDeleted",
    "IssueRef", "IssueRetitled",
    "LabelAbsent", "LabelAdded", "LabelRemoved", "Link", "LinkClosed", "LinkOpened", "Message",
    "PaymentDisputed", "Payout", "PayoutAwaitingAccount", "PayoutFailed", "PayoutPaid", "Pledge",
    "PledgeConfirmed", "PledgeLapsed", "Policy", "Refused", "Tick",
    "Trail", "decide_comment", "decide_event", "needs_maintainer",
]
