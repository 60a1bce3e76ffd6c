"""Payouts: at the merge (or a maintainer's /award) the escrow goes to the developers."""

from __future__ import annotations

from bountybot.commands import AwardShare
from bountybot.i18n import register
from bountybot.ledger import ESCROW, EXTERNAL, FEES, Leg, Posting, developer_account, move
from bountybot.money import Money, format_money, to_decimal
from bountybot.rules.claims import link_opened
from bountybot.rules.model import Payout, same_login
from bountybot.rules.release import release_time
from bountybot.rules.shares import fee_of, split
from bountybot.rules.work import Refused, Work
from bountybot.states import (
    FINAL_TASK_STATES,
    ClaimState,
    LinkState,
    PayoutState,
    PledgeState,
    TaskState,
)

register(
    "award.not_funded",
    "This task has not reached its goal ({held} of {goal}): lower the goal with"
    " `/goal {held_plain}` first, or `/cancel` to refund the backers.",
    "Cette tâche n'a pas atteint son objectif ({held} sur {goal}) : baissez d'abord l'objectif"
    " avec `/goal {held_plain}`, ou `/cancel` pour rembourser les donateurs.",
)
register(
    "award.over",
    "This bounty is {state}: there is nothing left to award.",
    "Cette prime est {state} : il n'y a plus rien à attribuer.",
)
register(
    "award.empty",
    "The escrow of this task is empty: there is nothing to award.",
    "Le séquestre de cette tâche est vide : il n'y a rien à attribuer.",
)
register(
    "payout.state",
    "Payout {payout} is {state}: it cannot be marked paid.",
    "Le versement {payout} est {state} : il ne peut pas être marqué comme payé.",
)
register(
    "payout.not_released",
    "Payout {payout} is not released yet (it is due on {due}, unless disputed): it cannot be"
    " paid before.",
    "Le versement {payout} n'est pas encore libéré (il le sera le {due}, sauf contestation) :"
    " il ne peut pas être payé avant.",
)
register(
    "merge.ask_award",
    "Pull request #{number} by @{author} was merged and closes this task, but @{author} did not"
    " hold the claim. A maintainer decides who is paid with `/award @{author}` (or a split,"
    " `/award @{author} 50% @other 50%`), or `/cancel`.",
    "La demande de fusion #{number} de @{author} a été fusionnée et clôt cette tâche, mais"
    " @{author} ne l'avait pas réservée. Un mainteneur décide qui est payé avec `/award @{author}`"
    " (ou un partage, `/award @{author} 50% @autre 50%`), ou `/cancel`.",
)
register(
    "merge.other_repo",
    "Pull request {repo}#{number} by @{author} was merged in another repository and says it"
    " closes this task. A merge elsewhere pays nobody by itself: a maintainer of this repository"
    " who accepts the work pays it with `/award @{author}` (or a split), or `/cancel`.",
    "La demande de fusion {repo}#{number} de @{author} a été fusionnée dans un autre dépôt et dit"
    " clore cette tâche. Une fusion ailleurs ne paie personne d'elle-même : un mainteneur de ce"
    " dépôt qui accepte le travail le paie avec `/award @{author}` (ou un partage), ou `/cancel`.",
)
register(
    "merge.not_funded",
    "Pull request #{number} by @{author} was merged, but this task has not reached its goal"
    " ({held} of {goal}). A maintainer can lower the goal with `/goal` and `/award` it, or"
    " `/cancel` to refund the backers.",
    "La demande de fusion #{number} de @{author} a été fusionnée, mais cette tâche n'a pas atteint"
    " son objectif ({held} sur {goal}). Un mainteneur peut baisser l'objectif avec `/goal` puis"
    " l'attribuer avec `/award`, ou `/cancel` pour rembourser les donateurs.",
)


def complete(w: Work, shares: tuple[AwardShare, ...], why: str) -> None:
    """The work is done: the escrow goes to the developers (less the fee), the task is done."""
    task = w.task()
    total = task.held()
    if total.minor == 0:
        raise Refused("award.empty")
    fee = fee_of(total, w.policy.fee_bp)
    parts = split(w, shares, total - fee)
    legs = [Leg(ESCROW, -total)]
    if fee.minor:
        legs.append(Leg(FEES, fee))
    due_at, released_at = release_time(w)
    for developer, amount in parts:
        payout = Payout(developer, amount, PayoutState.PENDING, w.now, due_at=due_at,
                        released_at=released_at)
        task.payouts.append(payout)
        w.trail("payout.pending", developer=developer, amount=amount.minor)
        legs.append(Leg(developer_account(task.forge, developer), amount))
    w.post(Posting("task.done", task, tuple(legs), memo=why))
    for pledge in task.pledges:
        if pledge.state == PledgeState.HELD:
            w.move_pledge(pledge, PledgeState.PAID_OUT)
        elif pledge.state == PledgeState.PENDING:
            # Money never received cannot be paid out; the promise lapses with the task.
            w.move_pledge(pledge, PledgeState.WITHDRAWN)
    claim = task.live_claim()
    if claim is not None:
        w.move_claim(claim, ClaimState.DONE)
    task.waiting.clear()
    w.move_task(TaskState.DONE, why)


def award(w: Work, shares: tuple[AwardShare, ...]) -> None:
    task = w.task()
    locale = w.policy.locale
    if task.state in FINAL_TASK_STATES:
        raise Refused("award.over", state=task.state.value)
    if task.state == TaskState.OPEN:
        held = task.held()
        goal = task.goal or held
        raise Refused("award.not_funded", held=format_money(held, locale),
                      goal=format_money(goal, locale), held_plain=_plain(held))
    complete(w, shares, "award")


def _plain(amount: Money) -> str:
    return str(to_decimal(amount))


def merged(w: Work, number: int, author: str, url: str | None, repo: str = "", *,
           only_linked: bool = False) -> None:
    """A linked pull request was merged: pay the claimant, or ask a maintainer to /award.
    Only a merge into the task's own repo pays by itself; one in another repo is shown and
    left to a maintainer. `only_linked`: the merge counts only if the pull request was linked
    to this task before (what it closes was read after the fact)."""
    task = w.task()
    link = task.link(number, repo)
    if link is None:
        if only_linked:
            return
        link_opened(w, number, author, url, repo)
        link = task.link(number, repo)
        assert link is not None
    if link.state == LinkState.MERGED:
        return
    link.state = LinkState.MERGED
    w.trail("link.merged", number=number, author=author, **({"repo": repo} if repo else {}))
    if task.state in FINAL_TASK_STATES:
        return
    if not link.own:
        if task.state != TaskState.OPEN:
            w.notice("merge.other_repo", repo=repo, number=number, author=author)
        return
    claim = task.live_claim()
    if claim is not None and same_login(claim.developer, author):
        complete(w, (AwardShare(author),), "merge")
        return
    if task.state == TaskState.OPEN:
        locale = w.policy.locale
        w.notice("merge.not_funded", number=number, author=author,
                 held=format_money(task.held(), locale),
                 goal=format_money(task.goal or task.held(), locale))
        return
    w.notice("merge.ask_award", number=number, author=author)


def mark_paid(w: Work, payout_id: int, reference: str) -> None:
    """Someone paid a developer (manual provider) or the provider confirmed the transfer."""
    task = w.task()
    payout = task.payout(payout_id)
    if payout is None or payout.state in (PayoutState.PAID, PayoutState.CANCELLED):
        raise Refused("payout.state", payout=payout_id,
                      state=payout.state.value if payout else "unknown")
    if payout.released_at is None or task.dispute is not None:
        raise Refused("payout.not_released", payout=payout_id,
                      due=payout.due_at or "?")
    w.move_payout(payout, PayoutState.PAID)
    payout.reference = reference
    payout.paid_at = w.now
    w.post(move("payout.paid", payout, payout.amount,
                developer_account(task.forge, payout.developer), EXTERNAL, memo=reference))


def mark_failed(w: Work, payout_id: int, error: str) -> None:
    task = w.task()
    payout = task.payout(payout_id)
    if payout is None or payout.state != PayoutState.PENDING:
        raise Refused("payout.state", payout=payout_id,
                      state=payout.state.value if payout else "unknown")
    w.move_payout(payout, PayoutState.FAILED)
    w.trail("payout.error", developer=payout.developer, error=error[:200])
