"""Atom feeds and funding.json (`bountybot.web.feeds`) through the real app, on SQLite and
PostgreSQL, after a story played through signed GitHub webhooks: #1 (goal €100) funded by alice
60 and bob 40, claimed by carol, merged and paid (SEPA-1); #2 (goal €50) opened, unfunded.

The feed is parsed as XML; funding.json is validated against FLOSS/fund's published v1 schema
(tests/fixtures/funding-json-v1.schema.json, source in tests/fixtures/SOURCES.md)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import update

from bountybot.resources import SESSIONMAKER
from bountybot.storage import tables as t
from bountybot.web import feeds, pages

from github_harness import REPO, GitHubBot

ATOM = "{http://www.w3.org/2005/Atom}"
PUBLIC = "https://bounties.example.org"
BASE = f"/github/{REPO}"
SCHEMA = Path(__file__).parent / "fixtures" / "funding-json-v1.schema.json"
FUNDING = {f"github:{REPO.upper()}": {"email": "maintainers@example.org",
                                      "name": "The Hello-World maintainers",
                                      "licenses": ["spdx:MIT"], "tags": ["bounties"]}}


async def story(bot: GitHubBot) -> None:
    await bot.paid_task("SEPA-1")
    await bot.label(2)
    await bot.comment("maya", "/goal 50", 2)
    await bot.settle()


@pytest.fixture
async def bot(db_url: str, github_server: Any) -> Any:
    bot = await GitHubBot.start(db_url, github_server, features=[feeds.setup, pages.setup],
                                sections={"funding": FUNDING})
    try:
        await story(bot)
        yield bot
    finally:
        await bot.close()


@pytest.fixture
async def public_bot(db_url: str, github_server: Any) -> Any:
    bot = await GitHubBot.start(db_url, github_server, features=[feeds.setup, pages.setup],
                                sections={"server": {"public_url": PUBLIC}})
    try:
        await story(bot)
        yield bot
    finally:
        await bot.close()


async def feed(bot: GitHubBot, url: str, **headers: str) -> ET.Element:
    response = await bot.client.get(url, headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/atom+xml"
    assert response.headers["Cache-Control"] == "public, max-age=900"
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["ETag"])
    root = ET.fromstring(await response.read())
    assert root.tag == f"{ATOM}feed"
    return root


def entries(root: ET.Element) -> list[dict[str, str]]:
    out = []
    for e in root.findall(f"{ATOM}entry"):
        link = e.find(f"{ATOM}link")
        out.append({"id": e.findtext(f"{ATOM}id") or "", "title": e.findtext(f"{ATOM}title") or "",
                    "updated": e.findtext(f"{ATOM}updated") or "",
                    "link": link.get("href", "") if link is not None else ""})
    return out


def host(bot: GitHubBot) -> str:
    return f"http://{bot.client.host}:{bot.client.port}"


async def test_the_repo_feed_tells_opened_funded_paid_and_the_appeal(bot: Any) -> None:
    root = await feed(bot, f"{BASE}/-/feed.atom")
    assert root.findtext(f"{ATOM}id") == f"tag:{bot.client.host},2026:bountybot/feed/github/{REPO}"
    items = entries(root)
    titles = [e["title"] for e in items]
    task1 = f"{host(bot)}{BASE}/-/issues/1"
    by_title = {e["title"]: e for e in items}
    paid = [x for x in titles if re.fullmatch(r"#1 .*: €100\.00 paid to carol", x)]
    funded = [x for x in titles if re.fullmatch(r"#1 .*: goal of €100\.00 reached", x)]
    opened = [x for x in titles if re.fullmatch(r"#[12] .*: bounty opened", x)]
    assert len(paid) == 1 and len(funded) == 1 and len(opened) == 2, titles
    assert by_title[paid[0]]["link"] == task1 and by_title[funded[0]]["link"] == task1
    assert f"{host(bot)}{BASE}/-/issues/2" in [e["link"] for e in items]
    # Newest first: #2 opened after #1 was paid.
    events = [x for x in titles if x in paid + funded + opened]
    assert events.index(paid[0]) < events.index(funded[0])
    assert re.fullmatch(r"#2 .*: bounty opened", events[0]), events
    # The appeal of this month (#1, done this month, was live in it), on the 1st, linked.
    month = datetime.now(UTC)
    [appeal] = [e for e in items if e["id"].endswith(f"/needs/github/{REPO}/{month:%Y-%m}")]
    assert appeal["title"] == (f"{month:%B %Y}: €150.00 asked across 2 tasks,"
                                f" €100.00 funded (66%)")
    assert appeal["link"] == f"{host(bot)}{BASE}/-/needs/{month:%Y-%m}"
    assert appeal["updated"].startswith(f"{month:%Y-%m}-01T00:00:00")
    # Stable, unique tag: ids.
    ids = [e["id"] for e in items]
    assert len(set(ids)) == len(ids) and all(i.startswith("tag:") for i in ids)
    assert ids == [e["id"] for e in entries(await feed(bot, f"{BASE}/-/feed.atom"))]
    updated = [e["updated"] for e in items]
    assert updated == sorted(updated, reverse=True)


async def test_french_titles_with_lang(bot: Any) -> None:
    titles = [e["title"] for e in entries(await feed(bot, f"{BASE}/-/feed.atom?lang=fr"))]
    assert any(re.fullmatch(r"#1 .*\s: 100,00\s€ versés à carol", x) for x in titles), titles
    assert any(re.fullmatch(r"#2 .*\s: prime ouverte", x) for x in titles), titles
    root = await feed(bot, "/feed.atom", **{"Accept-Language": "fr"})
    assert root.findtext(f"{ATOM}title") == "bountybot\u202f: travail financé"


async def test_the_instance_feed_names_the_repo_and_caches(bot: Any) -> None:
    response = await bot.client.get("/feed.atom")
    etag = response.headers["ETag"]
    root = ET.fromstring(await response.read())
    titles = [e["title"] for e in entries(root)]
    assert any(re.fullmatch(rf"{REPO}#1 .*: €100\.00 paid to carol", x) for x in titles), titles
    again = await bot.client.get("/feed.atom", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""


async def test_links_use_the_public_url(public_bot: Any) -> None:
    root = await feed(public_bot, "/feed.atom")
    assert root.findtext(f"{ATOM}id") == "tag:bounties.example.org,2026:bountybot/feed"
    links = [e["link"] for e in entries(root)]
    assert f"{PUBLIC}{BASE}/-/issues/1" in links and f"{PUBLIC}/" in links
    self_link = [a.get("href") for a in root.findall(f"{ATOM}link") if a.get("rel") == "self"]
    assert self_link == [f"{PUBLIC}/feed.atom"]


async def test_private_repos_never_appear(bot: Any) -> None:
    async with bot.app[SESSIONMAKER]() as session:
        await session.exec(update(t.Repo).values(private=True))  # type: ignore[call-overload]
        await session.commit()
    titles = [e["title"] for e in entries(await feed(bot, "/feed.atom"))]
    assert not any(REPO in x for x in titles), titles
    assert (await bot.client.get(f"{BASE}/-/feed.atom")).status == 404
    assert (await bot.client.get(f"{BASE}/-/funding.json")).status == 404


async def test_funding_json_is_valid_v1_and_from_the_books(bot: Any) -> None:
    response = await bot.client.get(f"{BASE}/-/funding.json")
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "public, max-age=900"
    body = await response.json()
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(body)
    assert body["version"] == "v1.0.0"
    assert body["entity"]["email"] == "maintainers@example.org"
    assert body["entity"]["webpageUrl"]["url"] == f"{host(bot)}{BASE}"
    [project] = body["projects"]
    assert project["repositoryUrl"]["url"].endswith(f"/{REPO}")
    assert project["licenses"] == ["spdx:MIT"]
    plans = {p["guid"]: p for p in body["funding"]["plans"]}
    assert plans["monthly-needs"]["amount"] == 150 and plans["monthly-needs"]["currency"] == "EUR"
    assert plans["task-2"]["amount"] == 50 and plans["task-2"]["frequency"] == "one-time"
    assert "task-1" not in plans  # done
    [year] = body["funding"]["history"]
    assert (year["year"], year["income"], year["expenses"]) == (datetime.now(UTC).year, 100, 100)


async def test_funding_json_is_404_unless_turned_on(public_bot: Any) -> None:
    response = await public_bot.client.get(f"{BASE}/-/funding.json")
    assert response.status == 404
    assert "not turned it on" in (await response.json())["error"]
    assert (await public_bot.client.get("/github/nobody/nothing/-/funding.json")).status == 404
