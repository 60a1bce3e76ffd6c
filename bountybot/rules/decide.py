"""The entry points of the rules: a comment or an event, plus the bounty, gives a decision.

Pure functions: they read nothing but their arguments (the clock is one of them) and change
nothing but the copy they return, so every rule is tested without a database or a forge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from bountybot.commands import Command, CommandName, CommandRefusal, help_text, parse_comment
from bountybot.rules import claims, payments, payouts, pledges, release, tasks
from bountybot.rules.model import Actor, Bounty, IssueRef
from bountybot.rules.policy import Policy
from bountybot.rules.summary import status_text
from bountybot.rules.work import Decision, Message, Refused, Work


@dataclass(frozen=True, slots=True)
class Comment:
    """A new issue comment (or an edit that adds commands)."""

    id: str
    author: Actor
    body: str
    # Set for an edit: the bot answers the commands an edit adds, once per edit.
    revision: str | None = None
    # For an edit, the text before it (as the forge said), so that the commands it already
    # held are not applied again.
    previous: str | None = None
    # The text was read from the forge's API (reconciliation, or a GitLab note confirmed by
    # the worker), not only from a webhook payload.
    verified: bool = False
    # Logins the forge says do not exist (asked by the worker for /award): nobody is paid
    # under a name that is no account.
    unknown_users: frozenset[str] = frozenset()


# Normalized events, as the forge adapters produce them and the sweeps raise them.
@dataclass(frozen=True, slots=True)
class LabelAdded:
    pass


@dataclass(frozen=True, slots=True)
class LabelRemoved:
    pass


@dataclass(frozen=True, slots=True)
class LabelAbsent:
    """The issue's labels, as a forge that sends the whole list (Forgejo), lack the bot's: a
    removal if the task carried the label, else nothing (a task opened by `/goal`)."""


@dataclass(frozen=True, slots=True)
class IssueClosed:
    not_planned: bool


@dataclass(frozen=True, slots=True)
class IssueDeleted:
    """The issue is gone from the forge: the bounty is cancelled (refunded) unless claimed."""


@dataclass(frozen=True, slots=True)
class IssueRetitled:
    title: str


@dataclass(frozen=True, slots=True)
class LinkOpened:
    """Pull request `number` says it closes the issue. `repo` is empty when the pull request
    is in the task's own repo, else the path of the other repo (of the same forge) it is in."""

    number: int
    author: str
    url: str | None = None
    repo: str = ""


@dataclass(frozen=True, slots=True)
class LinkClosed:
    """Pull request `number` was closed, merged or not. `only_linked`: what it closes was read
    after the fact (reconciliation, from a text that may have been edited since the merge),
    so the merge counts only for a task it was linked to while open."""

    number: int
    author: str
    merged: bool
    url: str | None = None
    repo: str = ""
    only_linked: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: deadlines and claim expiry are due (raised by the sweeps)."""


@dataclass(frozen=True, slots=True)
class PledgeConfirmed:
    """A maintainer saw a pending pledge's money arrive; `reference` (a transfer's id, a
    receipt...) goes into the audit trail."""

    pledge_id: int
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class PayoutPaid:
    payout_id: int
    reference: str


@dataclass(frozen=True, slots=True)
class PayoutFailed:
    payout_id: int
    error: str


@dataclass(frozen=True, slots=True)
class PledgeLapsed:
    """The payment of a pending pledge never came: its checkout expired (`error` None), or
    could not be made (`error` says why, and the backer is told)."""

    pledge_id: int
    why: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentDisputed:
    """The backer's bank disputes the payment of a pledge."""

    pledge_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PayoutAwaitingAccount:
    """A due payout waits for its developer to set up a payout account."""

    payout_id: int


Event = (LabelAdded | LabelRemoved | LabelAbsent | IssueClosed | IssueDeleted | IssueRetitled
         | LinkOpened
         | LinkClosed | Tick | PledgeConfirmed | PayoutPaid | PayoutFailed | PledgeLapsed
         | PaymentDisputed | PayoutAwaitingAccount)


def is_bot(actor: Actor, policy: Policy) -> bool:
    """The bot never acts on its own comments, nor on any other bot's."""
    login = actor.login.lower()
    return actor.is_bot or login == policy.bot_login.lower() or login.endswith("[bot]")


# A reply holds at most a dozen sentences (a comment's commands are capped); this bound only
# guards against a sentence that quotes too much. The outbox cuts every body to the forge's
# own limit as well.
MAX_REPLY = 20_000

MAINTAINER_COMMANDS = frozenset({CommandName.GOAL, CommandName.DEADLINE, CommandName.CANCEL,
                                 CommandName.AWARD, CommandName.DISPUTE})


def read_commands(body: str, policy: Policy) -> list[Command | CommandRefusal]:
    """The command lines of a comment's `body` under `policy`: read, or refused with why."""
    return list(_read_commands(body, policy.bot_login, policy.currency, policy.min_pledge,
                               policy.max_pledge))


# The worker reads a comment's commands up to four times (whether to ask the forge, which lines
# are new, deciding); the commands are immutable, so the last comments read are kept.
@lru_cache(maxsize=256)
def _read_commands(body: str, bot_login: str, currency: str, min_pledge: int | None,
                   max_pledge: int | None) -> tuple[Command | CommandRefusal, ...]:
    return tuple(parse_comment(body, bot_login=bot_login, currency=currency,
                               min_pledge=min_pledge, max_pledge=max_pledge))


def needs_maintainer(comment: Comment, policy: Policy) -> bool:
    """Whether deciding on this comment needs to know if its author maintains the repo, so the
    adapter asks the forge only then (one API call saved per ordinary /pledge)."""
    if is_bot(comment.author, policy):
        return False
    for item in read_commands(comment.body, policy):
        if isinstance(item, Command) and (
                item.name in MAINTAINER_COMMANDS
                or (item.name == CommandName.UNCLAIM and item.target is not None
                    and item.target.lower() != comment.author.login.lower())):
            return True
    return False


def _due(w: Work) -> None:
    """Apply what time has made due before anything else happens to the task."""
    if w.bounty is not None:
        tasks.expire_deadline(w)
        claims.expire_claims(w)
        release.remind_claims(w)
        release.release_payouts(w)


# A flat dispatch, an arm a command: the table reads best whole.
def _apply(w: Work, issue: IssueRef, cmd: Command, comment_id: str,  # noqa: C901
           revision: str | None = None) -> None:
    name = cmd.name
    if name == CommandName.HELP:
        w.words.append(help_text(w.policy.locale, w.policy.bot_login))
    elif name == CommandName.STATUS:
        w.words.append(status_text(w.task(), w.policy.locale))
    elif name == CommandName.GOAL:
        assert cmd.amount is not None
        tasks.set_goal(w, issue, cmd.amount)
    elif name == CommandName.DEADLINE:
        assert cmd.deadline is not None
        tasks.set_deadline(w, cmd.deadline)
    elif name == CommandName.CANCEL:
        tasks.require_maintainer(w, "cancel")
        if release.disputed(w):
            release.cancel_disputed(w)
        else:
            tasks.cancel(w, "/cancel", by_command=True)
    elif name == CommandName.PLEDGE:
        assert cmd.amount is not None
        pledges.record_pledge(w, cmd.amount, comment_id)
    elif name == CommandName.WITHDRAW:
        pledges.withdraw(w)
    elif name == CommandName.CLAIM:
        claims.record_claim(w)
    elif name == CommandName.UNCLAIM:
        claims.unclaim(w, cmd.target)
    elif name == CommandName.AWARD:
        tasks.require_maintainer(w, "award")
        if release.disputed(w):
            release.award_disputed(w, cmd.shares)
        else:
            payouts.award(w, cmd.shares)
    elif name == CommandName.DISPUTE:
        release.dispute(w, cmd.text or "")
    elif name == CommandName.PAYOUT_ACCOUNT:
        payments.request_payout_account(w, comment_id, revision)
    else:  # pragma: no cover - parse_comment only returns the names above
        raise AssertionError(name)


def _finish(w: Work) -> Decision:
    decision = w.decision()
    if decision.bounty is not None and decision.changed:
        decision.messages.append(Message("summary"))
    return decision


def decide_comment(bounty: Bounty | None, issue: IssueRef, comment: Comment, policy: Policy,
                   now: datetime) -> Decision:
    """Apply the commands of one comment, in order; one reaction and at most one reply."""
    if is_bot(comment.author, policy):
        return Decision(bounty)
    items = read_commands(comment.body, policy)
    w = Work(bounty, policy, now, comment.author)
    w.unknown_users = comment.unknown_users
    if not items:
        return Decision(bounty)
    _due(w)
    accepted = 0
    for item in items:
        if isinstance(item, CommandRefusal):
            w.words.append(item.message(policy.locale))
            w.trail("command.refused", line=item.raw[:200], reason=item.code)
            continue
        point = w.checkpoint()
        try:
            _apply(w, issue, item, comment.id, comment.revision)
        except Refused as refusal:
            w.restore(point)
            w.words.append(refusal.message(policy.locale))
            w.trail("command.refused", line=item.raw[:200], reason=refusal.key)
        else:
            accepted += 1
            w.trail(f"command.{item.name}", line=item.raw[:200])
    if accepted:
        w.say(Message("reaction", comment_id=comment.id, revision=comment.revision))
    if w.words:
        w.say(Message("reply", comment_id=comment.id, text="\n\n".join(w.words)[:MAX_REPLY],
                      revision=comment.revision))
    return _finish(w)


def decide_event(bounty: Bounty | None, issue: IssueRef, event: Event, policy: Policy,
                 now: datetime, actor: Actor | None = None) -> Decision:
    """Apply one forge or clock event. Events about issues without a task change nothing,
    except the label, which creates the task. A refusal here (e.g. marking a paid payout paid
    again) is raised to the caller: there is no comment to answer."""
    w = Work(bounty, policy, now, actor)
    if isinstance(event, LabelAdded):
        tasks.labelled(w, issue)
        return _finish(w)
    if bounty is None:
        return Decision(None)
    _due(w)
    _apply_event(w, event)
    return _finish(w)


def _apply_event(w: Work, event: Event) -> None:  # noqa: C901 - a flat dispatch, an arm an event
    match event:
        case LabelRemoved():
            tasks.cancel(w, "label removed", by_command=False)
        case LabelAbsent():
            if w.task().labelled:
                tasks.cancel(w, "label removed", by_command=False)
        case IssueClosed(not_planned=True):
            tasks.cancel(w, "closed as not planned", by_command=False)
        case IssueClosed(not_planned=False):
            tasks.issue_closed_completed(w)
        case IssueDeleted():
            tasks.cancel(w, "issue deleted", by_command=False)
        case IssueRetitled(title):
            tasks.retitle(w, title)
        case LinkOpened(number, author, url, repo):
            claims.link_opened(w, number, author, url, repo)
        case LinkClosed(number, author, True, url, repo, only_linked):
            payouts.merged(w, number, author, url, repo, only_linked=only_linked)
        case LinkClosed(number, _author, False, _url, repo):
            claims.link_closed(w, number, repo)
        case Tick():
            pass
        case PledgeConfirmed(pledge_id, reference):
            pledges.confirm_pledge(w, pledge_id, reference)
        case PayoutPaid(payout_id, reference):
            payouts.mark_paid(w, payout_id, reference)
        case PayoutFailed(payout_id, error):
            payouts.mark_failed(w, payout_id, error)
        case PledgeLapsed(pledge_id, why, error):
            payments.lapse_pledge(w, pledge_id, why, error)
        case PaymentDisputed(pledge_id, reason):
            payments.payment_disputed(w, pledge_id, reason)
        case PayoutAwaitingAccount(payout_id):
            payments.await_account(w, payout_id)
