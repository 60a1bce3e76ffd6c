"""The public API gives what the pages show: a task's page and badge addresses, the public repos
with this month's appeal, and a repo's monthly appeal with twelve months of history.

Through the real app after `test_public_privacy`'s story, played this month by signed webhooks
on SQLite and PostgreSQL: Codertocat/Hello-World #1 (goal €100, alice 60 + bob 40, paid to
carol with `tr_1MaintainerProof`), #2 (goal €200, erin's €50, dave's €20 withdrawn), so the
month asks €300 across 2 tasks and has €150 (50 %); Octo/Other #1 (goal €80, frank's €30:
37 %). The figures must equal what `bountybot.needs` computes, and the story's by hand.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import test_public_privacy
from aiohttp.test_utils import TestClient
from sqlmodel import select
from test_public_privacy import OTHER, REFERENCE, TwoRepos, serve

from bountybot.api.views import month_json
from bountybot.needs import history, month_figures, previous_months
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.storage import tables as t
from bountybot.storage.uow import UnitOfWork
from bountybot.web.feeds import forge_repo_url

from github_harness import REPO, GitHubBot

story = test_public_privacy.story  # the fixture: the story, played on each database
PUBLIC = "https://bounties.example.org"
NAMES = ("alice", "bob", "erin", "dave", "frank")


def eur(minor: int, display: str) -> dict[str, Any]:
    return {"amount": minor, "currency": "EUR", "display": display}


async def get(client: TestClient, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    body = await response.json()
    assert response.status == status, (path, body)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    return body


async def public(bot: TwoRepos, **kw: Any) -> TestClient:
    """`serve`, with `server.public_url` set: the same app on a copy of the bot's settings."""
    settings = bot.app[SETTINGS]
    with_url = settings.model_copy(update={
        "server": settings.server.model_copy(update={"public_url": PUBLIC + "/"})})
    return await serve(cast(GitHubBot, SimpleNamespace(app={SETTINGS: with_url},
                                                         engine=bot.engine)), **kw)


async def repo_ids(bot: TwoRepos) -> dict[str, int]:
    return {r.full_path: r.id for r in await bot.rows(t.Repo)}


def this_month() -> str:
    return f"{datetime.now(UTC):%Y-%m}"


async def test_tasks_carry_their_page_and_badge(story: TwoRepos) -> None:
    client = await serve(story)
    try:
        host = f"http://{client.host}:{client.port}"
        body = await get(client, f"/api/v1/tasks?repo={REPO}")
        assert [x["number"] for x in body["tasks"]] == [1, 2]
        for task in body["tasks"]:
            page = f"{host}/github/{REPO}/-/issues/{task['number']}"
            assert (task["page_url"], task["badge_url"]) == (page, f"{page}/badge.svg")
            assert await get(client, f"/api/v1/tasks/{task['id']}") == task
            # The addresses answer: the page and the badge are there.
            for url in (task["page_url"], task["badge_url"]):
                assert (await client.get(url.removeprefix(host))).status == 200, url
    finally:
        await client.close()
    client = await public(story)
    try:
        [task] = (await get(client, f"/api/v1/tasks?repo={OTHER}"))["tasks"]
        page = f"{PUBLIC}/github/{OTHER}/-/issues/1"
        assert (task["page_url"], task["badge_url"]) == (page, f"{page}/badge.svg")
        assert (await get(client, f"/api/v1/tasks/{task['id']}"))["badge_url"] == \
            f"{page}/badge.svg"
    finally:
        await client.close()


async def test_repos_list_the_public_repos_with_this_months_appeal(story: TwoRepos) -> None:
    ids = await repo_ids(story)
    client = await public(story)
    try:
        body = await get(client, "/api/v1/repos")
        assert (body["page"], body["per_page"], body["total"]) == (1, 50, 2)
        assert [r["path"] for r in body["repos"]] == [REPO, OTHER]  # in id order
        hello, other = body["repos"]
        here = f"{PUBLIC}/github/{REPO}"
        assert hello == {
            "id": ids[REPO], "forge": "github", "path": REPO,
            "url": hello["url"], "currency": "EUR",
            "page_url": here, "feed_url": f"{here}/-/feed.atom", "needs_url": f"{here}/-/needs",
            "badge_url": f"{here}/-/needs/badge.svg",
            "badge_json_url": f"{here}/-/needs/badge.json",
            "api_needs_url": f"{PUBLIC}/api/v1/repos/{ids[REPO]}/needs",
            "open_tasks": 1,  # #1 is done, #2 is open
            "appeal": {"month": this_month(), "currency": "EUR",
                       "asked": eur(30000, "€300.00"), "funded": eur(15000, "€150.00"),
                       "to_go": eur(15000, "€150.00"), "percent": 50, "tasks": 2}}
        # The repo on its forge: here the stand-in GitHub of the harness (`github.api_url`).
        assert hello["url"] == forge_repo_url(story.app[SETTINGS], (await story.rows(
            t.Repo))[0]) and hello["url"].endswith(f"/{REPO}")
        assert other["open_tasks"] == 1
        assert other["appeal"] | {"month": None} == {
            "month": None, "currency": "EUR", "asked": eur(8000, "€80.00"),
            "funded": eur(3000, "€30.00"), "to_go": eur(5000, "€50.00"), "percent": 37,
            "tasks": 1}
        # The same as bountybot.needs says, and the addresses answer.
        async with story.app[SESSIONMAKER]() as session:
            for repo in (hello, other):
                figures = await month_figures(session, repo["id"], datetime.now(UTC).date())
                shown = month_json(figures, "en")
                assert {k: shown[k] for k in repo["appeal"]} == repo["appeal"]
        for key in ("page_url", "feed_url", "needs_url", "badge_url", "badge_json_url",
                    "api_needs_url"):
            path = hello[key].removeprefix(PUBLIC)
            assert (await client.get(path)).status == 200, path
        # Pages, as the tasks' list, with GitHub's links.
        response = await client.get("/api/v1/repos?per_page=1&page=2")
        paged = await response.json()
        assert [r["path"] for r in paged["repos"]] == [OTHER] and paged["total"] == 2
        assert response.headers["Link"] == (
            f'<{PUBLIC}/api/v1/repos?per_page=1&page=1>; rel="first", '
            f'<{PUBLIC}/api/v1/repos?per_page=1&page=1>; rel="prev"')
        assert (await get(client, "/api/v1/repos?page=3"))["repos"] == []
        assert (await get(client, "/api/v1/repos?forge=gitlab")) == {
            "repos": [], "page": 1, "per_page": 50, "total": 0}
        assert "forge must be one of" in (await get(client, "/api/v1/repos?forge=x", 400))[
            "error"]
        assert "page must be" in (await get(client, "/api/v1/repos?page=0", 400))["error"]
    finally:
        await client.close()


async def test_a_repos_needs_are_the_needs_pages_figures(story: TwoRepos) -> None:
    ids = await repo_ids(story)
    now = datetime.now(UTC)
    client = await public(story)
    try:
        body = await get(client, f"/api/v1/repos/{ids[REPO]}/needs")
        assert body == await get(client, f"/api/v1/repos/{ids[REPO]}/needs/{this_month()}")
        here = f"{PUBLIC}/github/{REPO}"
        assert body["repo"] == {"id": ids[REPO], "forge": "github", "path": REPO,
                                "page_url": here, "needs_url": f"{here}/-/needs"}
        assert body["page_url"] == f"{here}/-/needs/{this_month()}"
        assert (body["month"], body["current"], body["currency"]) == (this_month(), True, "EUR")
        # By hand: €300 asked across 2 tasks, €150 funded (50 %), €150 to go; pledged in the
        # month 60 + 40 + 50 + 20, paid out 100 to carol, dave's 20 withdrawn.
        main = {"asked": eur(30000, "€300.00"), "funded": eur(15000, "€150.00"),
                "to_go": eur(15000, "€150.00"), "percent": 50, "tasks": 2,
                "pledged": eur(17000, "€170.00"), "paid_out": eur(10000, "€100.00"),
                "refunded": eur(2000, "€20.00")}
        assert {k: body[k] for k in main} == main
        assert body["by_currency"] == [{"currency": "EUR", **main}]
        t1, t2 = body["live_tasks"]
        assert {k: t1[k] for k in ("number", "state", "goal", "funded", "percent")} == {
            "number": 1, "state": "done", "goal": eur(10000, "€100.00"),
            "funded": eur(10000, "€100.00"), "percent": 100}
        assert {k: t2[k] for k in ("number", "state", "goal", "funded", "percent")} == {
            "number": 2, "state": "open", "goal": eur(20000, "€200.00"),
            "funded": eur(5000, "€50.00"), "percent": 25}
        assert t2["page_url"] == f"{here}/-/issues/2"
        [payout] = body["payouts"]
        assert {k: payout[k] for k in ("number", "developer", "amount", "reference")} == {
            "number": 1, "developer": "carol", "amount": eur(10000, "€100.00"),
            "reference": REFERENCE}
        assert payout["pull_request"] == {"number": 7,
                                          "url": f"https://github.com/{REPO}/pull/7"}
        [refund] = body["refunds"]
        assert (refund["number"], refund["amount"], refund["why"]) == (
            2, eur(2000, "€20.00"), "withdrawn")
        # Twelve months, newest first: this one, then eleven with nothing asked.
        months = [m["month"] for m in body["history"]]
        assert months == [f"{m:%Y-%m}" for m in previous_months(now.date(), 12)]
        assert {k: body["history"][0][k] for k in main} == main
        assert all(m["asked"] == eur(0, "€0.00") and m["percent"] == 0 and m["tasks"] == 0
                   for m in body["history"][1:])
        # Exactly what bountybot.needs computes.
        async with story.app[SESSIONMAKER]() as session:
            computed = await history(session, ids[REPO], now.date(), now=now)
        assert body["history"] == [month_json(m, "en") for m in computed]
        head = computed[0]
        assert (body["percent"], body["tasks"]) == (head.percent, head.goal_tasks)
        assert [x["id"] for x in body["live_tasks"]] == [x.id for x in head.tasks]
        # A past month: nothing asked, and its own history of twelve months.
        earlier = f"{previous_months(now.date(), 2)[1]:%Y-%m}"
        past = await get(client, f"/api/v1/repos/{ids[REPO]}/needs/{earlier}")
        assert (past["month"], past["current"], past["asked"], past["live_tasks"]) == (
            earlier, False, eur(0, "€0.00"), [])
        assert past["history"][0]["month"] == earlier and len(past["history"]) == 12
        # The other repo, by hand.
        other = await get(client, f"/api/v1/repos/{ids[OTHER]}/needs")
        assert (other["asked"], other["funded"], other["percent"], other["pledged"]) == (
            eur(8000, "€80.00"), eur(3000, "€30.00"), 37, eur(3000, "€30.00"))
        # Backers' names never appear here.
        text = await (await client.get(f"/api/v1/repos/{ids[REPO]}/needs")).text()
        for name in NAMES:
            assert not re.search(rf"\b{name}\b", text), name
    finally:
        await client.close()


async def test_hidden_amounts_keep_the_percentages(story: TwoRepos) -> None:
    ids = await repo_ids(story)
    client = await serve(story, backers="count", hidden=(REPO,))
    try:
        hello, other = (await get(client, "/api/v1/repos"))["repos"]
        assert hello["appeal"] == {"month": this_month(), "currency": "EUR", "asked": None,
                                   "funded": None, "to_go": None, "percent": 50, "tasks": 2}
        assert other["appeal"]["asked"] == eur(8000, "€80.00")  # another repo shows its own
        body = await get(client, f"/api/v1/repos/{ids[REPO]}/needs")
        text = await (await client.get(f"/api/v1/repos/{ids[REPO]}/needs")).text()
        assert "€" not in text and '"display"' not in text, text
        assert (body["percent"], body["tasks"]) == (50, 2)
        for key in ("asked", "funded", "to_go", "pledged", "paid_out", "refunded"):
            assert body[key] is None and body["by_currency"][0][key] is None, key
        assert [(x["goal"], x["funded"], x["percent"]) for x in body["live_tasks"]] == [
            (None, None, 100), (None, None, 25)]
        assert body["payouts"][0]["amount"] is None and body["refunds"][0]["amount"] is None
        assert body["payouts"][0]["developer"] == "carol"  # a developer, not a backer
        assert body["history"][0]["percent"] == 50 and body["history"][0]["asked"] is None
        for path in ("/api/v1/repos", f"/api/v1/repos/{ids[OTHER]}/needs"):
            text = await (await client.get(path)).text()
            for name in NAMES:
                assert not re.search(rf"\b{name}\b", text), (path, name)
    finally:
        await client.close()


async def test_unknown_private_and_bad_months_answer_clearly(story: TwoRepos) -> None:
    ids = await repo_ids(story)
    client = await serve(story)
    try:
        for bad in ("2026-13", "2026-00", "abc", "2026-1", "202612"):
            error = (await get(client, f"/api/v1/repos/{ids[REPO]}/needs/{bad}", 400))["error"]
            assert error.startswith("month must be YYYY-MM"), error
        for month in ("1999-12", "2999-01"):
            error = (await get(client, f"/api/v1/repos/{ids[REPO]}/needs/{month}", 404))["error"]
            assert error.startswith(f"no appeal for {month}"), error
        for unknown in ("999999", "x", "0", "99999999999"):
            error = (await get(client, f"/api/v1/repos/{unknown}/needs", 404))["error"]
            assert error.startswith("no repo"), error
        async with UnitOfWork(story.app[SESSIONMAKER]) as uow:
            repo = (await uow.session.exec(select(t.Repo).where(
                t.Repo.full_path == OTHER))).one()
            repo.private = True
        # A private repo is unknown here, in the same words, and in no list.
        assert (await get(client, f"/api/v1/repos/{ids[OTHER]}/needs", 404)) == {
            "error": f"no repo {ids[OTHER]}"}
        assert (await get(client, f"/api/v1/repos/{ids[OTHER]}/needs/{this_month()}",
                          404))["error"] == f"no repo {ids[OTHER]}"
        body = await get(client, "/api/v1/repos")
        assert [r["path"] for r in body["repos"]] == [REPO] and body["total"] == 1
        text = await (await client.get("/api/v1/repos")).text()
        assert OTHER not in text
        # Published by its operator, it is back.
        async with UnitOfWork(story.app[SESSIONMAKER]) as uow:
            repo = (await uow.session.exec(select(t.Repo).where(
                t.Repo.full_path == OTHER))).one()
            repo.published = True
        assert (await get(client, f"/api/v1/repos/{ids[OTHER]}/needs"))["percent"] == 37
        assert (await get(client, "/api/v1/repos"))["total"] == 2
    finally:
        await client.close()
