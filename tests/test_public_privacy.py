"""Privacy on the public face, through the real app after a story played by signed webhooks.

`bot.public_backers = "count"` hides who backed a task (pages and the API's task JSON say how
many); `[repos."github:owner/repo"] public_amounts = false` makes that repo's pages, badges and
API JSON show percentages of the goal only, while another repo still shows its amounts. Nothing
secret, no email and no provider id reaches a page; the payout reference a maintainer gave is
shown as given (it is the public proof of payment).

The story, in this month: Codertocat/Hello-World #1 (goal €100) funded by alice 60 and bob 40,
claimed by carol, merged and paid with the reference `tr_1MaintainerProof`; #2 (goal €200) has
erin's €50 (25 %) and had dave's €20 for a while (withdrawn), so the month asks €300 and
has €150 (50 %). Octo/Other #1 (goal €80) has frank's €30.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from xml.etree import ElementTree

import pytest
import test_pages
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from bountybot.api.routes import setup as api_setup
from bountybot.app import create_app
from bountybot.config import ConfigError, FundingManifest, RepoPrivacy, Settings
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.storage import tables as t
from bountybot.web import badges, feeds, pages

from fakes.github import FakeGitHub
from fixtures import payload
from github_harness import MAINTAINER, REPO, SECRET, TOKEN, GitHubBot

OTHER, OTHER_ID = "Octo/Other", 424242
BASE, OTHER_BASE = f"/github/{REPO}", f"/github/{OTHER}"
REFERENCE = "tr_1MaintainerProof"
# What the provider knows and the public must not: ids of payments, sessions, accounts.
PROVIDER_IDS = ("pi_3SecretIntent", "cs_test_SecretSession", "acct_1SecretAccount",
                "tr_1ProviderTransfer", "re_1SecretRefund")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


class TwoRepos(GitHubBot):
    """The harness's bot, whose deliveries can be about a second repo (`self.other = True`)."""

    other = False

    async def post(self, event: str, data: dict[str, Any] | bytes, **kw: Any) -> Any:
        if self.other and isinstance(data, dict) and "repository" in data:
            data["repository"].update(id=OTHER_ID, name="Other", full_name=OTHER,
                                      html_url=f"https://github.com/{OTHER}")
            data["repository"]["owner"]["login"] = "Octo"
            if "issue" in data:
                number = data["issue"]["number"]
                data["issue"]["html_url"] = f"https://github.com/{OTHER}/issues/{number}"
        return await super().post(event, data, **kw)

    async def comment(self, login: str, body: str, number: int = 1, **kw: Any) -> Any:
        if not self.other:
            return await super().comment(login, body, number, **kw)
        # As the harness's, with the comment on the second repo, where the bot reacts to it.
        data = payload("github", "issue_comment.created")
        self._issue(data, number)
        cid = self.fake.add_comment(OTHER, number, body, login=login)
        data["comment"].update(id=cid, body=body)
        data["comment"]["user"].update(login=login)
        data["sender"].update(login=login)
        return await self.post("issue_comment", data)


@pytest.fixture
async def story(db_url: str, github_server: FakeGitHub) -> AsyncIterator[TwoRepos]:
    github_server.add_repo(OTHER, OTHER_ID)
    github_server.set_permission(OTHER, MAINTAINER, "maintain")
    bot = await TwoRepos.start(db_url, github_server)
    await bot.paid_task(REFERENCE)
    [payout] = await bot.rows(t.Payout)
    await bot.label(2)
    await bot.comment("maya", "/goal 200", 2)
    await bot.comment("erin", "/pledge 50", 2)
    await bot.comment("dave", "/pledge 20", 2)
    await bot.settle()
    await bot.comment("dave", "/withdraw", 2)
    await bot.settle()
    bot.other = True
    await bot.label(1)
    await bot.comment("maya", "/goal 80", 1)
    await bot.comment("frank", "/pledge 30", 1)
    await bot.settle()
    bot.other = False
    # What a Stripe instance keeps beside the books: the provider's ids.
    task1 = payout.task_id
    async with bot.app[SESSIONMAKER]() as session:
        await session.exec(update(t.Pledge).values(  # type: ignore[call-overload]
            provider_ref=PROVIDER_IDS[0]))
        session.add(t.PaymentOp(kind="transfer", idempotency_key="bountybot:transfer:payout:1",
                                task_id=task1, payout_id=payout.id, forge="github",
                                login="carol", amount_minor=10000, currency="EUR",
                                session_id=PROVIDER_IDS[1], account_id=PROVIDER_IDS[2],
                                transfer_id=PROVIDER_IDS[3], refund_id=PROVIDER_IDS[4]))
        await session.commit()
    try:
        yield bot
    finally:
        await bot.close()


async def serve(bot: GitHubBot, *, backers: str = "names",
                hidden: tuple[str, ...] = ()) -> TestClient:
    """The public app (pages, badges, API) over the story's books, with these privacy keys."""
    base: Settings = bot.app[SETTINGS]
    settings = base.model_copy(update={
        "bot": base.bot.model_copy(update={"public_backers": backers}),
        "repos": {f"github:{path}".lower(): RepoPrivacy(public_amounts=False)
                  for path in hidden},
        "funding": {f"github:{path}".lower(): FundingManifest(email="m@example.org", name="M")
                    for path in (REPO, OTHER)}})
    app = create_app(settings, engine=bot.engine,
                     features=[api_setup, badges.setup, feeds.setup, pages.setup])
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def text(client: TestClient, path: str) -> str:
    response = await client.get(path)
    assert response.status == 200, (path, response.status)
    return await response.text()


async def page(client: TestClient, path: str) -> test_pages.Page:
    return test_pages.Page(await text(client, path))


async def api_task(client: TestClient, repo: str, number: int) -> dict[str, Any]:
    body = json.loads(await text(client, f"/api/v1/tasks?repo={repo}"))
    [task] = [x for x in body["tasks"] if x["number"] == number]
    direct = json.loads(await text(client, f"/api/v1/tasks/{task['id']}"))
    assert direct == task
    return task


PUBLIC_PATHS = ("/", BASE, f"{BASE}/-/needs", f"{BASE}/-/issues/1", f"{BASE}/-/issues/2",
                OTHER_BASE, f"{OTHER_BASE}/-/issues/1", f"{BASE}/-/issues/1/badge.svg",
                f"{BASE}/-/issues/1/badge.json", f"{BASE}/-/needs/badge.svg",
                "/api/v1/tasks", "/feed.atom", f"{BASE}/-/feed.atom", f"{OTHER_BASE}/-/feed.atom")


async def test_count_mode_shows_how_many_backers_never_who(story: TwoRepos) -> None:
    client = await serve(story, backers="count")
    try:
        task1 = await page(client, f"{BASE}/-/issues/1")
        assert "Backers: 2" in task1.words
        for name in ("alice", "bob"):
            assert name not in task1.words
        # The timeline says a pledge came in, and from whom only for the developer.
        assert "A backer pledged €60.00" in task1.words
        assert "carol claimed the task" in task1.words
        assert "€100.00 of €100.00" in task1.words  # amounts are still shown
        repo = await page(client, BASE)
        assert "erin" not in repo.words and "alice" not in repo.words
        assert re.search(r"#2 .*?€200\.00 ?1 ?open", repo.words), repo.words
        needs = await page(client, f"{BASE}/-/needs")
        assert "€20.00 back to a backer (#2, withdrawn)" in needs.words, needs.words
        assert "A backer withdrew €20.00" in (await page(client, f"{BASE}/-/issues/2")).words
        french = await page(client, f"{BASE}/-/issues/2?lang=fr")
        assert "Soutiens : 1" in french.words and "erin" not in french.words
        assert "Un soutien a promis" in french.words
        for number, count in ((1, 2), (2, 1)):
            task = await api_task(client, REPO, number)
            assert task["backers"] == count
            assert task["pledges"] and all(p["backer"] is None for p in task["pledges"])
            assert task["pledged"] is not None  # names hidden, amounts not
        ledger = await text(client, f"/api/v1/tasks/{(await api_task(client, REPO, 1))['id']}"
                                    "/ledger")
        assert '"backer"' in ledger and "alice" not in ledger and "carol" in ledger
        for path in ("/api/v1/statements/github/backers/alice", "/api/v1/export.json",
                     "/api/v1/export.csv"):
            response = await client.get(path)
            assert response.status == 404, path
            assert "public" in (await response.json())["error"]
        for path in PUBLIC_PATHS:
            body = await text(client, path)
            for name in ("alice", "bob", "erin", "frank", "dave"):
                assert not re.search(rf"\b{name}\b", body), (path, name)
    finally:
        await client.close()
    # The default shows each login with its amount.
    client = await serve(story)
    try:
        task1 = await page(client, f"{BASE}/-/issues/1")
        backers = re.findall(r"(alice|bob) ?(€[0-9.]+)", task1.words)
        assert ("alice", "€60.00") in backers and ("bob", "€40.00") in backers
        task = await api_task(client, REPO, 1)
        assert {p["backer"] for p in task["pledges"]} == {"alice", "bob"}
        assert "backer:github:alice" in await text(client, f"/api/v1/tasks/{task['id']}/ledger")
        assert "alice" in await text(client, "/api/v1/statements/github/backers/alice")
    finally:
        await client.close()


async def test_a_repo_without_public_amounts_shows_percentages_only(story: TwoRepos) -> None:
    client = await serve(story, hidden=(REPO,))
    try:
        repo = await page(client, BASE)
        task2 = await page(client, f"{BASE}/-/issues/2")
        task1 = await page(client, f"{BASE}/-/issues/1")
        needs = await page(client, f"{BASE}/-/needs")
        for shown in (repo, task1, task2, needs):
            assert "€" not in shown.words and "EUR" not in shown.words, shown.words
            for meter in shown.meters:
                assert meter["max"] == "100", meter  # no amount in the attributes either
        assert "25% of the goal" in task2.words
        assert "Funding of #2: 25% of the goal" in [m.get("aria-label") for m in repo.meters]
        assert "100% of the goal · Goal reached" in task1.words
        assert "alice made a pledge" in task1.words and "Paid to carol" in task1.words
        assert re.search(r"alice\s*bob|bob\s*alice", task1.words)  # names, without amounts
        assert REFERENCE in task1.words and REFERENCE in needs.words
        assert "Paid to carol for #1" in needs.words
        assert "Refund to dave (#2, withdrawn)" in needs.words
        assert "dave withdrew their pledge" in task2.words
        assert re.search(r"of what 2 tasks ask is funded", needs.words), needs.words
        french = await page(client, f"{BASE}/-/issues/2?lang=fr")
        assert "€" not in french.words, re.findall(r".{60}€.{20}", french.words)
        assert re.search(r"25[\u00a0\u202f ]% de l’objectif", french.words), french.words
        # The appeal across all projects would give the hidden figures away: percentages too.
        index = await page(client, "/")
        assert "€" not in index.words.split("Open tasks")[0]
        # Badges: percentages and words only.
        for path, says in ((f"{BASE}/-/issues/2/badge.svg", "bounty: 25% of goal"),
                           (f"{BASE}/-/issues/1/badge.svg", "bounty: paid"),
                           (f"{BASE}/-/needs/badge.svg", "needs: 50%")):
            svg = ElementTree.fromstring(await text(client, path))
            label = svg.get("aria-label") or ""
            assert label.endswith(says) or says in label, (path, label)
            assert "€" not in ElementTree.tostring(svg, encoding="unicode")
        shield = json.loads(await text(client, f"{BASE}/-/issues/2/badge.json"))
        assert shield["message"] == "25% of goal"
        # The API: amounts null, the percentage of the goal instead.
        task = await api_task(client, REPO, 2)
        assert (task["goal"], task["pledged"], task["raised"], task["percent"]) == (
            None, None, None, 25)
        assert task["backers"] == 1 and task["pledges"][0]["amount"] is None
        assert task["pledges"][0]["backer"] == "erin"
        done = await api_task(client, REPO, 1)
        assert done["percent"] == 100 and all(p["amount"] is None for p in done["payouts"])
        response = await client.get(f"/api/v1/tasks/{task['id']}/ledger")
        assert response.status == 404 and "percentages only" in (await response.json())["error"]
        # Another repo still shows its amounts.
        other = await page(client, OTHER_BASE)
        assert "€30.00 of €80.00" in other.words
        assert ("8000", "3000") in [(m["max"], m["value"]) for m in other.meters]
        svg = ElementTree.fromstring(await text(client, f"{OTHER_BASE}/-/issues/1/badge.svg"))
        assert svg.get("aria-label") == "bounty: €30 of €80"
        other_task = await api_task(client, OTHER, 1)
        assert other_task["pledged"]["amount"] == 3000 and "percent" not in other_task
    finally:
        await client.close()


def feed_titles(body: str) -> list[str]:
    atom = "{http://www.w3.org/2005/Atom}"
    return [e.findtext(f"{atom}title") or ""
            for e in ElementTree.fromstring(body).findall(f"{atom}entry")]


async def test_feeds_and_funding_json_keep_a_repos_amounts_hidden(story: TwoRepos) -> None:
    client = await serve(story, hidden=(REPO,))
    try:
        hidden = feed_titles(await text(client, f"{BASE}/-/feed.atom"))
        assert "#1 Spelling error in the README file: paid to carol" in hidden, hidden
        assert "#1 Spelling error in the README file: goal reached" in hidden, hidden
        assert any(re.search(r": 50% of what 2 tasks ask is funded$", x) for x in hidden), hidden
        every = feed_titles(await text(client, "/feed.atom"))
        for titles in (hidden, every):
            assert not [x for x in titles if "€" in x or "EUR" in x
                        if "Other" not in x], titles
        # The instance's appeal sums the hidden repo too: a percentage there as well.
        assert any(re.search(r"% of what \d+ tasks ask is funded$", x) for x in every), every
        other = feed_titles(await text(client, f"{OTHER_BASE}/-/feed.atom"))
        assert any("€30.00" in x or "€80.00" in x for x in other), other
        response = await client.get(f"{BASE}/-/funding.json")
        assert response.status == 404
        assert "public_amounts" in (await response.json())["error"]
        assert (await client.get(f"{OTHER_BASE}/-/funding.json")).status == 200
        # Shown, the same feed has its amounts.
        shown = await serve(story)
        try:
            titles = feed_titles(await text(shown, f"{BASE}/-/feed.atom"))
            assert "#1 Spelling error in the README file: €100.00 paid to carol" in titles, titles
            assert (await shown.get(f"{BASE}/-/funding.json")).status == 200
        finally:
            await shown.close()
    finally:
        await client.close()


async def test_no_secret_no_email_no_provider_id_on_any_page(story: TwoRepos) -> None:
    for backers, hidden in (("names", ()), ("count", (REPO,))):
        client = await serve(story, backers=backers, hidden=hidden)
        try:
            for path in (*PUBLIC_PATHS, f"{BASE}/-/issues/2/badge.json",
                         f"{OTHER_BASE}/-/needs", "/api/v1/tasks?repo=" + OTHER):
                for lang in ("en", "fr"):
                    body = await text(client, f"{path}{'&' if '?' in path else '?'}lang={lang}")
                    for secret in (SECRET, TOKEN, *PROVIDER_IDS):
                        assert secret not in body, (path, secret)
                    assert not EMAIL.search(body), (path, EMAIL.search(body))
            # The reference the maintainer gave is the public proof of payment: kept.
            assert REFERENCE in await text(client, f"{BASE}/-/issues/1")
            assert REFERENCE in await text(client, f"{BASE}/-/needs")
        finally:
            await client.close()


def test_the_privacy_keys_are_validated_with_clear_errors() -> None:
    settings = Settings(config_file=None, bot={"public_backers": "count"},
                        repos={"github:Octo/Repo": {"public_amounts": False}})
    assert settings.bot.public_backers == "count"
    assert not settings.public_amounts("github", "octo/repo")
    assert settings.public_amounts("github", "octo/other")
    assert settings.public_amounts("gitlab", "octo/repo")
    assert Settings(config_file=None).bot.public_backers == "names"
    for bad, says in (
            ({"bot": {"public_backers": "nobody"}},
             "bot.public_backers: Input should be 'names' or 'count'"),
            ({"repos": {"octo/repo": {"public_amounts": False}}},
             "'octo/repo' is not forge:path (e.g. github:owner/repo)"),
            ({"repos": {"github:a/b": {"public_amounts": "no"}}},
             "repos.github:a/b.public_amounts: Input should be a valid boolean"),
            ({"repos": {"github:a/b": {"amounts": False}}},
             "repos.github:a/b.amounts: unknown key"),
            ({"repos": {"github:a/b": {}, "github:A/B": {}}}, "'github:A/B' is given twice"),
            ({"funding": {"github:a/b": {"email": "m@x.org", "name": "M"},
                          "github:A/B": {"email": "n@x.org", "name": "N"}}},
             "'github:A/B' is given twice")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            Settings(config_file=None, **bad)


def test_the_shipped_file_documents_the_keys() -> None:
    shipped = Settings.load()
    assert shipped.bot.public_backers == "names" and shipped.repos == {}
    from bountybot.config import SHIPPED_CONFIG
    doc = SHIPPED_CONFIG.read_text()
    assert 'public_backers = "names"' in doc and "# public_amounts = false" in doc
