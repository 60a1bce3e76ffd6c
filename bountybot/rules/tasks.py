"""Tasks: created by the label or a maintainer's /goal, funded, cancelled, expired at a deadline."""

from __future__ import annotations

from datetime import date

from bountybot.i18n import register
from bountybot.money import Money, format_money
from bountybot.rules.model import Bounty, IssueRef
from bountybot.rules.pledges import refresh_funding, refund_all
from bountybot.rules.work import Refused, Work
from bountybot.states import FINAL_TASK_STATES, TaskState

register(
    "rules.no_task",
    "This issue has no bounty yet: a maintainer can start one with `/goal <amount>` or the"
    " `{label}` label.",
    "Ce ticket n'a pas encore de prime : un mainteneur peut en ouvrir une avec `/goal <montant>`"
    " ou l'étiquette `{label}`.",
)
register(
    "rules.maintainers_only",
    "Only a maintainer of this repository can use `/{command}`.",
    "Seul un mainteneur de ce dépôt peut utiliser `/{command}`.",
)
register(
    "goal.locked",
    "The goal can no longer change: the task is {state}.",
    "L'objectif ne peut plus changer : la tâche est {state}.",
)
register(
    "deadline.past",
    "The deadline {deadline} is not in the future: write a later date, like `/deadline {example}`.",
    "L'échéance {deadline} n'est pas dans le futur : indiquez une date plus lointaine, comme"
    " `/deadline {example}`.",
)
register(
    "deadline.locked",
    "A deadline only applies while the task is being funded; it is {state} now.",
    "Une échéance ne s'applique que pendant la collecte ; la tâche est {state} maintenant.",
)
register(
    "cancel.claimed",
    "@{developer} has claimed this task: release the claim first with `/unclaim @{developer}`,"
    " then `/cancel`.",
    "@{developer} a réservé cette tâche : libérez d'abord la réservation avec"
    " `/unclaim @{developer}`, puis `/cancel`.",
)
register(
    "cancel.over",
    "This bounty is already {state}.",
    "Cette prime est déjà {state}.",
)
register(
    "task.cancelled",
    "This bounty is cancelled ({why}). Every pledge is refunded in full.",
    "Cette prime est annulée ({why}). Toutes les promesses de don sont intégralement remboursées.",
)
register(
    "task.expired",
    "The funding deadline ({deadline}) has passed below the goal ({held} of {goal}): this bounty"
    " has expired and every pledge is refunded in full.",
    "L'échéance de financement ({deadline}) est passée sans atteindre l'objectif ({held} sur"
    " {goal}) : cette prime a expiré et toutes les promesses de don sont intégralement"
    " remboursées.",
)
register(
    "task.cannot_cancel_claimed",
    "This task is claimed by @{developer}, so it stays open: a maintainer can release the claim"
    " with `/unclaim @{developer}` and then `/cancel`.",
    "Cette tâche est réservée par @{developer} et reste donc ouverte : un mainteneur peut libérer"
    " la réservation avec `/unclaim @{developer}` puis `/cancel`.",
)
register(
    "task.closed_unpaid",
    "The issue was closed, but no merged pull request closed it: a maintainer can pay the work"
    " with `/award @developer`, or `/cancel` to refund the backers.",
    "Le ticket a été fermé sans qu'une demande de fusion fusionnée ne le clôture : un mainteneur"
    " peut payer le travail avec `/award @développeur`, ou `/cancel` pour rembourser.",
)


def require_maintainer(w: Work, command: str) -> None:
    if w.actor is None or not w.actor.is_maintainer:
        raise Refused("rules.maintainers_only", command=command)


def open_task(w: Work, issue: IssueRef, why: str) -> Bounty:
    """The task for this issue, created open when there is none yet."""
    if w.bounty is None:
        w.bounty = Bounty(issue.forge, issue.repo, issue.number, w.policy.currency,
                          title=issue.title, url=issue.url, created_at=w.now)
        w.created = True
        w.trail("task.open", why=why)
    return w.bounty


def labelled(w: Work, issue: IssueRef) -> None:
    """The bot's label is on the issue: the task is opened if there is none, and remembers
    that it carries the label (so a forge that sends only the labels now can tell a removal)."""
    if w.bounty is None:
        open_task(w, issue, "label").labelled = True
    elif not w.bounty.labelled:
        w.bounty.labelled = True
        w.trail("task.labelled")


def set_goal(w: Work, issue: IssueRef, goal: Money) -> None:
    require_maintainer(w, "goal")
    if w.bounty is not None and w.bounty.state not in (TaskState.OPEN, TaskState.FUNDED):
        raise Refused("goal.locked", state=w.bounty.state.value)
    task = open_task(w, issue, "goal")
    task.goal = goal
    w.trail("task.goal", goal=goal.minor)
    refresh_funding(w, "goal")


def set_deadline(w: Work, deadline: date) -> None:
    require_maintainer(w, "deadline")
    task = w.task()
    if task.state not in (TaskState.OPEN, TaskState.FUNDED):
        raise Refused("deadline.locked", state=task.state.value)
    today = w.now.date()
    if deadline <= today:
        example = date(today.year + 1, today.month, min(today.day, 28)).isoformat()
        raise Refused("deadline.past", deadline=deadline.isoformat(), example=example)
    task.deadline = deadline
    w.trail("task.deadline", deadline=deadline.isoformat())


def cancel(w: Work, why: str, *, by_command: bool) -> None:
    """Cancel an open or funded task and refund everyone; a claimed task is not pulled away."""
    task = w.task()
    if task.state in FINAL_TASK_STATES:
        if by_command:
            raise Refused("cancel.over", state=task.state.value)
        return
    claim = task.live_claim()
    if claim is not None:
        if by_command:
            raise Refused("cancel.claimed", developer=claim.developer)
        w.notice("task.cannot_cancel_claimed", developer=claim.developer)
        return
    refund_all(w)
    task.waiting.clear()
    w.move_task(TaskState.CANCELLED, why)
    w.notice("task.cancelled", why=why)


def expire_deadline(w: Work) -> None:
    """All or nothing: below the goal when the deadline day is over, everyone is refunded."""
    task = w.task()
    if (task.deadline is None or task.state != TaskState.OPEN
            or w.now.date() <= task.deadline):
        return
    locale = w.policy.locale
    held = task.held()
    goal = task.goal or held
    refund_all(w)
    w.move_task(TaskState.EXPIRED, "deadline")
    w.notice("task.expired", deadline=task.deadline,
             held=format_money(held, locale), goal=format_money(goal, locale))


def issue_closed_completed(w: Work) -> None:
    """Closed as completed without a merge we saw pay it: say what a maintainer can do."""
    task = w.task()
    if task.state in (TaskState.FUNDED, TaskState.CLAIMED, TaskState.IN_REVIEW):
        w.notice("task.closed_unpaid")


def retitle(w: Work, title: str) -> None:
    task = w.task()
    if title and task.title != title:
        task.title = title
        w.trail("task.title", title=title[:200])
