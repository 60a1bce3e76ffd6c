"""GitLabClient over real HTTP to a local fake GitLab: token, notes, awards, members, errors."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable

import gitlab
import pytest

from bountybot.config import Settings
from bountybot.forges.base import ForgeError
from bountybot.forges.gitlab import GitLabClient, client_from_settings
from bountybot.refs import RepoRef

from clocks import Clock
from fakes.gitlab import FakeGitLab
from forge_errors import failing as forge_failure

TOKEN = "glpat-" + "Xk4vR9tLq2Wz8NmB3cYd"  # a personal access token's shape
PROJECT_ID = 1234
# In a subgroup, and since moved: the client addresses it by id, never by this path.
REPO = RepoRef("gitlab", str(PROJECT_ID), "group/sub/old-name")
NOTES = f"/api/v4/projects/{PROJECT_ID}/issues/7/notes"
MARKER = "<!-- bountybot:summary -->"
USERS = {"bountybot": 99, "alice": 11, "carol": 13, "dora": 14, "mallory": 17}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(gitlab_server: FakeGitLab) -> FakeGitLab:
    gitlab_server.accept_token(TOKEN, login="bountybot")
    for name, user_id in USERS.items():
        gitlab_server.add_user(name, user_id)
    gitlab_server.add_project("group/sub/project", PROJECT_ID)
    return gitlab_server


@pytest.fixture
async def client(fake: FakeGitLab, clock: Clock) -> AsyncIterator[GitLabClient]:
    gl = GitLabClient(fake.url, token=TOKEN, bot_login="BountyBot", clock=clock, timeout=5)
    yield gl
    await gl.close()


async def failing(call: Awaitable[object], *secrets: str) -> ForgeError:
    """The ForgeError a call raises, checked to hold neither the token nor `secrets`."""
    return await forge_failure(call, TOKEN, *secrets)


# -- token -------------------------------------------------------------------------------


async def test_the_token_reaches_gitlab_as_private_token(fake: FakeGitLab,
                                                         client: GitLabClient) -> None:
    await client.create_comment(REPO, 7, "hello")
    sent = fake.requests[-1]
    assert sent.headers["private-token"] == TOKEN
    assert "authorization" not in sent.headers
    assert fake.notes(PROJECT_ID, 7)[0].username == "bountybot"


async def test_a_wrong_token_is_a_401_not_worth_retrying(fake: FakeGitLab) -> None:
    wrong = "glpat-" + "W" * 20
    gl = GitLabClient(fake.url, token=wrong, bot_login="bountybot")
    try:
        err = await failing(gl.create_comment(REPO, 7, "hello"), wrong)
    finally:
        await gl.close()
    assert (err.status, err.retryable) == (401, False)
    assert "401 Unauthorized" in str(err)
    assert len(fake.requests) == 1


# -- the summary note's life: one request per operation ----------------------------------


async def test_create_find_edit_react_one_request_each(fake: FakeGitLab,
                                                       client: GitLabClient) -> None:
    fake.add_note(PROJECT_ID, 7, f"{MARKER} I copied the bot", username="mallory")

    before = len(fake.requests)
    note_id = await client.create_comment(REPO, 7, f"{MARKER}\nGoal: €50")
    assert len(fake.requests) == before + 1
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "POST", NOTES, {"body": f"{MARKER}\nGoal: €50"})

    before = len(fake.requests)
    assert await client.find_comment(REPO, 7, MARKER) == note_id
    assert len(fake.requests) == before + 1
    assert (fake.requests[-1].path, fake.requests[-1].query) == (
        NOTES, {"per_page": "100", "sort": "asc", "order_by": "created_at"})

    before = len(fake.requests)
    await client.edit_comment(REPO, 7, note_id, f"{MARKER}\nGoal: €80")
    assert len(fake.requests) == before + 1
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "PUT", f"{NOTES}/{note_id}", {"body": f"{MARKER}\nGoal: €80"})

    pledge = fake.add_note(PROJECT_ID, 7, "/pledge 20", username="alice")
    before = len(fake.requests)
    await client.react(REPO, 7, str(pledge))
    await client.react(REPO, 7, str(pledge))  # again: GitLab says 404 "already been taken"
    assert len(fake.requests) == before + 2
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "POST", f"{NOTES}/{pledge}/award_emoji", {"name": "thumbsup"})

    ours = [n for n in fake.notes(PROJECT_ID, 7) if n.username == "bountybot"]
    assert [(str(n.id), n.body) for n in ours] == [(note_id, f"{MARKER}\nGoal: €80")]
    assert [(a.username, a.name) for a in fake.awards(pledge)] == [("bountybot", "thumbsup")]
    assert [r.method for r in fake.writes()] == ["POST", "PUT", "POST", "POST"]


async def test_a_duplicate_award_answered_409_is_fine_too(fake: FakeGitLab,
                                                          client: GitLabClient) -> None:
    fake.duplicate_award_status = 409
    pledge = fake.add_note(PROJECT_ID, 7, "/pledge 20", username="alice")
    await client.react(REPO, 7, str(pledge))
    await client.react(REPO, 7, str(pledge))
    assert len(fake.awards(pledge)) == 1


async def test_awarding_a_missing_note_is_a_404(client: GitLabClient) -> None:
    err = await failing(client.react(REPO, 7, "424242"))
    assert (err.status, err.retryable) == (404, False)


async def test_find_follows_pages_and_skips_lookalikes(fake: FakeGitLab,
                                                       client: GitLabClient) -> None:
    for i in range(230):
        # Others quote the marker, and the bot has other notes without it.
        who, body = ("bountybot", f"reply {i}") if i % 50 == 0 else ("alice", f"{MARKER} {i}")
        fake.add_note(PROJECT_ID, 7, body, username=who)
    ours = fake.add_note(PROJECT_ID, 7, f"{MARKER} summary", username="bountybot")

    before = len(fake.requests)
    assert await client.find_comment(REPO, 7, MARKER) == str(ours)
    pages = fake.requests[before:]
    assert [(r.path, r.query.get("page"), r.query["per_page"]) for r in pages] == [
        (NOTES, None, "100"), (NOTES, "2", "100"), (NOTES, "3", "100")]
    assert await client.find_comment(REPO, 8, MARKER) is None


async def test_find_stops_at_the_first_page_that_has_it(fake: FakeGitLab,
                                                        client: GitLabClient) -> None:
    ours = fake.add_note(PROJECT_ID, 7, MARKER, username="bountybot")
    for i in range(150):
        fake.add_note(PROJECT_ID, 7, f"+1 {i}", username="alice")
    before = len(fake.requests)
    assert await client.find_comment(REPO, 7, MARKER) == str(ours)
    assert len(fake.requests) == before + 1


async def test_someone_elses_note_cannot_be_edited(fake: FakeGitLab,
                                                   client: GitLabClient) -> None:
    theirs = fake.add_note(PROJECT_ID, 7, "mine", username="alice")
    err = await failing(client.edit_comment(REPO, 7, str(theirs), "hijacked"))
    assert (err.status, err.retryable) == (403, False)
    assert fake.notes(PROJECT_ID, 7)[0].body == "mine"


async def test_unknown_project_and_note_are_404(client: GitLabClient) -> None:
    err = await failing(client.create_comment(RepoRef("gitlab", "999", "gone/away"), 1, "x"))
    assert (err.status, err.retryable) == (404, False)
    assert "404 Project Not Found" in str(err)
    err = await failing(client.edit_comment(REPO, 7, "999", "x"))
    assert (err.status, err.retryable) == (404, False)


async def test_a_project_without_an_id_is_refused_without_asking(fake: FakeGitLab,
                                                                client: GitLabClient) -> None:
    err = await failing(client.create_comment(RepoRef("gitlab", "", "group/sub/project"), 1,
                                              "x"))
    assert (err.status, err.retryable) == (None, False)
    assert fake.requests == []


# -- maintainers -------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "maintainer"), [
    (10, False), (20, False), (30, False), (40, True), (50, True),
])
async def test_maintainer_by_access_level(fake: FakeGitLab, client: GitLabClient, level: int,
                                          maintainer: bool) -> None:
    fake.set_access(PROJECT_ID, "carol", level)
    assert await client.is_maintainer(REPO, "carol") is maintainer
    assert [(r.path, r.query) for r in fake.requests] == [
        ("/api/v4/users", {"username": "carol"}),
        (f"/api/v4/projects/{PROJECT_ID}/members/all/13", {}),
    ]


async def test_not_a_member_or_no_such_user_is_not_a_maintainer(fake: FakeGitLab,
                                                                client: GitLabClient) -> None:
    assert await client.is_maintainer(REPO, "alice") is False
    assert await client.is_maintainer(REPO, "nobody-by-that-name") is False
    assert len(fake.requests) == 3  # no member call for a user that does not exist


async def test_a_group_maintainer_inherits_the_project(fake: FakeGitLab,
                                                       client: GitLabClient) -> None:
    fake.set_group_access("group", "dora", 40)  # the top group; the project is in group/sub
    fake.set_access(PROJECT_ID, "dora", 20)  # a lower direct level does not hide it
    fake.set_group_access("group/sub", "alice", 50)
    fake.set_group_access("other", "carol", 50)
    assert await client.is_maintainer(REPO, "dora") is True
    assert await client.is_maintainer(REPO, "alice") is True
    assert await client.is_maintainer(REPO, "carol") is False
    assert all("/members/all/" in r.path for r in fake.requests if "/members/" in r.path)


async def test_a_member_awaiting_a_seat_is_not_a_maintainer(fake: FakeGitLab,
                                                            client: GitLabClient) -> None:
    fake.set_access(PROJECT_ID, "carol", 40, membership_state="awaiting")
    assert await client.is_maintainer(REPO, "carol") is False


async def test_the_maintainer_level_is_configurable(fake: FakeGitLab) -> None:
    fake.set_access(PROJECT_ID, "carol", 30)
    fake.set_access(PROJECT_ID, "alice", 20)
    gl = GitLabClient(fake.url, token=TOKEN, bot_login="bountybot", maintainer_level=30)
    try:
        assert await gl.is_maintainer(REPO, "carol") is True
        assert await gl.is_maintainer(REPO, "alice") is False
    finally:
        await gl.close()


@pytest.mark.usefixtures("fake")
async def test_a_missing_project_is_an_error_not_a_non_maintainer(client: GitLabClient) -> None:
    err = await failing(client.is_maintainer(RepoRef("gitlab", "999", "gone/away"), "carol"))
    assert (err.status, err.retryable) == (404, False)


async def test_maintainer_answers_are_cached_for_the_ttl(fake: FakeGitLab, client: GitLabClient,
                                                         clock: Clock) -> None:
    fake.set_access(PROJECT_ID, "carol", 40)
    assert await client.is_maintainer(REPO, "carol")
    asked = len(fake.requests)  # the users lookup, then the member

    fake.set_access(PROJECT_ID, "carol", 20)
    clock.advance(299)
    assert await client.is_maintainer(REPO, "Carol")  # cached, whatever the case
    assert len(fake.requests) == asked

    clock.advance(2)
    assert await client.is_maintainer(REPO, "carol") is False
    # The login's id is still known: only the member is asked again.
    assert [r.path for r in fake.requests[asked:]] == [
        f"/api/v4/projects/{PROJECT_ID}/members/all/13"]

    other = RepoRef("gitlab", "5678", "group/other")  # cached per project
    fake.add_project("group/other", 5678)
    assert await client.is_maintainer(other, "carol") is False
    assert len(fake.requests) == asked + 2


async def test_a_logins_id_is_looked_up_again_after_a_while(fake: FakeGitLab,
                                                            client: GitLabClient,
                                                            clock: Clock) -> None:
    # A username given up can be taken by someone else: the id is not cached for ever.
    fake.set_access(PROJECT_ID, "carol", 40)
    assert await client.is_maintainer(REPO, "carol")
    clock.advance(3601)
    fake.add_user("carol", 77)  # another account, same name
    assert await client.is_maintainer(REPO, "carol") is False
    assert fake.requests[-1].path == f"/api/v4/projects/{PROJECT_ID}/members/all/77"


# -- usernames ---------------------------------------------------------------------------


async def test_usernames_by_id_are_cached(fake: FakeGitLab, client: GitLabClient,
                                          clock: Clock) -> None:
    no_project = RepoRef("gitlab", "", "group/sub/project")  # a hook's repo not yet known
    assert await client.username(no_project, 14) == "dora"
    assert await client.username(REPO, 14) == "dora"
    assert [r.path for r in fake.requests] == ["/api/v4/users/14"]

    clock.advance(301)
    assert await client.username(REPO, 14) == "dora"
    assert len(fake.requests) == 2

    err = await failing(client.username(REPO, 123456))
    assert (err.status, err.retryable) == (404, False)


# -- errors: no retries or sleeps inside python-gitlab ------------------------------------


async def test_a_502_is_retryable_and_not_retried_inside(fake: FakeGitLab,
                                                         client: GitLabClient) -> None:
    fake.fail_next("POST", r"/notes$", 502, body="<html>502 Bad Gateway</html>")
    err = await failing(client.create_comment(REPO, 7, "hi"))
    assert (err.status, err.retryable, err.retry_after) == (502, True, None)
    assert len(fake.requests) == 1
    assert await client.create_comment(REPO, 7, "hi")  # the next one goes through
    assert len(fake.notes(PROJECT_ID, 7)) == 1


async def test_5xx_on_every_operation_is_one_request(fake: FakeGitLab,
                                                     client: GitLabClient) -> None:
    fake.set_access(PROJECT_ID, "carol", 40)
    calls = [
        lambda: client.create_comment(REPO, 7, "x"),
        lambda: client.edit_comment(REPO, 7, "1", "x"),
        lambda: client.find_comment(REPO, 7, MARKER),
        lambda: client.react(REPO, 7, "1"),
        lambda: client.is_maintainer(REPO, "carol"),
        lambda: client.username(REPO, 14),
    ]
    for status, call in zip([500, 502, 503, 504, 500, 503], calls, strict=True):
        fake.fail_next("*", r".", status)
        before = len(fake.requests)
        err = await failing(call())
        assert (err.status, err.retryable) == (status, True)
        assert len(fake.requests) == before + 1


async def test_429_says_when_to_come_back_and_nobody_sleeps(fake: FakeGitLab,
                                                            client: GitLabClient) -> None:
    fake.fail_next("POST", r"/award_emoji$", 429, headers={"Retry-After": "7"})
    started = time.monotonic()
    err = await failing(client.react(REPO, 7, "1"))
    assert (err.status, err.retryable, err.retry_after) == (429, True, 7)
    assert len(fake.requests) == 1
    assert time.monotonic() - started < 1  # python-gitlab would have slept 7 s, 10 times


async def test_429_with_only_a_reset_time(fake: FakeGitLab, client: GitLabClient,
                                          clock: Clock) -> None:
    reset = int(clock.now.timestamp()) + 120
    fake.fail_next("GET", r"/notes$", 429, headers={"RateLimit-Reset": str(reset),
                                                    "RateLimit-Remaining": "0"})
    err = await failing(client.find_comment(REPO, 7, MARKER))
    assert err.retryable and err.retry_after is not None and 119 <= err.retry_after <= 120


async def test_gitlabs_own_429_answer(fake: FakeGitLab, client: GitLabClient) -> None:
    fake.fail_next("GET", r"/users$", 429)  # Rack::Attack: "Retry later", Retry-After 60
    err = await failing(client.is_maintainer(REPO, "carol"))
    assert (err.status, err.retryable, err.retry_after) == (429, True, 60)
    assert len(fake.requests) == 1


async def test_the_fake_catches_python_gitlabs_own_retries(fake: FakeGitLab) -> None:
    """The control experiment: python-gitlab left to itself sleeps and asks again on a 429
    (and on a 502 with retry_transient_errors), so the one-request checks above would fail
    if GitLabClient let it."""
    plain = gitlab.Gitlab(fake.url, private_token=TOKEN, retry_transient_errors=True)
    try:
        fake.fail_next("GET", r"/users/14$", 429, headers={"Retry-After": "0"})
        fake.fail_next("GET", r"/users/11$", 502)
        assert (await asyncio.to_thread(plain.users.get, 14)).username == "dora"
        assert (await asyncio.to_thread(plain.users.get, 11)).username == "alice"
    finally:
        plain.session.close()
    assert [r.path for r in fake.requests] == ["/api/v4/users/14"] * 2 + ["/api/v4/users/11"] * 2


async def test_a_503_may_say_when_to_come_back(fake: FakeGitLab, client: GitLabClient) -> None:
    fake.fail_next("PUT", r"/notes/", 503, headers={"Retry-After": "20"})
    err = await failing(client.edit_comment(REPO, 7, "1", "x"))
    assert (err.status, err.retryable, err.retry_after) == (503, True, 20)


async def test_a_timeout_is_retryable_and_not_retried(fake: FakeGitLab) -> None:
    gl = GitLabClient(fake.url, token=TOKEN, bot_login="bountybot", timeout=0.3)
    fake.delay_next("POST", r"/notes$", 5)
    started = time.monotonic()
    try:
        err = await failing(gl.create_comment(REPO, 7, "slow"))
    finally:
        await gl.close()
    assert (err.status, err.retryable) == (None, True)
    assert "Timeout" in str(err)
    assert time.monotonic() - started < 2
    assert len(fake.requests) == 1


async def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gl = GitLabClient(f"http://127.0.0.1:{port}", token=TOKEN, bot_login="bountybot")
    try:
        err = await failing(gl.create_comment(REPO, 7, "hi"))
    finally:
        await gl.close()
    assert (err.status, err.retryable) == (None, True)


async def test_a_validation_error_is_final(fake: FakeGitLab, client: GitLabClient) -> None:
    fake.fail_next("POST", r"/notes$", 400, body={"message": {"note": ["can't be blank"]}})
    err = await failing(client.create_comment(REPO, 7, ""))
    assert (err.status, err.retryable) == (400, False)
    assert "can't be blank" in str(err)


# -- settings ----------------------------------------------------------------------------


async def test_client_from_settings(fake: FakeGitLab) -> None:
    assert client_from_settings(Settings(config_file=None)) is None
    fake.set_access(PROJECT_ID, "carol", 30)
    settings = Settings(config_file=None, bot={"login": "bountybot"}, gitlab={
        "url": fake.url + "/", "webhook_secret": "a-webhook-secret", "token": TOKEN,
        "maintainer_access_level": 30})
    gl = client_from_settings(settings)
    assert gl is not None
    try:
        note_id = await gl.create_comment(REPO, 7, MARKER)
        assert await gl.find_comment(REPO, 7, MARKER) == note_id
        assert await gl.is_maintainer(REPO, "carol") is True
    finally:
        await gl.close()
    assert all(r.headers["private-token"] == TOKEN for r in fake.requests)


async def test_concurrent_calls_each_reach_their_own_note(fake: FakeGitLab,
                                                         client: GitLabClient) -> None:
    """Calls made at once from worker threads each reach their own note, once, with their own
    body (the GitHub client once sent one thread's call to another's URL; python-gitlab keeps no
    call in a shared object, and this keeps it so)."""
    pledges = [fake.add_note(PROJECT_ID, n % 5 + 1, f"/pledge {n}", username=f"b{n}")
               for n in range(200)]
    summaries = [await client.create_comment(REPO, n, f"summary {n}") for n in range(1, 6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        await asyncio.gather(
            *(client.react(REPO, n % 5 + 1, str(note)) for n, note in enumerate(pledges)),
            *(client.edit_comment(REPO, n, s, f"summary {n} edited {k}")
              for k in range(20) for n, s in zip(range(1, 6), summaries, strict=True)))
    finally:
        sys.setswitchinterval(interval)
    assert all(len(fake.awards(note)) == 1 for note in pledges)
    for n, s in zip(range(1, 6), summaries, strict=True):
        edits = [r.json["body"] for r in fake.requests
                 if r.method == "PUT" and r.path.endswith(f"/notes/{s}")]
        assert len(edits) == 20 and all(b.startswith(f"summary {n} ") for b in edits), edits
