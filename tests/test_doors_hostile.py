"""The webhook doors under hostile input (#10): headers no comparison can take, bodies only
Python's json would read, kinds and ids that are not the forge's, a GitLab project's secret
used for another project, and more unsigned bytes than the service should hold. Each gets a
clear 4xx (or a deliberate 503) and changes nothing; through the real app over loopback, with
real signatures and tokens."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from gitlab_harness import (
    GL_SECRET,
    PROJECT,
    PROJECT_ID,
    USERS,
    GitLabBot,
    gitlab_settings,
    prepare,
)
from pydantic import SecretStr
from test_serve import SECRET as SERVE_SECRET
from test_serve import TOKEN as SERVE_TOKEN
from test_serve import start, wait_healthy
from test_stripe_flow import WHSEC, Stripy
from test_stripe_flow import start as start_stripe

from bountybot.app import create_app
from bountybot.bodies import BODY_BUDGET
from bountybot.config import ConfigError, GitLabSettings, Settings
from bountybot.forges.events import SYNC_EVENT
from bountybot.forges.gitlab_events import sender as gitlab_sender
from bountybot.service import setup
from bountybot.states import TaskState
from bountybot.storage import tables as t
from bountybot.storage.engine import create_engine

from fakes.gitlab import FakeGitLab
from fakes.stripe import FakeStripe, stripe_server  # noqa: F401
from fixtures import payload
from github_harness import QUICK_SENDER, QUICK_WORKER, REPO_ID, GitHubBot, sign

# -- talking HTTP byte by byte -----------------------------------------------------------------
# aiohttp's client will not send a header that is not text; a hostile sender will.


Header = tuple[str, str | bytes]


def head(path: str, headers: list[Header], *, length: int | None = None,
         chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    for name, value in headers:
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes)
                                              else value.encode()))
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(status_line.split()[1]), headers, body


async def raw_post(client: TestClient, path: str, headers: list[Header],
                   body: bytes = b"", *, chunked: bool = False,
                   timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head(path, headers, length=len(body), chunked=chunked))
        if chunked:
            for at in range(0, len(body), 10_000):
                part = body[at:at + 10_000]
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(body)
        await writer.drain()
        return await asyncio.wait_for(answer(reader), timeout)
    finally:
        writer.close()


def github_headers(body: bytes, *, event: str = "ping", delivery: str | None = None,
                   signature: str | bytes | None = None) -> list[Header]:
    return [("Content-Type", "application/json"), ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery or str(uuid.uuid4())),
            ("X-Hub-Signature-256", sign(body) if signature is None else signature)]


def serve_sign(body: bytes) -> str:
    return sign(body, SERVE_SECRET)


PING = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()


@pytest.fixture
async def github(sqlite_url: str, github_server: Any) -> AsyncIterator[GitHubBot]:
    bot = await GitHubBot.start(sqlite_url, github_server)
    try:
        yield bot
    finally:
        await bot.close()


async def gitlab_bot(db_url: str, fake: FakeGitLab, **gitlab: Any) -> GitLabBot:
    """The GitLab harness's bot, with more GitLab settings (project secrets)."""
    prepare(fake)
    settings = Settings.model_validate({"database": {"url": db_url},
                                        "gitlab": {**gitlab_settings(fake), **gitlab}})
    engine = create_engine(db_url)
    app = create_app(settings, engine=engine, features=[])
    setup(app, scheduler=False, sender_options=QUICK_SENDER, worker_options=QUICK_WORKER)
    client = TestClient(TestServer(app))
    await client.start_server()
    bot = GitLabBot(client, None, engine)  # type: ignore[arg-type]
    bot.gitlab = fake
    bot.notes_ids = itertools.count(70_001)
    return bot


@pytest.fixture
async def gitlab(sqlite_url: str, gitlab_server: FakeGitLab) -> AsyncIterator[GitLabBot]:
    bot = await gitlab_bot(sqlite_url, gitlab_server)
    try:
        yield bot
    finally:
        await bot.close()


def note(bot: GitLabBot, login: str, text: str, number: int = 1, *,
         path: str = PROJECT, project_id: int = PROJECT_ID) -> dict[str, Any]:
    """A Note Hook payload for a note really on the fake GitLab, about any project."""
    data = payload("gitlab", "note_hook.issue.create")
    data["project"].update(id=project_id, path_with_namespace=path,
                           web_url=f"{bot.gitlab.url}/{path}")
    data["project_id"] = project_id
    data["user"].update(id=USERS[login], username=login, name=login.title())
    note_id = bot.gitlab.add_note(PROJECT_ID, number, text, username=login)
    data["object_attributes"].update(id=note_id, note=text, author_id=USERS[login])
    data["issue"].update(iid=number, url=f"{bot.gitlab.url}/{path}/-/issues/{number}")
    return data


def gitlab_headers(token: str | bytes | None = GL_SECRET, *, event: str = "Note Hook",
                   key: str | None = None) -> list[Header]:
    headers: list[Header] = [("Content-Type", "application/json"), ("X-Gitlab-Event", event),
                             ("Idempotency-Key", key or str(uuid.uuid4()))]
    if token is not None:
        headers.append(("X-Gitlab-Token", token))
    return headers


# -- 1. no 500 from any header or body ----------------------------------------------------------

NOT_TEXT: list[str | bytes] = [
    "sha256=" + "é" * 64,                       # UTF-8, not ASCII
    b"sha256=" + b"\xff\xfe" * 32,              # not even UTF-8
    "sha256=" + "0" * 63 + "€",
    "é",
]


async def test_a_signature_header_no_comparison_can_take_is_a_401(github: GitHubBot) -> None:
    for value in NOT_TEXT:
        status, _, body = await raw_post(github.client, "/webhooks/github",
                                         github_headers(PING, signature=value), PING)
        assert status == 401, (value, body)
        assert b"X-Hub-Signature-256" in body
    assert await github.rows(t.Delivery) == []
    assert (await github.post("ping", json.loads(PING))).status == 202


async def test_a_token_header_no_comparison_can_take_is_a_401(gitlab: GitLabBot) -> None:
    body = json.dumps(note(gitlab, "alice", "/pledge 5")).encode()
    values: list[str | bytes] = ["é" * 20, b"\xff" * 20, GL_SECRET + "é", "€"]
    for value in values:
        status, _, text = await raw_post(gitlab.client, "/webhooks/gitlab",
                                         gitlab_headers(value), body)
        assert status == 401, (value, text)
    assert await gitlab.rows(t.Delivery) == []
    status, _, _ = await raw_post(gitlab.client, "/webhooks/gitlab", gitlab_headers(), body)
    assert status == 202


STRIPE_EVENT = {"id": "evt_hostile_1", "object": "event", "type": "account.updated",
                "data": {"object": {"id": "acct_nobody", "object": "account"}}}


@pytest.fixture
async def paying(sqlite_url: str, github_server: Any,
                 stripe_server: FakeStripe) -> AsyncIterator[Stripy]:  # noqa: F811
    bot = await start_stripe(sqlite_url, github_server, stripe_server)
    try:
        yield bot
    finally:
        await bot.bot.close()


async def test_a_stripe_signature_no_comparison_can_take_is_a_401(paying: Stripy) -> None:
    body = json.dumps(STRIPE_EVENT).encode()
    good = paying.stripe.sign(body, WHSEC)
    stamp = good.split(",")[0]
    signatures: list[str | bytes] = [
        f"{stamp},v1={'é' * 64}", stamp.encode() + b",v1=" + b"\xff" * 64,
        good + "é", "t=١٢٣,v1=" + "0" * 64, f"{stamp},v1=,v1"]
    for value in signatures:
        status, _, text = await raw_post(paying.bot.client, "/webhooks/stripe",
                                         [("Stripe-Signature", value)], body)
        assert status == 401, (value, text)
    assert await paying.bot.rows(t.Delivery) == []
    assert (await paying.post(STRIPE_EVENT)).status == 200


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# Bodies Python's json.loads reads (or fails on in ways the door did not catch), with what the
# answer must say.
NOT_STRICT_JSON = [
    (json.dumps({"zen": "x"}).encode("utf-16"), "UTF-16"),           # with its BOM
    (json.dumps({"zen": "x"}).encode("utf-16-be"), "UTF-16"),
    (json.dumps({"zen": "x"}).encode("utf-32"), "UTF-16 or UTF-32"),
    (b"\xef\xbb\xbf" + json.dumps({"zen": "x"}).encode(), "byte order mark"),
    (b'{"amount": NaN}', "finite"),
    (b'{"amount": Infinity}', "finite"),
    (b'{"amount": -Infinity}', "finite"),
    (b'{"amount": 1e999}', "finite"),
    (b'{"amount": ' + b"9" * 5000 + b"}", "too long"),
    (b'{"login": "\\ud800"}', "surrogate"),
    (b'{"login": "\\udfff\\ud83d"}', "surrogate"),
    (nested(100), "nested"),
    (nested(100_000), "nested"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b'{"zen": "caf\xe9"}', "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b'"zen"', "not a JSON object"),
    (b"", "not JSON"),
    (b"{nope", "not JSON"),
]


async def test_bodies_only_python_reads_are_400s_saying_what_is_expected(
        github: GitHubBot) -> None:
    for body, words in NOT_STRICT_JSON:
        answer = await github.post("ping", body)
        assert answer.status == 400, (body[:40], await answer.text())
        error = (await answer.json())["error"]
        assert words in error and "send one JSON object in UTF-8" in error, (body[:40], error)
    assert await github.rows(t.Delivery) == []
    # A surrogate pair is text, and an escaped backslash before "ud800" is no escape at all.
    fine = b'{"zen": "\\ud83d\\ude00 and \\\\ud800", "n": 1.5e3}'
    assert (await github.post("ping", fine)).status == 202


async def test_gitlab_bodies_are_read_as_strictly(gitlab: GitLabBot) -> None:
    for body, words in NOT_STRICT_JSON[::3]:
        status, _, text = await raw_post(gitlab.client, "/webhooks/gitlab", gitlab_headers(),
                                         body)
        assert status == 400 and words in json.loads(text)["error"], (body[:40], text)
    assert await gitlab.rows(t.Delivery) == []


async def test_stripe_bodies_are_read_as_strictly_even_signed(paying: Stripy) -> None:
    event = json.dumps(STRIPE_EVENT)
    for body in [event.replace('"acct_nobody"', "NaN").encode(),
                 b"\xef\xbb\xbf" + event.encode(),
                 event.replace('"acct_nobody"', nested(5000).decode()).encode(),
                 event.replace('"acct_nobody"', nested(80).decode()).encode()]:
        answer = await paying.post(body)
        assert answer.status == 400, (body[:40], await answer.text())
    big = json.dumps({**STRIPE_EVENT, "pad": "x" * (1024 * 1024)}).encode()
    too_big = await paying.post(big)
    assert too_big.status == 413 and "1048576" in (await too_big.json())["error"]
    assert await paying.bot.rows(t.Delivery) == []
    assert (await paying.post(STRIPE_EVENT)).status == 200


# -- 2. only the forge's own kinds, ids as given -------------------------------------------------

async def test_only_githubs_event_names_come_in(github: GitHubBot) -> None:
    for kind in [SYNC_EVENT, "Issues", "issue-comment", "issue comment", "x" * 65, "_x", "é"]:
        answer = await raw_post(github.client, "/webhooks/github",
                                github_headers(PING, event=kind), PING)
        assert answer[0] == 400 and b"X-GitHub-Event" in answer[2], (kind, answer)
    assert await github.rows(t.Delivery) == []
    assert (await github.post("projects_v2_item", json.loads(PING))).status == 202
    assert [row.event for row in await github.rows(t.Delivery)] == ["projects_v2_item"]


async def test_the_reconcilers_kind_cannot_come_in_through_gitlab(gitlab: GitLabBot) -> None:
    """A token holder once could store `bountybot.sync`: payloads the worker reads as already
    checked against GitLab's API."""
    forged = {"happenings": [{"kind": "comment", "number": 1, "login": "mallory",
                              "body": "/pledge 500"}]}
    for kind in [SYNC_EVENT, "note hook", "Note Hook ", "Foo Hook", "Push Event"]:
        answer = await gitlab.post_gitlab(kind, forged, key=f"sync:gitlab:{kind}")
        assert answer.status == 400, kind
    for key in ["sync:gitlab:comment:1:2024", "SYNC:gitlab:x"]:
        answer = await gitlab.post_gitlab("Note Hook", forged, key=key)
        assert answer.status == 400 and "sync:" in (await answer.json())["error"]
    assert await gitlab.rows(t.Delivery) == []
    assert (await gitlab.post_gitlab("Confidential Note Hook", forged)).status == 202


async def test_delivery_ids_are_stored_as_given_or_refused(github: GitHubBot,
                                                           gitlab: GitLabBot) -> None:
    for delivery in ["sync:github:comment:1:2024-01-01", "a" * 256]:
        assert (await github.post("ping", PING, delivery=delivery)).status == 400
    for value in ["é-delivery".encode(), b"de\tlivery", b"\xff\xfe"]:
        status, _, _ = await raw_post(github.client, "/webhooks/github",
                                      github_headers(PING, delivery=value), PING)  # type: ignore[arg-type]
        assert status == 400
    assert await github.rows(t.Delivery) == []
    longest = "d" * 255
    assert (await github.post("ping", PING, delivery=longest)).status == 202
    assert [row.delivery_id for row in await github.rows(t.Delivery)] == [longest]
    # Without Idempotency-Key, GitLab's id is the event UUID and the kind: together at most 255.
    headers: list[Header] = [("X-Gitlab-Event", "Note Hook"), ("X-Gitlab-Token", GL_SECRET),
                             ("X-Gitlab-Event-UUID", "u" * 250)]
    assert (await raw_post(gitlab.client, "/webhooks/gitlab", headers, PING))[0] == 400
    assert [row.forge for row in await gitlab.rows(t.Delivery)] == ["github"]


# -- 5. the topic, read at the door ------------------------------------------------------------

async def test_each_delivery_is_stored_with_what_it_is_about(db_url: str, github_server: Any,
                                                             gitlab_server: FakeGitLab) -> None:
    hub = await GitHubBot.start(db_url, github_server)
    lab = await gitlab_bot(db_url, gitlab_server)
    try:
        assert (await hub.label(7)).status == 202
        assert (await hub.post("ping", json.loads(PING))).status == 202
        assert (await lab.comment("alice", "/status", 3)).status == 202
        rows = {(row.forge, row.event): row.topic for row in await hub.rows(t.Delivery)}
    finally:
        await hub.close()
        await lab.close()
    assert rows == {("github", "issues"): f"github:{REPO_ID}:7", ("github", "ping"): None,
                    ("gitlab", "Note Hook"): f"gitlab:{PROJECT_ID}:issue:3"}


# -- 3. GitLab secrets per project or group ------------------------------------------------------

PROJECT_SECRET = "proj-garden-5f2e9a1c"
GROUP_SECRET = "group-commons-8b3d7e60"
OTHER_SECRET = "proj-elsewhere-0c4a2f9d"


async def test_a_project_secret_speaks_only_for_its_own_projects(
        db_url: str, gitlab_server: FakeGitLab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bot = await gitlab_bot(db_url, gitlab_server, project_secrets={
        PROJECT: PROJECT_SECRET, "Commons": GROUP_SECRET, "elsewhere/tool": OTHER_SECRET})
    try:
        await bot.label(1)  # with the instance's secret: the project is known as 4242
        await bot.settle()

        async def send(token: str, data: dict[str, Any]) -> tuple[int, str]:
            answer = await bot.post_gitlab("Note Hook", data, token=token)
            return answer.status, await answer.text()

        assert (await send(PROJECT_SECRET, note(bot, "alice", "/pledge 5")))[0] == 202
        assert (await send(GROUP_SECRET, note(bot, "bob", "/pledge 6")))[0] == 202
        refused = [
            await send(OTHER_SECRET, note(bot, "mallory", "/cancel")),
            # Naming its own path, but the id of the project the money is in.
            await send(OTHER_SECRET, note(bot, "mallory", "/cancel", path="elsewhere/tool")),
            await send(OTHER_SECRET, note(bot, "mallory", "/cancel",
                                          path="elsewhere/tool/../../commons/sub/garden",
                                          project_id=999)),
            await send(PROJECT_SECRET, {"object_kind": "note"}),
        ]
        assert [status for status, _ in refused] == [403] * 4, refused
        assert (await send("proj-unknown-12345678", note(bot, "mallory", "/cancel")))[0] == 401
        # Its own project, not known yet under another path: taken.
        assert (await send(OTHER_SECRET, note(bot, "carol", "/status", path="Elsewhere/Tool",
                                              project_id=777)))[0] == 202
        await bot.settle()
        task = await bot.task(1)
        assert task is not None and task.state == TaskState.FUNDED  # not cancelled
        assert sorted(p.backer for p in task.pledges) == ["alice", "bob"]
        stored = await bot.rows(t.Delivery)
        assert len(stored) == 4
        answers = "".join(text for _, text in refused)
    finally:
        await bot.close()
    for secret in (PROJECT_SECRET, GROUP_SECRET, OTHER_SECRET):
        assert secret not in caplog.text and secret not in answers


async def unread(client: TestClient, path: str, headers: list[Header]) -> int:
    """The status of a request that announces ten megabytes and sends none: only a door that
    reads nothing of the body can answer it (within two seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head(path, headers, length=10_000_000))
        await writer.drain()
        return (await asyncio.wait_for(answer(reader), 2.0))[0]
    finally:
        writer.close()


async def test_headers_that_prove_nothing_are_refused_before_the_body(
        db_url: str, gitlab_server: FakeGitLab, github: GitHubBot) -> None:
    bot = await gitlab_bot(db_url, gitlab_server, project_secrets={PROJECT: PROJECT_SECRET})
    try:
        for token in ["proj-unknown-12345678", None, GL_SECRET[:-1]]:
            assert await unread(bot.client, "/webhooks/gitlab", gitlab_headers(token)) == 401
        assert bot.app[BODY_BUDGET].used == 0
    finally:
        await bot.close()
    for signature in ["", "sha1=" + "0" * 40, "sha256=" + "0" * 63, "sha256=" + "g" * 64]:
        headers = [h for h in github_headers(PING) if h[0] != "X-Hub-Signature-256"]
        if signature:
            headers.append(("X-Hub-Signature-256", signature))
        assert await unread(github.client, "/webhooks/github", headers) == 401
    assert await github.rows(t.Delivery) == []


def test_project_secrets_are_checked_like_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("BOUNTYBOT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BOUNTYBOT_GITLAB_PROJECT_SECRETS",
                       json.dumps({"/Commons/Garden/": PROJECT_SECRET, "tools": "changeme"}))
    settings = Settings.load(None)
    assert list(settings.gitlab.project_secrets) == ["commons/garden", "tools"]
    assert PROJECT_SECRET not in repr(settings) + settings.model_dump_json()
    assert settings.secrets()["gitlab.project_secrets[commons/garden]"] == PROJECT_SECRET
    with pytest.raises(ConfigError, match=re.escape(
            "gitlab.project_secrets[tools] is a placeholder")):
        settings.check_for_serve()
    for bad in ['{"a/b": ', '["a/b"]', '{"a b": "whatever-secret"}',
                json.dumps({"a/b": 123456789012}), json.dumps({"A/b": "x" * 9, "a/B": "y" * 9}),
                json.dumps({"a/b": ""}), json.dumps({"a/b": "   "})]:
        monkeypatch.setenv("BOUNTYBOT_GITLAB_PROJECT_SECRETS", bad)
        with pytest.raises(ConfigError, match="gitlab.project_secrets") as error:
            Settings.load(None)
        assert "123456789012" not in str(error.value) and "xxxxxxxxx" not in str(error.value)
    # Were an empty project secret stored anyway, an empty token would still prove nothing.
    empty = GitLabSettings.model_construct(webhook_secret=SecretStr(PROJECT_SECRET),
                                           project_secrets={"a/b": SecretStr("")})
    assert gitlab_sender(empty, {"X-Gitlab-Token": ""}) is None


# -- 4. the budget of unverified bytes ---------------------------------------------------------

async def test_unsigned_bodies_wait_for_room_then_503_and_the_door_recovers(
        sqlite_url: str, github_server: Any) -> None:
    limit = 64 * 1024
    bot = await GitHubBot.start(sqlite_url, github_server, sections={"server": {
        "max_body_bytes": limit, "unverified_body_budget": limit,
        "unverified_body_wait_seconds": 0.3}})
    budget = bot.app[BODY_BUDGET]
    try:
        # A stranger announces a body as large as the whole budget and sends a little of it.
        bad = json.dumps({"zen": "z" * (limit - 20)}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", bot.client.server.port)
        writer.write(head("/webhooks/github", github_headers(bad, signature="sha256=" + "0" * 64),
                          length=len(bad)) + bad[:100])
        await writer.drain()
        deadline = time.monotonic() + 5
        while budget.used < len(bad) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert budget.used == len(bad)

        started = time.monotonic()
        busy = await bot.post("ping", PING)
        assert busy.status == 503 and busy.headers["Retry-After"] == "5"
        assert "deliver this one again" in (await busy.json())["error"]
        assert 0.25 < time.monotonic() - started < 3

        writer.write(bad[100:])
        await writer.drain()
        assert (await asyncio.wait_for(answer(reader), 5))[0] == 401
        writer.close()
        assert budget.used == 0
        assert (await bot.post("ping", PING)).status == 202

        # A body without a length is counted as it arrives, and cut off at the limit.
        chunky = json.dumps({"zen": "c" * limit}).encode()
        status, _, text = await raw_post(bot.client, "/webhooks/github",
                                         github_headers(chunky), chunky, chunked=True)
        assert status == 413 and str(limit).encode() in text
        small = json.dumps({"zen": "c" * 30_000}).encode()
        status, _, _ = await raw_post(bot.client, "/webhooks/github", github_headers(small),
                                      small, chunked=True)
        assert status == 202
        assert budget.used == 0
        assert len(await bot.rows(t.Delivery)) == 2
    finally:
        await bot.close()


def test_a_budget_smaller_than_a_body_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="unverified_body_budget .* is below max_body_bytes"):
        Settings.load(None, server={"max_body_bytes": 2048, "unverified_body_budget": 1024})


def peak_memory_kib(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


async def test_a_flood_of_large_unsigned_bodies_stays_within_the_budget(tmp_path: Path) -> None:
    """Forty concurrent 24 MiB POSTs with bad signatures once took a service from 124 MiB to
    1.1 GiB. With a 24 MiB budget, 24 bodies of 16 MiB (384 MiB in all) cost at most a few
    budgets' worth, and the service still takes a signed delivery afterwards."""
    body_size, budget = 16 * 1024 * 1024, 24 * 1024 * 1024
    service = start(tmp_path, BOUNTYBOT_GITHUB_WEBHOOK_SECRET=SERVE_SECRET,
                    BOUNTYBOT_GITHUB_TOKEN=SERVE_TOKEN,
                    BOUNTYBOT_SERVER_MAX_BODY_BYTES=str(body_size),
                    BOUNTYBOT_SERVER_UNVERIFIED_BODY_BUDGET=str(budget),
                    BOUNTYBOT_SERVER_UNVERIFIED_BODY_WAIT_SECONDS="1")
    try:
        await asyncio.to_thread(wait_healthy, service)
        url = f"http://127.0.0.1:{service.port}/webhooks/github"
        junk = json.dumps({"zen": "j" * (body_size - 20)}).encode()
        assert len(junk) <= body_size
        async with aiohttp.ClientSession() as session:

            async def post(body: bytes, signature: str) -> int:
                headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": str(uuid.uuid4()),
                           "X-Hub-Signature-256": signature,
                           "Content-Type": "application/json"}
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status

            assert await post(PING, serve_sign(PING)) == 202  # warm: every path loaded once
            before = peak_memory_kib(service.process.pid)
            statuses = await asyncio.gather(*(post(junk, "sha256=" + "0" * 64)
                                              for _ in range(24)))
            after = peak_memory_kib(service.process.pid)
            assert set(statuses) <= {401, 503} and 401 in statuses, statuses
            assert (after - before) * 1024 < 3 * budget, (before, after, statuses)
            assert await post(PING, serve_sign(PING)) == 202
    finally:
        # On a loaded machine the 24 refused uploads may still be draining: give the service
        # time to stop on SIGTERM before killing it (a slow stop is not what this test is about).
        service.process.terminate()
        try:
            service.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(timeout=10)
    assert "Traceback" not in service.output()


async def test_a_form_encoded_github_body_is_told_to_use_json(sqlite_url, github_server):
    """GitHub can send `application/x-www-form-urlencoded` (`payload=<json>`): the answer says
    which setting to change."""
    from urllib.parse import quote

    bot = await GitHubBot.start(sqlite_url, github_server)
    try:
        body = ("payload=" + quote('{"zen": "Keep it logically awesome."}')).encode()
        response = await bot.post("ping", body)
        assert response.status == 400
        assert "content type to application/json" in (await response.json())["error"]
        assert await bot.rows(t.Delivery) == []
    finally:
        await bot.close()
