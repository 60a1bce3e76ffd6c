"""What the payment provider tells the rules, beyond confirmed pledges and paid payouts: a
payment that never came, a backer's bank disputing a payment, a payout waiting for the
developer's account; and `/payout-account`, which asks the provider for an onboarding link."""

from __future__ import annotations

from bountybot.i18n import register
from bountybot.money import format_money
from bountybot.providers.base import PaymentKind, PaymentRequest
from bountybot.rules.pledges import release
from bountybot.rules.work import Refused, Work
from bountybot.states import PayoutState, PledgeState

register(
    "payout_account.manual",
    "Payouts on this service are paid by hand by its operators, so there is no payout account to"
    " set up: once a payout is due, they contact you.",
    "Sur ce service les versements sont faits à la main par ses opérateurs : il n'y a pas de"
    " compte de versement à configurer. Une fois un versement dû, ils vous contactent.",
)
register(
    "payout_account.link",
    "@{developer}, set up the account your payouts are sent to here (Stripe's page; the link"
    " works once and for a few minutes — write `/payout-account` again for a new one): {url}",
    "@{developer}, configurez ici le compte sur lequel vos versements sont envoyés (page de"
    " Stripe ; le lien ne sert qu'une fois et quelques minutes — écrivez de nouveau"
    " `/payout-account` pour en recevoir un autre) : {url}",
)
register(
    "payout_account.ready",
    "@{developer}, your payout account is ready: your payouts are sent to it as soon as they are"
    " due.",
    "@{developer}, votre compte de versement est prêt : vos versements y sont envoyés dès qu'ils"
    " sont dus.",
)
register(
    "payout_account.unavailable",
    "@{developer}, the payout account could not be set up just now ({error}). Write"
    " `/payout-account` again in a while.",
    "@{developer}, le compte de versement n'a pas pu être configuré pour l'instant ({error})."
    " Écrivez de nouveau `/payout-account` dans un moment.",
)
register(
    "payout.awaiting_account",
    "@{developer}, your payout of {amount} is due. To receive it, write `/payout-account` and set"
    " up the account it is paid to (a few minutes on Stripe's site): it is sent as soon as the"
    " account is ready.",
    "@{developer}, votre versement de {amount} est dû. Pour le recevoir, écrivez"
    " `/payout-account` et configurez le compte sur lequel il est versé (quelques minutes sur le"
    " site de Stripe) : il est envoyé dès que le compte est prêt.",
)
register(
    "pledge.payment_unavailable",
    "@{backer}, the payment page for your pledge of {amount} could not be made ({error}), so the"
    " pledge is dropped and nothing was charged. Please `/pledge` again in a while.",
    "@{backer}, la page de paiement de votre promesse de {amount} n'a pas pu être créée"
    " ({error}) : la promesse est abandonnée et rien n'a été prélevé. Vous pouvez refaire"
    " `/pledge` dans un moment.",
)
register(
    "pledge.payment_disputed",
    "The payment of @{backer}'s pledge ({amount}) is disputed with their bank ({reason}). The"
    " operators of this service are told; Stripe holds the amount until the bank decides.",
    "Le paiement de la promesse de @{backer} ({amount}) est contesté auprès de sa banque"
    " ({reason}). Les opérateurs de ce service sont prévenus ; Stripe retient le montant"
    " jusqu'à la décision de la banque.",
)


def request_payout_account(w: Work, comment_id: str, revision: str | None) -> None:
    """`/payout-account`: the provider makes (or finds) the developer's account and the bot
    replies with a fresh onboarding link. Needs no task: any issue the bot reads will do."""
    if not w.policy.provider.moves_money:
        raise Refused("payout_account.manual")
    assert w.actor is not None
    w.pay(PaymentRequest(PaymentKind.ACCOUNT, login=w.actor.login, comment_id=comment_id,
                         revision=revision))


def lapse_pledge(w: Work, pledge_id: int, why: str, error: str | None = None) -> None:
    """A pending pledge whose payment never came (the checkout expired or could not be made):
    it is withdrawn; no money moved. Anything else is left as it is."""
    task = w.task()
    pledge = next((p for p in task.pledges if p.id == pledge_id), None)
    if pledge is None or pledge.state != PledgeState.PENDING:
        return
    release(w, pledge, PledgeState.WITHDRAWN)
    w.trail("pledge.lapsed", backer=pledge.backer, why=why)
    if error is not None:
        w.notice("pledge.payment_unavailable", backer=pledge.backer,
                 amount=format_money(pledge.amount, w.policy.locale), error=error[:200])


def payment_disputed(w: Work, pledge_id: int, reason: str) -> None:
    """The backer's bank disputes the payment of a pledge: on the record and on the issue. The
    books do not move: the bank has not decided, and the escrow still owes what it holds."""
    task = w.task()
    pledge = next((p for p in task.pledges if p.id == pledge_id), None)
    if pledge is None:
        return
    w.trail("pledge.payment_disputed", backer=pledge.backer, amount=pledge.amount.minor,
            reason=reason[:200])
    w.notice("pledge.payment_disputed", backer=pledge.backer,
             amount=format_money(pledge.amount, w.policy.locale), reason=reason[:200])


def await_account(w: Work, payout_id: int) -> None:
    """A due payout cannot be sent: its developer has no ready account. Say what to do."""
    payout = w.task().payout(payout_id)
    if payout is None or payout.state != PayoutState.PENDING:
        return
    w.trail("payout.awaiting_account", developer=payout.developer, amount=payout.amount.minor)
    w.notice("payout.awaiting_account", developer=payout.developer,
             amount=format_money(payout.amount, w.policy.locale))
