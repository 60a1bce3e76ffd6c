"""The public pages through the real app, after a story played through signed GitHub webhooks.

Last month: #1 (goal €100) funded by alice 60 and bob 40, claimed by carol, merged and paid
(reference SEPA-1); #2 (goal €50) got dave's €20, which he withdrew. This month: #3 (goal €200)
has erin's €50. So this month asks €250 across #2 and #3 and has €50 (20 %); last month asked
€150 and had €100 (66 %), with €120 pledged, €100 paid out and €20 refunded.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from bountybot.app import create_app
from bountybot.operator.payouts import mark_paid
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.storage import tables as t
from bountybot.web import pages

from fakes.github import FakeGitHub
from github_harness import REPO, GitHubBot

BASE = f"/github/{REPO}"
SPACE = "[\u00a0\u202f ]"


def months() -> tuple[date, date]:
    this = datetime.now(UTC).date().replace(day=1)
    return (this - timedelta(days=1)).replace(day=1), this


class Page(HTMLParser):
    """The parts of a page the tests look at: lang, title, meters, captions, links, text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.lang: str | None = None
        self.title = ""
        self.meters: list[dict[str, str | None]] = []
        self.captions: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.scripts = 0
        self._in: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        if tag == "meter":
            self.meters.append(a)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag in ("script", "img", "iframe") or (tag == "link" and "//" in (a.get("href") or "")):
            self.scripts += 1
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "title":
            self.title += data
        if "caption" in self._in:
            self.captions.append(data.strip())
        self.text.append(data)

    @property
    def words(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.text))


async def play(bot: GitHubBot, clock: dict[str, datetime | None]) -> None:
    """The pages' story, on `clock`: #1 funded by alice and bob, claimed and paid to carol
    (SEPA-1); #2 backed by dave, who withdrew; #3 with erin's pledge, today."""
    last, _ = months()

    def on(day: int) -> None:
        clock["now"] = datetime(last.year, last.month, day, 12, tzinfo=UTC)

    on(5)
    await bot.label(1)
    await bot.comment("maya", "/goal 100", 1)
    await bot.comment("alice", "/pledge 60", 1)
    await bot.comment("bob", "/pledge 40", 1)
    await bot.settle()
    on(6)
    await bot.comment("carol", "/claim", 1)
    await bot.settle()
    on(8)
    await bot.pull_request("opened", "carol", 7, "Closes #1")
    await bot.settle()
    await bot.pull_request("closed", "carol", 7, "Closes #1", merged=True)
    await bot.settle()
    on(9)
    [payout] = await bot.rows(t.Payout)
    assert payout.id is not None
    await mark_paid(bot.app[SESSIONMAKER], bot.app[SETTINGS], payout.id, "SEPA-1",
                    now=clock["now"])
    on(10)
    await bot.label(2)
    await bot.comment("maya", "/goal 50", 2)
    await bot.comment("dave", "/pledge 20", 2)
    await bot.settle()
    on(11)
    await bot.comment("dave", "/withdraw", 2)
    await bot.settle()
    clock["now"] = None
    await bot.label(3)
    await bot.comment("maya", "/goal 200", 3)
    await bot.comment("erin", "/pledge 50", 3)
    await bot.settle()


@pytest.fixture
async def site(db_url: str, github_server: FakeGitHub) -> AsyncIterator[tuple[GitHubBot, Any]]:
    clock: dict[str, datetime | None] = {"now": None}
    bot = await GitHubBot.start(db_url, github_server,
                                clock=lambda: clock["now"] or datetime.now(UTC))
    await play(bot, clock)

    app = create_app(bot.app[SETTINGS], engine=bot.engine, features=[pages.setup])
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield bot, client
    finally:
        await client.close()
        await bot.close()


async def get(client: Any, path: str, *, status: int = 200,
              headers: dict[str, str] | None = None) -> Page:
    response = await client.get(path, headers=headers or {}, allow_redirects=False)
    assert response.status == status, (path, response.status, await response.text())
    page = Page(await response.text())
    assert page.scripts == 0  # no script, image or outside stylesheet, ever
    return page


async def test_the_monthly_appeal_in_english(site: Any) -> None:
    _, client = site
    last, this = months()
    page = await get(client, f"{BASE}/-/needs")
    assert page.lang == "en"
    month = f"{this:%B %Y}"
    days = (date(this.year + this.month // 12, this.month % 12 + 1, 1)
            - datetime.now(UTC).date()).days - 1
    assert (f"{month}: €250.00 asked across 2 tasks, €50.00 funded (20%), €200.00 to go,"
            f" {days} days left.") in page.words
    [meter] = page.meters
    assert (meter["min"], meter["max"], meter["value"]) == ("0", "25000", "5000")
    assert meter["aria-labelledby"] == "appeal-sentence"
    # What the money is for: each live task with its goal, what it has, its state.
    assert re.search(r"#3 [^€]*€200\.00 ?€50\.00 ?open", page.words), page.words
    assert re.search(r"#2 [^€]*€50\.00 ?€0\.00 ?open", page.words), page.words
    assert f"{BASE}/-/issues/3" in page.links and f"{BASE}/-/issues/2" in page.links
    assert f"{BASE}/-/issues/1" not in page.links  # done last month: not live now
    assert "No payout settled this month." in page.words
    assert "The last twelve months" in page.captions and "What the money is for" in page.captions
    assert f"{BASE}/-/needs/{last:%Y-%m}" in page.links

    page = await get(client, f"{BASE}/-/needs/{last:%Y-%m}")
    assert (f"{last:%B %Y}: €150.00 asked across 2 tasks, €100.00 funded (66%),"
            f" €50.00 short.") in page.words
    assert "€100.00 paid to carol for #1, merged pull request #7" in page.words
    assert "reference SEPA-1" in page.words
    assert "€20.00 back to dave (#2, withdrawn)" in page.words
    assert f"https://github.com/{REPO}/pull/7" in page.links
    # The history: this month then last, with pledged, paid out and refunded.
    row = re.search(rf"{last:%B %Y} (€[0-9.,]+) (€[0-9.,]+) ([0-9]+%) (€[0-9.,]+) (€[0-9.,]+)"
                    r" (€[0-9.,]+)", page.words)
    assert row is not None and row.groups() == (
        "€150.00", "€100.00", "66%", "€120.00", "€100.00", "€20.00")


async def test_the_monthly_appeal_in_french(site: Any) -> None:
    _, client = site
    last, _ = months()
    for path, headers in ((f"{BASE}/-/needs/{last:%Y-%m}?lang=fr", {}),
                          (f"{BASE}/-/needs/{last:%Y-%m}",
                           {"Accept-Language": "de;q=1, fr-CA;q=0.8, en;q=0.5"})):
        page = await get(client, path, headers=headers)
        assert page.lang == "fr"
        assert re.search(rf"150,00{SPACE}€ demandés pour 2 tâches, 100,00{SPACE}€ financés"
                         rf" \(66{SPACE}%\), il a manqué 50,00{SPACE}€\.", page.words), page.words
        assert re.search(rf"100,00{SPACE}€ versés à carol pour #1", page.words)
        assert "Les douze derniers mois" in page.captions


async def test_the_repo_page_lists_open_tasks_with_meters(site: Any) -> None:
    _, client = site
    page = await get(client, BASE)
    assert page.title.startswith(REPO)
    meters = {m["id"]: m for m in page.meters if m.get("id")}
    # #3: €50 of €200; #2: nothing held of €50. #1 is done, so not listed.
    by_max = sorted((m["max"], m["value"]) for m in meters.values())
    assert by_max == [("20000", "5000"), ("5000", "0")]
    assert all(m["aria-label"] for m in meters.values())
    assert "Funding of #3: €50.00 of €200.00" in [m["aria-label"] for m in meters.values()]
    assert f"{BASE}/-/issues/1" not in page.links
    assert "Open tasks" in page.captions and "The last twelve months" in page.captions
    assert "€250.00 asked across 2 tasks" in page.words
    assert f"{BASE}/-/needs" in page.links
    assert f"{BASE}/-/needs/badge.svg" in page.words
    page = await get(client, BASE + "?lang=fr")
    assert "Tâches ouvertes" in page.captions
    assert any(re.fullmatch(rf"Financement de #3{SPACE}: 50,00{SPACE}€ sur 200,00{SPACE}€",
                            m.get("aria-label") or "") for m in page.meters)


async def test_the_index_lists_repos_tasks_and_the_appeal(site: Any) -> None:
    _, client = site
    page = await get(client, "/")
    assert BASE in page.links
    assert f"{BASE}/-/issues/3" in page.links and f"{BASE}/-/issues/2" in page.links
    assert "€250.00 asked across 2 tasks, €50.00 funded (20%)" in page.words
    response = await client.get("/static/bountybot.css")
    assert response.status == 200 and response.content_type == "text/css"
    assert "url(" not in await response.text()  # no font or image fetched from anywhere


async def test_a_task_page_shows_meter_backers_and_timeline(site: Any) -> None:
    _, client = site
    page = await get(client, f"{BASE}/-/issues/1")
    assert page.lang == "en" and "#1" in page.title
    [meter] = page.meters
    assert (meter["max"], meter["value"]) == ("10000", "10000")
    assert "€100.00 of €100.00 · Goal reached" in page.words
    assert "The issue on the forge · State: done" in page.words
    backers = re.findall(r"(alice|bob) ?(€[0-9.]+)", page.words)
    assert ("alice", "€60.00") in backers and ("bob", "€40.00") in backers
    for line in ("Bounty opened", "alice pledged €60.00", "Goal reached",
                 "carol claimed the task", "carol opened pull request #7",
                 "Pull request #7 merged", "€100.00 paid to carol (reference SEPA-1)"):
        assert line in page.words, line
    assert f"https://github.com/{REPO}/issues/1" in page.links
    page = await get(client, f"{BASE}/-/issues/3?lang=fr")
    assert "Pour la soutenir" in page.words and "/pledge 20" in page.words
    assert re.search(rf"erin a promis 50,00{SPACE}€", page.words)


async def test_short_links_redirect_and_unknowns_are_404_in_the_readers_language(
        site: Any) -> None:
    bot, client = site
    [task3] = [r for r in await bot.rows(t.Task) if r.number == 3]
    response = await client.get(f"/tasks/{task3.id}", allow_redirects=False)
    assert response.status == 301 and response.headers["Location"] == f"{BASE}/-/issues/3"
    page = await get(client, "/tasks/999999", status=404)
    assert "No task 999999." in page.words
    page = await get(client, f"{BASE}/-/issues/42", status=404, headers={"Accept-Language": "fr"})
    assert page.lang == "fr" and f"Aucune prime sur le ticket #42 de {REPO}." in page.words
    page = await get(client, "/github/nobody/nothing?lang=fr", status=404)
    assert "Aucun projet public nobody/nothing sur github." in page.words
    page = await get(client, f"{BASE}/-/needs/2999-01", status=404)
    assert "No appeal for 2999-01." in page.words
    page = await get(client, "/no/such/page", status=404)
    assert "There is no page at this address." in page.words


async def test_private_repos_never_appear(site: Any) -> None:
    bot, client = site
    async with bot.app[SESSIONMAKER]() as session:
        await session.exec(update(t.Repo).values(private=True))  # type: ignore[call-overload]
        await session.commit()
    page = await get(client, "/")
    assert BASE not in page.links and f"{BASE}/-/issues/3" not in page.links
    assert "Codertocat" not in page.words and "nothing asked" in page.words
    for path in (BASE, f"{BASE}/-/needs", f"{BASE}/-/issues/1"):
        await get(client, path, status=404)
    [task1] = [r for r in await bot.rows(t.Task) if r.number == 1]
    await get(client, f"/tasks/{task1.id}", status=404)
    # Published by its operator, it is shown again.
    async with bot.app[SESSIONMAKER]() as session:
        await session.exec(update(t.Repo).values(published=True))  # type: ignore[call-overload]
        await session.commit()
    assert BASE in (await get(client, "/")).links


async def test_pages_are_cached_a_minute_with_an_etag_and_304(site: Any) -> None:
    _, client = site
    response = await client.get(BASE)
    assert response.headers["Cache-Control"] == "public, max-age=60"
    assert response.headers["Vary"] == "Accept-Language"
    etag = response.headers["ETag"]
    again = await client.get(BASE, headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag
    assert await again.read() == b""
    french = await client.get(BASE + "?lang=fr", headers={"If-None-Match": etag})
    assert french.status == 200 and french.headers["ETag"] != etag
    missing = await client.get("/github/nobody/nothing")
    assert missing.status == 404 and "ETag" not in missing.headers


async def open_tasks(sessionmaker: Any, numbers: range, state: str = "open") -> None:
    """Tasks with a goal of €100 on REPO, written directly (no webhook: hundreds in a second)."""
    from bountybot.states import TaskState
    from bountybot.storage.bounties import ensure_repo
    from bountybot.storage.tables import id_of
    from bountybot.storage.uow import UnitOfWork

    now = datetime.now(UTC)
    async with UnitOfWork(sessionmaker) as uow:
        repo = await ensure_repo(uow.session, "github", "1296269", REPO)
        for n in numbers:
            uow.session.add(t.Task(repo_id=id_of(repo), number=n, title=f"Task {n}",
                                   state=TaskState(state),
                                   goal_minor=10000, currency="EUR", updated_at=now,
                                   created_at=now - timedelta(seconds=1000 - n)))


async def test_long_lists_show_the_newest_and_say_how_many_more(
        engine: Any, sessionmaker: Any) -> None:
    await open_tasks(sessionmaker, range(1, 58))  # 57 open
    await open_tasks(sessionmaker, range(58, 61), state="done")  # not counted
    from bountybot.config import Settings

    app = create_app(Settings(config_file=None), engine=engine, features=[pages.setup])
    async with TestClient(TestServer(app)) as client:
        page = await get(client, BASE)
        listed = [link for link in page.links if "/-/issues/" in link]
        assert len(listed) == pages.LISTED_TASKS == 50
        # The newest first: #57 down to #8; #1 to #7 are the 7 more.
        assert listed[0] == f"{BASE}/-/issues/57" and listed[-1] == f"{BASE}/-/issues/8"
        assert "and 7 more open tasks" in page.words
        # The figures count every task: the done ones too, live this month (created in it).
        assert "€6,000.00 asked across 60 tasks" in page.words
        page = await get(client, BASE + "?lang=fr")
        assert "et 7 autres tâches ouvertes" in page.words
        page = await get(client, "/")
        assert "and 7 more open tasks" in page.words

        await open_tasks(sessionmaker, range(61, 110))  # 106 open, 109 live this month
        page = await get(client, f"{BASE}/-/needs")
        listed = [link for link in page.links if "/-/issues/" in link]
        assert len(listed) == pages.LISTED_LIVE == 100
        assert listed[0] == f"{BASE}/-/issues/109" and f"{BASE}/-/issues/7" not in listed
        assert "and 9 more live tasks this month" in page.words
        assert "€10,900.00 asked across 109 tasks" in page.words
        page = await get(client, f"{BASE}/-/needs?lang=fr")
        assert "et 9 autres tâches en cours ce mois-ci" in page.words
        page = await get(client, BASE)
        assert "and 56 more open tasks" in page.words


async def test_one_task_is_said_in_the_singular(engine: Any, sessionmaker: Any) -> None:
    await open_tasks(sessionmaker, range(1, 2))
    from bountybot.config import Settings

    app = create_app(Settings(config_file=None), engine=engine, features=[pages.setup])
    async with TestClient(TestServer(app)) as client:
        page = await get(client, f"{BASE}/-/needs")
        assert "€100.00 asked for 1 task, €0.00 funded" in page.words
        assert "more" not in page.words
        page = await get(client, f"{BASE}/-/needs?lang=fr")
        assert re.search(rf"100,00{SPACE}€ demandés pour 1 tâche,", page.words), page.words
        await open_tasks(sessionmaker, range(2, 52))  # 51 open: one more than listed
        page = await get(client, BASE)
        assert "and 1 more open task" in page.words and "1 more open tasks" not in page.words
        page = await get(client, BASE + "?lang=fr")
        assert "et 1 autre tâche ouverte" in page.words
