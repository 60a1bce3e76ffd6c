"""An /award's shares as amounts: who may be paid, and parts that add up to exactly what is
payable (used at the merge, by /award, and when a dispute is decided)."""

from __future__ import annotations

import dataclasses

from bountybot.commands import AwardShare
from bountybot.i18n import register, translate
from bountybot.money import Money, format_money
from bountybot.rules.model import same_login
from bountybot.rules.work import Refused, Work

register(
    "award.mismatch",
    "The shares add up to {given} but the escrow holds {total} to pay out{fee_note}. Give"
    " amounts that add up, percentages that make 100 %, or leave one developer without an amount"
    " to give them the rest: `/award @alice 60% @bob 40%` or `/award @alice 30 @bob`.",
    "Les parts font {given} mais le séquestre contient {total} à verser{fee_note}. Donnez des"
    " montants dont la somme tombe juste, des pourcentages qui font 100 %, ou laissez un"
    " développeur sans montant pour qu'il reçoive le reste : `/award @alice 60% @bob 40%` ou"
    " `/award @alice 30 @bob`.",
)

register(
    "award.fee_note",
    " (after the {fee} fee)",
    " (après les frais de {fee})",
)

register(
    "award.nothing_left",
    "The other shares take all of the {total} to pay out: nothing is left for @{developer}.",
    "Les autres parts prennent tout le montant à verser ({total}) : il ne reste rien pour"
    " @{developer}.",
)

register(
    "award.bot",
    "@{developer} is a bot: it cannot be awarded a bounty. Name the developers who did the work.",
    "@{developer} est un robot : une prime ne peut pas lui être attribuée. Nommez les"
    " développeurs qui ont fait le travail.",
)

register(
    "award.unknown",
    "@{developer} is no account on this forge: check the spelling of the login.",
    "@{developer} n'est pas un compte de cette forge : vérifiez l'orthographe de l'identifiant.",
)


def fee_of(total: Money, fee_bp: int) -> Money:
    """The service fee, rounded down: a backer never pays a fraction of a cent more than stated."""
    return Money(total.minor * fee_bp // 10_000, total.currency)


def _payee(w: Work, login: str) -> str:
    """The login to pay for an /award share: never the bot or another bot, nor a name the
    forge says has no account; written as the task already knows the person (`@DAVE` is the
    @dave who claimed it), so one person has one account in the books."""
    bot = w.policy.bot_login.lower().removesuffix("[bot]")
    name = login.lower()
    if name.removesuffix("[bot]") == bot or name.endswith("[bot]"):
        raise Refused("award.bot", developer=login)
    if any(same_login(login, unknown) for unknown in w.unknown_users):
        raise Refused("award.unknown", developer=login)
    task = w.task()
    known = [c.developer for c in task.claims] + [li.author for li in task.links] + [
        p.backer for p in task.pledges]
    return next((k for k in known if same_login(k, login)), login)


def split(w: Work, shares: tuple[AwardShare, ...], payable: Money, *,
          fee_note: bool = True) -> list[tuple[str, Money]]:
    """Turn /award shares into amounts that add up to exactly `payable`, or refuse."""
    shares = tuple(dataclasses.replace(s, login=_payee(w, s.login)) for s in shares)
    cur = payable.currency
    fixed: dict[str, int] = {}
    rest: str | None = None
    percents: list[str] = []
    for share in shares:
        if share.amount is not None:
            fixed[share.login] = share.amount.minor
        elif share.percent_bp is not None:
            fixed[share.login] = payable.minor * share.percent_bp // 10_000
            percents.append(share.login)
        else:
            rest = share.login
    given = sum(fixed.values())
    if rest is None and percents and all(s.percent_bp is not None for s in shares):
        bp = sum(s.percent_bp or 0 for s in shares)
        if bp == 10_000:
            # Rounding down each percentage leaves a few cents; the first share takes them.
            fixed[percents[0]] += payable.minor - given
            given = payable.minor
    locale = w.policy.locale
    note = ""
    if w.policy.fee_bp and fee_note:
        fee = fee_of(w.task().held(), w.policy.fee_bp)
        note = translate(locale, "award.fee_note", fee=format_money(fee, locale))
    if rest is not None:
        left = payable.minor - given
        if left <= 0:
            raise Refused("award.nothing_left", total=format_money(payable, locale),
                          developer=rest)
        fixed[rest] = left
    elif given != payable.minor:
        raise Refused("award.mismatch", given=format_money(Money(given, cur), locale),
                      total=format_money(payable, locale), fee_note=note)
    order = [s.login for s in shares]
    return [(login, Money(fixed[login], cur)) for login in order if fixed[login] > 0]
