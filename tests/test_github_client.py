"""GitHubClient over real HTTP to a local fake GitHub: auth, comments, maintainers, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bountybot.config import Settings
from bountybot.forges.base import ForgeError
from bountybot.forges.github import GitHubClient, client_from_settings
from bountybot.refs import RepoRef

from clocks import Clock
from fakes.github import FakeGitHub
from forge_errors import failing as forge_failure

TOKEN = "ghp_" + "Zq81vXw2LmT4" * 3  # a personal token's shape: ghp_ + 36 characters
REPO = RepoRef("github", "1296269", "octo/widgets")
MARKER = "<!-- bountybot:summary -->"
FIXTURES = Path(__file__).parent / "fixtures" / "github" / "api"
APP_ID, INSTALLATION = 42, 7


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(github_server: FakeGitHub) -> FakeGitHub:
    github_server.accept_token(TOKEN)
    github_server.add_repo("octo/widgets", 1296269)
    return github_server


@pytest.fixture
async def client(fake: FakeGitHub, clock: Clock) -> AsyncIterator[GitHubClient]:
    gh = GitHubClient(fake.url, bot_login="bountybot", token=TOKEN, clock=clock, timeout=1)
    yield gh
    await gh.close()


@pytest.fixture(scope="module")
def app_key() -> tuple[str, str]:
    """A GitHub App's RSA key pair, as PEM text (private, public)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


@pytest.fixture
async def app_client(fake: FakeGitHub, clock: Clock, app_key: tuple[str, str]
                     ) -> AsyncIterator[GitHubClient]:
    fake.clock = clock  # so the fake, too, refuses an installation token once it has expired
    fake.add_app(APP_ID, app_key[1])
    fake.add_installation(INSTALLATION, APP_ID)
    gh = GitHubClient(fake.url, bot_login="bountybot", app_id=APP_ID, private_key=app_key[0],
                      clock=clock)
    yield gh
    await gh.close()


APP_REPO = RepoRef("github", "1296269", "octo/widgets", installation_id=str(INSTALLATION))


async def failing(call: Awaitable[object], *secrets: str) -> ForgeError:
    """The ForgeError a call raises, checked to hold neither the token nor `secrets`."""
    return await forge_failure(call, TOKEN, *secrets)


# -- token auth --------------------------------------------------------------------------


async def test_the_token_reaches_github(fake: FakeGitHub, client: GitHubClient) -> None:
    await client.create_comment(REPO, 7, "hello")
    assert fake.requests[-1].headers["authorization"] == f"token {TOKEN}"


async def test_a_wrong_token_is_a_401_not_worth_retrying(fake: FakeGitHub) -> None:
    wrong = "ghp_" + "W" * 36
    gh = GitHubClient(fake.url, bot_login="bountybot", token=wrong)
    try:
        err = await failing(gh.create_comment(REPO, 7, "hello"), wrong)
    finally:
        await gh.close()
    assert (err.status, err.retryable) == (401, False)
    assert "Bad credentials" in str(err)


def test_a_client_takes_a_token_or_an_app_not_both(app_key: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        GitHubClient("http://127.0.0.1:1", bot_login="b")
    with pytest.raises(ValueError):
        GitHubClient("http://127.0.0.1:1", bot_login="b", token=TOKEN, app_id=1,
                     private_key=app_key[0])


# -- the summary comment's life: one request per operation -------------------------------


async def test_create_find_edit_react_one_request_each(fake: FakeGitHub,
                                                       client: GitHubClient) -> None:
    fake.add_comment("octo/widgets", 7, f"{MARKER} I copied the bot", login="mallory")

    before = len(fake.requests)
    comment_id = await client.create_comment(REPO, 7, f"{MARKER}\nGoal: €50")
    assert len(fake.requests) == before + 1
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "POST", "/repos/octo/widgets/issues/7/comments", {"body": f"{MARKER}\nGoal: €50"})

    before = len(fake.requests)
    assert await client.find_comment(REPO, 7, MARKER) == comment_id
    assert len(fake.requests) == before + 1
    assert fake.requests[-1].query == {"per_page": "100"}

    before = len(fake.requests)
    await client.edit_comment(REPO, 7, comment_id, f"{MARKER}\nGoal: €80")
    assert len(fake.requests) == before + 1
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "PATCH", f"/repos/octo/widgets/issues/comments/{comment_id}",
        {"body": f"{MARKER}\nGoal: €80"})

    pledge = fake.add_comment("octo/widgets", 7, "/pledge 20", login="alice")
    before = len(fake.requests)
    await client.react(REPO, 7, str(pledge))
    await client.react(REPO, 7, str(pledge))  # again: GitHub answers 200, still fine
    assert len(fake.requests) == before + 2
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "POST", f"/repos/octo/widgets/issues/comments/{pledge}/reactions", {"content": "+1"})

    ours = [c for c in fake.comments("octo/widgets", 7) if c.login == "bountybot"]
    assert [(str(c.id), c.body) for c in ours] == [(comment_id, f"{MARKER}\nGoal: €80")]
    assert [(r.login, r.content) for r in fake.reactions(pledge)] == [("bountybot", "+1")]


async def test_find_follows_pages_and_skips_lookalikes(fake: FakeGitHub,
                                                       client: GitHubClient) -> None:
    for i in range(230):
        # Others quote the marker, and the bot has other comments without it.
        login, body = ("bountybot", f"reply {i}") if i % 50 == 0 else ("alice", f"{MARKER} {i}")
        fake.add_comment("octo/widgets", 7, body, login=login)
    ours = fake.add_comment("octo/widgets", 7, f"{MARKER} summary", login="BountyBot")

    before = len(fake.requests)
    assert await client.find_comment(REPO, 7, MARKER) == str(ours)
    pages = fake.requests[before:]
    assert [(r.path, r.query) for r in pages] == [
        ("/repos/octo/widgets/issues/7/comments", {"per_page": "100"}),
        ("/repositories/1296269/issues/7/comments", {"per_page": "100", "page": "2"}),
        ("/repositories/1296269/issues/7/comments", {"per_page": "100", "page": "3"}),
    ]
    assert await client.find_comment(REPO, 8, MARKER) is None


async def test_an_apps_comment_is_its_own(fake: FakeGitHub, client: GitHubClient) -> None:
    ours = fake.add_comment("octo/widgets", 7, MARKER, login="bountybot[bot]", user_type="Bot")
    assert await client.find_comment(REPO, 7, MARKER) == str(ours)


@pytest.mark.usefixtures("fake")
async def test_writes_are_not_throttled(client: GitHubClient) -> None:
    # PyGithub's defaults would wait 1 s between writes: nine seconds here.
    started = time.monotonic()
    for i in range(10):
        await client.create_comment(REPO, 7, f"comment {i}")
    assert time.monotonic() - started < 1.0


# -- maintainers -------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "maintainer"), [
    ("admin", True), ("maintain", True), ("write", True), ("triage", False), ("read", False),
])
async def test_maintainer_by_role(fake: FakeGitHub, client: GitHubClient, role: str,
                                  maintainer: bool) -> None:
    fake.set_permission("octo/widgets", "carol", role)
    assert await client.is_maintainer(REPO, "carol") is maintainer
    assert fake.requests[-1].path == "/repos/octo/widgets/collaborators/carol/permission"


async def test_not_a_collaborator_is_not_a_maintainer(client: GitHubClient) -> None:
    assert await client.is_maintainer(REPO, "stranger") is False


async def test_maintainer_answers_are_cached_for_the_ttl(fake: FakeGitHub, client: GitHubClient,
                                                         clock: Clock) -> None:
    fake.set_permission("octo/widgets", "carol", "maintain")
    assert await client.is_maintainer(REPO, "carol")
    asked = len(fake.requests)

    fake.set_permission("octo/widgets", "carol", "read")
    clock.advance(299)
    assert await client.is_maintainer(REPO, "Carol")  # cached, whatever the case
    assert await client.is_maintainer(REPO, "stranger") is False  # another login is asked
    assert len(fake.requests) == asked + 1

    clock.advance(2)
    assert await client.is_maintainer(REPO, "carol") is False
    assert len(fake.requests) == asked + 2


# -- errors ------------------------------------------------------------------------------


async def test_a_502_is_retryable_and_not_retried_inside(fake: FakeGitHub,
                                                         client: GitHubClient) -> None:
    fake.fail_next("POST", r"/comments$", 502, body="<html>Bad Gateway</html>")
    before = len(fake.requests)
    err = await failing(client.create_comment(REPO, 7, "hi"))
    assert (err.status, err.retryable) == (502, True)
    assert len(fake.requests) == before + 1
    assert await client.create_comment(REPO, 7, "hi")  # the next one goes through


async def test_a_503_may_say_when_to_come_back(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.fail_next("GET", r"/comments$", 503, headers={"retry-after": "20"})
    err = await failing(client.find_comment(REPO, 7, MARKER))
    assert (err.status, err.retryable, err.retry_after) == (503, True, 20)


async def test_exhausted_rate_limit_waits_until_the_reset(fake: FakeGitHub, client: GitHubClient,
                                                          clock: Clock) -> None:
    reset = int(clock.now.timestamp()) + 120
    fake.fail_next("PATCH", r"/issues/comments/", 403, headers={
        "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        body={"message": "API rate limit exceeded for installation ID 7.",
              "documentation_url": "https://docs.github.com/rest/overview/rate-limits"})
    before = len(fake.requests)
    err = await failing(client.edit_comment(REPO, 7, "1000001", "x"))
    assert (err.status, err.retryable) == (403, True)
    assert err.retry_after is not None and 118 <= err.retry_after <= 121
    assert len(fake.requests) == before + 1  # PyGithub's GithubRetry would have slept here


async def test_429_says_when_to_come_back(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.fail_next("POST", r"/reactions$", 429, headers={"retry-after": "7"})
    err = await failing(client.react(REPO, 7, "1000001"))
    assert (err.status, err.retryable, err.retry_after) == (429, True, 7)


async def test_secondary_rate_limit_is_retryable(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.fail_next("GET", r"/permission$", 403, headers={"retry-after": "30"}, body={
        "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                   "before you try again."})
    err = await failing(client.is_maintainer(REPO, "carol"))
    assert (err.status, err.retryable, err.retry_after) == (403, True, 30)


async def test_a_plain_403_is_final(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.fail_next("POST", r"/comments$", 403,
                   body={"message": "Resource not accessible by integration"})
    err = await failing(client.create_comment(REPO, 7, "hi"))
    assert (err.status, err.retryable, err.retry_after) == (403, False, None)
    assert "Resource not accessible by integration" in str(err)


async def test_validation_failed_is_final(fake: FakeGitHub, client: GitHubClient) -> None:
    recorded = json.loads((FIXTURES / "errors.json").read_text())[0]  # a real 422 answer
    fake.fail_next("POST", r"/comments$", recorded["status"], body=recorded["response"])
    err = await failing(client.create_comment(REPO, 7, "hi"))
    assert (err.status, err.retryable) == (422, False)
    assert "Validation Failed" in str(err)


async def test_unknown_repo_and_comment_are_404(client: GitHubClient) -> None:
    err = await failing(client.create_comment(RepoRef("github", "1", "octo/gone"), 1, "x"))
    assert (err.status, err.retryable) == (404, False)
    err = await failing(client.edit_comment(REPO, 7, "999", "x"))
    assert (err.status, err.retryable) == (404, False)


async def test_a_timeout_is_retryable(fake: FakeGitHub, client: GitHubClient) -> None:
    fake.delay_next("POST", r"/comments$", 5)
    started = time.monotonic()
    err = await failing(client.create_comment(REPO, 7, "slow"))
    assert (err.status, err.retryable) == (None, True)
    assert time.monotonic() - started < 3


async def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gh = GitHubClient(f"http://127.0.0.1:{port}", bot_login="bountybot", token=TOKEN)
    try:
        err = await failing(gh.create_comment(REPO, 7, "hi"))
    finally:
        await gh.close()
    assert (err.status, err.retryable) == (None, True)


# -- GitHub App --------------------------------------------------------------------------


async def test_an_app_works_through_an_installation_token(
    fake: FakeGitHub, app_client: GitHubClient, app_key: tuple[str, str]
) -> None:
    comment_id = await app_client.create_comment(APP_REPO, 7, MARKER)

    grant, call = fake.requests[-2:]
    assert grant.path == f"/app/installations/{INSTALLATION}/access_tokens"
    scheme, _, token = grant.headers["authorization"].partition(" ")
    claims = jwt.decode(token, app_key[1], algorithms=["RS256"])
    assert (scheme, claims["iss"]) == ("Bearer", str(APP_ID))
    assert call.headers["authorization"] == f"token {fake.minted[0]}"
    assert fake.comments("octo/widgets", 7)[0].login == "bountybot[bot]"

    before = len(fake.requests)
    assert await app_client.find_comment(APP_REPO, 7, MARKER) == comment_id
    assert len(fake.requests) == before + 1  # the token is reused, no new grant
    assert len(fake.minted) == 1


async def test_the_installation_token_is_refreshed_before_it_expires(
    fake: FakeGitHub, app_client: GitHubClient, clock: Clock
) -> None:
    fake.token_lifetime = timedelta(minutes=10)
    await app_client.create_comment(APP_REPO, 7, "one")
    clock.advance(8 * 60)
    await app_client.create_comment(APP_REPO, 7, "two")
    assert len(fake.minted) == 1

    clock.advance(60 + 5)  # 55 s left: too little for a request to be sure to finish
    await app_client.create_comment(APP_REPO, 7, "three")
    assert len(fake.minted) == 2
    assert fake.requests[-1].headers["authorization"] == f"token {fake.minted[1]}"

    clock.advance(3600)  # long past: the fake refuses the old token, the client gets a new one
    await app_client.react(APP_REPO, 7, str(fake.comments("octo/widgets", 7)[0].id))
    assert len(fake.minted) == 3
    async with aiohttp.ClientSession() as http, http.get(
        f"{fake.url}/repos/octo/widgets/issues/7/comments",
        headers={"Authorization": f"token {fake.minted[1]}"},
    ) as stale:
        assert stale.status == 401


@pytest.mark.usefixtures("app_key")
async def test_a_jwt_from_the_wrong_key_is_refused(fake: FakeGitHub,
                                                   app_client: GitHubClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    fake.add_app(APP_ID, other.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo
                                            ).decode())
    err = await failing(app_client.create_comment(APP_REPO, 7, "hi"))
    assert (err.status, err.retryable) == (401, False)
    assert fake.minted == [] and fake.comments("octo/widgets", 7) == []


async def test_an_uninstalled_app_is_an_error_not_a_non_maintainer(
    app_client: GitHubClient,
) -> None:
    gone = RepoRef("github", "1296269", "octo/widgets", installation_id="999")
    err = await failing(app_client.is_maintainer(gone, "carol"))
    assert (err.status, err.retryable) == (404, False)
    assert "/app/installations/999/access_tokens" in str(err)


async def test_an_app_needs_the_repos_installation(app_client: GitHubClient) -> None:
    err = await failing(app_client.create_comment(REPO, 7, "hi"))
    assert (err.status, err.retryable) == (None, False)


async def test_installation_tokens_stay_out_of_errors(fake: FakeGitHub,
                                                      app_client: GitHubClient) -> None:
    await app_client.create_comment(APP_REPO, 7, "hi")
    fake.fail_next("POST", r"/comments$", 500)
    await failing(app_client.create_comment(APP_REPO, 7, "hi"), *fake.minted)


# -- settings ----------------------------------------------------------------------------


async def test_client_from_settings(fake: FakeGitHub, tmp_path: Path,
                                    app_key: tuple[str, str]) -> None:
    assert client_from_settings(Settings(config_file=None)) is None

    with_token = Settings(config_file=None, github={
        "api_url": fake.url, "webhook_secret": "a-webhook-secret", "token": TOKEN})
    gh = client_from_settings(with_token)
    assert gh is not None
    assert await gh.create_comment(REPO, 7, "by token")
    await gh.close()

    key_file = tmp_path / "app.pem"
    key_file.write_text(app_key[0])
    fake.add_app(APP_ID, app_key[1])
    fake.add_installation(INSTALLATION, APP_ID)
    as_app = Settings(config_file=None, bot={"login": "bountybot"}, github={
        "api_url": fake.url, "webhook_secret": "a-webhook-secret", "app_id": APP_ID,
        "private_key_file": str(key_file)})
    gh = client_from_settings(as_app)
    assert gh is not None
    assert await gh.create_comment(APP_REPO, 7, "by app")
    await gh.close()
    assert [c.login for c in fake.comments("octo/widgets", 7)] == ["bountybot", "bountybot[bot]"]


# -- many calls at once: each goes where it was sent ----------------------------------------


async def test_concurrent_calls_each_reach_their_own_comment(fake: FakeGitHub,
                                                            client: GitHubClient) -> None:
    """PyGithub's requester keeps one connection whose `request()` stores the verb, URL and body
    that `getresponse()` then sends: two worker threads sharing it could send one call's body to
    the other's URL (seen once as a reaction posted twice and another never). Calls made at
    once must each reach their own comment, once, with their own body."""
    pledges = [fake.add_comment("octo/widgets", n % 5 + 1, f"/pledge {n}", login=f"b{n}")
               for n in range(400)]
    summaries = [await client.create_comment(REPO, n, f"{MARKER} task {n}") for n in range(1, 6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads preempted as often as they can be: the race shows
    try:
        await asyncio.gather(
            *(client.react(REPO, n % 5 + 1, str(cid)) for n, cid in enumerate(pledges)),
            *(client.edit_comment(REPO, n, s, f"{MARKER} task {n} edited {k}")
              for k in range(40) for n, s in zip(range(1, 6), summaries, strict=True)))
    finally:
        sys.setswitchinterval(interval)
    posted = Counter(r.path for r in fake.requests if r.path.endswith("/reactions"))
    assert posted == Counter({f"/repos/octo/widgets/issues/comments/{c}/reactions": 1
                              for c in pledges})
    assert all(len(fake.reactions(c)) == 1 for c in pledges)
    for n, s in zip(range(1, 6), summaries, strict=True):
        edits = [r.json["body"] for r in fake.requests
                 if r.method == "PATCH" and r.path.endswith(f"/comments/{s}")]
        assert len(edits) == 40 and all(b.startswith(f"{MARKER} task {n} ") for b in edits), edits
