"""The public pages, server-rendered (aiohttp-jinja2), complete without JavaScript.

    GET /                                    the instance: repos, open tasks, this month's appeal
    GET /{forge}/{path}                      a repo: open tasks, the appeal, twelve months
    GET /{forge}/{path}/-/issues/{n}         a task: meter, backers, timeline
    GET /{forge}/{path}/-/needs[/{YYYY-MM}]  the monthly appeal
    GET /tasks/{id}                          301 to the task's page
    GET /static/bountybot.css                the one stylesheet

Reads go through the public read pool (`READER`) and take a turn of `READ_GATE`, as the API's
do. A private repo that was not published answers as an unknown one. Every page is
`Cache-Control: public, max-age=60` with an ETag (a hash of the bytes) and a 304 on
`If-None-Match`; `Vary: Accept-Language`, since `?lang=` or the header picks en or fr. The index,
repo and appeal pages are kept rendered for `server.page_cache_seconds` (`web/cache.py`).

Pages are bounded whatever the size of the books: a repo page (and the index) lists the
`LISTED_TASKS` newest open tasks, the appeal the `LISTED_LIVE` newest live tasks, each with
"and K more" counted in SQL; the figures above them always count every task. A task's page lists
its first `LISTED_BACKERS` backers ("and K more") and, in its timeline, every line but its
pledges, refunds and withdrawals, of which the newest `LISTED_MOVES` (the earlier ones
counted): a task with 10,000 pledges has a page the size of one with a hundred. Newest first, as
the feeds and the API: a backer comes to find work that needs them, and the newest tasks are
the ones with the least money yet; an order by money would keep the same well-funded tasks on
top forever, and it is the appeal's sentence and meter that say how far the money has got.

Privacy (`api.views.Privacy`): with `bot.public_backers = "count"` a page says how many backers
a task has, never who (in its backers, its timeline and the refunds); a repo with
`public_amounts = false` shows percentages of the goal only, never an amount, and then the
appeal across all projects (the index) is shown in percentages too. Payout references are shown
as the maintainer gave them: they are the public proof of payment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from babel import Locale
from babel.dates import format_date
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api.views import (
    Privacy,
    TaskRows,
    display_amount,
    load_tasks,
    locale_of,
    percent_of,
    privacy_of,
    shown_publicly,
)
from bountybot.forges.registry import route_pattern
from bountybot.i18n import CATALOG, babel_locale, format_day, format_percentage, language, translate
from bountybot.needs import MonthFigures, history, next_month, previous_months
from bountybot.resources import READ_GATE, READER, SETTINGS, Busy
from bountybot.rules.model import RAISED
from bountybot.rules.summary import state_word
from bountybot.states import TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import reading
from bountybot.storage.tables import id_of
from bountybot.web import (
    cache,
    words,  # noqa: F401  (registers the pages' sentences)
)
from bountybot.web.cache import Page

HERE = Path(__file__).parent
LANGUAGES = ("en", "fr")
FORGE_NAMES = route_pattern()  # github|gitlab: the registry's forges, for the routes
PATH = r"[A-Za-z0-9_.][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9_.][A-Za-z0-9_.\-]*)*"
OPEN_STATES = (TaskState.OPEN, TaskState.FUNDED, TaskState.CLAIMED, TaskState.IN_REVIEW)
CACHE_CONTROL = "public, max-age=60"
LISTED_TASKS = 50  # open tasks listed on a repo page or the index: the newest
LISTED_LIVE = 100  # live tasks listed on a monthly appeal: the newest
LISTED_BACKERS = 50  # backers listed on a task's page: the first to pledge
LISTED_PLEDGES = 20  # a task's pledges loaded for a page (the figures are summed in SQL)
LISTED_MOVES = 50  # a task's timeline: its newest pledges, refunds and withdrawals
# Audit lines shown in a task's timeline, in the order they happened.
TIMELINE = ("task.open", "pledge.held", "task.funded", "claim.active", "link.open",
            "link.merged", "payout.pending", "payout.paid", "pledge.refunded",
            "pledge.withdrawn", "task.done", "task.cancelled", "task.expired")
# Timeline lines whose `who` is a backer: nameless when `bot.public_backers = "count"`.
BACKER_ACTIONS = ("pledge.held", "pledge.refunded", "pledge.withdrawn")


class NotFound(Exception):
    """What the reader asked for is not here (or not public): said in their language."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


def setup(app: web.Application) -> None:
    """Add the pages, the stylesheet and the HTML 404s."""
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    env.trim_blocks = env.lstrip_blocks = True
    repo = rf"/{{forge:{FORGE_NAMES}}}/{{path:{PATH}}}"
    app.router.add_get("/", index)
    app.router.add_get("/static/bountybot.css", stylesheet)
    app.router.add_get("/tasks/{id:[0-9]{1,10}}", short_link)
    app.router.add_get(repo + r"/-/issues/{number:[0-9]{1,9}}", task_page)
    app.router.add_get(repo + "/-/needs", needs_page)
    app.router.add_get(repo + r"/-/needs/{month:[0-9]{4}-[0-9]{2}}", needs_page)
    app.router.add_get(repo, repo_page)
    app.middlewares.append(html_errors)
    cache.install(app)


# -- language and formatting ---------------------------------------------------------------


def reader_locale(request: web.Request) -> str:
    """`?lang=` when it is one of ours; else the best of `Accept-Language`; else the bot's."""
    asked = request.query.get("lang", "")
    if asked and language(asked) in LANGUAGES:
        return language(asked)
    best: tuple[float, str] | None = None
    for part in request.headers.get(hdrs.ACCEPT_LANGUAGE, "").split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        match = re.search(r"q=([0-9.]{1,5})", params)
        if match:
            try:
                quality = float(match.group(1))
            except ValueError:
                continue
        lang = language(tag.strip()) if tag.strip() not in ("", "*") else ""
        if lang in LANGUAGES and quality > 0 and (best is None or quality > best[0]):
            best = (quality, lang)
    if best:
        return best[1]
    default = language(request.app[SETTINGS].bot.locale)
    return default if default in LANGUAGES else "en"


def counted(locale: str, key: str, count: int) -> str:
    """`key.one` where the language puts `count` in the singular ("1 task"; in French "0 tâche",
    "1 tâche"), when that form is registered; else `key`."""
    one = f"{key}.one"
    if one in CATALOG and Locale.parse(babel_locale(locale)).plural_form(count) == "one":
        return one
    return key


class Words:
    """What templates use to write in the reader's language."""

    def __init__(self, locale: str) -> None:
        self.locale = locale

    def __call__(self, key: str, **params: Any) -> str:
        return translate(self.locale, f"page.{key}", **params)

    def n(self, key: str, count: int, **params: Any) -> str:
        """The sentence `key` for `count` things (see `counted`), `count` filled in."""
        return translate(self.locale, counted(self.locale, f"page.{key}", count), count=count,
                         **params)

    def money(self, minor: int, currency: str) -> str:
        return display_amount(minor, currency, self.locale)

    def percent(self, value: int) -> str:
        return format_percentage(Decimal(value), self.locale)

    def month(self, month: date) -> str:
        return format_date(month, "LLLL yyyy", locale=babel_locale(self.locale)).capitalize()

    def day(self, moment: date | datetime) -> str:
        return _day(moment.date() if isinstance(moment, datetime) else moment, self.locale)

    def state(self, state: str) -> str:
        return state_word(self.locale, str(state))


# A page lists up to a hundred amounts and days, and Babel takes a fifth of a millisecond
# for each: the same ones (a usual pledge, a day of pledges) are written once.
@lru_cache(maxsize=4096)
def _day(day: date, locale: str) -> str:
    return format_day(day, locale)


# -- answering -------------------------------------------------------------------------------


def render(request: web.Request, template: str, context: dict[str, Any],
           status: int = 200) -> Page:
    """The page's bytes, with its ETag, cache and language headers."""
    locale = context["w"].locale
    context.setdefault("lang", locale)
    body = aiohttp_jinja2.render_string(template, request, context).encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {hdrs.VARY: "Accept-Language", hdrs.CONTENT_LANGUAGE: locale,
               hdrs.CACHE_CONTROL: CACHE_CONTROL if status == 200 else "no-cache"}
    return Page(body, etag, "text/html", tuple(headers.items()), status)


def _html(request: web.Request, template: str, context: dict[str, Any],
          status: int = 200) -> web.Response:
    """The page, with its ETag, cache and language headers; 304 if the client has it."""
    return cache.answer(request, render(request, template, context, status))


def not_found_page(request: web.Request, key: str, **params: Any) -> web.Response:
    w = Words(reader_locale(request))
    return _html(request, "not_found.html",
                 {"w": w, "message": w(f"not_found.{key}", **params), "path": request.path},
                 status=404)


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A page not found is an HTML 404 in the reader's language; a full read gate is a 503.
    Not under `/api/` or `/webhooks/`, which answer in JSON."""
    if request.path.startswith(("/api/", "/webhooks/", "/healthz")):
        return await handler(request)
    try:
        return await handler(request)
    except NotFound as e:
        return not_found_page(request, e.key, **e.params)
    except Busy:
        w = Words(reader_locale(request))
        return web.Response(text=w("busy"), status=503,
                            headers={hdrs.RETRY_AFTER: str(Busy.retry_after)})
    except web.HTTPNotFound:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            raise
        return not_found_page(request, "page")


# -- reading -------------------------------------------------------------------------------


async def _repo(session: AsyncSession, forge: str, path: str) -> t.Repo:
    stmt = (select(t.Repo).where(col(t.Repo.forge) == forge,
                                 func.lower(col(t.Repo.full_path)) == path.lower(),
                                 shown_publicly()).order_by(col(t.Repo.id)).limit(1))
    repo = (await session.exec(stmt)).first()
    if repo is None:
        raise NotFound("repo", forge=forge, path=path)
    return repo


async def _open_tasks(session: AsyncSession, repo_id: int | None) -> list[TaskRows]:
    """The newest `LISTED_TASKS` open tasks (of `repo_id`, or of every public repo)."""
    stmt = (select(t.Task, t.Repo).join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
            .where(col(t.Task.state).in_(OPEN_STATES), shown_publicly())
            .order_by(col(t.Task.id).desc()).limit(LISTED_TASKS))
    if repo_id is not None:
        stmt = stmt.where(col(t.Task.repo_id) == repo_id)
    pairs = [(task, repo) for task, repo in (await session.exec(stmt)).all()]
    return await load_tasks(session, pairs, pledges=LISTED_PLEDGES)


async def _count_open(session: AsyncSession, repo_id: int | None) -> int:
    """All the open tasks `_open_tasks` would list without its bound."""
    stmt = (select(func.count()).select_from(t.Task)
            .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
            .where(col(t.Task.state).in_(OPEN_STATES), shown_publicly()))
    if repo_id is not None:
        stmt = stmt.where(col(t.Task.repo_id) == repo_id)
    return int((await session.exec(stmt)).one())


def task_view(rows: TaskRows, now: datetime, privacy: Privacy) -> dict[str, Any]:
    """What a page shows of a task: its figures from the rules' own `Bounty`. Without
    `privacy.names`, `backers` is empty (`backer_count` still counts); without
    `privacy.amounts`, `held`, `goal` and every backer's amount are None and `percent` says
    how much of the goal is gathered."""
    task, repo = rows.task, rows.repo
    b = rows.bounty()
    sums = rows.figures(b)
    shown = sums.raised if task.state == TaskState.DONE else sums.held
    backers = rows.backers
    if backers is None and rows.totals is not None:
        backers = []  # a list of tasks names none of their backers (only how many)
    elif backers is None:  # every pledge is loaded: each backer's total, in order of first
        totals: dict[str, int] = {}
        names: dict[str, str] = {}
        for p in rows.pledges:
            if p.state in RAISED:
                key = p.backer.casefold()
                names.setdefault(key, p.backer)
                totals[key] = totals.get(key, 0) + p.amount_minor
        backers = [(names[k], v) for k, v in totals.items()]
    created = task.created_at if task.created_at.tzinfo else task.created_at.replace(tzinfo=UTC)
    amounts = privacy.amounts
    return {
        "id": task.id, "number": task.number, "title": task.title, "url": task.url,
        "state": task.state.value, "currency": task.currency,
        "goal": task.goal_minor if amounts else None, "has_goal": task.goal_minor is not None,
        "held": shown if amounts else None, "amounts": amounts,
        "percent": percent_of(shown, task.goal_minor), "page": page_url(repo, task.number),
        "backers": [(name, v if amounts else None) for name, v in backers]
        if privacy.names else [],
        "backer_count": sums.backers, "names": privacy.names,
        "more_backers": max(0, sums.backers - len(backers)) if privacy.names else 0,
        "age_days": max(0, (now - created).days),
        "reached": task.goal_minor is not None and shown >= task.goal_minor,
        "claim": (lambda c: c.developer if c else None)(b.shown_claim()),
        "repo": repo.full_path, "forge": repo.forge, "repo_page": repo_url(repo),
    }


def _repo_view(repo: t.Repo) -> dict[str, str]:
    return {"forge": repo.forge, "path": repo.full_path, "url": repo_url(repo)}


def repo_url(repo: t.Repo) -> str:
    return f"/{repo.forge}/{repo.full_path}"


def page_url(repo: t.Repo, number: int) -> str:
    return f"{repo_url(repo)}/-/issues/{number}"


def _this_month(now: datetime) -> date:
    return now.date().replace(day=1)


def _bot(request: web.Request) -> Any:
    return request.app[SETTINGS].bot


def _privacy(request: web.Request, repo: t.Repo) -> Privacy:
    return privacy_of(request.app[SETTINGS], repo)


def all_amounts(settings: Any) -> bool:
    """Whether the appeal across all projects may show amounts (`settings`, a
    `bountybot.config.Settings`): not when any repo hides its own, since the total less the
    other repos' figures would give them away."""
    return all(r.public_amounts for r in settings.repos.values())


# -- handlers --------------------------------------------------------------------------------


async def stylesheet(_request: web.Request) -> web.Response:
    body = (HERE / "static" / "bountybot.css").read_bytes()
    return web.Response(body=body, content_type="text/css", charset="utf-8",
                        headers={hdrs.CACHE_CONTROL: "public, max-age=3600"})


async def index(request: web.Request) -> web.Response:
    w = Words(reader_locale(request))

    async def compute() -> Page:
        now = datetime.now(UTC)
        async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
            repos = [_repo_view(r) for r in (await session.exec(
                select(t.Repo).where(shown_publicly())
                .order_by(func.lower(col(t.Repo.full_path))))).all()]
            tasks = [task_view(rows, now, _privacy(request, rows.repo))
                     for rows in await _open_tasks(session, None)]
            more = await _count_open(session, None) - len(tasks)
            [appeal] = await history(session, None, _this_month(now), 1, now=now, detail=False,
                                     default_currency=_bot(request).currency)
        return render(request, "index.html", {
            "w": w, "repos": repos,
            "tasks": tasks, "more": more, "appeal": appeal, "needs_url": None,
            "privacy": Privacy(names=_bot(request).public_backers != "count",
                               amounts=all_amounts(request.app[SETTINGS]))})

    return await cache.cached(request, ("index", w.locale), compute)


async def repo_page(request: web.Request) -> web.Response:
    w = Words(reader_locale(request))
    forge, path = request.match_info["forge"], request.match_info["path"]

    async def compute() -> Page:
        now = datetime.now(UTC)
        async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
            repo = await _repo(session, forge, path)
            privacy = _privacy(request, repo)
            tasks = [task_view(rows, now, privacy)
                     for rows in await _open_tasks(session, id_of(repo))]
            more = await _count_open(session, id_of(repo)) - len(tasks)
            # The repo page shows the figures only; the month's tasks and payouts are on
            # /-/needs.
            months = await history(session, id_of(repo), _this_month(now), now=now,
                                   detail=False,
                                   default_currency=repo.currency or _bot(request).currency)
            shown = _repo_view(repo)
        base = shown["url"]
        return render(request, "repo.html", {
            "w": w, "repo": shown,
            "tasks": tasks, "more": more, "appeal": months[0], "history": months,
            "privacy": privacy,
            "needs_url": f"{base}/-/needs", "badge_url": f"{base}/-/needs/badge.svg"})

    return await cache.cached(request, ("repo", forge, path, w.locale), compute)


async def needs_page(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    w = Words(reader_locale(request))
    raw = request.match_info.get("month")
    month = _this_month(now)
    if raw is not None:
        year, number = int(raw[:4]), int(raw[5:])
        if not (1 <= number <= 12 and year >= 2000) or date(year, number, 1) > month:
            raise NotFound("month", month=raw)
        month = date(year, number, 1)
    forge, path = request.match_info["forge"], request.match_info["path"]

    async def compute() -> Page:
        now = datetime.now(UTC)
        async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
            repo = await _repo(session, forge, path)
            months = await history(session, id_of(repo), month, now=now, live=LISTED_LIVE,
                                   default_currency=repo.currency or _bot(request).currency)
            shown = _repo_view(repo)
            privacy = _privacy(request, repo)
        base = shown["url"]
        earlier = previous_months(month, 2)[1]
        later = None if month >= _this_month(now) else next_month(month)
        live = months[0].tasks
        return render(request, "needs.html", {
            "w": w, "repo": shown,
            "appeal": months[0], "history": months, "needs_url": f"{base}/-/needs",
            "live": list(reversed(live)), "more": months[0].more_live,
            "privacy": privacy,
            "earlier": f"{base}/-/needs/{earlier:%Y-%m}",
            "later": None if later is None else f"{base}/-/needs/{later:%Y-%m}"})

    return await cache.cached(request, ("needs", forge, path, raw, w.locale), compute)


async def task_page(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    w = Words(reader_locale(request))
    number = int(request.match_info["number"])
    async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
        repo = await _repo(session, request.match_info["forge"], request.match_info["path"])
        task = (await session.exec(select(t.Task).where(
            col(t.Task.repo_id) == id_of(repo), col(t.Task.number) == number))).first()
        if task is None:
            raise NotFound("task", path=repo.full_path, number=number)
        [rows] = await load_tasks(session, [(task, repo)], pledges=LISTED_PLEDGES,
                                  backers=LISTED_BACKERS)
        trail, earlier = await _timeline(session, id_of(task))
        context = _task_context(request, repo, rows, trail, now)
    return _html(request, "task.html", {"w": w, **context, "earlier": earlier})


async def _timeline(session: AsyncSession, task_id: int) -> tuple[list[t.AuditEvent], int]:
    """The task's timeline in order: every line but the backers' (`BACKER_ACTIONS`), of which
    the newest `LISTED_MOVES`; and how many older backers' lines are left out."""
    of_task = col(t.AuditEvent.task_id) == task_id
    others = (await session.exec(select(t.AuditEvent).where(
        of_task, col(t.AuditEvent.action).in_(
            [a for a in TIMELINE if a not in BACKER_ACTIONS])))).all()
    # One query per kind of line, each on the index of (task_id, action, id): with the three
    # in one `IN`, the newest would be found by reading every line of every task, newest first.
    moves = sorted([line for action in BACKER_ACTIONS for line in (await session.exec(
        select(t.AuditEvent).where(of_task, col(t.AuditEvent.action) == action)
        .order_by(col(t.AuditEvent.id).desc()).limit(LISTED_MOVES))).all()],
        key=lambda a: -id_of(a))[:LISTED_MOVES]
    earlier = 0
    if len(moves) == LISTED_MOVES:
        earlier = int((await session.exec(select(func.count()).select_from(t.AuditEvent).where(
            of_task, col(t.AuditEvent.action).in_(BACKER_ACTIONS)))).one()) - LISTED_MOVES
    return sorted([*others, *moves], key=lambda a: id_of(a)), earlier


def _task_context(request: web.Request, repo: t.Repo, rows: TaskRows,
                  trail: Sequence[t.AuditEvent], now: datetime) -> dict[str, Any]:
    task = rows.task
    privacy = _privacy(request, repo)
    view = task_view(rows, now, privacy)
    references = {p.id: p.reference for p in rows.payouts}
    paid = [p for p in rows.payouts if p.state.value == "paid"]
    timeline = [_moment(a, task.currency, privacy) for a in trail]
    for item, payout in zip([i for i in timeline if i["action"] == "payout.paid"], paid,
                            strict=False):
        item["reference"] = references.get(payout.id)
    return {
        "repo": _repo_view(repo),
        "task": view, "timeline": timeline,
        "links": [{"number": li.number, "url": li.url, "state": li.state.value,
                   "author": li.author} for li in rows.links],
        "payouts": [{"developer": p.developer,
                     "amount": p.amount_minor if privacy.amounts else None,
                     "state": p.state.value,
                     "reference": p.reference if p.state.value == "paid" else None}
                    for p in rows.payouts],
        "bot": _bot(request).login, "privacy": privacy,
        "locale_repo": locale_of(repo, _bot(request).locale),
        "badge_url": f"{view['page']}/badge.svg"}


def _moment(item: t.AuditEvent, currency: str, privacy: Privacy) -> dict[str, Any]:
    """One line of the timeline, by the key of its sentence: `ev.<action>`, with `.x` when its
    amount is hidden; a hidden backer is `who = None` (the template says "a backer")."""
    detail = item.detail or {}
    who = detail.get("backer") or detail.get("developer") or detail.get("author") or ""
    if item.action in BACKER_ACTIONS and not privacy.names:
        who = None
    amount = detail.get("amount")
    key = f"ev.{item.action}"
    if amount is not None and not privacy.amounts:
        amount, key = None, key + ".x"
    return {"action": item.action, "key": key, "at": item.created_at, "who": who,
            "amount": amount, "currency": currency,
            "number": detail.get("number"), "reference": None}


async def short_link(request: web.Request) -> web.Response:
    task_id = int(request.match_info["id"])
    async with reading(request.app[READER]) as session:
        task = await session.get(t.Task, task_id) if task_id < 2**31 else None
        repo = None if task is None else await session.get(t.Repo, task.repo_id)
        if task is None or repo is None or (repo.private and not repo.published):
            raise NotFound("task_id", id=task_id)
        target = page_url(repo, task.number)
    query = f"?lang={request.query['lang']}" if request.query.get("lang") in LANGUAGES else ""
    raise web.HTTPMovedPermanently(target + query)


__all__ = ["MonthFigures", "setup"]
