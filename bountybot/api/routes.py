"""The API's routes: list and show tasks, a task's ledger, and the export downloads.

    GET /api/v1/tasks?forge=&repo=&state=&page=1&per_page=50
        {"tasks": [<task>...], "page", "per_page", "total"} and a `Link` header (as GitHub's),
        whose `next` goes on with `after=`
    GET /api/v1/tasks?forge=&repo=&state=&after=<id>&per_page=50
        {"tasks": [...], "per_page", "after", "next"}: the tasks with an id above `after`
        (keyset pagination: each page costs the same however deep, and a walk from `after=0`
        sees every task once, whatever is added meanwhile); `next` (also `Link: rel="next"`)
        is the next page's address, null on the last
    GET /api/v1/tasks/{id}          <task>, with its first `PLEDGES_SHOWN` pledges
    GET /api/v1/tasks/{id}/pledges?after=<pledge id>&per_page=100
        {"task_id", "pledges": [{"id", "backer", "amount", "state", "created_at"}...],
         "per_page", "after", "next"}: all of a task's pledges, a page at a time
    GET /api/v1/repos?forge=&page=1&per_page=50
        {"repos": [<repo>...], "page", "per_page", "total"}: the public repos, each with its
        addresses, its open tasks and this month's appeal; a `Link` header as above
    GET /api/v1/repos/{id}/needs[/{YYYY-MM}]  a month's appeal (`bountybot.needs`), with the
        twelve months ending with it under `history`; its `LIVE_SHOWN` newest live tasks
        under `live_tasks` (in id order), `more_live_tasks` counting the others, and its
        `LIVE_SHOWN` newest payouts and refunds (`more_payouts`, `more_refunds`)
    GET /api/v1/tasks/{id}/ledger?after=<transaction id>&per_page=100
        {"task_id", "account", "balance", "transactions": [...], "per_page", "next"}: the
        transactions a page at a time (`next` and `Link: rel="next"` as for tasks)
    GET /api/v1/export.json         the whole books (`bountybot.export`), streamed
    GET /api/v1/export.csv          the ledger, one row per entry, streamed
    GET /api/v1/statements/{forge}/backers/{login}     a backer's movements and totals
    GET /api/v1/statements/{forge}/developers/{login}  a developer's (`bountybot.statements`)

Everything is public and read-only, so every answer under `/api/` carries
`Access-Control-Allow-Origin: *` for dashboards hosted elsewhere, and `OPTIONS` (a browser's
CORS preflight) is answered 204 anywhere under it. Every error is JSON,
`{"error": "<what was wrong and what is allowed>"}`: a bad parameter is 400 (a control character
such as NUL anywhere in the path or the query is one), an unknown task or route 404, an
unreachable database 503, anything else 500 with the details in the log only.

Public means: a private repo's tasks, people and amounts are left out (a private task answers
404 like an unknown one) unless its operator published them (`api.views.shown_publicly`).
Privacy (`api.views.Privacy`): with `bot.public_backers = "count"` tasks carry no backer's
login (`pledges[].backer` is null), a ledger names no backer, and backers' statements are 404;
a repo with `public_amounts = false` has its tasks' amounts null (`percent` instead) and its
ledgers 404. Where either is set, the whole-books export and the statements are not public.
Tasks and repos carry their public addresses (`page_url`, `badge_url`, ...): under
`server.public_url` when it is set, else the host the request came to (`web.feeds.base_url`),
so that others can link to the pages and badges.
The reads use the public reads' own database pool (`app.READER`); the heavy ones (task lists,
ledgers, statements, exports) each take a turn first (`app.READ_GATE`), and a request that
finds none within `server.read_wait_seconds` is a 503 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from sqlalchemy import func
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from yarl import URL

from bountybot.api.views import (
    Json,
    amount,
    appeal_json,
    escrow_balance,
    is_public,
    load_entries,
    load_tasks,
    locale_of,
    month_json,
    pledge_json,
    privacy_of,
    shown_publicly,
    task_json,
    transaction_json,
)
from bountybot.export import export_csv, export_json
from bountybot.forges.registry import names
from bountybot.ledger import ESCROW
from bountybot.logs import event
from bountybot.needs import history
from bountybot.resources import READ_GATE, READER, SETTINGS, Busy
from bountybot.statements import Role, UnknownPerson, statement, statement_json
from bountybot.states import TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import reading
from bountybot.storage.tables import id_of
from bountybot.web.feeds import base_url, forge_repo_url
from bountybot.web.pages import OPEN_STATES, repo_url
from bountybot.web.pages import page_url as task_page_url

log = logging.getLogger(__name__)

PREFIX = "/api/"
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 100
# A task's first pledges, in its JSON; the rest are a page at a time under `.../pledges`.
PLEDGES_SHOWN = 20
# A month's live tasks in its appeal: the newest (`more_live_tasks` counts the others).
LIVE_SHOWN = 100
FORGES = names()
# Task ids are INTEGER columns: a larger number cannot be a task (and PostgreSQL would refuse
# to compare it), so it is answered 404 like any other unknown id.
MAX_ID = 2**31 - 1
# C0 controls, DEL and C1 controls: no parameter of the API has a use for them, and PostgreSQL
# refuses a NUL in any text it is asked to compare.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# An export's client must take each chunk within this time: one that stops reading would
# otherwise hold a turn of the heavy reads (and a snapshot of the books) for as long as it likes.
SEND_TIMEOUT_SECONDS = 60
PREFLIGHT_HEADERS = {
    hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, HEAD, OPTIONS",
    hdrs.ACCESS_CONTROL_MAX_AGE: "86400",
}
# A header list a browser may ask to send (`Access-Control-Request-Headers`): tokens and commas.
HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")

json_response = partial(web.json_response,
                        dumps=partial(json.dumps, ensure_ascii=False))


class ApiError(Exception):
    """An answer other than 200, with the sentence that says what was wrong."""

    def __init__(self, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ExportInterrupted(Exception):
    """An export failed after its first bytes were sent: no answer can replace them."""


def setup(app: web.Application) -> None:
    """Add the API's routes, its JSON errors and its CORS header to `app`."""
    app.router.add_get("/api/v1/tasks", list_tasks)
    app.router.add_get("/api/v1/tasks/{id}", show_task)
    app.router.add_get("/api/v1/tasks/{id}/ledger", show_ledger)
    app.router.add_get("/api/v1/tasks/{id}/pledges", list_pledges)
    app.router.add_get("/api/v1/repos", list_repos)
    app.router.add_get("/api/v1/repos/{id}/needs", show_needs)
    app.router.add_get("/api/v1/repos/{id}/needs/{month}", show_needs)
    # No HEAD: it would run the whole export to send nothing.
    app.router.add_get("/api/v1/export.json", download_json, allow_head=False)
    app.router.add_get("/api/v1/export.csv", download_csv, allow_head=False)
    app.router.add_get("/api/v1/statements/{forge}/backers/{login}", show_statement)
    app.router.add_get("/api/v1/statements/{forge}/developers/{login}", show_statement)
    app.middlewares.append(json_errors)
    app.on_response_prepare.append(allow_any_origin)


def _shown(value: str, limit: int = 40) -> str:
    """A parameter echoed in an error: cut short, as a JSON-safe repr."""
    return repr(value[:limit] + ("…" if len(value) > limit else ""))


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if not value:
        return None
    if value not in allowed:
        raise ApiError(400, f"{name} must be one of: {', '.join(allowed)} (got {_shown(value)})")
    return value


def _positive(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if not value:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < 1:
        raise ApiError(400, f"{name} must be a whole number from 1 (got {_shown(value)})")
    return int(value)


def _after(request: web.Request) -> int | None:
    """The `after` cursor (the id the previous page ended with), if given."""
    value = request.query.get("after")
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,10}", value) or int(value) > MAX_ID:
        raise ApiError(400, "after must be the id the previous page ended with, a whole number"
                       f" from 0 (as in the Link rel=\"next\" address; got {_shown(value)})")
    return int(value)


def _task_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not re.fullmatch(r"[0-9]{1,10}", raw) or not 1 <= int(raw) <= MAX_ID:
        raise ApiError(404, f"no task {_shown(raw)}: task ids are whole numbers like 42")
    return int(raw)


def _repo_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not re.fullmatch(r"[0-9]{1,10}", raw) or not 1 <= int(raw) <= MAX_ID:
        raise ApiError(404, f"no repo {_shown(raw)}: repo ids are whole numbers like 3"
                       " (GET /api/v1/repos lists them)")
    return int(raw)


def _month(request: web.Request, current: date) -> date:
    """The `{YYYY-MM}` of the path, else `current`: 400 when it is not a month, 404 when it
    is one with no appeal (before 2000, or still to come)."""
    raw = request.match_info.get("month")
    if raw is None:
        return current
    match = re.fullmatch(r"([0-9]{4})-([0-9]{2})", raw)
    if match is None or not 1 <= int(match[2]) <= 12:
        raise ApiError(400, f"month must be YYYY-MM, like {current:%Y-%m} (got {_shown(raw)})")
    month = date(int(match[1]), int(match[2]), 1)
    if not date(2000, 1, 1) <= month <= current:
        raise ApiError(404, f"no appeal for {raw}: months from 2000-01 to {current:%Y-%m}")
    return month


def _with_addresses(out: Json, repo: t.Repo, base: str) -> Json:
    """A task's JSON with the addresses of its public page, its badge and all its pledges."""
    page = base + task_page_url(repo, out["number"])
    out.update(page_url=page, badge_url=f"{page}/badge.svg",
               pledges_url=f"{base}/api/v1/tasks/{out['id']}/pledges")
    return out


def _repo_addresses(repo: t.Repo, base: str) -> Json:
    """A repo's public addresses: its page, feed, needs page and needs badge (SVG, and the
    shields endpoint JSON), and its appeal in this API."""
    here = base + repo_url(repo)
    return {"page_url": here, "feed_url": f"{here}/-/feed.atom", "needs_url": f"{here}/-/needs",
            "badge_url": f"{here}/-/needs/badge.svg",
            "badge_json_url": f"{here}/-/needs/badge.json",
            "api_needs_url": f"{base}/api/v1/repos/{repo.id}/needs"}


def _locale(request: web.Request) -> str:
    return request.app[SETTINGS].bot.locale


def _url_with(request: web.Request, **query: int) -> str:
    """This request's URL with another `page` or `after` (the other one dropped); under
    `server.public_url` when it is set, since behind a proxy the request's own host and scheme
    are the proxy's view, not the public one."""
    public = request.app[SETTINGS].server.public_url
    url = request.url
    if public:
        url = URL(public.rstrip("/") + request.rel_url.raw_path).with_query(request.query)
    return str(url.without_query_params("page", "after").update_query(query))


def _page_url(request: web.Request, page: int, per_page: int) -> str:
    return _url_with(request, page=page, per_page=per_page)


def _link_header(request: web.Request, page: int, per_page: int, total: int,
                 last_id: int | None = None) -> str | None:
    """GitHub's pagination links: `<url>; rel="next"`, `last`, `first`, `prev`; with
    `last_id` (the last id of this page), `next` goes on with `after=` instead of `page=`."""
    last = max(1, -(-total // per_page))
    links: list[tuple[str, str]] = []
    if page < last:
        links += [(_url_with(request, after=last_id, per_page=per_page) if last_id is not None
                   else _page_url(request, page + 1, per_page), "next"),
                  (_page_url(request, last, per_page), "last")]
    if page > 1:
        links += [(_page_url(request, 1, per_page), "first"),
                  (_page_url(request, min(page - 1, last), per_page), "prev")]
    if not links:
        return None
    return ", ".join(f'<{url}>; rel="{rel}"' for url, rel in links)


def _next(request: web.Request, more: bool, last_id: int | None, per_page: int,
          body: Json) -> web.Response:
    """A keyset page's answer: `next` (and `Link: rel="next"`) when there is more."""
    url = _url_with(request, after=last_id, per_page=per_page) \
        if more and last_id is not None else None
    response = json_response({**body, "next": url})
    if url is not None:
        response.headers[hdrs.LINK] = f'<{url}>; rel="next"'
    return response


async def list_tasks(request: web.Request) -> web.Response:
    """Tasks in id order, filtered by `forge`, `repo` (full path) and `state`, a page at a
    time: by `page` (with the `total`), or after the id `after` (keyset: no count, the same
    cost however deep)."""
    forge = _choice(request, "forge", FORGES)
    state = _choice(request, "state", tuple(s.value for s in TaskState))
    repo = request.query.get("repo", "").strip("/")
    after = _after(request)
    if after is not None and "page" in request.query:
        raise ApiError(400, "page and after cannot be used together: after (the address in"
                       ' Link rel="next") goes on from where the last page ended')
    page = _positive(request, "page", 1)
    # Like GitHub, a per_page above the maximum is lowered to it rather than refused.
    per_page = min(_positive(request, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)

    where: list[Any] = []
    if forge:
        where.append(col(t.Repo.forge) == forge)
    if repo:
        # Forges treat paths case-insensitively (`Octo/Hello` is `octo/hello`).
        where.append(func.lower(col(t.Repo.full_path)) == repo.lower())
    if state:
        where.append(col(t.Task.state) == TaskState(state))
    where.append(shown_publicly())
    joined = col(t.Repo.id) == col(t.Task.repo_id)
    settings = request.app[SETTINGS]
    base = base_url(request)

    async def shaped(session: AsyncSession, stmt: Any) -> list[Json]:
        pairs = [(task, r) for task, r in (await session.exec(stmt)).all()]
        return [_with_addresses(task_json(rows, _locale(request),
                                          privacy=privacy_of(settings, rows.repo)),
                                rows.repo, base)
                for rows in await load_tasks(session, pairs, pledges=PLEDGES_SHOWN)]

    tasks: list[Json] = []
    stmt = (select(t.Task, t.Repo).join(t.Repo, joined).where(*where)
            .order_by(col(t.Task.id)))
    async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
        if after is not None:
            # One more than the page, to know whether there is a next one.
            tasks = await shaped(session, stmt.where(col(t.Task.id) > after)
                                 .limit(per_page + 1))
            more = len(tasks) > per_page
            tasks = tasks[:per_page]
            return _next(request, more, tasks[-1]["id"] if tasks else None, per_page,
                         {"tasks": tasks, "per_page": per_page, "after": after})
        count = select(func.count()).select_from(t.Task).join(t.Repo, joined).where(*where)
        total = int((await session.exec(count)).one())
        offset = (page - 1) * per_page
        if offset < total:  # past the end there is nothing to ask for
            tasks = await shaped(session, stmt.offset(offset).limit(per_page))
    response = json_response(
        {"tasks": tasks, "page": page, "per_page": per_page, "total": total})
    link = _link_header(request, page, per_page, total, tasks[-1]["id"] if tasks else None)
    if link:
        response.headers[hdrs.LINK] = link
    return response


async def _task(session: AsyncSession, task_id: int) -> tuple[t.Task, t.Repo]:
    """The task and its repo; a private repo's task is unknown here, in the same words."""
    task = await session.get(t.Task, task_id)
    repo = None if task is None else await session.get(t.Repo, task.repo_id)
    if task is None or repo is None or not is_public(repo):
        raise ApiError(404, f"no task {task_id}")
    return task, repo


async def show_task(request: web.Request) -> web.Response:
    task_id = _task_id(request)
    async with reading(request.app[READER]) as session:
        [rows] = await load_tasks(session, [await _task(session, task_id)],
                                  pledges=PLEDGES_SHOWN)
        return json_response(_with_addresses(task_json(
            rows, _locale(request), privacy=privacy_of(request.app[SETTINGS], rows.repo)),
            rows.repo, base_url(request)))


async def list_repos(request: web.Request) -> web.Response:
    """The public repos in id order, `forge` to filter, a page at a time; each with its
    addresses, how many of its tasks are open and this month's appeal (amounts null, percent
    kept, where the repo shows percentages only)."""
    forge = _choice(request, "forge", FORGES)
    page = _positive(request, "page", 1)
    per_page = min(_positive(request, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
    where: list[Any] = [shown_publicly()]
    if forge:
        where.append(col(t.Repo.forge) == forge)
    settings = request.app[SETTINGS]
    base = base_url(request)
    now = datetime.now(UTC)
    month = now.date().replace(day=1)
    async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
        total = int((await session.exec(
            select(func.count()).select_from(t.Repo).where(*where))).one())
        offset = (page - 1) * per_page
        repos: list[Json] = []
        if offset < total:
            rows = (await session.exec(select(t.Repo).where(*where).order_by(col(t.Repo.id))
                                       .offset(offset).limit(per_page))).all()
            ids = [id_of(repo) for repo in rows]
            open_tasks = dict((await session.exec(
                select(t.Task.repo_id, func.count()).where(
                    col(t.Task.repo_id).in_(ids), col(t.Task.state).in_(OPEN_STATES))
                .group_by(col(t.Task.repo_id)))).all())
            for repo in rows:
                currency = repo.currency or settings.bot.currency
                # One repo's appeal at a time, as its needs badge draws it: a page of repos
                # is at most MAX_PER_PAGE of them, under one turn of the heavy reads.
                [figures] = await history(session, id_of(repo), month, 1, now=now,
                                          detail=False, default_currency=currency)
                summary = month_json(figures, locale_of(repo, _locale(request)),
                                     privacy_of(settings, repo))
                repos.append({
                    "id": repo.id, "forge": repo.forge, "path": repo.full_path,
                    "url": forge_repo_url(settings, repo), "currency": currency,
                    **_repo_addresses(repo, base),
                    "open_tasks": open_tasks.get(id_of(repo), 0),
                    "appeal": {k: summary[k] for k in (
                        "month", "currency", "asked", "funded", "to_go", "percent", "tasks")},
                })
    response = json_response(
        {"repos": repos, "page": page, "per_page": per_page, "total": total})
    link = _link_header(request, page, per_page, total)
    if link:
        response.headers[hdrs.LINK] = link
    return response


async def show_needs(request: web.Request) -> web.Response:
    """A repo's appeal for a month (this one without `{YYYY-MM}`), the same figures as its
    needs page, with the twelve months ending with it under `history` (newest first)."""
    repo_id = _repo_id(request)
    now = datetime.now(UTC)
    month = _month(request, now.date().replace(day=1))
    settings = request.app[SETTINGS]
    base = base_url(request)
    async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
        repo = await session.get(t.Repo, repo_id)
        if repo is None or not is_public(repo):
            raise ApiError(404, f"no repo {repo_id}")
        months = await history(session, repo_id, month, now=now, live=LIVE_SHOWN,
                               default_currency=repo.currency or settings.bot.currency)
        locale = locale_of(repo, _locale(request))
        privacy = privacy_of(settings, repo)
        here = _repo_addresses(repo, base)
        body = {"repo": {"id": repo.id, "forge": repo.forge, "path": repo.full_path,
                         "page_url": here["page_url"], "needs_url": here["needs_url"]},
                **appeal_json(months[0], locale, privacy),
                "more_live_tasks": months[0].more_live,
                "more_payouts": months[0].more_payouts,
                "more_refunds": months[0].more_refunds,
                "page_url": f"{here['needs_url']}/{month:%Y-%m}",
                "history": [month_json(m, locale, privacy) for m in months]}
        for item in body["live_tasks"]:
            item["page_url"] = base + task_page_url(repo, item["number"])
    return json_response(body)


async def show_ledger(request: web.Request) -> web.Response:
    """The task's ledger transactions in order, a page at a time (`after` the last one's id),
    and what its escrow holds now."""
    task_id = _task_id(request)
    after = _after(request) or 0
    per_page = min(_positive(request, "per_page", MAX_PER_PAGE), MAX_PER_PAGE)
    async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
        task, repo = await _task(session, task_id)
        if not privacy_of(request.app[SETTINGS], repo).amounts:
            # A ledger is nothing but amounts: its repo shows percentages only.
            raise ApiError(404, f"the ledger of task {task_id} is not public: its repo shows"
                           " percentages only")
        locale = locale_of(repo, _locale(request))
        stmt = (select(t.LedgerTransaction).where(t.LedgerTransaction.task_id == task_id,
                                                  col(t.LedgerTransaction.id) > after)
                .order_by(col(t.LedgerTransaction.id)).limit(per_page + 1))
        txns = (await session.exec(stmt)).all()
        more, txns = len(txns) > per_page, txns[:per_page]
        entries = await load_entries(session, [id_of(txn) for txn in txns])
        balance = await escrow_balance(session, task)
        return _next(request, more, id_of(txns[-1]) if txns else None, per_page, {
            "task_id": task_id,
            "account": ESCROW.render(task_id),
            "balance": amount(balance, task.currency, locale),
            "transactions": [_nameless(transaction_json(txn, entries[id_of(txn)], locale),
                                       request.app[SETTINGS].bot.public_backers != "count")
                             for txn in txns],
            "per_page": per_page,
        })


async def list_pledges(request: web.Request) -> web.Response:
    """A task's pledges in id order, a page at a time (`after` the last one's id); names and
    amounts hidden as in the task's JSON."""
    task_id = _task_id(request)
    after = _after(request) or 0
    per_page = min(_positive(request, "per_page", MAX_PER_PAGE), MAX_PER_PAGE)
    async with reading(request.app[READER]) as session:
        task, repo = await _task(session, task_id)
        rows = (await session.exec(
            select(t.Pledge).where(col(t.Pledge.task_id) == task_id, col(t.Pledge.id) > after)
            .order_by(col(t.Pledge.id)).limit(per_page + 1))).all()
        more, rows = len(rows) > per_page, rows[:per_page]
        locale = locale_of(repo, _locale(request))
        privacy = privacy_of(request.app[SETTINGS], repo)
        pledges = [pledge_json(p, locale, privacy) for p in rows]
    return _next(request, more, pledges[-1]["id"] if pledges else None, per_page,
                 {"task_id": task_id, "pledges": pledges, "per_page": per_page,
                  "after": after})


def _nameless(txn: Json, names: bool) -> Json:
    """A ledger transaction without its backers' names (`bot.public_backers = "count"`): a
    backer's account is `backer`, and the memo of a transaction with one (`alice pledges`)
    is left empty."""
    if names:
        return txn
    backed = False
    for entry in txn["entries"]:
        if entry["account"].startswith("backer:"):
            entry["account"], backed = "backer", True
    if backed:
        txn["memo"] = ""
    return txn


async def show_statement(request: web.Request) -> web.Response:
    """Every movement of one backer's or developer's money, with totals per currency."""
    forge, login = request.match_info["forge"], request.match_info["login"]
    if forge not in FORGES:
        raise ApiError(404, f"no forge {_shown(forge)}: one of {', '.join(FORGES)}")
    if not 0 < len(login) <= t.LOGIN:
        raise ApiError(404, f"no such login {_shown(login)}")
    role: Role = "backer" if "/backers/" in request.path else "developer"
    if role == "backer" and request.app[SETTINGS].bot.public_backers == "count":
        raise ApiError(404, "backers' statements are not public here (bot.public_backers is"
                       " count)")
    if any(not r.public_amounts for r in request.app[SETTINGS].repos.values()):
        raise ApiError(404, "statements are not public here: some repos show percentages only")
    async with request.app[READ_GATE].turn(), reading(request.app[READER]) as session:
        try:
            found = await statement(session, forge, role, login, public=True)
        except UnknownPerson as e:
            raise ApiError(404, str(e)) from None
        return json_response(statement_json(found, _locale(request)))


Producer = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


async def _download(request: web.Request, suffix: str, content_type: str,
                    produce: Producer, now: datetime) -> web.StreamResponse:
    """Stream an export as an attachment. The response starts with the first bytes, which
    come after the database has answered, so an outage is still a clean JSON 503."""
    response = web.StreamResponse()
    response.content_type = content_type
    response.charset = "utf-8"
    response.headers[hdrs.CONTENT_DISPOSITION] = (
        f"attachment; filename=bountybot-export-{now:%Y-%m-%d}.{suffix}")
    response.enable_chunked_encoding()

    async def write(data: bytes) -> None:
        if not response.prepared:
            await response.prepare(request)
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            await response.write(data)

    try:
        await produce(write)
    except Exception as e:
        if not response.prepared:
            raise
        # Re-raised, aiohttp closes the connection without the last chunk, so the download
        # is visibly incomplete (curl and browsers say so), never a file silently cut short.
        # A client that stopped reading is its own business; anything else is ours.
        slow = isinstance(e, TimeoutError)
        event(log, "api.export_interrupted", logging.INFO if slow else logging.ERROR,
              path=request.path, error="client_stopped_reading" if slow else type(e).__name__)
        raise ExportInterrupted(request.path) from e
    await response.write_eof()
    return response


def _export_is_public(request: web.Request) -> None:
    """The public export is the whole books, names and amounts: not where either is hidden
    (the operator still has `bountybot export`)."""
    settings = request.app[SETTINGS]
    if settings.bot.public_backers == "count" or any(
            not r.public_amounts for r in settings.repos.values()):
        raise ApiError(404, "the export is not public here: backers' names or some repos'"
                       " amounts are hidden (the operator has `bountybot export`)")


async def download_json(request: web.Request) -> web.StreamResponse:
    _export_is_public(request)
    now = datetime.now(UTC)
    async with request.app[READ_GATE].turn():
        return await _download(request, "json", "application/json", lambda write: export_json(
            request.app[READER], write, locale=_locale(request), now=now, public=True,
            pace=request.app[READ_GATE].pace), now)


async def download_csv(request: web.Request) -> web.StreamResponse:
    _export_is_public(request)
    async with request.app[READ_GATE].turn():
        return await _download(request, "csv", "text/csv", lambda write: export_csv(
            request.app[READER], write, locale=_locale(request), public=True,
            pace=request.app[READ_GATE].pace),
            datetime.now(UTC))


def preflight(request: web.Request) -> web.Response:
    """A browser's CORS preflight: any origin may GET the API, with the headers it asks for."""
    headers = dict(PREFLIGHT_HEADERS)
    asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "").strip()
    if asked and len(asked) <= 1000 and HEADER_LIST.fullmatch(asked):
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = asked
        headers[hdrs.VARY] = "Access-Control-Request-Headers"
    else:
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = "Accept, Accept-Language, Content-Type"
    return web.Response(status=204, headers=headers)


def _control_character(request: web.Request) -> str | None:
    """What carries a control character (the path, or a query parameter), if anything does."""
    if CONTROL.search(request.path):
        return "the path"
    for name, value in request.query.items():
        if CONTROL.search(name) or CONTROL.search(value):
            return f"the query parameter {_shown(name)}"
    return None


def _busy(retry_after: int) -> web.Response:
    return json_response(
        {"error": f"too many downloads and reports at once; try again in {retry_after} seconds"},
        status=503, headers={hdrs.RETRY_AFTER: str(retry_after)})


def _unavailable(error: BaseException) -> bool:
    """Whether the database could not be reached (as opposed to a bug)."""
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or isinstance(error, OperationalError)
    return isinstance(error, DisconnectionError | OSError | TimeoutError)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under `/api/`, every error is a JSON `{"error": ...}`; a traceback only goes to the log."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    if request.method == hdrs.METH_OPTIONS:
        # Answered here, not by a route: a catch-all route would turn unknown paths into 405s.
        return preflight(request)
    bad = _control_character(request)
    if bad is not None:
        return json_response({"error": f"{bad} contains a control character (such as NUL),"
                                       " which no part of the API accepts"}, status=400)
    try:
        return await handler(request)
    except ApiError as e:
        return json_response({"error": e.message}, status=e.status, headers=e.headers)
    except Busy:
        event(log, "api.busy", logging.INFO, path=request.path)
        return _busy(Busy.retry_after)
    except ExportInterrupted:
        raise
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = {404: f"no such API endpoint: {request.path}",
                   405: f"{request.method} is not allowed here; the API only answers GET"}
        headers = {hdrs.ALLOW: e.headers[hdrs.ALLOW]} if hdrs.ALLOW in e.headers else None
        return json_response({"error": message.get(e.status, e.reason)}, status=e.status,
                             headers=headers)
    except Exception as e:
        if isinstance(e, PoolTimeout):  # every connection of the read pool is taken
            event(log, "api.busy", logging.INFO, path=request.path, error="pool_timeout")
            return _busy(Busy.retry_after)
        if _unavailable(e):
            event(log, "api.database_unavailable", logging.WARNING, path=request.path,
                  error=type(e).__name__)
            return json_response({"error": "the database is unavailable; try again later"},
                                 status=503)
        log.exception("api.failed path=%s", request.path)
        return json_response({"error": "internal error; the details are in the service's log"},
                             status=500)


async def allow_any_origin(request: web.Request, response: web.StreamResponse) -> None:
    """The API's data is public: let dashboards on other origins read it."""
    if request.path.startswith(PREFIX):
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*"
        # Dashboards page with `Link` and back off with `Retry-After`: let them read both.
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "Link, Retry-After"
