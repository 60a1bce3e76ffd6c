"""Claims: a developer takes a funded task, others wait in line; links put a claim in review."""

from __future__ import annotations

from datetime import timedelta

from bountybot.i18n import register
from bountybot.money import format_money
from bountybot.rules.model import Claim, Link, same_login
from bountybot.rules.work import Refused, Work
from bountybot.states import ClaimState, LinkState, TaskState

register(
    "claim.not_funded",
    "This task is not funded yet ({held} of {goal}): it can be claimed once it reaches its goal.",
    "Cette tâche n'est pas encore financée ({held} sur {goal}) : elle pourra être réservée une"
    " fois son objectif atteint.",
)
register(
    "claim.no_money",
    "Nobody has pledged to this task yet: it can be claimed once it holds money.",
    "Personne n'a encore promis de don pour cette tâche : elle pourra être réservée dès qu'elle"
    " aura des fonds.",
)
register(
    "claim.over",
    "This bounty is {state}: it can no longer be claimed.",
    "Cette prime est {state} : elle ne peut plus être réservée.",
)
register(
    "claim.already_yours",
    "@{developer}, you already hold the claim on this task (until {expires}).",
    "@{developer}, vous avez déjà réservé cette tâche (jusqu'au {expires}).",
)
register(
    "claim.already_yours_review",
    "@{developer}, you already hold the claim on this task; it is in review, so it does not"
    " expire.",
    "@{developer}, vous avez déjà réservé cette tâche ; elle est en relecture, la réservation"
    " n'expire donc pas.",
)
register(
    "claim.already_waiting",
    "@{developer}, you are already number {position} on the waiting list.",
    "@{developer}, vous êtes déjà numéro {position} sur la liste d'attente.",
)
register(
    "unclaim.not_yours",
    "Only the claimant or a maintainer can release a claim; to release your own, write `/unclaim`.",
    "Seul le développeur qui a réservé la tâche ou un mainteneur peut libérer la réservation ;"
    " pour libérer la vôtre, écrivez `/unclaim`.",
)
register(
    "unclaim.nothing",
    "@{developer} holds no claim on this task and is not on its waiting list.",
    "@{developer} n'a pas réservé cette tâche et n'est pas sur sa liste d'attente.",
)
register(
    "claim.promoted",
    "@{developer}, the claim on this task is yours now, until {expires}. Write `/unclaim` if you"
    " no longer want it.",
    "@{developer}, la tâche est à vous maintenant, jusqu'au {expires}. Écrivez `/unclaim` si vous"
    " n'en voulez plus.",
)
register(
    "claim.expired",
    "The claim of @{developer} has expired: no pull request came within {days} days.",
    "La réservation de @{developer} a expiré : aucune demande de fusion en {days} jours.",
)


def new_claim(w: Work, developer: str) -> Claim:
    days = timedelta(days=w.policy.claim_days)
    claim = Claim(developer, ClaimState.ACTIVE, w.now, w.now + days, remind_at=w.now + days / 2)
    w.task().claims.append(claim)
    w.trail("claim.active", developer=developer)
    return claim


def record_claim(w: Work) -> None:
    task = w.task()
    assert w.actor is not None
    login = w.actor.login
    if task.state in (TaskState.DONE, TaskState.CANCELLED, TaskState.EXPIRED):
        raise Refused("claim.over", state=task.state.value)
    claim = task.live_claim()
    if claim is None:
        if task.state != TaskState.FUNDED:
            if task.goal is None:
                raise Refused("claim.no_money")
            goal = task.goal
            raise Refused("claim.not_funded",
                          held=format_money(task.held(), w.policy.locale),
                          goal=format_money(goal, w.policy.locale))
        new_claim(w, login)
        w.move_task(TaskState.CLAIMED, "claim")
        return
    if same_login(claim.developer, login):
        if claim.expires_at is None:  # in review: the clock is stopped
            raise Refused("claim.already_yours_review", developer=login)
        # The datetime itself: `translate` writes it for the locale ("December 7, 2026").
        raise Refused("claim.already_yours", developer=login, expires=claim.expires_at)
    position = _waiting_at(task.waiting, login)
    if position is not None:
        raise Refused("claim.already_waiting", developer=login, position=position + 1)
    task.waiting.append(login)
    w.trail("waiting.joined", developer=login, position=len(task.waiting))


def _waiting_at(waiting: list[str], login: str) -> int | None:
    for i, name in enumerate(waiting):
        if same_login(name, login):
            return i
    return None


def end_claim(w: Work, claim: Claim, new: ClaimState, why: str) -> None:
    """End a live claim and hand the task to the next in line, or back to funded."""
    task = w.task()
    w.move_claim(claim, new)
    if task.waiting:
        nxt = task.waiting.pop(0)
        promoted = new_claim(w, nxt)
        w.move_task(TaskState.CLAIMED, why)
        w.notice("claim.promoted", developer=nxt, expires=promoted.expires_at)
        # The new claimant may already have a pull request open.
        if any(link.own and same_login(link.author, nxt) and link.state == LinkState.OPEN
               for link in task.links):
            to_review(w, promoted)
    else:
        w.move_task(TaskState.FUNDED, why)


def unclaim(w: Work, target: str | None) -> None:
    task = w.task()
    assert w.actor is not None
    login = w.actor.login
    who = target or login
    revoked = not same_login(who, login)
    if revoked and not w.actor.is_maintainer:
        raise Refused("unclaim.not_yours")
    claim = task.live_claim()
    if claim is not None and same_login(claim.developer, who):
        end_claim(w, claim, ClaimState.REVOKED if revoked else ClaimState.RELEASED,
                  "revoke" if revoked else "unclaim")
        return
    position = _waiting_at(task.waiting, who)
    if position is not None:
        who = task.waiting.pop(position)
        w.trail("waiting.left", developer=who)
        return
    raise Refused("unclaim.nothing", developer=who)


def to_review(w: Work, claim: Claim) -> None:
    """The claimant linked a pull request: stop the clock, keeping the time left."""
    if claim.state != ClaimState.ACTIVE:
        return
    if claim.expires_at is not None:
        claim.paused_seconds = max(0, int((claim.expires_at - w.now).total_seconds()))
        claim.expires_at = None
    w.move_claim(claim, ClaimState.IN_REVIEW)
    w.move_task(TaskState.IN_REVIEW, "link")


def back_to_active(w: Work, claim: Claim) -> None:
    """The claimant's last open link was closed unmerged: the clock runs again."""
    w.move_claim(claim, ClaimState.ACTIVE)
    claim.expires_at = w.now + timedelta(seconds=claim.paused_seconds or 0)
    claim.paused_seconds = None
    w.move_task(TaskState.CLAIMED, "link closed")


def _trail_link(w: Work, action: str, link: Link) -> None:
    extra = {"repo": link.repo_path} if link.repo_path else {}
    w.trail(action, number=link.number, author=link.author, **extra)


def link_opened(w: Work, number: int, author: str, url: str | None, repo: str = "") -> None:
    """A pull request says it closes the task. Only one of the task's own repo puts the
    claimant's claim in review: a pull request anyone opens in a repo of their own is shown,
    but must not stop the claim's clock."""
    task = w.task()
    link = task.link(number, repo)
    if link is None:
        link = Link(number, author, LinkState.OPEN, url, repo_path=repo)
        task.links.append(link)
        _trail_link(w, "link.open", link)
    elif link.state != LinkState.OPEN:
        if link.state == LinkState.MERGED:
            return  # a merge is final
        link.state = LinkState.OPEN
        _trail_link(w, "link.reopened", link)
    claim = task.live_claim()
    if link.own and claim is not None and same_login(claim.developer, author):
        to_review(w, claim)


def link_closed(w: Work, number: int, repo: str = "") -> None:
    """A linked pull request was closed without merge."""
    task = w.task()
    link = task.link(number, repo)
    if link is None or link.state != LinkState.OPEN:
        return
    link.state = LinkState.CLOSED
    _trail_link(w, "link.closed", link)
    claim = task.live_claim()
    if (link.own and claim is not None and claim.state == ClaimState.IN_REVIEW
            and same_login(claim.developer, link.author)
            and not any(other.own and same_login(other.author, link.author)
                        and other.state == LinkState.OPEN for other in task.links)):
        back_to_active(w, claim)


def expire_claims(w: Work) -> None:
    """An active claim past its time with no link in review ends; the next in line gets it."""
    task = w.task()
    claim = task.live_claim()
    if (claim is not None and claim.state == ClaimState.ACTIVE
            and claim.expires_at is not None and claim.expires_at <= w.now):
        w.notice("claim.expired", developer=claim.developer, days=w.policy.claim_days)
        end_claim(w, claim, ClaimState.EXPIRED, "claim expired")
