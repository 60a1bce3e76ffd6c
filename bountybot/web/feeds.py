"""Atom feeds of funded work, and the opt-in funding.json manifest.

    GET /feed.atom                         every public repo: tasks opened, funded, paid
    GET /{forge}/{path}/-/feed.atom        one repo's
    GET /{forge}/{path}/-/funding.json     FLOSS/fund funding.json v1, where its maintainers
                                           turned it on (`[funding."forge:path"]`); 404 otherwise

A feed's entries come from the audit trail (`task.open`, `task.funded`, `payout.paid`), newest
first, at most `MAX_ENTRIES`, plus the monthly appeal of this month and the last one, dated the
1st. Entry ids are tag: URIs built from the audit line's id (or the month), so they never
change; links go to the task pages under `server.public_url` when set, else the request's own
host. Private repos that were not published never appear. Feeds are `Cache-Control: public,
max-age=900` with an ETag and a 304; `?lang=` or Accept-Language picks en or fr.

Privacy as on the pages: a repo with `public_amounts = false` has entries without amounts
(the appeal as a percentage), and so has the instance feed's appeal while any repo hides its
amounts; its funding.json (all amounts) answers 404. Feeds never name backers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from feedgen.feed import FeedGenerator
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api.views import Privacy, privacy_of, shown_publicly
from bountybot.config import FundingManifest, Settings
from bountybot.forges.registry import FORGES
from bountybot.i18n import register, translate
from bountybot.money import Money, minor_digits
from bountybot.needs import MonthFigures
from bountybot.needs import history as monthly
from bountybot.resources import READ_GATE, READER, SETTINGS
from bountybot.states import TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import reading
from bountybot.storage.tables import id_of
from bountybot.web import cache
from bountybot.web.cache import Page
from bountybot.web.pages import (
    FORGE_NAMES,
    PATH,
    Words,
    all_amounts,
    counted,
    not_found_page,
    page_url,
    reader_locale,
    repo_url,
)

MAX_ENTRIES = 50
FEED_CACHE = "public, max-age=900"
EVENTS = ("task.open", "task.funded", "payout.paid")
TAG_DATE = "2026"  # the year this naming scheme began: part of every id, never to change
OPEN_STATES = (TaskState.OPEN, TaskState.FUNDED, TaskState.CLAIMED, TaskState.IN_REVIEW)

register("feed.title_all", "bountybot: funded work", "bountybot : travail financé")
register("feed.title_repo", "{repo}: funded work", "{repo} : travail financé")
register("feed.opened", "{task}: bounty opened", "{task} : prime ouverte")
register("feed.funded", "{task}: goal reached", "{task} : objectif atteint")
register("feed.funded_goal", "{task}: goal of {goal} reached",
         "{task} : objectif de {goal} atteint")
register("feed.paid", "{task}: {amount} paid to {who}", "{task} : {amount} versés à {who}")
register("feed.appeal", "{month}: {asked} asked across {tasks} tasks, {funded} funded ({percent})",
         "{month} : {asked} demandés pour {tasks} tâches, {funded} financés ({percent})")
register("feed.appeal.one", "{month}: {asked} asked for {tasks} task, {funded} funded ({percent})",
         "{month} : {asked} demandés pour {tasks} tâche, {funded} financés ({percent})")
register("feed.paid_no_amount", "{task}: paid to {who}", "{task} : versé à {who}")
register("feed.appeal_percent", "{month}: {percent} of what {tasks} tasks ask is funded",
         "{month} : {percent} de ce que demandent {tasks} tâches est financé")
register("feed.appeal_percent.one", "{month}: {percent} of what {tasks} task asks is funded",
         "{month} : {percent} de ce que demande {tasks} tâche est financé")
register("feed.appeal_none", "{month}: nothing asked", "{month} : aucun besoin")


def setup(app: web.Application) -> None:
    """Add the feeds and the manifest; before the pages' catch-all repo route."""
    repo = rf"/{{forge:{FORGE_NAMES}}}/{{path:{PATH}}}/-"
    app.router.add_get("/feed.atom", instance_feed)
    app.router.add_get(repo + "/feed.atom", repo_feed)
    app.router.add_get(repo + "/funding.json", funding_json)
    cache.install(app)


# -- addresses -------------------------------------------------------------------------------


def base_url(request: web.Request) -> str:
    """`server.public_url` when set, else the address the request came to."""
    public = request.app[SETTINGS].server.public_url
    return public.rstrip("/") if public else f"{request.scheme}://{request.host}"


def tag(base: str, specific: str) -> str:
    """A tag: URI (RFC 4151) on the instance's host name: `tag:host,2026:bountybot/...`."""
    host = urlsplit(base).hostname or "localhost"
    return f"tag:{host},{TAG_DATE}:bountybot/{specific}"


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- the feeds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    link: str
    updated: datetime
    summary: str


def _task_name(task: t.Task, repo: t.Repo, with_repo: bool) -> str:
    name = f"{repo.full_path}#{task.number}" if with_repo else f"#{task.number}"
    return f"{name} {task.title}".strip()


def _event_entry(event: t.AuditEvent, task: t.Task, repo: t.Repo, base: str, w: Words,
                 with_repo: bool, privacy: Privacy) -> Entry:
    name = _task_name(task, repo, with_repo)
    detail = event.detail or {}
    if event.action == "payout.paid" and privacy.amounts:
        amount = w.money(int(detail.get("amount") or 0), task.currency)
        title = translate(w.locale, "feed.paid", task=name, amount=amount,
                          who=str(detail.get("developer") or ""))
    elif event.action == "payout.paid":
        title = translate(w.locale, "feed.paid_no_amount", task=name,
                          who=str(detail.get("developer") or ""))
    elif event.action == "task.funded" and task.goal_minor is not None and privacy.amounts:
        title = translate(w.locale, "feed.funded_goal", task=name,
                          goal=w.money(task.goal_minor, task.currency))
    elif event.action == "task.funded":
        title = translate(w.locale, "feed.funded", task=name)
    else:
        title = translate(w.locale, "feed.opened", task=name)
    return Entry(tag(base, f"event/{id_of(event)}"), title,
                 base + page_url(repo, task.number), _utc(event.created_at), title)


def _appeal_entry(figures: MonthFigures, base: str, w: Words, repo: t.Repo | None,
                  amounts: bool) -> Entry:
    month = w.month(figures.month)
    main = figures.main
    if main.asked and not amounts:
        title = translate(w.locale, counted(w.locale, "feed.appeal_percent", figures.goal_tasks),
                          month=month,
                          tasks=figures.goal_tasks, percent=w.percent(main.percent))
    elif main.asked:
        title = translate(w.locale, counted(w.locale, "feed.appeal", figures.goal_tasks),
                          month=month,
                          asked=w.money(main.asked, main.currency), tasks=figures.goal_tasks,
                          funded=w.money(main.funded, main.currency),
                          percent=w.percent(main.percent))
    else:
        title = translate(w.locale, "feed.appeal_none", month=month)
    if repo is None:
        where, link = "all", base + "/"
    else:
        where = f"{repo.forge}/{repo.full_path}"
        link = f"{base}{repo_url(repo)}/-/needs/{figures.month:%Y-%m}"
    start = datetime(figures.month.year, figures.month.month, 1, tzinfo=UTC)
    return Entry(tag(base, f"needs/{where}/{figures.month:%Y-%m}"), title, link, start, title)


async def _entries(session: AsyncSession, repo: t.Repo | None, base: str, w: Words,
                   settings: Settings, now: datetime) -> list[Entry]:
    stmt = (select(t.AuditEvent, t.Task, t.Repo)
            .join(t.Task, col(t.Task.id) == col(t.AuditEvent.task_id))
            .join(t.Repo, col(t.Repo.id) == col(t.Task.repo_id))
            .where(col(t.AuditEvent.action).in_(EVENTS), shown_publicly())
            .order_by(col(t.AuditEvent.id).desc()).limit(MAX_ENTRIES))
    if repo is not None:
        stmt = stmt.where(col(t.Task.repo_id) == id_of(repo))
    entries = [_event_entry(event, task, r, base, w, repo is None, privacy_of(settings, r))
               for event, task, r in (await session.exec(stmt)).all()]
    currency = (repo.currency if repo else None) or settings.bot.currency
    amounts = all_amounts(settings) if repo is None else privacy_of(settings, repo).amounts
    for figures in await monthly(session, None if repo is None else id_of(repo), now.date(), 2,
                                 now=now, default_currency=currency, detail=False):
        entries.append(_appeal_entry(figures, base, w, repo, amounts))
    # Newest first; an appeal dated the 1st sorts among the events by its date.
    entries.sort(key=lambda e: e.updated, reverse=True)
    return entries


def render_feed(feed_id: str, title: str, self_link: str, alternate: str, locale: str,
                entries: list[Entry]) -> bytes:
    fg = FeedGenerator()
    fg.id(feed_id)
    fg.title(title)
    fg.language(locale)
    fg.link(href=self_link, rel="self", type="application/atom+xml")
    fg.link(href=alternate, rel="alternate", type="text/html")
    fg.generator("bountybot")
    # Derived from the entries, so that unchanged books give the same bytes (and ETag).
    fg.updated(max((e.updated for e in entries), default=datetime(2026, 1, 1, tzinfo=UTC)))
    for e in entries:
        fe = fg.add_entry(order="append")
        fe.id(e.id)
        fe.title(e.title)
        fe.link(href=e.link, rel="alternate", type="text/html")
        fe.updated(e.updated)
        fe.published(e.updated)
        fe.summary(e.summary)
    body: bytes = fg.atom_str(pretty=False)
    return body


def _page(body: bytes, content_type: str, vary: bool = True) -> Page:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {hdrs.CACHE_CONTROL: FEED_CACHE}
    if vary:
        headers[hdrs.VARY] = "Accept-Language"
    return Page(body, etag, content_type, tuple(headers.items()))


def _cached(request: web.Request, body: bytes, content_type: str,
            vary: bool = True) -> web.Response:
    return cache.answer(request, _page(body, content_type, vary))


class _NoRepo(Exception):
    """The feed's repo is unknown or private: a 404, never kept."""


async def _public_repo(session: AsyncSession, forge: str, path: str) -> t.Repo | None:
    stmt = (select(t.Repo).where(col(t.Repo.forge) == forge,
                                 func.lower(col(t.Repo.full_path)) == path.lower(),
                                 shown_publicly()).order_by(col(t.Repo.id)).limit(1))
    return (await session.exec(stmt)).first()


async def instance_feed(request: web.Request) -> web.Response:
    w = Words(reader_locale(request))
    base = base_url(request)
    settings = request.app[SETTINGS]

    async def compute() -> Page:
        now = datetime.now(UTC)
        async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
            entries = await _entries(session, None, base, w, settings, now)
        body = render_feed(tag(base, "feed"), translate(w.locale, "feed.title_all"),
                           base + "/feed.atom", base + "/", w.locale, entries)
        return _page(body, "application/atom+xml")

    # The base address is in the key: without `server.public_url`, links follow the Host.
    return await cache.cached(request, ("feed", base, w.locale), compute)


async def repo_feed(request: web.Request) -> web.Response:
    w = Words(reader_locale(request))
    base = base_url(request)
    settings = request.app[SETTINGS]
    forge, path = request.match_info["forge"], request.match_info["path"]

    async def compute() -> Page:
        now = datetime.now(UTC)
        async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
            repo = await _public_repo(session, forge, path)
            if repo is None:
                raise _NoRepo
            entries = await _entries(session, repo, base, w, settings, now)
            where = repo_url(repo)
            title = translate(w.locale, "feed.title_repo", repo=repo.full_path)
            feed_id = tag(base, f"feed/{repo.forge}/{repo.full_path}")
        body = render_feed(feed_id, title, f"{base}{where}/-/feed.atom", base + where,
                           w.locale, entries)
        return _page(body, "application/atom+xml")

    try:
        return await cache.cached(request, ("repo_feed", forge, path, base, w.locale), compute)
    except _NoRepo:
        return not_found_page(request, "repo", forge=forge, path=path)


# -- funding.json --------------------------------------------------------------------------------


def manifest_for(settings: Settings, repo: t.Repo) -> FundingManifest | None:
    return settings.funding.get(f"{repo.forge}:{repo.full_path}".lower())


def forge_repo_url(settings: Settings, repo: t.Repo) -> str:
    """The repo on its forge (each forge's `web_url`: github.com or an Enterprise host, the
    GitLab of `gitlab.url`)."""
    return FORGES[repo.forge].web_url(settings, repo.full_path)


def _major(minor: int, currency: str) -> int | float:
    """An amount in major units as a JSON number (an int when whole)."""
    value = Decimal(minor).scaleb(-minor_digits(currency))
    return int(value) if value == value.to_integral_value() else float(value)


def _guid(text: str) -> str:
    """FLOSS/fund's ids: lowercase letters, digits and dashes, at most 32."""
    return (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32].strip("-")) or "project"


async def _yearly(session: AsyncSession, repo_id: int) -> list[dict[str, Any]]:
    """Per year and currency: pledged (income) and paid out (expenses), from the ledger."""
    year = func.extract("year", col(t.LedgerTransaction.created_at))
    stmt = (select(year, col(t.LedgerTransaction.kind), col(t.LedgerEntry.currency),
                   func.sum(t.LedgerEntry.amount_minor))
            .join(t.LedgerEntry, col(t.LedgerEntry.transaction_id) == col(t.LedgerTransaction.id))
            .join(t.Task, col(t.Task.id) == col(t.LedgerTransaction.task_id))
            .where(col(t.Task.repo_id) == repo_id,
                   ((col(t.LedgerTransaction.kind) == "pledge.held")
                    & col(t.LedgerEntry.account).like("escrow:%"))
                   | ((col(t.LedgerTransaction.kind) == "payout.paid")
                      & (col(t.LedgerEntry.account) == "external")))
            .group_by(year, col(t.LedgerTransaction.kind), col(t.LedgerEntry.currency)))
    sums: dict[tuple[int, str], dict[str, int]] = {}
    for y, kind, currency, total in (await session.exec(stmt)).all():
        into = sums.setdefault((int(y), currency), {"income": 0, "expenses": 0})
        into["income" if kind == "pledge.held" else "expenses"] += int(total or 0)
    return [{"year": y, "currency": cur, "income": _major(v["income"], cur),
             "expenses": _major(v["expenses"], cur),
             "description": "income: money pledged to the repo's tasks; expenses: paid out"}
            for (y, cur), v in sorted(sums.items(), reverse=True)]


async def funding_json(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    forge, path = request.match_info["forge"], request.match_info["path"]
    base = base_url(request)
    now = datetime.now(UTC)
    async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
        repo = await _public_repo(session, forge, path)
        manifest = None if repo is None else manifest_for(settings, repo)
        if repo is None or manifest is None:
            return web.json_response(
                {"error": f"no funding.json for {forge}/{path}: not a public repo here, or "
                          "its maintainers have not turned it on"}, status=404,
                headers={hdrs.CACHE_CONTROL: "no-cache"})
        if not privacy_of(settings, repo).amounts:
            return web.json_response(
                {"error": f"no funding.json for {forge}/{path}: its amounts are not public "
                          "(public_amounts = false), and funding.json is made of amounts"},
                status=404, headers={hdrs.CACHE_CONTROL: "no-cache"})
        currency = repo.currency or settings.bot.currency
        tasks = (await session.exec(
            select(t.Task).where(col(t.Task.repo_id) == id_of(repo),
                                 col(t.Task.state).in_(OPEN_STATES),
                                 col(t.Task.goal_minor).is_not(None))
            .order_by(col(t.Task.id).desc()).limit(100))).all()
        [appeal] = await monthly(session, id_of(repo), now.date(), 1, now=now,
                                 default_currency=currency, detail=False)
        history = await _yearly(session, id_of(repo))
        page = base + repo_url(repo)
        plans: list[dict[str, Any]] = [{
            "guid": "monthly-needs", "status": "active",
            "name": f"{repo.full_path}: this month's needs"[:250],
            "description": f"What the open tasks of {repo.full_path} still need this month: "
                           f"{page}/-/needs",
            "amount": _major(appeal.main.asked, appeal.currency),
            "currency": appeal.currency, "frequency": "monthly", "channels": ["bountybot"]}]
        for task in tasks:
            goal = Money(task.goal_minor or 0, task.currency)
            plans.append({
                "guid": f"task-{task.number}"[:32], "status": "active",
                "name": f"#{task.number} {task.title}"[:250],
                "description": f"{base}{page_url(repo, task.number)}",
                "amount": _major(goal.minor, goal.currency), "currency": goal.currency,
                "frequency": "one-time", "channels": ["bountybot"]})
        body: dict[str, Any] = {
            "version": "v1.0.0",
            "entity": {
                "type": manifest.type, "role": manifest.role, "name": manifest.name,
                "email": manifest.email,
                "description": manifest.description
                or f"The maintainers of {repo.full_path}, funded through bounties.",
                "webpageUrl": {"url": manifest.webpage_url or page}},
            "projects": [{
                "guid": _guid(repo.full_path.rsplit("/", 1)[-1]), "name": repo.full_path,
                "description": manifest.description
                or f"{repo.full_path}: open tasks funded by bounties.",
                "webpageUrl": {"url": page},
                "repositoryUrl": {"url": forge_repo_url(settings, repo)},
                "licenses": list(manifest.licenses), "tags": list(manifest.tags)}],
            "funding": {
                "channels": [{
                    "guid": "bountybot", "type": "payment-provider", "address": page,
                    "description": "Pledge on a task's issue with the bot's command "
                                   f"(`/pledge 20` or `@{settings.bot.login} pledge 20`); the "
                                   "money is paid out when the work is merged."}],
                "plans": plans}}
        if history:
            body["funding"]["history"] = history
    data = json.dumps(body, ensure_ascii=False, indent=2).encode()
    return _cached(request, data, "application/json", vary=False)


__all__ = ["setup"]
