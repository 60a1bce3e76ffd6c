"""ForgejoClient over real HTTP to a local fake Forgejo: token, comments, reactions,
permissions, users, errors and the reconciliation reads."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from bountybot.forges.base import DEFAULT_RATE_LIMIT_WAIT, ForgeError
from bountybot.forges.forgejo import ForgejoClient, client_from_settings, web_url
from bountybot.refs import RepoRef
from bountybot.rules import Comment, LabelAdded, LinkClosed

from clocks import Clock
from fakes.forgejo import FakeForgejo
from forge_errors import failing as forge_failure

TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a Forgejo access token's shape (40 hex)
REPO_ID = 4242
REPO = RepoRef("forgejo", str(REPO_ID), "octo/widgets")
PATH = "/repos/octo/widgets"  # as the messages name it
API = "/api/v1" + PATH
MARKER = "<!-- bountybot:summary -->"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake() -> AsyncIterator[FakeForgejo]:
    server = await FakeForgejo.start()
    server.accept_token(TOKEN, login="bountybot")
    server.add_repo("octo/widgets", REPO_ID)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def client(fake: FakeForgejo, clock: Clock) -> AsyncIterator[ForgejoClient]:
    fj = ForgejoClient(fake.url, token=TOKEN, bot_login="BountyBot", clock=clock, timeout=5)
    yield fj
    await fj.close()


async def failing(call: Awaitable[object], *secrets: str) -> ForgeError:
    """The ForgeError a call raises, checked to hold neither the token nor `secrets`."""
    return await forge_failure(call, TOKEN, *secrets)


# -- token -------------------------------------------------------------------------------


async def test_the_token_reaches_forgejo_as_a_token_header(fake: FakeForgejo,
                                                           client: ForgejoClient) -> None:
    await client.create_comment(REPO, 7, "hello")
    sent = fake.requests[-1]
    assert sent.headers["authorization"] == f"token {TOKEN}"
    assert sent.headers["accept"] == "application/json"
    assert fake.comments("octo/widgets", 7)[0].login == "bountybot"


async def test_a_wrong_token_is_a_401_not_worth_retrying(fake: FakeForgejo) -> None:
    wrong = "f" * 40
    fj = ForgejoClient(fake.url, token=wrong, bot_login="bountybot")
    try:
        err = await failing(fj.create_comment(REPO, 7, "hello"), wrong)
    finally:
        await fj.close()
    assert (err.status, err.retryable) == (401, False)
    assert str(err) == f"Forgejo POST {PATH}/issues/7/comments: 401 token is required"
    assert len(fake.requests) == 1


async def test_a_token_echoed_by_the_server_is_scrubbed(fake: FakeForgejo,
                                                        client: ForgejoClient) -> None:
    fake.fail_next("POST", r"/comments$", 400, body={"message": f"bad request for {TOKEN}",
                                                       "url": f"{fake.url}/api/swagger"})
    err = await failing(client.create_comment(REPO, 7, "hello"))
    assert str(err).endswith("400 bad request for ***")


# -- the summary comment's life: one request per operation -------------------------------


async def test_create_find_edit_react_one_request_each(fake: FakeForgejo,
                                                       client: ForgejoClient) -> None:
    fake.add_comment("octo/widgets", 7, f"{MARKER} I copied the bot", login="mallory")

    before = len(fake.requests)
    comment_id = await client.create_comment(REPO, 7, f"{MARKER}\nGoal: €50")
    assert len(fake.requests) == before + 1
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "POST", f"{API}/issues/7/comments", {"body": f"{MARKER}\nGoal: €50"})

    before = len(fake.requests)
    assert await client.find_comment(REPO, 7, MARKER) == comment_id
    assert len(fake.requests) == before + 1
    assert (fake.requests[-1].method, fake.requests[-1].path) == (
        "GET", f"{API}/issues/7/comments")
    assert await client.find_comment(REPO, 8, MARKER) is None

    before = len(fake.requests)
    await client.edit_comment(REPO, 7, comment_id, f"{MARKER}\nGoal: €80")
    assert len(fake.requests) == before + 1
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "PATCH", f"{API}/issues/comments/{comment_id}", {"body": f"{MARKER}\nGoal: €80"})

    pledge = fake.add_comment("octo/widgets", 7, "/pledge 20", login="alice")
    before = len(fake.requests)
    await client.react(REPO, 7, str(pledge))
    await client.react(REPO, 7, str(pledge))  # again: Forgejo answers 200, still fine
    assert len(fake.requests) == before + 2
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "POST", f"{API}/issues/comments/{pledge}/reactions", {"content": "+1"})

    ours = [c for c in fake.comments("octo/widgets", 7) if c.login == "bountybot"]
    assert [(str(c.id), c.body) for c in ours] == [(comment_id, f"{MARKER}\nGoal: €80")]
    assert [(r.login, r.content) for r in fake.reactions(pledge)] == [("bountybot", "+1")]
    assert [r.method for r in fake.writes()] == ["POST", "PATCH", "POST", "POST"]


async def test_someone_elses_comment_cannot_be_edited(fake: FakeForgejo,
                                                      client: ForgejoClient) -> None:
    theirs = fake.add_comment("octo/widgets", 7, "mine", login="alice")
    err = await failing(client.edit_comment(REPO, 7, str(theirs), "hijacked"))
    assert (err.status, err.retryable) == (403, False)
    assert fake.comments("octo/widgets", 7)[0].body == "mine"


async def test_unknown_repo_and_comment_are_404(client: ForgejoClient) -> None:
    err = await failing(client.create_comment(RepoRef("forgejo", "9", "gone/away"), 1, "x"))
    assert (err.status, err.retryable) == (404, False)
    err = await failing(client.react(REPO, 7, "999"))
    assert (err.status, err.retryable) == (404, False)


async def test_a_comment_is_read_back_only_on_its_own_issue(fake: FakeForgejo,
                                                            client: ForgejoClient) -> None:
    pledge = fake.add_comment("octo/widgets", 7, "/pledge 20", login="alice")
    assert await client.comment(REPO, 7, str(pledge)) == ("alice", "/pledge 20")
    assert await client.comment(REPO, 8, str(pledge)) is None  # another issue's number
    assert await client.comment(REPO, 7, "424242") is None  # no such comment: 404
    before = len(fake.requests)
    assert await client.comment(REPO, 7, "12; DROP") is None
    assert len(fake.requests) == before


# -- maintainers and users ---------------------------------------------------------------


@pytest.mark.parametrize(("permission", "maintainer"), [
    ("owner", True), ("admin", True), ("write", True), ("read", False), ("none", False)])
async def test_maintainers_have_write_admin_or_owner(fake: FakeForgejo, client: ForgejoClient,
                                                     permission: str,
                                                     maintainer: bool) -> None:
    fake.set_permission("octo/widgets", "alice", permission)
    assert await client.is_maintainer(REPO, "alice") is maintainer
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("GET", f"{API}/collaborators/alice/permission")


async def test_the_repo_owner_is_a_maintainer_and_strangers_are_not(
        client: ForgejoClient) -> None:
    assert await client.is_maintainer(REPO, "octo") is True  # Forgejo says "owner"
    assert await client.is_maintainer(REPO, "stranger") is False  # "read" on a public repo


async def test_the_answer_is_cached_per_repo_and_login_until_it_expires(
        fake: FakeForgejo, client: ForgejoClient, clock: Clock) -> None:
    fake.set_permission("octo/widgets", "alice", "write")
    assert await client.is_maintainer(REPO, "alice")
    before = len(fake.requests)
    assert await client.is_maintainer(REPO, "ALICE")
    assert len(fake.requests) == before
    fake.set_permission("octo/widgets", "alice", "read")  # demoted
    clock.advance(301)
    assert not await client.is_maintainer(REPO, "alice")
    assert len(fake.requests) == before + 1


async def test_without_admin_rights_the_question_is_an_error_not_a_no(
        fake: FakeForgejo, client: ForgejoClient) -> None:
    fake.token_is_admin = False
    err = await failing(client.is_maintainer(REPO, "alice"))
    assert (err.status, err.retryable) == (403, False)
    fake.token_is_admin = True
    fake.set_permission("octo/widgets", "alice", "admin")
    assert await client.is_maintainer(REPO, "alice")  # nothing wrong was cached


async def test_a_user_who_does_not_exist_maintains_nothing(fake: FakeForgejo,
                                                           client: ForgejoClient) -> None:
    fake.missing_users.add("ghost")
    assert await client.is_maintainer(REPO, "ghost") is False


async def test_user_login_asks_once_and_knows_impossible_names(fake: FakeForgejo,
                                                               client: ForgejoClient) -> None:
    fake.missing_users.add("nobody")
    assert await client.user_login(REPO, "Alice") == "Alice"
    assert fake.requests[-1].path == "/api/v1/users/Alice"
    before = len(fake.requests)
    assert await client.user_login(REPO, "alice") == "Alice"  # cached
    assert await client.user_login(REPO, "nobody") is None
    assert await client.user_login(REPO, "no body/../x") is None
    assert len(fake.requests) == before + 1


async def test_username_by_id_is_never_asked_of_forgejo(client: ForgejoClient) -> None:
    err = await failing(client.username(REPO, 5))
    assert not err.retryable


# -- failures ----------------------------------------------------------------------------


async def test_a_502_is_retryable_and_the_next_try_succeeds(fake: FakeForgejo,
                                                            client: ForgejoClient) -> None:
    fake.fail_next("POST", r"/comments$", 502, body="<html><body>502 Bad Gateway</body></html>")
    err = await failing(client.create_comment(REPO, 7, "hello"))
    assert (err.status, err.retryable, err.retry_after) == (502, True, None)
    assert str(err) == f"Forgejo POST {PATH}/issues/7/comments: 502"
    assert await client.create_comment(REPO, 7, "hello")
    assert len(fake.comments("octo/widgets", 7)) == 1


async def test_a_429_says_when_to_come_back(fake: FakeForgejo, client: ForgejoClient,
                                            clock: Clock) -> None:
    fake.fail_next("POST", r"/reactions$", 429, headers={"Retry-After": "120"})
    err = await failing(client.react(REPO, 7, "1"))
    assert (err.status, err.retryable, err.retry_after) == (429, True, 120.0)
    later = format_datetime(clock.now + timedelta(seconds=30), usegmt=True)
    fake.fail_next("GET", r"/permission$", 429, headers={"Retry-After": later})
    err = await failing(client.is_maintainer(REPO, "alice"))
    assert err.retryable and err.retry_after is not None and 28 <= err.retry_after <= 30
    fake.fail_next("GET", r"/permission$", 429)
    err = await failing(client.is_maintainer(REPO, "alice"))
    assert (err.retryable, err.retry_after) == (True, DEFAULT_RATE_LIMIT_WAIT)
    fake.fail_next("PATCH", r"/comments/", 503, headers={"Retry-After": "7"})
    err = await failing(client.edit_comment(REPO, 7, "1", "x"))
    assert (err.status, err.retryable, err.retry_after) == (503, True, 7.0)


async def test_a_timeout_and_a_refused_connection_are_retryable(fake: FakeForgejo) -> None:
    fj = ForgejoClient(fake.url, token=TOKEN, bot_login="bountybot", timeout=0.2)
    fake.delay_next("POST", r"/comments$", 5)
    try:
        err = await failing(fj.create_comment(REPO, 7, "hello"))
    finally:
        await fj.close()
    assert err.retryable and err.status is None
    assert str(err) == f"Forgejo POST {PATH}/issues/7/comments: timeout"

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fj = ForgejoClient(f"http://127.0.0.1:{port}", token=TOKEN, bot_login="bountybot")
    try:
        err = await failing(fj.create_comment(REPO, 7, "hello"))
    finally:
        await fj.close()
    assert err.retryable and "ClientConnectorError" in str(err)


# -- reconciliation ----------------------------------------------------------------------


async def test_changes_reads_labels_commands_and_merges(fake: FakeForgejo,
                                                        client: ForgejoClient) -> None:
    fake.label_issue("octo/widgets", 7, "bounty")
    fake.add_issue("octo/widgets", 8, "Unlabelled")
    pledge = fake.add_comment("octo/widgets", 7, "/pledge 20", login="alice")
    fake.add_comment("octo/widgets", 7, "thanks!", login="bob")
    fake.add_comment("octo/widgets", 7, "/pledge 5", login="bountybot")
    fake.add_pull("octo/widgets", 9, "Fixes #7", login="dave")
    fake.add_comment("octo/widgets", 9, "/pledge 9", login="carol")  # on the pull request
    fake.merge_pull("octo/widgets", 9)
    fake.add_pull("octo/widgets", 10, "Fixes #8", login="erin")  # still open

    changes = await client.changes(REPO, label="bounty", since=None, etags={})
    found = {(f.kind, f.happenings[0].number): f for f in changes.found}
    assert set(found) == {("label", 7), ("comment", 7), ("merge", 7)}
    assert found[("label", 7)].happenings[0].what == LabelAdded()
    what = found[("comment", 7)].happenings[0].what
    assert isinstance(what, Comment) and (what.id, what.author.login) == (str(pledge), "alice")
    merged = found[("merge", 7)].happenings[0].what
    assert merged == LinkClosed(9, "dave", merged=True,
                                url=f"{fake.url}/octo/widgets/pulls/9")
    assert changes.requests == 3 and changes.not_modified == 0
    asked = {r.path: r.query for r in fake.requests[-3:]}
    assert asked[f"{API}/issues"] == {"state": "open", "type": "issues", "labels": "bounty",
                                      "limit": "50", "page": "1"}
    assert asked[f"{API}/issues/comments"] == {"limit": "50", "page": "1"}
    assert asked[f"{API}/pulls"] == {"state": "closed", "sort": "recentupdate",
                                     "limit": "50", "page": "1"}

    # Nothing changed: each list answers 304 to its ETag, and nothing is found again.
    again = await client.changes(REPO, label="bounty", since=None, etags=changes.etags)
    assert (again.requests, again.not_modified, again.found) == (3, 3, [])


async def test_changes_since_asks_forgejo_for_what_was_updated_since(
        fake: FakeForgejo, client: ForgejoClient) -> None:
    fake.label_issue("octo/widgets", 7, "bounty")
    fake.add_comment("octo/widgets", 7, "/pledge 20", login="alice")
    since = datetime.now(UTC) + timedelta(seconds=2)
    changes = await client.changes(REPO, label="bounty", since=since, etags={})
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    asked = {r.path: r.query for r in fake.requests[-3:]}
    assert asked[f"{API}/issues"]["since"] == stamp
    assert asked[f"{API}/issues/comments"]["since"] == stamp
    assert "since" not in asked[f"{API}/pulls"]  # that list takes none
    assert changes.found == []


async def test_changes_follows_pages_while_forgejo_says_there_are_more(
        fake: FakeForgejo, client: ForgejoClient) -> None:
    fake.label_issue("octo/widgets", 7, "bounty")
    for i in range(120):
        fake.add_comment("octo/widgets", 7, f"/pledge {i + 1}", login=f"backer{i}")
    changes = await client.changes(REPO, label="bounty", since=None, etags={})
    pages = [r.query["page"] for r in fake.requests if r.path == f"{API}/issues/comments"]
    assert pages == ["1", "2", "3"]
    assert len([f for f in changes.found if f.kind == "comment"]) == 120
    assert changes.requests == 5


# -- settings ----------------------------------------------------------------------------


def forgejo_settings(url: str, token: str | None) -> SimpleNamespace:
    """The attributes `client_from_settings` reads, until `Settings.forgejo` exists."""
    section = SimpleNamespace(url=url, token=SecretStr(token) if token else None,
                              webhook_secret=SecretStr("hook"))
    section.enabled = lambda: section.token is not None and section.webhook_secret is not None
    return SimpleNamespace(forgejo=section, bot=SimpleNamespace(login="bountybot"))


async def test_the_client_the_settings_describe(fake: FakeForgejo) -> None:
    assert client_from_settings(forgejo_settings(fake.url, None)) is None  # type: ignore[arg-type]
    fj = client_from_settings(forgejo_settings(fake.url + "/", TOKEN))  # type: ignore[arg-type]
    assert fj is not None
    try:
        await fj.create_comment(REPO, 3, "hi")
    finally:
        await fj.close()
    assert fake.requests[-1].path == f"{API}/issues/3/comments"
    settings = forgejo_settings("https://codeberg.org/", TOKEN)
    assert web_url(settings, "octo/widgets") == "https://codeberg.org/octo/widgets"  # type: ignore[arg-type]
