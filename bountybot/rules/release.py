"""What time and objections do once the work is merged: reminders, release, disputes.

- A claimant is reminded at half of `claim_days` (the expiry itself is `claims.expire_claims`).
- Payouts created at the merge wait `release_after_days` (`due_at`); a sweep releases them
  once that time has passed (`released_at`), and only released payouts are paid.
- Before the release, a backer of the task or a maintainer may `/dispute <reason>`: the payouts
  are held past their release time until a maintainer decides. `/award` pays as the maintainer
  now says (the held payouts are reversed and new ones made, released at once); `/cancel` gives
  the money back to the backers (payouts reversed, fee returned, every pledge refunded).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bountybot.commands import AwardShare
from bountybot.i18n import register
from bountybot.ledger import ESCROW, FEES, Leg, Posting, backer_account, developer_account, move
from bountybot.money import Money, format_money, sum_money
from bountybot.rules.model import Dispute, Payout
from bountybot.rules.pledges import give_back
from bountybot.rules.shares import split
from bountybot.rules.work import Refused, Work
from bountybot.states import ClaimState, PayoutState, PledgeState, TaskState

register(
    "claim.reminder",
    "@{developer}, a reminder: your claim on this task ends on {expires}. Open a pull request"
    " that closes this issue to keep it (the clock stops while it is in review), or write"
    " `/unclaim` to let someone else take it.",
    "@{developer}, un rappel : votre réservation de cette tâche se termine le {expires}. Ouvrez"
    " une demande de fusion qui ferme ce ticket pour la garder (le décompte s'arrête pendant la"
    " relecture), ou écrivez `/unclaim` pour laisser quelqu'un d'autre la prendre.",
)
register(
    "payout.released",
    "The waiting period is over with no dispute: the payouts are released ({payouts}).",
    "Le délai d'attente est passé sans contestation : les versements sont libérés ({payouts}).",
)
register(
    "dispute.held",
    "@{by} disputes the payout: \"{reason}\". The payouts are held until a maintainer decides:"
    " `/award @dev` (or a split) to pay, or `/cancel` to refund every backer.",
    "@{by} conteste le versement : « {reason} ». Les versements sont bloqués jusqu'à la décision"
    " d'un mainteneur : `/award @dev` (ou un partage) pour payer, ou `/cancel` pour rembourser"
    " tous les donateurs.",
)
register(
    "dispute.not_done",
    "There is nothing to dispute yet: a payout can be disputed once the work is merged, before"
    " it is released.",
    "Il n'y a rien à contester pour l'instant : un versement peut être contesté une fois le"
    " travail fusionné, avant sa libération.",
)
register(
    "dispute.no_window",
    "Payouts on this repository are released at the merge, so there is no time to dispute"
    " them. Ask a maintainer if something is wrong.",
    "Sur ce dépôt les versements sont libérés dès la fusion : il n'y a pas de délai pour les"
    " contester. Adressez-vous à un mainteneur en cas de problème.",
)
register(
    "dispute.too_late",
    "The payouts of this task were already released: they can no longer be disputed.",
    "Les versements de cette tâche ont déjà été libérés : ils ne peuvent plus être contestés.",
)
register(
    "dispute.already",
    "The payout is already disputed by @{by}; a maintainer decides with `/award` or `/cancel`.",
    "Le versement est déjà contesté par @{by} ; un mainteneur décide avec `/award` ou `/cancel`.",
)
register(
    "dispute.not_backer",
    "Only the backers of this task and its maintainers can dispute its payout.",
    "Seuls les donateurs de cette tâche et ses mainteneurs peuvent contester son versement.",
)
register(
    "dispute.resolved_award",
    "A maintainer decided the dispute: the payouts are released ({payouts}).",
    "Un mainteneur a tranché la contestation : les versements sont libérés ({payouts}).",
)
register(
    "dispute.resolved_cancel",
    "A maintainer decided the dispute: the task is cancelled and every backer is refunded.",
    "Un mainteneur a tranché la contestation : la tâche est annulée et chaque donateur est"
    " remboursé.",
)


def remind_claims(w: Work) -> None:
    """Half of the claim's time has passed: remind the claimant once."""
    claim = w.task().live_claim()
    if (claim is None or claim.state != ClaimState.ACTIVE or claim.remind_at is None
            or claim.remind_at > w.now or claim.expires_at is None
            or claim.expires_at <= w.now):
        return
    claim.remind_at = None
    w.trail("claim.reminded", developer=claim.developer)
    w.notice("claim.reminder", developer=claim.developer,
             expires=claim.expires_at)


def release_time(w: Work) -> tuple[datetime, datetime | None]:
    """(due_at, released_at) for payouts created now."""
    due = w.now + timedelta(days=w.policy.release_after_days)
    return due, (w.now if w.policy.release_after_days == 0 else None)


def _held(w: Work) -> list[Payout]:
    """Payouts made at the merge that are not released yet."""
    return [p for p in w.task().payouts
            if p.state == PayoutState.PENDING and p.released_at is None]


def _listed(w: Work, payouts: list[Payout]) -> str:
    return ", ".join(f"@{p.developer} {format_money(p.amount, w.policy.locale)}"
                     for p in payouts)


def release_payouts(w: Work) -> None:
    """The waiting time after the merge is over and nobody disputes: the payouts are due."""
    task = w.task()
    if task.dispute is not None or task.state != TaskState.DONE:
        return
    ready = [p for p in _held(w) if p.due_at is None or p.due_at <= w.now]
    for payout in ready:
        payout.released_at = w.now
        w.trail("payout.released", developer=payout.developer, amount=payout.amount.minor)
    if ready:
        w.notice("payout.released", payouts=_listed(w, ready))


def dispute(w: Work, reason: str) -> None:
    task = w.task()
    assert w.actor is not None
    login = w.actor.login
    if task.dispute is not None:
        raise Refused("dispute.already", by=task.dispute.by)
    if task.state != TaskState.DONE:
        raise Refused("dispute.not_done")
    held = _held(w)
    if not held:
        if w.policy.release_after_days == 0:
            raise Refused("dispute.no_window")
        raise Refused("dispute.too_late")
    backer = any(p.backer.lower() == login.lower() and p.state == PledgeState.PAID_OUT
                 for p in task.pledges)
    if not (backer or w.actor.is_maintainer):
        raise Refused("dispute.not_backer")
    task.dispute = Dispute(login, reason, w.now)
    w.trail("task.disputed", reason=reason[:200])
    w.reply("dispute.held", by=login, reason=reason[:200])


def disputed(w: Work) -> bool:
    """Whether the task waits for a maintainer's decision on a dispute."""
    task = w.task()
    return task.state == TaskState.DONE and task.dispute is not None and bool(_held(w))


def _reverse(w: Work, payouts: list[Payout]) -> Money:
    """Take the held payouts back into the escrow; returns how much came back."""
    task = w.task()
    for payout in payouts:
        w.move_payout(payout, PayoutState.CANCELLED)
        w.post(move("payout.reversed", payout, payout.amount,
                    developer_account(task.forge, payout.developer), ESCROW,
                    memo="dispute decided"))
    return sum_money((p.amount for p in payouts), task.currency)


def award_disputed(w: Work, shares: tuple[AwardShare, ...]) -> None:
    """A maintainer's `/award` decides a dispute: pay as said now, released at once."""
    task = w.task()
    held = _held(w)
    payable = sum_money((p.amount for p in held), task.currency)
    parts = split(w, shares, payable, fee_note=False)
    _reverse(w, held)
    made = []
    for developer, amount in parts:
        payout = Payout(developer, amount, PayoutState.PENDING, w.now, due_at=w.now,
                        released_at=w.now)
        task.payouts.append(payout)
        made.append(payout)
        w.trail("payout.pending", developer=developer, amount=amount.minor)
        w.post(move("payout.awarded", payout, amount, ESCROW,
                    developer_account(task.forge, developer), memo="dispute decided"))
    task.dispute = None
    w.trail("dispute.resolved", decision="award")
    w.notice("dispute.resolved_award", payouts=_listed(w, made))


def cancel_disputed(w: Work) -> None:
    """A maintainer's `/cancel` decides a dispute: the money goes back to the backers."""
    task = w.task()
    held = _held(w)
    if len(held) != len([p for p in task.payouts if p.state != PayoutState.CANCELLED]):
        # Defensive: a payout already released or paid cannot be taken back.
        raise Refused("dispute.too_late")
    back = _reverse(w, held)
    paid_out = [p for p in task.pledges if p.state == PledgeState.PAID_OUT]
    total = sum_money((p.amount for p in paid_out), task.currency)
    fee = total - back
    if fee.minor:
        w.post(Posting("fee.reversed", task, (Leg(FEES, -fee), Leg(ESCROW, fee)),
                       memo="dispute decided"))
    for pledge in paid_out:
        w.move_pledge(pledge, PledgeState.REFUNDED)
        w.post(move("pledge.refunded", pledge, pledge.amount, ESCROW,
                    backer_account(task.forge, pledge.backer), memo=f"back to {pledge.backer}"))
        give_back(w, pledge)
    task.dispute = None
    w.move_task(TaskState.CANCELLED, "dispute")
    w.trail("dispute.resolved", decision="cancel")
    w.notice("dispute.resolved_cancel")
