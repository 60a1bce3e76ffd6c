"""Funding badges: self-contained SVG in shields.io's flat geometry, and shields endpoint JSON.

    GET /{forge}/{path}/-/issues/{n}/badge.svg   "bounty | €250 of €400"
    GET /{forge}/{path}/-/issues/{n}/badge.json  the same, as shields.io endpoint JSON
    GET /{forge}/{path}/-/needs/badge.svg        "December needs | 42% of €1,000"
    GET /{forge}/{path}/-/needs/badge.json

An SVG badge carries no external font or image (GitHub's image proxy forbids them): its text is
laid out with a table of Verdana 11px advance widths, as shields.io's badge-maker does, and
drawn in whatever of Verdana, Geneva or DejaVu Sans the viewer has. Every answer is
`Cache-Control: no-cache` with a strong ETag (a hash of the bytes): with no Cache-Control at all,
GitHub's proxy would keep an image for a year; with it, the proxy asks again each time and gets a
304 while nothing changed. The language comes from `?lang=` (the proxy drops Accept-Language),
else the repo's locale, else the bot's. A private repo (not published) answers as an unknown one.
A repo with `public_amounts = false` gets badges in percentages of the goal only
("bounty | 62% of goal", "bounty | funded", "December needs | 42%"), never an amount.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from xml.sax.saxutils import escape, quoteattr

from aiohttp import hdrs, web
from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api.views import PledgeTotals, locale_of, pledge_totals, privacy_of, shown_publicly
from bountybot.forges.registry import route_pattern
from bountybot.i18n import babel_locale, format_percentage, language, register, translate
from bountybot.money import Money, minor_digits, to_decimal
from bountybot.needs import Figures, history
from bountybot.resources import READ_GATE, READER, SETTINGS, Busy
from bountybot.rules.summary import state_word
from bountybot.states import PayoutState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import reading
from bountybot.storage.tables import id_of

LANGUAGES = ("en", "fr")
FORGE_NAMES = route_pattern()
# A repo path: segments of the forges' allowed characters, any depth (GitLab subgroups).
PATH = r"[A-Za-z0-9_.][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9_.][A-Za-z0-9_.\-]*)*"
CACHE_SECONDS = 300  # shields' own cache for the endpoint JSON (it refuses less than 300)

# shields.io's named colours, as its badges draw them.
COLORS = {"brightgreen": "#4c1", "green": "#97ca00", "yellowgreen": "#a4a61d",
          "yellow": "#dfb317", "orange": "#fe7d37", "blue": "#007ec6",
          "lightgrey": "#9f9f9f", "red": "#e05d44"}
LABEL_COLOR = "#555"

register("badge.bounty", "bounty", "prime")
register("badge.of", "{held} of {goal}", "{held} sur {goal}")
register("badge.funded", "funded {amount}", "financée {amount}")
register("badge.paid", "paid {amount}", "payée {amount}")
register("badge.done", "done {amount}", "terminée {amount}")
register("badge.not_found", "not found", "introuvable")
register("badge.needs", "{month} needs", "besoins de {month}")
register("badge.needs_of", "{percent} of {asked}", "{percent} de {asked}")
register("badge.nothing_asked", "nothing asked", "aucun besoin")
register("badge.unknown_task", "no such task", "tâche introuvable")
register("badge.needs_label", "needs", "besoins")
register("badge.of_goal", "{percent} of goal", "{percent} de l’objectif")
register("badge.funded_x", "funded", "financée")
register("badge.paid_x", "paid", "payée")
register("badge.done_x", "done", "terminée")

# Advance widths of Verdana at 11px, in pixels (the font's hmtx advances over its 2048 units
# per em, times 11), for printable ASCII: the table shields.io's badge-maker measures with.
_ASCII_WIDTHS = (
    # space ! " # $ % & ' ( ) * + , - . /
    3.87, 4.33, 5.05, 9.0, 7.0, 11.84, 7.99, 2.95, 4.99, 4.99, 7.0, 9.0, 4.0, 4.99, 4.0, 4.99,
    # 0-9
    7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0,
    # : ; < = > ? @
    4.99, 4.99, 9.0, 9.0, 9.0, 6.0, 11.0,
    # A-Z
    7.52, 7.54, 7.68, 8.48, 6.96, 6.32, 8.53, 8.27, 4.63, 5.0, 7.62, 6.12, 9.27, 8.23, 8.66,
    6.63, 8.66, 7.65, 7.52, 6.78, 8.05, 7.52, 10.88, 7.54, 6.77, 7.54,
    # [ \ ] ^ _ `
    4.99, 4.99, 4.99, 9.0, 7.0, 7.0,
    # a-z
    6.61, 6.85, 5.73, 6.85, 6.55, 3.87, 6.85, 6.96, 3.02, 3.79, 6.51, 3.02, 10.7, 6.96, 6.68,
    6.85, 6.85, 4.69, 5.73, 4.33, 6.96, 6.51, 8.98, 6.51, 6.51, 5.78,
    # { | } ~
    6.98, 4.99, 6.98, 9.0,
)
WIDTHS = {chr(32 + i): w for i, w in enumerate(_ASCII_WIDTHS)}
WIDTHS.update({
    "\u00a0": 3.87, "\u202f": 3.87, "\u2009": 3.87,  # the spaces Babel writes in amounts
    "€": 7.0, "£": 7.0, "¥": 7.0, "¤": 7.0, "\u2212": 9.0, "…": 11.0, "·": 4.0,
})
# What shields assumes for a character it cannot measure: the widest common letter.
UNKNOWN_WIDTH = WIDTHS["m"]


def char_width(c: str) -> float:
    """A character's width; an accented letter is as wide as its base letter (`é` as `e`)."""
    width = WIDTHS.get(c)
    if width is None:
        base = unicodedata.normalize("NFKD", c)[:1]
        width = WIDTHS.get(base, UNKNOWN_WIDTH)
    return width


def text_width(text: str) -> int:
    """The width a box gives `text`, as badge-maker: the sum of the advances truncated to
    whole pixels, then rounded up to odd (centred text then falls on the pixel grid)."""
    width = int(sum(char_width(c) for c in text))
    return width if width % 2 else width + 1


@dataclass(frozen=True)
class Badge:
    """What a badge says: `label | message`, the message on `color` (a shields colour name)."""

    label: str
    message: str
    color: str
    error: bool = False

    @property
    def spoken(self) -> str:
        """What a screen reader says, and the tooltip: `bounty: €250 of €400`."""
        return f"{self.label}: {self.message}"


def render_svg(badge: Badge) -> str:
    """The flat badge: 20 px high, 5 px of padding each side of each text, text drawn at 10x
    and scaled down (shields' trick for sub-pixel placement), with a shadow under it."""
    label_text, message_text = text_width(badge.label), text_width(badge.message)
    left, right = label_text + 10, message_text + 10
    width = left + right
    label_x, message_x = 10 * (left / 2 + 1), 10 * (left + right / 2 - 1)
    fill = COLORS.get(badge.color, COLORS["lightgrey"])
    spoken = quoteattr(badge.spoken)
    label, message = escape(badge.label), escape(badge.message)

    def text(x: float, length: int, body: str) -> str:
        x_ = f"{x:g}"
        return (f'<text aria-hidden="true" x="{x_}" y="150" fill="#010101" fill-opacity=".3"'
                f' transform="scale(.1)" textLength="{length * 10}">{body}</text>'
                f'<text x="{x_}" y="140" transform="scale(.1)" fill="#fff"'
                f' textLength="{length * 10}">{body}</text>')

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img"'
        f' aria-label={spoken}><title>{escape(badge.spoken)}</title>'
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb"'
        ' stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{left}" height="20" fill="{LABEL_COLOR}"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{fill}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif"'
        ' text-rendering="geometricPrecision" font-size="110">'
        f'{text(label_x, label_text, label)}{text(message_x, message_text, message)}'
        '</g></svg>')


def render_json(badge: Badge) -> dict[str, object]:
    """shields.io's endpoint schema; `isError` makes shields draw it as an error."""
    out: dict[str, object] = {"schemaVersion": 1, "label": badge.label,
                              "message": badge.message, "color": badge.color,
                              "cacheSeconds": CACHE_SECONDS}
    if badge.error:
        out["isError"] = True
    return out


@lru_cache(maxsize=16)
def _whole_pattern(locale: str) -> str:
    """The locale's currency pattern without decimals (`¤#,##0`, `#,##0 ¤`)."""
    pattern: str = Locale.parse(locale).currency_formats["standard"].pattern
    return pattern.split(";")[0].replace("0.00", "0")


def short_money(m: Money, locale: str) -> str:
    """An amount as short as a badge wants it: `€400` for a whole amount, `€12.50` otherwise."""
    name = babel_locale(locale)
    value = to_decimal(m)
    if m.minor % 10 ** minor_digits(m.currency):
        return format_currency(value, m.currency, locale=name)
    return format_currency(Decimal(int(value)), m.currency, format=_whole_pattern(name),
                           locale=name, currency_digits=False)


# -- what the badges say -----------------------------------------------------------------


def task_badge(task: t.Task, sums: PledgeTotals, payouts: list[t.Payout],
               locale: str, *, amounts: bool = True) -> Badge:
    """`€250 of €400` while the task gathers money, `funded €400`, `claimed`, `in review`,
    `paid €400` once every payout is settled (`done €400` until then), or the ended state.
    Without `amounts`: `62% of goal` (the state's word without a goal), `funded`, `paid`.
    `sums` are the task's pledges summed in SQL (`api.views.pledge_totals`)."""
    cur = task.currency
    held = Money(sums.held, cur)
    raised = Money(sums.raised, cur)
    label = translate(locale, "badge.bounty")
    state = task.state
    if state == TaskState.OPEN and not amounts:
        if not task.goal_minor:
            return Badge(label, state_word(locale, state), "orange")
        percent = format_percentage(held.minor * 100 // task.goal_minor, locale)
        return Badge(label, translate(locale, "badge.of_goal", percent=percent), "orange")
    if state == TaskState.OPEN:
        amount = short_money(held, locale)
        if task.goal_minor is None:
            return Badge(label, amount, "orange")
        goal = short_money(Money(task.goal_minor, cur), locale)
        return Badge(label, translate(locale, "badge.of", held=amount, goal=goal), "orange")
    if state == TaskState.FUNDED:
        if not amounts:
            return Badge(label, translate(locale, "badge.funded_x"), "green")
        return Badge(label, translate(locale, "badge.funded", amount=short_money(held, locale)),
                     "green")
    if state in (TaskState.CLAIMED, TaskState.IN_REVIEW):
        return Badge(label, state_word(locale, state), "blue")
    if state == TaskState.DONE:
        shown = [p for p in payouts if p.state != PayoutState.CANCELLED]
        settled = bool(shown) and all(p.state == PayoutState.PAID for p in shown)
        key = "badge.paid" if settled else "badge.done"
        color = "brightgreen" if settled else "green"
        if not amounts:
            return Badge(label, translate(locale, key + "_x"), color)
        return Badge(label, translate(locale, key, amount=short_money(raised, locale)), color)
    return Badge(label, state_word(locale, state), "lightgrey")


def needs_badge(month: date, figures: Sequence[Figures], locale: str, *,
                amounts: bool = True) -> Badge:
    """`December needs | 42% of €1,000`; several currencies side by side, never converted.
    Without `amounts`: `December needs | 42%`."""
    label = translate(locale, "badge.needs",
                      month=format_date(month, "LLLL", locale=babel_locale(locale)))
    asked = [f for f in figures if f.asked > 0]
    if not asked:
        return Badge(label, translate(locale, "badge.nothing_asked"), "lightgrey")
    parts = []
    for f in asked:
        percent = min(f.funded, f.asked) * 100 // f.asked
        if not amounts:
            parts.append(format_percentage(percent, locale))
            continue
        parts.append(translate(locale, "badge.needs_of",
                               percent=format_percentage(percent, locale),
                               asked=short_money(Money(f.asked, f.currency), locale)))
    least = min(min(f.funded, f.asked) * 100 // f.asked for f in asked)
    color = "brightgreen" if least >= 100 else "yellow" if least >= 50 else "orange"
    return Badge(label, " · ".join(parts), color)


# -- reading the books ---------------------------------------------------------------------


async def _public_repo(session: AsyncSession, forge: str, path: str) -> t.Repo | None:
    """The repo at `path` on `forge` (paths compare without case, as on the forges), if the
    public may see it."""
    stmt = (select(t.Repo).where(col(t.Repo.forge) == forge,
                                 func.lower(col(t.Repo.full_path)) == path.lower(),
                                 shown_publicly())
            .order_by(col(t.Repo.id)).limit(1))
    return (await session.exec(stmt)).first()


# -- HTTP ----------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """Add the badge routes. They are specific (`/-/issues/{n}/badge.svg`), so they may come
    before the pages' catch-all repo route."""
    issue = rf"/{{forge:{FORGE_NAMES}}}/{{path:{PATH}}}/-/issues/{{number:[0-9]{{1,9}}}}"
    needs = rf"/{{forge:{FORGE_NAMES}}}/{{path:{PATH}}}/-/needs"
    app.router.add_get(issue + "/badge.{kind:svg|json}", show_task_badge)
    app.router.add_get(needs + "/badge.{kind:svg|json}", show_needs_badge)


def _locale(request: web.Request, repo: t.Repo | None) -> str:
    """`?lang=` when it is one of the bot's languages, else the repo's, else the bot's."""
    asked = request.query.get("lang", "")
    if asked and language(asked) in LANGUAGES:
        return language(asked)
    return locale_of(repo, request.app[SETTINGS].bot.locale)


def _answer(request: web.Request, badge: Badge, status: int = 200) -> web.Response:
    """The badge as the route's kind asks, with its ETag; 304 when the client has it."""
    if request.match_info["kind"] == "json":
        # Shields reads the endpoint's JSON only from a 200: an unknown task is a 200 whose
        # `isError` makes shields draw it red, saying what was not found.
        body = json.dumps(render_json(badge), ensure_ascii=False).encode()
        content_type, status = "application/json", 200
    else:
        body = render_svg(badge).encode()
        content_type = "image/svg+xml"
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {hdrs.CACHE_CONTROL: "no-cache", hdrs.ETAG: etag}
    if status == 200 and _matches(request.headers.get(hdrs.IF_NONE_MATCH, ""), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, status=status, content_type=content_type,
                        charset="utf-8", headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison, which If-None-Match uses: `W/` is ignored, `*` matches."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _not_found(request: web.Request, key: str, label_key: str) -> web.Response:
    locale = _locale(request, None)
    badge = Badge(translate(locale, label_key), translate(locale, key), "lightgrey", error=True)
    return _answer(request, badge, status=404)


def _busy() -> web.Response:
    return web.Response(status=503, text="busy; try again shortly",
                        headers={hdrs.RETRY_AFTER: str(Busy.retry_after),
                                 hdrs.CACHE_CONTROL: "no-cache"})


async def show_task_badge(request: web.Request) -> web.Response:
    forge, path = request.match_info["forge"], request.match_info["path"]
    number = int(request.match_info["number"])
    async with reading(request.app[READER]) as session:
        repo = await _public_repo(session, forge, path)
        task = None if repo is None else (await session.exec(select(t.Task).where(
            col(t.Task.repo_id) == repo.id, col(t.Task.number) == number))).first()
        if repo is None or task is None:
            return _not_found(request, "badge.unknown_task", "badge.bounty")
        sums = (await pledge_totals(session, [id_of(task)])).get(
            id_of(task), PledgeTotals(0, 0, 0, 0))
        payouts = list((await session.exec(
            select(t.Payout).where(col(t.Payout.task_id) == task.id))).all())
        # Drawn inside the session: its rows are expired once it is rolled back.
        badge = task_badge(task, sums, payouts, _locale(request, repo),
                           amounts=privacy_of(request.app[SETTINGS], repo).amounts)
    return _answer(request, badge)


async def show_needs_badge(request: web.Request) -> web.Response:
    forge, path = request.match_info["forge"], request.match_info["path"]
    month = datetime.now(UTC).date().replace(day=1)
    bot = request.app[SETTINGS].bot
    try:
        async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
            repo = await _public_repo(session, forge, path)
            if repo is None or repo.id is None:
                return _not_found(request, "badge.not_found", "badge.needs_label")
            [figures] = await history(session, repo.id, month, 1, detail=False,
                                      default_currency=repo.currency or bot.currency)
            locale = _locale(request, repo)
            amounts = privacy_of(request.app[SETTINGS], repo).amounts
    except Busy:
        return _busy()
    return _answer(request, needs_badge(month, figures.by_currency, locale, amounts=amounts))
