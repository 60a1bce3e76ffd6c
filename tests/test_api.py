"""The public JSON API over real books (SQLite and PostgreSQL), told through the rules.

Two repos: GitHub `commons/garden` (English) and GitLab `group/sub/project` (French), and six
tasks, one in each state a visitor meets: open with a goal and a deadline, funded (with a
withdrawn pledge), claimed with a waiting list, done and paid, cancelled and refunded.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.api import routes
from bountybot.api.routes import setup
from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.money import Money, format_money
from bountybot.rules import (
    Actor,
    Bounty,
    Comment,
    Decision,
    Event,
    IssueRef,
    LabelAdded,
    LinkClosed,
    LinkOpened,
    PayoutPaid,
    Policy,
    decide_comment,
    decide_event,
)
from bountybot.storage.bounties import ensure_repo, load_bounty, save_decision
from bountybot.storage.tables import metadata
from bountybot.storage.uow import UnitOfWork

SECRET = "whsec-Api-Export-5150"
TOKEN = "ghp_ApiExportToken5150"
START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
TASK_FIELDS = {
    "id", "forge", "repo", "number", "title", "url", "state", "goal", "pledged", "raised",
    "backers",
    "claim", "waiting", "pledges", "links", "payouts", "deadline", "created_at", "currency",
    "page_url", "badge_url", "pledges_url", "pledge_count",
}


@dataclass(frozen=True)
class Place:
    forge: str
    forge_repo_id: str
    path: str
    locale: str | None

    def issue(self, number: int, title: str) -> IssueRef:
        sep = "/-/issues/" if self.forge == "gitlab" else "/issues/"
        return IssueRef(self.forge, self.path, number, title,
                        f"https://{self.forge}.com/{self.path}{sep}{number}")


GARDEN = Place("github", "1296269", "commons/garden", None)
PROJECT = Place("gitlab", "4242", "group/sub/project", "fr")


@dataclass
class Tale:
    """What the story left: task ids by name, and the moments worth checking."""

    ids: dict[str, int] = field(default_factory=dict)
    created: dict[str, datetime] = field(default_factory=dict)
    moments: dict[str, datetime] = field(default_factory=dict)


class Teller:
    """Tells bounties into the database through the rules, a minute per step, in one unit of
    work (the books end up exactly as the service would write them, only faster)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.now = START
        self.comments = itertools.count(9000)
        self.tale = Tale()

    async def _step(self, place: Place, number: int, title: str,
                    decide: Callable[[Bounty | None, IssueRef, Policy], Decision]) -> None:
        repo = await ensure_repo(self.session, place.forge, place.forge_repo_id, place.path)
        repo.locale = place.locale
        issue = place.issue(number, title)
        bounty = await load_bounty(self.session, repo, number)
        decision = decide(bounty, issue, Policy(locale=place.locale or "en"))
        refused = [item.detail for item in decision.trail if item.action == "command.refused"]
        assert not refused, refused
        task_id = await save_decision(self.session, repo, issue, decision,
                                      source=f"step:{self.now.isoformat()}", now=self.now)
        assert task_id is not None
        self.tale.ids.setdefault(title, task_id)
        self.tale.created.setdefault(title, self.now)
        self.now += timedelta(minutes=1)

    async def say(self, place: Place, number: int, title: str, login: str, body: str) -> None:
        comment = Comment(str(next(self.comments)), Actor(login, is_maintainer=login == "maya"),
                          body)
        await self._step(place, number, title,
                         lambda b, issue, policy: decide_comment(b, issue, comment, policy,
                                                                 self.now))

    async def event(self, place: Place, number: int, title: str, event: Event) -> None:
        await self._step(place, number, title,
                         lambda b, issue, policy: decide_event(b, issue, event, policy, self.now))

    async def payout_id(self, place: Place, number: int) -> int:
        repo = await ensure_repo(self.session, place.forge, place.forge_repo_id, place.path)
        bounty = await load_bounty(self.session, repo, number)
        assert bounty is not None and bounty.payouts[0].id is not None
        return bounty.payouts[0].id


SEEDS, TOMATOES, GATE = "Add a seed library", "Water the tomatoes", "Fix the gate"
COMPOST, SHED, DOCS = "Build a compost bin", "Paint the shed", "Traduire la documentation"


async def tell(sessionmaker: async_sessionmaker[AsyncSession]) -> Tale:
    """The books every test reads: five tasks in commons/garden, one in group/sub/project."""
    async with UnitOfWork(sessionmaker) as uow:
        s = Teller(uow.session)
        for who, text in [("maya", "/goal 100"), ("maya", "/deadline 2026-12-31"),
                          ("alice", "/pledge 20"), ("bob", "/pledge 15"), ("alice", "/pledge 10")]:
            await s.say(GARDEN, 1, SEEDS, who, text)
        for who, text in [("maya", "/goal 50"), ("alice", "/pledge 30"), ("erin", "/pledge 5"),
                          ("erin", "/withdraw"), ("bob", "/pledge 20")]:
            await s.say(GARDEN, 2, TOMATOES, who, text)
        await s.event(GARDEN, 3, GATE, LabelAdded())
        await s.say(GARDEN, 3, GATE, "alice", "/pledge 60")
        s.tale.moments["gate claimed"] = s.now
        await s.say(GARDEN, 3, GATE, "carol", "/claim")
        await s.say(GARDEN, 3, GATE, "dave", "/claim")
        await s.say(GARDEN, 4, COMPOST, "maya", "/goal 40")
        await s.say(GARDEN, 4, COMPOST, "bob", "/pledge 40")
        await s.say(GARDEN, 4, COMPOST, "carol", "/claim")
        pull = "https://github.com/commons/garden/pull/12"
        await s.event(GARDEN, 4, COMPOST, LinkOpened(12, "carol", pull))
        s.tale.moments["compost merged"] = s.now
        await s.event(GARDEN, 4, COMPOST, LinkClosed(12, "carol", merged=True, url=pull))
        s.tale.moments["compost paid"] = s.now
        await s.event(GARDEN, 4, COMPOST, PayoutPaid(await s.payout_id(GARDEN, 4), "SEPA-42"))
        for who, text in [("maya", "/goal 80"), ("alice", "/pledge 25"), ("bob", "/pledge 25"),
                          ("maya", "/cancel")]:
            await s.say(GARDEN, 5, SHED, who, text)
        for who, text in [("maya", "/goal 50"), ("zoe", "/pledge 50")]:
            await s.say(PROJECT, 3, DOCS, who, text)
    return s.tale


def settings(**server: Any) -> Settings:
    """Defaults, with a forge's secrets set, so the tests can check that none leaks."""
    return Settings(config_file=None, server=server,
                    github={"webhook_secret": SECRET, "token": TOKEN})


# Each test starts from an environment without BOUNTYBOT_* variables.
pytestmark = pytest.mark.usefixtures("no_bountybot_env")


# The books as the rules wrote them, per database, with the tale: told once per test session,
# then copied row by row into each test's empty database. Telling takes ~30 units of work
# (half a second); copying a dozen tables, a few milliseconds. The tests only read, so the ids
# the copies keep (and PostgreSQL's sequences that do not know them) are never in the way.
_TOLD: dict[str, tuple[Tale, dict[str, list[dict[str, Any]]]]] = {}


async def told(engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> Tale:
    """The story's books in this test's (empty) database."""
    told = _TOLD.get(engine.dialect.name)
    if told is None:
        story = await tell(sessionmaker)
        async with engine.connect() as conn:
            rows = {table.name: [dict(row._mapping)
                                 for row in (await conn.execute(select(table))).all()]
                    for table in metadata.sorted_tables}
        _TOLD[engine.dialect.name] = (story, rows)
        return story
    story, rows = told
    async with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if rows[table.name]:
                await conn.execute(insert(table), rows[table.name])
    return story


@pytest.fixture
async def tale(engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> Tale:
    return await told(engine, sessionmaker)


def serve(engine: AsyncEngine) -> TestClient[Any, Any]:
    """A client of the app with only the API, on `engine`."""
    app = create_app(settings(public_url="https://bounties.example.org"), engine=engine,
                     features=[setup])
    return TestClient(TestServer(app))


@pytest.fixture
async def client(engine: AsyncEngine,
                 tale: Tale,  # noqa: ARG001 - the story's books, written before the API serves
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    """The API over the story's books."""
    async with serve(engine) as client:
        yield client


@pytest.fixture
async def bare(engine: AsyncEngine) -> AsyncIterator[TestClient[Any, Any]]:
    """The API over empty books."""
    async with serve(engine) as client:
        yield client


async def get(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await client.get(path)
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert SECRET not in text and TOKEN not in text
    return await response.json()


def eur(minor: int, display: str) -> dict[str, Any]:
    return {"amount": minor, "currency": "EUR", "display": display}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def pledge(backer: str, minor: int, display: str, state: str) -> dict[str, Any]:
    return {"backer": backer, "amount": eur(minor, display), "state": state}


def without_times(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for item in items:
        assert ISO_Z.fullmatch(item["created_at"]), item
    return [{k: v for k, v in item.items() if k != "created_at"} for item in items]


async def test_every_task_has_the_fields_of_the_design(client: TestClient[Any, Any],
                                                       tale: Tale) -> None:
    body = await get(client, "/api/v1/tasks")
    tasks = {task["title"]: task for task in body["tasks"]}
    assert [task["id"] for task in body["tasks"]] == sorted(tale.ids.values())
    assert body["total"] == 6 and len(tasks) == 6
    for title, task in tasks.items():
        assert set(task) == TASK_FIELDS, title
        assert task == await get(client, f"/api/v1/tasks/{task['id']}")
        assert task["id"] == tale.ids[title] and task["created_at"] == iso(tale.created[title])
        assert type(task["backers"]) is int and type(task["number"]) is int
        assert task["currency"] == "EUR" and task["pledged"]["currency"] == "EUR"

    seeds = tasks[SEEDS]
    assert {k: seeds[k] for k in ("forge", "repo", "number", "url", "state", "deadline")} == {
        "forge": "github", "repo": "commons/garden", "number": 1, "state": "open",
        "url": "https://github.com/commons/garden/issues/1", "deadline": "2026-12-31"}
    assert seeds["goal"] == eur(10000, "€100.00")
    assert seeds["pledged"] == seeds["raised"] == eur(4500, "€45.00")
    assert seeds["backers"] == 2  # alice pledged twice: one backer
    assert without_times(seeds["pledges"]) == [
        pledge("alice", 2000, "€20.00", "held"), pledge("bob", 1500, "€15.00", "held"),
        pledge("alice", 1000, "€10.00", "held")]
    assert (seeds["claim"], seeds["waiting"], seeds["links"], seeds["payouts"]) == (
        None, [], [], [])

    tomatoes = tasks[TOMATOES]
    assert (tomatoes["state"], tomatoes["backers"], tomatoes["deadline"]) == ("funded", 2, None)
    # erin's withdrawn €5 is neither held nor raised
    assert tomatoes["goal"] == tomatoes["pledged"] == tomatoes["raised"] == eur(5000, "€50.00")
    assert without_times(tomatoes["pledges"]) == [
        pledge("alice", 3000, "€30.00", "held"), pledge("erin", 500, "€5.00", "withdrawn"),
        pledge("bob", 2000, "€20.00", "held")]

    gate = tasks[GATE]
    assert (gate["state"], gate["goal"], gate["waiting"]) == ("claimed", None, ["dave"])
    assert gate["pledged"] == eur(6000, "€60.00")
    assert gate["claim"] == {"developer": "carol", "state": "active",
                             "expires_at": iso(tale.moments["gate claimed"] + timedelta(days=14))}

    compost = tasks[COMPOST]
    # Done: nothing is held any more, what was raised (and by whom, and who did the work) stays.
    assert (compost["state"], compost["backers"]) == ("done", 1)
    assert compost["claim"] == {"developer": "carol", "state": "done", "expires_at": None}
    assert compost["pledged"] == eur(0, "€0.00")
    assert compost["raised"] == eur(4000, "€40.00")
    assert without_times(compost["pledges"]) == [pledge("bob", 4000, "€40.00", "paid_out")]
    assert compost["links"] == [{"number": 12, "author": "carol", "state": "merged",
                                 "url": "https://github.com/commons/garden/pull/12"}]
    assert compost["payouts"] == [{
        "developer": "carol", "amount": eur(4000, "€40.00"), "state": "paid",
        "created_at": iso(tale.moments["compost merged"]),
        "paid_at": iso(tale.moments["compost paid"])}]

    shed = tasks[SHED]
    assert (shed["state"], shed["backers"], shed["pledged"]) == ("cancelled", 0, eur(0, "€0.00"))
    assert (shed["raised"], shed["claim"]) == (eur(0, "€0.00"), None)  # refunded: not raised
    assert [p["state"] for p in shed["pledges"]] == ["refunded", "refunded"]

    docs = tasks[DOCS]
    assert (docs["forge"], docs["repo"], docs["number"], docs["state"]) == (
        "gitlab", "group/sub/project", 3, "funded")
    assert docs["url"] == "https://gitlab.com/group/sub/project/-/issues/3"


async def test_amounts_are_shown_in_the_repos_locale(client: TestClient[Any, Any],
                                                     tale: Tale) -> None:
    docs = await get(client, f"/api/v1/tasks/{tale.ids[DOCS]}")
    french = format_money(Money(5000, "EUR"), "fr")
    assert french.startswith("50,00") and french.endswith("€")
    assert docs["goal"] == docs["pledged"] == {"amount": 5000, "currency": "EUR",
                                               "display": french}
    assert docs["pledges"][0]["amount"]["display"] == french
    garden = await get(client, f"/api/v1/tasks/{tale.ids[TOMATOES]}")
    assert garden["goal"]["display"] == "€50.00"


FILTERS = [
    ("forge=gitlab", [DOCS]),
    ("forge=github", [SEEDS, TOMATOES, GATE, COMPOST, SHED]),
    ("repo=group/sub/project", [DOCS]),
    ("repo=Commons/Garden/", [SEEDS, TOMATOES, GATE, COMPOST, SHED]),
    ("repo=group/sub", []),
    ("repo=commons/garden&forge=gitlab", []),
    ("state=funded", [TOMATOES, DOCS]),
    ("state=funded&forge=github", [TOMATOES]),
    ("state=done&repo=commons/garden", [COMPOST]),
    ("state=expired", []),
    ("state=&forge=&repo=", [SEEDS, TOMATOES, GATE, COMPOST, SHED, DOCS]),
]


async def test_filters_by_forge_repo_and_state(client: TestClient[Any, Any]) -> None:
    for query, titles in FILTERS:
        body = await get(client, f"/api/v1/tasks?{query}")
        assert [task["title"] for task in body["tasks"]] == titles, query
        assert body["total"] == len(titles), query


def links(header: str) -> dict[str, str]:
    found = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', header))
    assert len(found) == header.count("rel=")
    return found


@pytest.mark.usefixtures("tale")
async def test_pagination_with_links_like_github(client: TestClient[Any, Any]) -> None:
    base = "https://bounties.example.org/api/v1/tasks?forge=github"
    seen = []
    for page in (1, 2, 3):
        response = await client.get(f"/api/v1/tasks?forge=github&per_page=2&page={page}")
        body = await response.json()
        assert (body["page"], body["per_page"], body["total"]) == (page, 2, 5)
        seen += [task["title"] for task in body["tasks"]]
        rels = links(response.headers["Link"])
        if page < 3:
            # `next` goes on after this page's last task (keyset), the others by page number.
            after = body["tasks"][-1]["id"]
            assert rels["next"] == f"{base}&per_page=2&after={after}"
            assert rels["last"] == f"{base}&per_page=2&page=3"
        if page > 1:
            assert rels["prev"] == f"{base}&per_page=2&page={page - 1}"
            assert rels["first"] == f"{base}&per_page=2&page=1"
        assert ("next" in rels) == (page < 3) and ("prev" in rels) == (page > 1)
    assert seen == [SEEDS, TOMATOES, GATE, COMPOST, SHED]

    beyond = await client.get("/api/v1/tasks?forge=github&per_page=2&page=9")
    assert (await beyond.json())["tasks"] == []
    assert links(beyond.headers["Link"])["prev"].endswith("page=3")
    one_page = await client.get("/api/v1/tasks?per_page=500")
    assert (await one_page.json())["per_page"] == 100
    assert "Link" not in one_page.headers


ERRORS = [
    ("/api/v1/tasks?state=bogus", 400,
     "state must be one of: open, funded, claimed, in_review, done, cancelled, expired"
     " (got 'bogus')"),
    ("/api/v1/tasks?forge=bitbucket", 400, "forge must be one of: github, gitlab"),
    ("/api/v1/tasks?page=0", 400, "page must be a whole number from 1 (got '0')"),
    ("/api/v1/tasks?page=two", 400, "page must be a whole number from 1"),
    ("/api/v1/tasks?page=99999999999999999999", 400, "page must be a whole number"),
    ("/api/v1/tasks?per_page=-5", 400, "per_page must be a whole number from 1"),
    ("/api/v1/tasks/999999", 404, "no task 999999"),
    ("/api/v1/tasks/abc", 404, "task ids are whole numbers"),
    ("/api/v1/tasks/0", 404, "no task"),
    ("/api/v1/tasks/99999999999", 404, "no task"),  # beyond INTEGER: no database error
    ("/api/v1/tasks/%D9%A3", 404, "no task"),  # an Arabic-Indic three: a digit, not ours
    ("/api/v1/tasks/999999/ledger", 404, "no task 999999"),
    ("/api/v1/tasks/1.5/ledger", 404, "no task"),
    ("/api/v1/nothing", 404, "no such API endpoint"),
]


async def test_errors_are_json_and_say_what_is_allowed(bare: TestClient[Any, Any]) -> None:
    for path, status, says in ERRORS:
        body = await get(bare, path, status)
        assert set(body) == {"error"} and says in body["error"], path
    response = await bare.post("/api/v1/tasks", data=b"{}")
    assert response.status == 405
    assert "only answers GET" in (await response.json())["error"]
    assert "GET" in response.headers["Allow"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Origin" not in (await bare.get("/healthz")).headers


async def test_ledger_balances_and_matches_the_pledged_money(client: TestClient[Any, Any],
                                                             tale: Tale) -> None:
    for title, task_id in tale.ids.items():
        task = await get(client, f"/api/v1/tasks/{task_id}")
        ledger = await get(client, f"/api/v1/tasks/{task_id}/ledger")
        assert set(ledger) == {"task_id", "account", "balance", "transactions", "per_page",
                               "next"}
        assert ledger["next"] is None and ledger["per_page"] == 100
        assert ledger["task_id"] == task_id and ledger["account"] == f"escrow:task:{task_id}"
        assert ledger["balance"] == task["pledged"], title
        for txn in ledger["transactions"]:
            assert set(txn) == {"key", "kind", "created_at", "memo", "entries"}
            assert ISO_Z.fullmatch(txn["created_at"])
            assert sum(e["amount"]["amount"] for e in txn["entries"]) == 0, txn
        escrow = sum(e["amount"]["amount"] for txn in ledger["transactions"]
                     for e in txn["entries"] if e["account"] == ledger["account"])
        assert escrow == ledger["balance"]["amount"]

    compost = await get(client, f"/api/v1/tasks/{tale.ids[COMPOST]}/ledger")
    assert [txn["kind"] for txn in compost["transactions"]] == [
        "pledge.held", "task.done", "payout.paid"]
    paid = compost["transactions"][2]
    assert paid["memo"] == "SEPA-42"
    assert paid["entries"] == [
        {"account": "developer:github:carol", "amount": eur(-4000, "-€40.00")},
        {"account": "external", "amount": eur(4000, "€40.00")}]
    shed = await get(client, f"/api/v1/tasks/{tale.ids[SHED]}/ledger")
    assert [txn["kind"] for txn in shed["transactions"]] == [
        "pledge.held", "pledge.held", "pledge.refunded", "pledge.refunded"]
    docs = await get(client, f"/api/v1/tasks/{tale.ids[DOCS]}/ledger")
    assert docs["balance"]["display"] == format_money(Money(5000, "EUR"), "fr")


async def test_an_unreachable_database_is_a_json_503() -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    url = "postgresql+asyncpg://bot:pg-Pa55word-77@127.0.0.1:9/bounty"
    app = create_app(Settings(config_file=None, database={"url": url}), features=[setup])
    async with TestClient(TestServer(app)) as client:
        for path in ("/api/v1/tasks", "/api/v1/tasks/1", "/api/v1/export.json",
                     "/api/v1/export.csv"):
            body = await get(client, path, 503)
            assert body == {"error": "the database is unavailable; try again later"}


async def test_a_bug_is_a_json_500_with_no_traceback(bare: TestClient[Any, Any],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug with a detail nobody outside should read")

    monkeypatch.setattr(routes, "reading", broken)
    response = await bare.get("/api/v1/tasks/1")
    assert response.status == 500
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    text = await response.text()
    assert "nobody outside" not in text and "Traceback" not in text
    assert (await response.json())["error"].startswith("internal error")
    assert "api.failed" in caplog.text and "nobody outside" in caplog.text


async def test_a_page_costs_the_same_queries_whatever_its_size(client: TestClient[Any, Any],
                                                                engine: AsyncEngine) -> None:
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    async def queries(path: str) -> int:
        statements.clear()
        await get(client, path)
        return len(statements)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        one, all_six = await queries("/api/v1/tasks?per_page=1"), await queries("/api/v1/tasks")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    # The count, the page, one query per child table (claim, waiting, link, payout) and three
    # for the pledges (the sums of all, their distinct backers, the first few).
    assert one == all_six and sum(s.lstrip().upper().startswith("SELECT")
                                  for s in statements) == 9


async def test_a_done_task_shows_what_was_raised_and_who_did_it(db_url: str,
                                                                 github_server: Any) -> None:
    """Through the real app: signed webhooks, the worker, the API. alice gives 60, bob 40, erin
    5 then takes it back; dave's merged pull request is paid 100. Once done, `pledged` (held
    now) is zero, `raised` is the 100 the backers gave, and dave's claim stays visible."""
    from bountybot.operator.payouts import mark_paid
    from bountybot.resources import SESSIONMAKER, SETTINGS

    from github_harness import MAINTAINER, GitHubBot

    bot = await GitHubBot.start(db_url, github_server)
    try:
        await bot.label(1)
        for login, text in [(MAINTAINER, "/goal 100"), ("alice", "/pledge 60"),
                            ("erin", "/pledge 5"), ("erin", "/withdraw"), ("bob", "/pledge 40"),
                            ("dave", "/claim")]:
            await bot.comment(login, text)
        await bot.settle()
        task_id = (await bot.existing_task(1)).id
        running = await get(bot.client, f"/api/v1/tasks/{task_id}")
        assert running["state"] == "claimed" and running["backers"] == 2
        assert running["pledged"] == running["raised"] == eur(10000, "€100.00")
        assert running["claim"]["state"] == "active" and running["claim"]["expires_at"]

        await bot.pull_request("opened", "dave", 7, "Fixes #1")
        await bot.pull_request("closed", "dave", 7, "Fixes #1", merged=True)
        await bot.settle()
        done = await get(bot.client, f"/api/v1/tasks/{task_id}")
        assert done["state"] == "done"
        assert done["pledged"] == eur(0, "€0.00")  # nothing held: it went to the payout
        assert done["raised"] == eur(10000, "€100.00")  # erin's withdrawn €5 not counted
        assert done["backers"] == 2
        assert done["claim"] == {"developer": "dave", "state": "done", "expires_at": None}
        assert [(p["developer"], p["amount"], p["state"]) for p in done["payouts"]] == [
            ("dave", eur(10000, "€100.00"), "pending")]
        assert [(p["backer"], p["state"]) for p in done["pledges"]] == [
            ("alice", "paid_out"), ("erin", "withdrawn"), ("bob", "paid_out")]

        payout_id = (await bot.existing_task(1)).payouts[0].id
        assert payout_id is not None
        await mark_paid(bot.app[SESSIONMAKER], bot.app[SETTINGS], payout_id, "SEPA-7")
        paid = await get(bot.client, f"/api/v1/tasks/{task_id}")
        assert paid["payouts"][0]["state"] == "paid"
        assert {k: paid[k] for k in ("pledged", "raised", "backers", "claim")} == {
            k: done[k] for k in ("pledged", "raised", "backers", "claim")}
        listed = await get(bot.client, "/api/v1/tasks?state=done")
        assert listed["tasks"] == [paid]
    finally:
        await bot.close()
