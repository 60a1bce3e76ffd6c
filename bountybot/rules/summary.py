"""The words the bot shows about a task: its one summary comment and the /status reply."""

from __future__ import annotations

from decimal import Decimal

from babel.numbers import format_decimal

from bountybot.i18n import register, translate
from bountybot.money import Money, format_money
from bountybot.rules.model import Bounty, Payout
from bountybot.states import LIVE_CLAIM_STATES, PayoutState, PledgeState, TaskState

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
register("summary.state", "State", "État")
register("summary.backers", "Backers", "Donateurs")
register("summary.deadline", "Funding deadline", "Échéance de financement")
register("summary.claim", "Claimed by", "Réservée par")
register("summary.until", "until {date}", "jusqu'au {date}")
register("summary.in_review_clock", "in review, clock stopped", "en revue, délai suspendu")
register("summary.waiting", "Waiting list", "Liste d'attente")
register("summary.links", "Pull requests", "Demandes de fusion")
register("summary.payouts", "Payouts", "Versements")
register("summary.releases", "released on {date} unless disputed",
         "libéré le {date} sauf contestation")
register("summary.disputed",
         "**Disputed** by @{by}: {reason}. The payouts are held until a maintainer decides"
         " (`/award` or `/cancel`).",
         "**Contesté** par @{by} : {reason}. Les versements sont bloqués jusqu'à la décision"
         " d'un mainteneur (`/award` ou `/cancel`).")
register("summary.fee", "Service fee: {fee} % of the escrow, taken at payout.",
         "Frais de service : {fee} % du séquestre, prélevés au versement.")
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


def state_word(locale: str, state: str) -> str:
    key = f"state.{state}"
    return translate(locale, key) if state in _STATES else state


def progress_bar(held: Money, goal: Money | None) -> str:
    """`[████████░░░░░░░░░░░░] 40%`: plain text, so it reads the same in mail and on mobile."""
    if goal is None or goal.minor <= 0:
        return ""
    ratio = min(held.minor, goal.minor) * BAR_WIDTH // goal.minor
    percent = held.minor * 100 // goal.minor
    return f"`[{'█' * ratio}{'░' * (BAR_WIDTH - ratio)}] {percent}%`"


def headline(b: Bounty, locale: str) -> str:
    held = format_money(b.held(), locale)
    if b.goal is None:
        return translate(locale, "summary.pledged_nogoal", held=held)
    return translate(locale, "summary.pledged", held=held, goal=format_money(b.goal, locale))


def status_text(b: Bounty, locale: str) -> str:
    """A few lines for /status: state, money, claim."""
    t = lambda key, **kw: translate(locale, key, **kw)  # noqa: E731
    lines = [f"**{t('summary.state')}:** {state_word(locale, b.state)} — {headline(b, locale)}"]
    claim = b.live_claim()
    if claim is not None:
        when = (t("summary.until", date=claim.expires_at.strftime("%Y-%m-%d"))
                if claim.expires_at else t("summary.in_review_clock"))
        lines.append(f"**{t('summary.claim')}:** @{claim.developer} ({when})")
    if b.waiting:
        lines.append(f"**{t('summary.waiting')}:** " + ", ".join(f"@{w}" for w in b.waiting))
    return "\n".join(lines)


def _payout_word(p: Payout, locale: str) -> str:
    if p.state == PayoutState.PENDING and p.released_at is None and p.due_at is not None:
        return translate(locale, "summary.releases", date=p.due_at.strftime("%Y-%m-%d"))
    return state_word(locale, p.state)


def render_summary(b: Bounty, locale: str, fee_bp: int) -> str:
    """The one summary comment, edited in place as the task moves."""
    t = lambda key, **kw: translate(locale, key, **kw)  # noqa: E731
    out = [SUMMARY_MARKER, f"### {t('summary.title')}: {headline(b, locale)}"]
    bar = progress_bar(b.held(), b.goal)
    if bar:
        out.append(bar)
    out.append("")
    facts = [f"**{t('summary.state')}:** {state_word(locale, b.state)}",
             f"**{t('summary.backers')}:** {len(b.backers())}"]
    if b.deadline is not None and b.state in (TaskState.OPEN, TaskState.FUNDED):
        facts.append(f"**{t('summary.deadline')}:** {b.deadline.isoformat()}")
    out.append(" · ".join(facts))
    backers = [login for login in dict.fromkeys(p.backer for p in b.pledges)]
    pending = b.pending()
    if pending.minor:
        # Who waits, by name: a backer (and the maintainer confirming receipt) can see at a
        # glance which promises the goal does not count yet.
        who = ", ".join(
            f"@{login} {format_money(mine, locale)}" for login in backers
            if (mine := b.backer_total(login, frozenset({PledgeState.PENDING}))).minor)
        out.append(t("summary.pending_note", pending=format_money(pending, locale), who=who))
    rows = []
    for login in backers:
        total = b.backer_total(login, frozenset({PledgeState.HELD, PledgeState.PAID_OUT,
                                                 PledgeState.PENDING}))
        waiting = b.backer_total(login, frozenset({PledgeState.PENDING}))
        cell = format_money(total, locale)
        if waiting.minor:
            cell += f" ({t('summary.pending_part', amount=format_money(waiting, locale))})"
        if total.minor:
            rows.append(f"| @{login} | {cell} |")
    if rows:
        out += ["", f"| {t('summary.backers')} | |", "|---|---:|", *rows]
    claim = next((c for c in b.claims if c.state in LIVE_CLAIM_STATES), None)
    if claim is not None:
        when = (t("summary.until", date=claim.expires_at.strftime("%Y-%m-%d"))
                if claim.expires_at else t("summary.in_review_clock"))
        out += ["", f"**{t('summary.claim')}:** @{claim.developer} ({when})"]
    if b.waiting:
        out.append(f"**{t('summary.waiting')}:** " + ", ".join(f"@{w}" for w in b.waiting))
    if b.links:
        items = ", ".join(f"{link.repo_path}#{link.number} @{link.author}"
                          f" ({state_word(locale, link.state)})"
                          for link in b.links)
        out.append(f"**{t('summary.links')}:** {items}")
    shown = [p for p in b.payouts if p.state != PayoutState.CANCELLED]
    if shown:
        items = ", ".join(f"@{p.developer} {format_money(p.amount, locale)}"
                          f" ({_payout_word(p, locale)})" for p in shown)
        out.append(f"**{t('summary.payouts')}:** {items}")
    if b.dispute is not None:
        out.append(t("summary.disputed", by=b.dispute.by, reason=b.dispute.reason[:200]))
    out.append("")
    if fee_bp:
        try:
            fee = format_decimal(Decimal(fee_bp) / 100, locale=locale.replace("-", "_"))
        except (ValueError, LookupError):
            fee = format_decimal(Decimal(fee_bp) / 100, locale="en")
        out.append(t("summary.fee", fee=fee))
    else:
        out.append(t("summary.nofee"))
    if b.state not in (TaskState.DONE, TaskState.CANCELLED, TaskState.EXPIRED):
        out.append(t("summary.howto"))
    return "\n".join(out)
