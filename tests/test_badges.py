"""The funding badges (`bountybot.web.badges`) through the real app, on SQLite and PostgreSQL:
a bounty played through signed webhooks, its SVG badge parsed as XML at each step, the shields
endpoint JSON, the caching headers, French, private repos, a GitLab subgroup, and the badge in
the bot's summary comment."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest
from babel.dates import format_date
from gitlab_harness import PROJECT, GitLabBot
from sqlmodel import select

from bountybot.money import Money
from bountybot.resources import SESSIONMAKER
from bountybot.rules.model import Bounty, Pledge
from bountybot.rules.summary import badge_version, render_summary
from bountybot.states import PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.uow import UnitOfWork
from bountybot.web import badges
from bountybot.web.badges import Badge, render_svg, text_width

from github_harness import REPO, GitHubBot

SVG = "{http://www.w3.org/2000/svg}"
PUBLIC = "https://bounties.example.org"
TASK = f"/github/{REPO}/-/issues/1"
NBSP = "\u00a0"


@pytest.fixture
async def bot(db_url, github_server):
    bot = await GitHubBot.start(db_url, github_server, features=[badges.setup],
                                sections={"server": {"public_url": PUBLIC}})
    try:
        yield bot
    finally:
        await bot.close()


async def svg(bot: GitHubBot, url: str, status: int = 200, **headers: str) -> ET.Element:
    """The badge at `url`, parsed; its caching headers checked on the way."""
    response = await bot.client.get(url, headers=headers)
    assert response.status == status, await response.text()
    assert response.content_type == "image/svg+xml"
    assert response.headers["Cache-Control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["ETag"])  # strong: no W/
    return ET.fromstring(await response.read())


def said(root: ET.Element) -> str:
    """What the badge says, checked to be said the same by its label, title and texts."""
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == root.get("aria-label")
    texts = [el.text for el in root.iter(f"{SVG}text") if el.get("aria-hidden") != "true"]
    label, message = texts
    assert root.get("aria-label") == f"{label}: {message}"
    # The geometry holds together: the two boxes fill the badge, each text fits its box.
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("fill") not in ("#fff", "url(#s)")]
    left, right = (int(r.get("width", "0")) for r in rects)
    assert int(root.get("width", "0")) == left + right
    assert left == text_width(label or "") + 10 and right == text_width(message or "") + 10
    return root.get("aria-label", "")


async def shields(bot: GitHubBot, url: str) -> dict[str, Any]:
    response = await bot.client.get(url)
    assert response.status == 200 and response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["ETag"]
    body: dict[str, Any] = await response.json()
    assert body["schemaVersion"] == 1 and body["cacheSeconds"] == 300
    assert set(body) <= {"schemaVersion", "label", "message", "color", "cacheSeconds", "isError"}
    return body


def summary_of(bot: GitHubBot, number: int = 1) -> str:
    [summary] = [c.body for c in bot.bot_comments(number) if "bountybot:summary" in c.body]
    return summary


def test_the_geometry_is_shields_flat_badge() -> None:
    """shields.io's own `build | passing`: 88 px wide, boxes of 37 and 51, texts at x 19.5
    and 61.5 (drawn at 10x) with lengths 27 and 41."""
    root = ET.fromstring(render_svg(Badge("build", "passing", "brightgreen")))
    assert root.get("width") == "88" and root.get("height") == "20"
    texts = [(el.get("x"), el.get("textLength"), el.text) for el in root.iter(f"{SVG}text")]
    assert texts == [("195", "270", "build")] * 2 + [("615", "410", "passing")] * 2
    assert [r.get("width") for r in root.iter(f"{SVG}rect")] == ["88", "37", "51", "88"]
    assert text_width("docs") == 25  # shields' `docs` badge has a 35 px label box
    # No external font, image or link: GitHub's image proxy would refuse them.
    assert not re.search(r"href|@import|url\((?!#)|<image", render_svg(Badge("a", "b", "red")))


def test_text_is_escaped_and_accents_measured_as_their_letters() -> None:
    root = ET.fromstring(render_svg(Badge('a<b & "c"', "financée", "green")))
    assert root.get("aria-label") == 'a<b & "c": financée'
    assert text_width("financée") == text_width("financee")


async def test_the_task_badge_follows_the_bounty(bot: GitHubBot) -> None:
    await bot.label(1)
    await bot.comment("maya", "/goal 400")
    await bot.comment("alice", "/pledge 250")
    await bot.settle()
    assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: €250 of €400"
    assert await shields(bot, f"{TASK}/badge.json") == {
        "schemaVersion": 1, "label": "bounty", "message": "€250 of €400", "color": "orange",
        "cacheSeconds": 300}
    # French on demand (GitHub's image proxy drops Accept-Language), amounts by Babel.
    assert said(await svg(bot, f"{TASK}/badge.svg?lang=fr")) == (
        f"prime: 250{NBSP}€ sur 400{NBSP}€")
    assert (await shields(bot, f"{TASK}/badge.json?lang=fr"))["message"] == (
        f"250{NBSP}€ sur 400{NBSP}€")
    # An unknown language is the repo's (here the bot's, English).
    assert said(await svg(bot, f"{TASK}/badge.svg?lang=xx")) == "bounty: €250 of €400"

    # The summary comment shows the badge with a version, linked to the task's page.
    page = f"{PUBLIC}{TASK}"
    first = re.search(r"\[!\[bounty badge\]\((\S+)\)\]\((\S+)\)", summary_of(bot))
    assert first is not None and first[2] == page
    assert first[1].startswith(f"{page}/badge.svg?v=") and first[1].endswith("&lang=en")
    assert f"[The task's page]({page})" in summary_of(bot)
    # The URL it shows is served, and draws the task as it is.
    shown = first[1].removeprefix(PUBLIC)
    assert said(await svg(bot, shown)) == "bounty: €250 of €400"

    await bot.comment("bob", "/pledge 150")
    await bot.settle()
    assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: funded €400"
    assert (await shields(bot, f"{TASK}/badge.json"))["color"] == "green"
    funded = re.search(r"\(([^)]+badge\.svg[^)]+)\)", summary_of(bot))
    assert funded is not None and funded[1] != first[1]  # a new state is a new URL

    await bot.comment("dave", "/claim")
    await bot.settle()
    assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: claimed"
    assert said(await svg(bot, f"{TASK}/badge.svg?lang=fr")) == "prime: réservée"
    await bot.pull_request("opened", "dave", 7, "Fixes #1")
    await bot.settle()
    assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: in review"
    await bot.pull_request("closed", "dave", 7, "Fixes #1", merged=True)
    await bot.settle()
    # Done, the payout not settled yet: not "paid" (Bountysource's mistake).
    assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: done €400"
    async with bot.app[SESSIONMAKER]() as session:
        payout = (await session.exec(select(t.Payout))).one()
        payout.state = PayoutState.PAID  # as `bountybot payouts mark-paid` leaves it
        session.add(payout)
        await session.commit()
    assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: paid €400"
    assert (await shields(bot, f"{TASK}/badge.json"))["color"] == "brightgreen"


async def test_etag_and_304(bot: GitHubBot) -> None:
    await bot.label(1)
    await bot.comment("alice", "/pledge 20")
    await bot.settle()
    for kind in ("svg", "json"):
        url = f"{TASK}/badge.{kind}"
        first = await bot.client.get(url)
        etag = first.headers["ETag"]
        assert (await bot.client.get(url)).headers["ETag"] == etag  # same drawing, same tag
        again = await bot.client.get(url, headers={"If-None-Match": etag})
        assert again.status == 304 and await again.read() == b""
        assert again.headers["ETag"] == etag and again.headers["Cache-Control"] == "no-cache"
        listed = await bot.client.get(url, headers={"If-None-Match": f'"other", W/{etag}'})
        assert listed.status == 304
        french = await bot.client.get(f"{url}?lang=fr", headers={"If-None-Match": etag})
        assert french.status == 200 and french.headers["ETag"] != etag
    before = (await bot.client.get(f"{TASK}/badge.svg")).headers["ETag"]
    await bot.comment("bob", "/pledge 5")
    await bot.settle()
    changed = await bot.client.get(f"{TASK}/badge.svg", headers={"If-None-Match": before})
    assert changed.status == 200 and changed.headers["ETag"] != before
    # No goal: any money held funds the task.
    assert said(ET.fromstring(await changed.read())) == "bounty: funded €25"


async def test_unknown_and_private_answer_alike(bot: GitHubBot) -> None:
    await bot.label(1)
    await bot.comment("alice", "/pledge 20")
    await bot.settle()
    unknown = [f"/github/{REPO}/-/issues/2", "/github/nobody/nothing/-/issues/1",
               f"/gitlab/{REPO}/-/issues/1"]
    for url in unknown:
        assert said(await svg(bot, f"{url}/badge.svg", 404)) == "bounty: no such task"
        body = await shields(bot, f"{url}/badge.json")
        assert body["isError"] is True and body["message"] == "no such task"
    assert said(await svg(bot, "/github/nobody/nothing/-/needs/badge.svg", 404)) == (
        "needs: not found")
    assert (await shields(bot, "/github/nobody/nothing/-/needs/badge.json"))["isError"] is True
    assert (await bot.client.get("/bitbucket/a/b/-/issues/1/badge.svg")).status == 404

    async def set_private(private: bool, published: bool) -> None:
        # A unit of work: on SQLite it takes the write lock first (waiting for the worker's),
        # where a plain session's read-then-write could find the database locked.
        async with UnitOfWork(bot.app[SESSIONMAKER]) as uow:
            repo = (await uow.session.exec(select(t.Repo))).one()
            repo.private, repo.published = private, published
            uow.session.add(repo)

    await set_private(True, False)
    private = await svg(bot, f"{TASK}/badge.svg", 404)
    assert said(private) == "bounty: no such task"
    private_json = await shields(bot, f"{TASK}/badge.json")
    assert private_json["isError"] is True and "20" not in private_json["message"]
    assert (await shields(bot, f"/github/{REPO}/-/needs/badge.json"))["isError"] is True
    await set_private(True, True)  # the operator published it
    assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: funded €20"


async def test_the_needs_badge_says_this_months_appeal(bot: GitHubBot) -> None:
    month = format_date(datetime.now(UTC).date(), "LLLL", locale="en")
    await bot.label(3)  # no goal: asks nothing
    await bot.comment("carol", "/pledge 30", number=3)
    await bot.settle()
    assert said(await svg(bot, f"/github/{REPO}/-/needs/badge.svg")) == (
        f"{month} needs: nothing asked")
    await bot.label(1)
    await bot.comment("maya", "/goal 400")
    await bot.comment("alice", "/pledge 250")
    await bot.label(2)
    await bot.comment("maya", "/goal 600", number=2)
    await bot.comment("bob", "/pledge 170", number=2)
    await bot.settle()
    # (250 + 170) of (400 + 600): 42 %.
    assert said(await svg(bot, f"/github/{REPO}/-/needs/badge.svg")) == (
        f"{month} needs: 42% of €1,000")
    french = format_date(datetime.now(UTC).date(), "LLLL", locale="fr")
    assert said(await svg(bot, f"/github/{REPO}/-/needs/badge.svg?lang=fr")) == (
        f"besoins de {french}: 42{NBSP}% de 1{NARROW}000{NBSP}€")
    body = await shields(bot, f"/github/{REPO}/-/needs/badge.json")
    assert body["label"] == f"{month} needs" and body["message"] == "42% of €1,000"
    assert body["color"] == "orange" and "isError" not in body


NARROW = "\u202f"


async def test_a_gitlab_subgroup_path(db_url, gitlab_server) -> None:
    bot = await GitLabBot.start_gitlab(db_url, gitlab_server, features=[badges.setup],
                                       sections={"server": {"public_url": PUBLIC + "/"}})
    try:
        await bot.label(1)
        await bot.comment("maya", "/goal 100")
        await bot.comment("alice", "/pledge 40")
        await bot.settle()
        task = f"/gitlab/{PROJECT}/-/issues/1"
        assert PROJECT.count("/") == 2
        # GitLab's published note payload says `internal` (visibility 10): not public, so
        # nothing is shown until the operator publishes the project.
        assert said(await svg(bot, f"{task}/badge.svg", 404)) == "bounty: no such task"
        async with UnitOfWork(bot.app[SESSIONMAKER]) as uow:
            repo = (await uow.session.exec(select(t.Repo))).one()
            assert repo.private
            repo.published = True  # as `bountybot repos publish` leaves it
            uow.session.add(repo)
        assert said(await svg(bot, f"{task}/badge.svg")) == "bounty: €40 of €100"
        # Paths compare without case, as on the forges.
        shouted = f"/gitlab/{PROJECT.upper()}/-/issues/1/badge.svg"
        assert said(await svg(bot, shouted)) == "bounty: €40 of €100"
        month = format_date(datetime.now(UTC).date(), "LLLL", locale="en")
        assert said(await svg(bot, f"/gitlab/{PROJECT}/-/needs/badge.svg")) == (
            f"{month} needs: 40% of €100")
        assert said(await svg(bot, f"/gitlab/{PROJECT.rsplit('/', 1)[0]}/-/issues/1/badge.svg",
                              404)) == "bounty: no such task"
        [summary] = [n.body for n in bot.bot_comments(1) if "bountybot:summary" in n.body]
        assert f"]({PUBLIC}{task}/badge.svg?v=" in summary  # no double slash
        assert f"]({PUBLIC}{task})" in summary
    finally:
        await bot.close()


async def test_no_public_url_no_badge_in_the_summary(db_url, github_server) -> None:
    bot = await GitHubBot.start(db_url, github_server, features=[badges.setup])
    try:
        await bot.label(1)
        await bot.comment("alice", "/pledge 20")
        await bot.settle()
        summary = summary_of(bot)
        assert "€20.00" in summary
        assert "badge" not in summary and "/-/issues/" not in summary
        # The badge itself is still served: it needs no public address.
        assert said(await svg(bot, f"{TASK}/badge.svg")) == "bounty: funded €20"
    finally:
        await bot.close()


def test_the_badge_version_changes_with_what_the_badge_draws() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    b = Bounty("github", "octo/garden", 3, "EUR", goal=Money(40000, "EUR"),
               pledges=[Pledge("alice", Money(25000, "EUR"), PledgeState.HELD, at)])
    versions = {badge_version(b)}
    b.pledges.append(Pledge("bob", Money(100, "EUR"), PledgeState.PENDING, at))
    assert badge_version(b) in versions  # a pending pledge is not drawn
    b.pledges[1].state = PledgeState.HELD
    versions.add(badge_version(b))
    b.state = TaskState.FUNDED
    versions.add(badge_version(b))
    assert len(versions) == 3
    text = render_summary(b, "fr", 0, public_url="https://x.example/base/")
    assert (f"[![badge de la prime](https://x.example/base/github/octo/garden/-/issues/3/"
            f"badge.svg?v={badge_version(b)}&lang=fr)](https://x.example/base/github/octo/"
            "garden/-/issues/3)") in text
    assert render_summary(b, "en", 0) == render_summary(b, "en", 0, public_url=None)
    assert "badge" not in render_summary(b, "en", 0)


async def test_the_served_app_routes_badges_before_the_pages() -> None:
    """`serve`'s features: a badge URL is never taken for a page of a deeper repo path."""
    from aiohttp.test_utils import make_mocked_request

    from bountybot.app import create_app
    from bountybot.config import Settings

    app = create_app(Settings())
    for url, handler in [(f"{TASK}/badge.svg", badges.show_task_badge),
                         (f"/gitlab/{PROJECT}/-/issues/1/badge.json", badges.show_task_badge),
                         (f"/gitlab/{PROJECT}/-/needs/badge.svg", badges.show_needs_badge)]:
        match = await app.router.resolve(make_mocked_request("GET", url, app=app))
        assert match.handler is handler, url
