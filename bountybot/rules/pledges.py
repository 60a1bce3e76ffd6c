"""Pledges: backers put money toward a task, withdraw it before a claim, get it back on a cancel."""

from __future__ import annotations

from bountybot.i18n import register
from bountybot.ledger import ESCROW, backer_account, move
from bountybot.money import Money, format_money
from bountybot.providers.base import PaymentKind, PaymentRequest
from bountybot.rules.model import Pledge, same_login
from bountybot.rules.work import Refused, Work
from bountybot.states import FINAL_TASK_STATES, PledgeState, TaskState

register(
    "pledge.task_over",
    "This bounty is {state}: it takes no more pledges.",
    "Cette prime est {state} : elle ne prend plus de promesses de don.",
)
register(
    "pledge.payment_link",
    "Thanks @{backer}! To complete your pledge of {amount}, pay here: {url}",
    "Merci @{backer} ! Pour finaliser votre promesse de {amount}, payez ici : {url}",
)
register(
    "withdraw.nothing",
    "@{backer}, you have no pledge on this bounty to withdraw.",
    "@{backer}, vous n'avez aucune promesse de don à retirer sur cette prime.",
)
register(
    "withdraw.locked",
    "@{backer}, pledges can no longer be withdrawn: @{developer} has claimed the task and the"
    " money is locked while they work.",
    "@{backer}, les promesses de don ne peuvent plus être retirées : @{developer} a réservé la"
    " tâche et l'argent est bloqué pendant son travail.",
)
register(
    "withdraw.over",
    "This bounty is {state}: there is nothing left to withdraw.",
    "Cette prime est {state} : il n'y a plus rien à retirer.",
)
register(
    "pledge.confirm_state",
    "Pledge {pledge} is {state}: only a pending pledge can be confirmed.",
    "La promesse {pledge} est {state} : seule une promesse en attente peut être confirmée.",
)


def refresh_funding(w: Work, why: str) -> None:
    """Move between open and funded as the held money crosses the goal."""
    task = w.task()
    if task.state == TaskState.OPEN and task.funded_enough():
        w.move_task(TaskState.FUNDED, why)
    elif task.state == TaskState.FUNDED and not task.funded_enough():
        w.move_task(TaskState.OPEN, why)


def hold(w: Work, pledge: Pledge) -> None:
    """The money of a pledge is in escrow: record the move and the new state."""
    task = w.task()
    w.move_pledge(pledge, PledgeState.HELD)
    w.post(move("pledge.held", pledge, pledge.amount, backer_account(task.forge, pledge.backer),
                ESCROW, memo=f"{pledge.backer} pledges"))


def release(w: Work, pledge: Pledge, new: PledgeState) -> None:
    """Give a pledge back (withdrawn or refunded); held money leaves the escrow for the backer."""
    task = w.task()
    was_held = pledge.state == PledgeState.HELD
    if new == PledgeState.REFUNDED and not was_held:
        # Nothing was received for a pending pledge, so there is nothing to refund.
        new = PledgeState.WITHDRAWN
    w.move_pledge(pledge, new)
    if was_held:
        kind = "pledge.refunded" if new == PledgeState.REFUNDED else "pledge.withdrawn"
        w.post(move(kind, pledge, pledge.amount, ESCROW,
                    backer_account(task.forge, pledge.backer), memo=f"back to {pledge.backer}"))
        give_back(w, pledge)


def give_back(w: Work, pledge: Pledge) -> None:
    """Money that went through the provider goes back the same way, in full."""
    if w.policy.provider.moves_money:
        w.pay(PaymentRequest(PaymentKind.REFUND, pledge))


def refund_all(w: Work) -> None:
    for pledge in w.task().pledges:
        if pledge.state in (PledgeState.HELD, PledgeState.PENDING):
            release(w, pledge, PledgeState.REFUNDED)


def record_pledge(w: Work, amount: Money, comment_id: str | None) -> None:
    task = w.task()
    if task.state in FINAL_TASK_STATES:
        raise Refused("pledge.task_over", state=task.state.value)
    assert w.actor is not None
    start = w.policy.provider.start_pledge(w.actor.login, amount.minor, amount.currency)
    pledge = Pledge(w.actor.login, amount, PledgeState.PENDING, w.now, comment_id)
    task.pledges.append(pledge)
    w.trail("pledge.pending", backer=pledge.backer, amount=amount.minor)
    if start.state == PledgeState.HELD:
        hold(w, pledge)
        refresh_funding(w, "pledge")
    if start.checkout:
        w.pay(PaymentRequest(PaymentKind.CHECKOUT, pledge, comment_id=comment_id))
    if start.payment_url:
        w.reply("pledge.payment_link", backer=pledge.backer,
                    amount=format_money(amount, w.policy.locale), url=start.payment_url)


def withdraw(w: Work) -> None:
    task = w.task()
    assert w.actor is not None
    mine = [p for p in task.pledges
            if same_login(p.backer, w.actor.login)
            and p.state in (PledgeState.PENDING, PledgeState.HELD)]
    if task.state in FINAL_TASK_STATES:
        raise Refused("withdraw.over", state=task.state.value)
    if not mine:
        raise Refused("withdraw.nothing", backer=w.actor.login)
    claim = task.live_claim()
    if claim is not None:
        raise Refused("withdraw.locked", backer=w.actor.login, developer=claim.developer)
    for pledge in mine:
        release(w, pledge, PledgeState.WITHDRAWN)
    refresh_funding(w, "withdraw")


def confirm_pledge(w: Work, pledge_id: int, reference: str | None = None) -> None:
    """A maintainer saw the money of a pending pledge arrive (manual_confirm)."""
    task = w.task()
    pledge = next((p for p in task.pledges if p.id == pledge_id), None)
    if pledge is None or pledge.state != PledgeState.PENDING:
        raise Refused("pledge.confirm_state", pledge=pledge_id,
                      state=pledge.state.value if pledge else "unknown")
    if task.state in FINAL_TASK_STATES:
        raise Refused("pledge.task_over", state=task.state.value)
    w.trail("pledge.confirmed", pledge=pledge_id, backer=pledge.backer,
            amount=pledge.amount.minor, reference=reference)
    hold(w, pledge)
    refresh_funding(w, "confirm")
