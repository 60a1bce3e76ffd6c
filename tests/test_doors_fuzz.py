"""Random requests at every webhook door (#10): whatever the headers (missing, huge, not
ASCII, not UTF-8) and whatever the body (random bytes, random JSON, deep nesting, byte order
marks, other encodings, signed or not), no door answers 5xx except a deliberate 503, nothing
internal is stored, and afterwards signed deliveries are still stored and applied: the queue
is not stalled. Real app over loopback, SQLite, the GitHub, GitLab, Forgejo and Stripe doors all
on."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from forgejo_harness import FJ_REPO, FJ_SECRET, FJ_TOKEN, ForgejoBot, fj_sign
from forgejo_harness import prepare as prepare_forgejo
from gitlab_harness import GL_SECRET, PROJECT, GitLabBot, gitlab_settings, prepare
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.forges.events import SYNC_EVENT
from bountybot.payments.stripe_api import StripeGateway
from bountybot.service import setup
from bountybot.storage import tables as t
from bountybot.storage.engine import create_engine

from fakes.forgejo import FakeForgejo
from fakes.github import FakeGitHub
from fakes.gitlab import FakeGitLab
from fakes.stripe import FakeStripe, stripe_server  # noqa: F401
from github_harness import (
    MAINTAINER,
    QUICK_SENDER,
    QUICK_WORKER,
    REPO,
    REPO_ID,
    SECRET,
    TOKEN,
    GitHubBot,
)
from github_harness import sign as github_sign

WHSEC = "whsec_fuzz_0123456789abcdef"
LIMIT = 64 * 1024


@dataclass
class World:
    hub: GitHubBot  # the app, seen through the GitHub harness
    lab: GitLabBot  # the same app, seen through the GitLab harness
    fj: ForgejoBot  # and the Forgejo one
    stripe: FakeStripe
    port: int


@pytest.fixture
async def world(sqlite_url: str, github_server: FakeGitHub, gitlab_server: FakeGitLab,
                forgejo_server: FakeForgejo,
                stripe_server: FakeStripe) -> AsyncIterator[World]:  # noqa: F811
    github_server.accept_token(TOKEN)
    github_server.add_repo(REPO, REPO_ID)
    github_server.set_permission(REPO, MAINTAINER, "maintain")
    prepare(gitlab_server)
    prepare_forgejo(forgejo_server)
    app_settings = Settings.model_validate({
        "database": {"url": sqlite_url},
        "server": {"public_url": "https://bounties.example.org", "max_body_bytes": LIMIT,
                   "unverified_body_budget": LIMIT, "unverified_body_wait_seconds": 0.2,
                   "body_timeout_seconds": 2},
        "github": {"api_url": github_server.url, "token": TOKEN, "webhook_secret": SECRET},
        "gitlab": gitlab_settings(gitlab_server),
        "forgejo": {"url": forgejo_server.url, "token": FJ_TOKEN, "webhook_secret": FJ_SECRET},
        "payments": {"provider": "stripe"},
        "stripe": {"api_key": stripe_server.api_key, "webhook_secret": WHSEC,
                   "api_base": stripe_server.url},
    })
    engine = create_engine(sqlite_url)
    app = create_app(app_settings, engine=engine, features=[])
    setup(app, scheduler=False, sender_options=QUICK_SENDER, worker_options=QUICK_WORKER,
          payment_loop=False,
          gateway=StripeGateway(stripe_server.api_key, api_base=stripe_server.url,
                                timeout=0.5))
    client = TestClient(TestServer(app))
    await client.start_server()
    hub = GitHubBot(client, github_server, engine)
    lab = GitLabBot(client, github_server, engine)
    lab.gitlab = gitlab_server
    lab.notes_ids = iter(range(70_001, 80_000))
    fj = ForgejoBot(client, github_server, engine)
    fj.gitlab, fj.forgejo = gitlab_server, forgejo_server
    port = client.server.port
    assert port is not None
    try:
        yield World(hub, lab, fj, stripe_server, port)
    finally:
        await client.close()
        await engine.dispose()


# -- what a request is made of -------------------------------------------------------------------

DOORS = ["/webhooks/github", "/webhooks/gitlab", "/webhooks/forgejo", "/webhooks/stripe"]
NAMES = ["X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256", "X-Gitlab-Event",
         "X-Gitlab-Token", "Idempotency-Key", "X-Gitlab-Event-UUID", "X-Forgejo-Event",
         "X-Forgejo-Delivery", "X-Forgejo-Signature", "X-Gitea-Event", "X-Gitea-Signature",
         "Stripe-Signature", "Content-Type", "Content-Encoding"]
LIKELY = {"X-GitHub-Event": ["issue_comment", "issues", "ping", SYNC_EVENT],
          "X-Gitlab-Event": ["Note Hook", "Issue Hook", SYNC_EVENT],
          "X-Forgejo-Event": ["issue_comment", "issues", "pull_request", SYNC_EVENT],
          "X-Gitea-Event": ["issue_comment", "push"],
          "X-Gitlab-Token": [GL_SECRET],
          "X-GitHub-Delivery": ["sync:github:x", "d-1"], "Idempotency-Key": ["sync:gitlab:y"],
          "X-Forgejo-Delivery": ["sync:forgejo:z", "d-2"],
          "Content-Encoding": ["gzip", "identity", "br"]}


# Control characters end a header, or make the whole request unreadable to aiohttp's parser
# (a 400 before any door is reached): left out, so the values reach the doors.
_CONTROL = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"


def header_values(name: str) -> st.SearchStrategy[bytes]:
    def clean(value: bytes) -> bytes:
        return value.translate(None, _CONTROL)

    return st.one_of(
        st.binary(max_size=80).map(clean),                               # not even UTF-8
        st.text(max_size=60).map(lambda s: clean(s.encode("utf-8", "surrogatepass"))),
        st.integers(1000, 9000).map(lambda n: b"a" * n),                 # huge
        st.sampled_from(LIKELY.get(name, ["x"])).map(str.encode),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(
    lambda d: json.dumps(d).encode())


def bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        objects,
        json_values.map(lambda v: json.dumps(v).encode()),
        objects.map(lambda b: b"\xef\xbb\xbf" + b),                     # a BOM
        objects.map(lambda b: b.decode().encode("utf-16")),             # another encoding
        st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),  # nested
        st.integers(1, 3000).map(lambda n: b"[" * n),                   # nested, unclosed
        st.sampled_from([b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e400}',
                         b'{"a": "\\ud800"}', b'{"a": ' + b"1" * 5000 + b"}"]),
        st.integers(LIMIT - 10, LIMIT + 10).map(lambda n: b"{" + b" " * n + b"}"),  # the edge
    )


@dataclass(frozen=True)
class Request:
    door: str
    headers: dict[str, bytes]
    body: bytes
    signed: bool  # signed (or with the token) as the door's sender would
    chunked: bool
    cut_short: bool  # announces more than it sends, then stops


def proper_headers(door: str, delivery: str) -> dict[str, bytes]:
    """What the door's sender would send, but for the signature."""
    if door.endswith("github"):
        return {"X-GitHub-Event": b"issue_comment", "X-GitHub-Delivery": delivery.encode(),
                "Content-Type": b"application/json"}
    if door.endswith("gitlab"):
        return {"X-Gitlab-Event": b"Note Hook", "Idempotency-Key": delivery.encode(),
                "X-Gitlab-Event-UUID": delivery.encode(), "Content-Type": b"application/json"}
    if door.endswith("forgejo"):
        return {"X-Forgejo-Event": b"issue_comment", "X-Forgejo-Delivery": delivery.encode(),
                "Content-Type": b"application/json"}
    return {"Content-Type": b"application/json; charset=utf-8"}


@st.composite
def requests(draw: Callable[..., Any]) -> Request:
    """Mostly what the sender sends, each header sometimes dropped or replaced by anything;
    mostly JSON objects, often something else."""
    door = draw(st.sampled_from(DOORS))
    headers = proper_headers(door, str(draw(st.uuids())))
    for name in NAMES:
        change = draw(st.sampled_from(["keep"] * 9 + ["drop", "random"]))
        if change == "drop":
            headers.pop(name, None)
        elif change == "random":
            headers[name] = draw(header_values(name))
    body = draw(st.one_of(objects, objects, bodies()))
    return Request(door, headers, body, draw(st.sampled_from([True, True, False])),
                   draw(st.booleans()), draw(st.integers(0, 9)) == 0)


def signed_headers(request: Request) -> dict[str, bytes]:
    headers = dict(request.headers)
    body = request.body
    if request.door.endswith("github"):
        headers["X-Hub-Signature-256"] = github_sign(body).encode()
    elif request.door.endswith("gitlab"):
        headers["X-Gitlab-Token"] = GL_SECRET.encode()
    elif request.door.endswith("forgejo"):
        headers["X-Forgejo-Signature"] = fj_sign(body).encode()
        headers.pop("X-Gitea-Signature", None)  # Forgejo sends both with one value, or this
    else:
        stamp = int(time.time())
        digest = hmac.new(WHSEC.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        headers["Stripe-Signature"] = f"t={stamp},v1={digest.hexdigest()}".encode()
    return headers


def send(port: int, request: Request) -> int | None:
    """The answer's status, or None when the service closed the connection without one (a
    body cut short)."""
    headers = signed_headers(request) if request.signed else request.headers
    lines = [f"POST {request.door} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    body = request.body
    if request.chunked:
        lines.append(b"Transfer-Encoding: chunked")
        body = b"".join(f"{len(body[i:i + 997]):x}\r\n".encode() + body[i:i + 997] + b"\r\n"
                        for i in range(0, len(body), 997))
        body += b"" if request.cut_short else b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body) + (50 if request.cut_short else 0)}".encode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            if request.cut_short:
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return None
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


# -- the fuzz ----------------------------------------------------------------------------------

async def test_no_request_breaks_a_door_or_stalls_the_queue(world: World) -> None:
    seen: dict[int | None, int] = {}

    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(request=requests())
    def fuzz(request: Request) -> None:
        status = send(world.port, request)
        seen[status] = seen.get(status, 0) + 1
        assert status is None or status < 500 or status == 503, (request, status)
        assert status is not None or request.cut_short or len(request.body) > LIMIT, request

    # The app serves on this loop; the requests block in a thread of their own.
    await asyncio.to_thread(fuzz)
    # Some random deliveries got in, signed: the worker had garbage to take first.
    assert seen.get(202, 0) > 0, seen

    stored = await world.hub.rows(t.Delivery)
    assert all(row.event != SYNC_EVENT and not row.delivery_id.lower().startswith("sync:")
               for row in stored)

    # Signed deliveries still go all the way: stored, taken by the worker, applied.
    hub, lab, fj = world.hub, world.lab, world.fj
    assert (await hub.label(1)).status == 202
    assert (await hub.comment("alice", "/pledge 20")).status == 202
    assert (await lab.label(2)).status == 202
    assert (await lab.comment("bob", "/pledge 30", 2)).status == 202
    assert (await fj.label(3)).status == 202
    assert (await fj.comment("carol", "/pledge 40", 3)).status == 202
    event = json.dumps({"id": "evt_after_fuzz", "object": "event", "type": "account.updated",
                        "data": {"object": {"id": "acct_nobody", "object": "account"}}}
                       ).encode()
    stamp = int(time.time())
    digest = hmac.new(WHSEC.encode(), f"{stamp}.".encode() + event, hashlib.sha256).hexdigest()
    paid = await hub.client.post("/webhooks/stripe", data=event,
                                 headers={"Stripe-Signature": f"t={stamp},v1={digest}"})
    assert (paid.status, (await paid.json())["status"]) == (200, "handled")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        on_github, on_gitlab, on_forgejo = await hub.task(1), await lab.task(2), await fj.task(3)
        if all(task and task.pledges for task in (on_github, on_gitlab, on_forgejo)):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the signed pledges were not applied: {seen}")
    assert on_github is not None and on_gitlab is not None and on_forgejo is not None
    assert [(p.backer, p.amount.minor) for p in on_github.pledges] == [("alice", 2000)]
    assert [(p.backer, p.amount.minor) for p in on_gitlab.pledges] == [("bob", 3000)]
    assert [(p.backer, p.amount.minor) for p in on_forgejo.pledges] == [("carol", 4000)]
    assert on_github.repo == REPO and on_gitlab.repo == PROJECT and on_forgejo.repo == FJ_REPO
