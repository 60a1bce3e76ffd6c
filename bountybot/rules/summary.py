"""The words the bot shows about a task: its one summary comment and the /status reply."""

from __future__ import annotations

import functools
import hashlib
from decimal import Decimal
from urllib.parse import quote

from bountybot.i18n import (
    format_day,
    format_names,
    format_percentage,
    language,
    register,
    translate,
    with_colon,
)
from bountybot.money import Money, format_money, sum_money
from bountybot.rules.model import Bounty, Payout
from bountybot.states import ClaimState, PayoutState, PledgeState, TaskState

SUMMARY_MARKER = "<!-- bountybot:summary -->"
BAR_WIDTH = 20

_STATES = {
    "open": ("open", "ouverte"),
    "funded": ("funded", "financée"),
    "claimed": ("claimed", "réservée"),
    "in_review": ("in review", "en revue"),
    "done": ("done", "terminée"),
    "cancelled": ("cancelled", "annulée"),
    "expired": ("expired", "expirée"),
    "pending": ("pending", "en attente"),
    "held": ("held", "en séquestre"),
    "paid_out": ("paid out", "versée"),
    "refunded": ("refunded", "remboursée"),
    "withdrawn": ("withdrawn", "retirée"),
    "active": ("active", "active"),
    "released": ("released", "libérée"),
    "revoked": ("revoked", "révoquée"),
    "paid": ("paid", "payé"),
    "failed": ("failed", "échoué"),
    "merged": ("merged", "fusionnée"),
    "closed": ("closed", "fermée"),
    "unknown": ("unknown", "inconnu"),
}
for _key, (_en, _fr) in _STATES.items():
    register(f"state.{_key}", _en, _fr)

register("summary.title", "Bounty", "Prime")
register("summary.pledged", "{held} pledged of {goal}", "{held} promis sur {goal}")
register("summary.pledged_nogoal", "{held} pledged (no goal)", "{held} promis (sans objectif)")
register("summary.raised", "{raised} raised of {goal}", "{raised} réunis sur {goal}")
register("summary.raised_nogoal", "{raised} raised", "{raised} réunis")
register("summary.paid_to", "paid to {who} ({settled})", "pour {who} ({settled})")
register("summary.settled.pending", "pending", "versement en attente")
register("summary.settled.paid", "settled", "versement effectué")
register("summary.settled.disputed", "disputed", "versement contesté")
register("summary.refunded", "{amount} refunded to the backers",
         "{amount} remboursés aux donateurs")
register("summary.refunded_part", "{amount} refunded", "{amount} remboursés")
register("summary.nothing_refunded", "nothing to refund", "rien à rembourser")
register("summary.state", "State", "État")
register("summary.backers", "Backers", "Donateurs")
register("summary.backer", "Backer", "Donateur")
register("summary.amount", "Amount", "Montant")
register("summary.goal", "Goal", "Objectif")
register("summary.deadline", "Funding deadline", "Échéance de financement")
register("summary.claim", "Claimed by", "Réservée par")
register("summary.until", "until {date}", "jusqu'au {date}")
register("summary.in_review_clock", "in review, clock stopped", "en revue, délai suspendu")
register("summary.waiting", "Waiting list", "Liste d'attente")
register("summary.links", "Pull requests", "Demandes de fusion")
register("summary.payouts", "Payouts", "Versements")
register("summary.releases", "released on {date} unless disputed",
         "libéré le {date} sauf contestation")
register("summary.held_by_dispute", "held by the dispute", "bloqué par la contestation")
register("summary.disputed",
         "**Disputed** by @{by}: {reason}. The payouts are held until a maintainer decides"
         " (`/award` or `/cancel`).",
         "**Contesté** par @{by} : {reason}. Les versements sont bloqués jusqu'à la décision"
         " d'un mainteneur (`/award` ou `/cancel`).")
register("summary.fee", "Service fee: {fee} of the escrow, taken at payout.",
         "Frais de service : {fee} du séquestre, prélevés au versement.")
register("summary.nofee", "No service fee: every cent pledged goes to the developers or back"
         " to the backers.", "Aucuns frais de service : chaque centime promis va aux développeurs"
         " ou revient aux donateurs.")
register("summary.pending_note",
         "{pending} more pledged, not counted until the payment is confirmed: {who}.",
         "{pending} de plus promis, non comptés tant que le paiement n'est pas confirmé :"
         " {who}.")
register("summary.pending_part", "{amount} pending", "{amount} en attente")
register("summary.howto", "Pledge with `/pledge <amount>`; once funded, offer to do the work"
         " with `/claim`. `/help` lists every command.",
         "Promettez un don avec `/pledge <montant>` ; une fois la tâche financée, proposez-vous"
         " pour la faire avec `/claim`. `/help` liste toutes les commandes.")
register("summary.none", "none", "aucun")
register("summary.badge_alt", "bounty badge", "badge de la prime")
register("summary.page", "The task's page", "La page de la tâche")

ENDED = frozenset({TaskState.CANCELLED, TaskState.EXPIRED})
HELD, PAID_OUT, PENDING, REFUNDED = (PledgeState.HELD, PledgeState.PAID_OUT,
                                     PledgeState.PENDING, PledgeState.REFUNDED)


def state_word(locale: str, state: str) -> str:
    key = f"state.{state}"
    return translate(locale, key) if state in _STATES else state


def _label(locale: str, key: str) -> str:
    """`**State:**`, `**État :**`: a bold label with the language's colon."""
    return f"**{with_colon(locale, translate(locale, key))}**"


def counted_states(b: Bounty) -> frozenset[PledgeState]:
    """The pledges a summary counts: held while the task runs, raised (held and paid out) once
    it is done, refunded once it is cancelled or expired."""
    if b.state == TaskState.DONE:
        return frozenset({HELD, PAID_OUT})
    if b.state in ENDED:
        return frozenset({REFUNDED})
    return frozenset({HELD})


def _logins(b: Bounty, states: frozenset[PledgeState] | None = None) -> list[str]:
    """Distinct backers (logins compare without case, as on the forges), in pledge order, with
    a pledge in `states` (any state when None)."""
    seen: dict[str, str] = {}
    for p in b.pledges:
        if states is None or p.state in states:
            seen.setdefault(p.backer.casefold(), p.backer)
    return list(seen.values())


def _by_backer(b: Bounty, states: frozenset[PledgeState]) -> dict[str, tuple[str, int]]:
    """Each backer's sum of pledges in `states` (minor units), by login without case, in the
    order they first pledged (any state): one pass over the pledges, so a summary of a task with
    thousands of backers costs no more than its pledges."""
    sums: dict[str, tuple[str, int]] = {}
    for p in b.pledges:
        key = p.backer.casefold()
        login, minor = sums.get(key, (p.backer, 0))
        sums[key] = (login, minor + p.amount.minor if p.state in states else minor)
    return sums


def counted_backers(b: Bounty) -> list[str]:
    """Distinct backers with counted money, in the order they first pledged."""
    return _logins(b, counted_states(b))


def progress_bar(held: Money, goal: Money | None, locale: str = "en") -> str:
    """`[████████░░░░░░░░░░░░] 40%`: plain text, so it reads the same in mail and on mobile.
    The percentage is rounded down (99.5% is not yet 100%) and written by Babel (`40 %` in
    French)."""
    if goal is None or goal.minor <= 0:
        return ""
    ratio = min(held.minor, goal.minor) * BAR_WIDTH // goal.minor
    percent = held.minor * 100 // goal.minor
    return (f"`[{'█' * ratio}{'░' * (BAR_WIDTH - ratio)}]"
            f" {format_percentage(percent, locale)}`")


def _shown_payouts(b: Bounty) -> list[Payout]:
    return [p for p in b.payouts if p.state != PayoutState.CANCELLED]


def _settled(b: Bounty, payouts: list[Payout]) -> str:
    """One word for where the money of a done task is: settled, pending or disputed."""
    if b.dispute is not None:
        return "disputed"
    return "paid" if all(p.state == PayoutState.PAID for p in payouts) else "pending"


def headline(b: Bounty, locale: str) -> str:
    """The money in one phrase: pledged while the task runs; raised and who was paid once it
    is done; what was refunded once it is cancelled or expired."""
    t = functools.partial(translate, locale)
    if b.state in ENDED:
        refunded = sum_money((p.amount for p in b.pledges if p.state == REFUNDED), b.currency)
        if not refunded.minor:
            return t("summary.nothing_refunded")
        return t("summary.refunded", amount=format_money(refunded, locale))
    if b.state == TaskState.DONE:
        raised = format_money(b.raised(), locale)
        text = (t("summary.raised_nogoal", raised=raised) if b.goal is None else
                t("summary.raised", raised=raised, goal=format_money(b.goal, locale)))
        payouts = _shown_payouts(b)
        if payouts:
            who = format_names(list(dict.fromkeys(f"@{p.developer}" for p in payouts)), locale)
            settled = t(f"summary.settled.{_settled(b, payouts)}")
            text += " — " + t("summary.paid_to", who=who, settled=settled)
        return text
    held = format_money(b.held(), locale)
    if b.goal is None:
        return t("summary.pledged_nogoal", held=held)
    return t("summary.pledged", held=held, goal=format_money(b.goal, locale))


def _title(b: Bounty, locale: str) -> str:
    """`Bounty: €60.00 pledged of €100.00`; an ended task says its state first."""
    title = with_colon(locale, translate(locale, "summary.title"))
    if b.state in ENDED:
        return f"{title} {state_word(locale, b.state)} — {headline(b, locale)}"
    return f"{title} {headline(b, locale)}"


def _claim_line(b: Bounty, locale: str) -> str | None:
    """The live claim with its clock, or the claim the task was done under."""
    t = functools.partial(translate, locale)
    claim = b.shown_claim()
    if claim is None:
        return None
    if claim.state == ClaimState.DONE:
        when = state_word(locale, claim.state)
    elif claim.expires_at is not None:
        when = t("summary.until", date=claim.expires_at)
    else:
        when = t("summary.in_review_clock")
    return f"{_label(locale, 'summary.claim')} @{claim.developer} ({when})"


def status_text(b: Bounty, locale: str) -> str:
    """A few lines for /status: state, money, claim, in the summary's words."""
    lines = [f"{_label(locale, 'summary.state')} {state_word(locale, b.state)}"
             f" — {headline(b, locale)}"]
    claim = _claim_line(b, locale)
    if claim is not None:
        lines.append(claim)
    if b.waiting:
        lines.append(f"{_label(locale, 'summary.waiting')} "
                     + ", ".join(f"@{w}" for w in b.waiting))
    # Separate paragraphs: a single newline is no line break on GitLab.
    return "\n\n".join(lines)


def _payout_word(b: Bounty, p: Payout, locale: str) -> str:
    if p.state == PayoutState.PENDING and b.dispute is not None:
        return translate(locale, "summary.held_by_dispute")
    if p.state == PayoutState.PENDING and p.released_at is None and p.due_at is not None:
        return translate(locale, "summary.releases", date=p.due_at)
    return state_word(locale, p.state)


def _fee_line(locale: str, fee_bp: int) -> str:
    if not fee_bp:
        return translate(locale, "summary.nofee")
    # Basis points are hundredths of a percent: 250 -> 2.5 %, exactly (no float).
    fee = format_percentage(Decimal(fee_bp) / 100, locale)
    return translate(locale, "summary.fee", fee=fee)


def _backers_table(b: Bounty, locale: str) -> list[str]:
    """The backers and what each gave (counted money, plus what waits for confirmation)."""
    t = functools.partial(translate, locale)
    counted = counted_states(b)
    ended = b.state in ENDED
    rows = []
    totals = _by_backer(b, counted if ended else counted | {PENDING})
    waiting = _by_backer(b, frozenset({PENDING}))
    for key, (login, total) in totals.items():
        if not total:
            continue
        cell = format_money(Money(total, b.currency), locale)
        if ended:
            cell = t("summary.refunded_part", amount=cell)
        elif waits := waiting[key][1]:
            part = t("summary.pending_part", amount=format_money(Money(waits, b.currency), locale))
            cell += f" ({part})"
        rows.append(f"| @{login} | {cell} |")
    if not rows:
        return []
    return [f"| {t('summary.backer')} | {t('summary.amount')} |", "|---|---:|", *rows]


def task_page_url(public_url: str, b: Bounty) -> str:
    """The task's public page: `{public_url}/{forge}/{path}/-/issues/{n}`."""
    return f"{public_url.rstrip('/')}/{b.forge}/{quote(b.repo, safe='/')}/-/issues/{b.number}"


def badge_version(b: Bounty) -> str:
    """A short tag of everything the task's badge draws (state, money, goal, whether the
    payouts are settled): a new state is a new badge URL, so no cache anywhere shows the old."""
    payouts = _shown_payouts(b)
    settled = bool(payouts) and all(p.state == PayoutState.PAID for p in payouts)
    drawn = (f"{b.state}:{b.held().minor}:{b.raised().minor}:"
             f"{None if b.goal is None else b.goal.minor}:{settled}")
    return hashlib.sha256(drawn.encode()).hexdigest()[:10]


def _badge_block(b: Bounty, locale: str, public_url: str) -> str:
    """The task's badge, linking to its page, and a link in words for who reads no images."""
    page = task_page_url(public_url, b)
    lang = "fr" if language(locale) == "fr" else "en"  # the proxy drops Accept-Language
    badge = f"{page}/badge.svg?v={badge_version(b)}&lang={lang}"
    alt = translate(locale, "summary.badge_alt")
    return f"[![{alt}]({badge})]({page}) · [{translate(locale, 'summary.page')}]({page})"


def render_summary(b: Bounty, locale: str, fee_bp: int, public_url: str | None = None) -> str:
    """The one summary comment, edited in place as the task moves. With `public_url` (the
    service's public address, `server.public_url`), it shows the task's badge and links its
    page.

    Blocks are separated by blank lines: a GFM table runs until a blank line, so a line right
    after it would render as one more row; and a single newline inside a paragraph is no line
    break on GitLab. The tests render it with a CommonMark + GFM-tables parser."""
    t = functools.partial(translate, locale)
    label = functools.partial(_label, locale)
    blocks: list[str] = []
    title = f"{SUMMARY_MARKER}\n### {_title(b, locale)}"
    bar = "" if b.state in ENDED else progress_bar(
        b.raised() if b.state == TaskState.DONE else b.held(), b.goal, locale)
    blocks.append(f"{title}\n{bar}" if bar else title)
    if public_url:
        blocks.append(_badge_block(b, locale, public_url))

    facts = [f"{label('summary.state')} {state_word(locale, b.state)}",
             f"{label('summary.backers')} {len(counted_backers(b))}"]
    if b.deadline is not None and b.state in (TaskState.OPEN, TaskState.FUNDED,
                                              TaskState.EXPIRED):
        facts.append(f"{label('summary.deadline')} {format_day(b.deadline, locale)}")
    if b.goal is not None and b.state in ENDED:
        facts.append(f"{label('summary.goal')} {format_money(b.goal, locale)}")
    blocks.append(" · ".join(facts))

    pending = b.pending()
    if pending.minor:
        # Who waits, by name: a backer (and the maintainer confirming receipt) can see at a
        # glance which promises the goal does not count yet.
        who = ", ".join(
            f"@{login} {format_money(Money(mine, b.currency), locale)}"
            for login, mine in _by_backer(b, frozenset({PENDING})).values() if mine)
        blocks.append(t("summary.pending_note", pending=format_money(pending, locale), who=who))

    table = _backers_table(b, locale)
    if table:
        blocks.append("\n".join(table))

    claim = _claim_line(b, locale)
    if claim is not None:
        blocks.append(claim)
    if b.waiting:
        blocks.append(f"{label('summary.waiting')} " + ", ".join(f"@{w}" for w in b.waiting))
    if b.links:
        blocks.append(f"{label('summary.links')} " + ", ".join(
            f"{link.repo_path}#{link.number} @{link.author} ({state_word(locale, link.state)})"
            for link in b.links))
    payouts = _shown_payouts(b)
    if payouts:
        blocks.append(f"{label('summary.payouts')} " + ", ".join(
            f"@{p.developer} {format_money(p.amount, locale)} ({_payout_word(b, p, locale)})"
            for p in payouts))
    if b.dispute is not None:
        blocks.append(t("summary.disputed", by=b.dispute.by, reason=b.dispute.reason[:200]))

    blocks.append(_fee_line(locale, fee_bp))
    if b.state not in (TaskState.DONE, *ENDED):
        blocks.append(t("summary.howto"))
    return "\n\n".join(blocks)
