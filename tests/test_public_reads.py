"""Public reads cannot take the service down: they read through a pool of their own, the heavy
ones take turns (503 with Retry-After past the wait), no control character reaches the
database, browsers' CORS preflights are answered, and /healthz watches the delivery queue.

In process, on the real app (`create_app` with the API and the webhooks), SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import func, select

from bountybot.api.routes import setup as api_setup
from bountybot.app import LIGHT_READS, create_app
from bountybot.config import Settings
from bountybot.resources import ENGINE, READ_ENGINE, READ_GATE, RETRY_AFTER_SECONDS, SESSIONMAKER
from bountybot.service import setup as service_setup
from bountybot.storage import tables as t
from bountybot.storage.uow import UnitOfWork

from github_harness import SECRET, TOKEN, sign

# Each test starts from an environment without BOUNTYBOT_* variables.
pytestmark = pytest.mark.usefixtures("no_bountybot_env")


def settings(db_url: str, **server: Any) -> Settings:
    return Settings(config_file=None, database={"url": db_url}, server=server,
                    github={"webhook_secret": SECRET, "token": TOKEN,
                            "api_url": "http://127.0.0.1:9"})


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    """The app as `serve` builds it (its engines made from the URL), with the webhooks stored
    but not worked on: the inbox is what is being watched."""
    app = create_app(settings(db_url, read_concurrency=2, read_wait_seconds=0.3),
                     features=[api_setup, lambda app: service_setup(app, background=False)])
    async with TestClient(TestServer(app)) as client:
        yield client


async def post_ping(client: TestClient[Any, Any]) -> tuple[int, float]:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    started = time.monotonic()
    response = await client.post("/webhooks/github", data=body, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sign(body)})
    return response.status, time.monotonic() - started


async def test_busy_public_reads_are_told_to_come_back_and_webhooks_are_still_stored(
        client: TestClient[Any, Any]) -> None:
    app = client.app
    assert app[READ_ENGINE] is not app[ENGINE]  # a pool of their own
    async with AsyncExitStack() as held:
        # Every turn of the heavy reads is taken (two exports to slow readers, say)...
        for _ in range(app[READ_GATE].turns):
            await held.enter_async_context(app[READ_GATE].turn())
        for path in ("/api/v1/export.json", "/api/v1/export.csv", "/api/v1/tasks",
                     "/api/v1/tasks/1/ledger", "/api/v1/statements/github/backers/alice"):
            started = time.monotonic()
            response = await client.get(path)
            waited = time.monotonic() - started
            assert response.status == 503, path
            assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "try again in" in (await response.json())["error"]
            assert 0.3 <= waited < 2, (path, waited)  # it waited for a turn, then gave up
        # ... and every connection of the read pool too (light reads: one task each).
        connections: list[AsyncConnection] = [
            await held.enter_async_context(app[READ_ENGINE].connect())
            for _ in range(app[READ_GATE].turns + LIGHT_READS)]
        assert len(connections) == 2 + LIGHT_READS
        response = await client.get("/api/v1/tasks/1")
        assert response.status == 503 and response.headers["Retry-After"]
        # The webhooks and the health check use the other pool: untouched.
        for _ in range(5):
            status, seconds = await post_ping(client)
            assert status == 202 and seconds < 1
        health = await client.get("/healthz")
        assert health.status == 200
    # Turns free again: the same reads answer.
    assert (await client.get("/api/v1/export.json")).status == 200
    assert (await client.get("/api/v1/tasks")).status == 200
    async with app[SESSIONMAKER]() as session:
        stored = (await session.exec(select(func.count()).select_from(t.Delivery))).one()
    assert stored == 5


CONTROLS = [
    "/api/v1/tasks?repo=commons%00garden",
    "/api/v1/tasks?repo=%1b%5b31m",
    "/api/v1/tasks?state=open%00",
    "/api/v1/tasks?forge=github%0d%0aX-Injected:%201",
    "/api/v1/tasks?re%00po=x",
    "/api/v1/tasks?page=%c2%85",  # NEL, a C1 control
    "/api/v1/tasks/1%00",
    "/api/v1/tasks/1%00/ledger",
    "/api/v1/statements/github/backers/al%00ice",
    "/api/v1/statements/gitlab/developers/%7f",
    "/api/v1/export.json?since=%00",
]


async def test_a_control_character_anywhere_is_a_400_that_says_so(
        client: TestClient[Any, Any]) -> None:
    for path in CONTROLS:
        response = await client.get(path)
        body = await response.json()
        assert response.status == 400, (path, body)
        assert "control character" in body["error"], path
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "X-Injected" not in response.headers
    # What is left of the API still answers.
    assert (await client.get("/api/v1/tasks?repo=commons/garden")).status == 200


async def test_cors_preflight_is_answered_anywhere_under_the_api(
        client: TestClient[Any, Any]) -> None:
    for path in ("/api/v1/tasks", "/api/v1/tasks/7/ledger", "/api/v1/export.csv"):
        response = await client.options(path, headers={
            "Origin": "https://dashboard.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "If-None-Match, X-Requested-With"})
        assert response.status == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
        assert response.headers["Access-Control-Allow-Headers"] == (
            "If-None-Match, X-Requested-With")
        assert int(response.headers["Access-Control-Max-Age"]) >= 600
    # A header list that is not one is not echoed.
    response = await client.options("/api/v1/tasks", headers={
        "Access-Control-Request-Headers": "x-a; x-b"})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Headers"] == (
        "Accept, Accept-Language, Content-Type")
    # Other methods are still refused, and pages answer their Link header to scripts.
    assert (await client.post("/api/v1/tasks", data=b"{}")).status == 405
    response = await client.get("/api/v1/tasks")
    assert "Link" in response.headers["Access-Control-Expose-Headers"]


async def test_healthz_reports_the_delivery_queue_and_a_stall(db_url: str) -> None:
    now = datetime.now(UTC)
    app = create_app(settings(db_url, queue_stall_seconds=300), features=[])
    async with TestClient(TestServer(app)) as client:
        body = await (await client.get("/healthz")).json()
        assert body["queue"] == {"pending": 0, "oldest_due_seconds": None}

        async def deliver(delivery_id: str, **values: Any) -> None:
            async with UnitOfWork(app[SESSIONMAKER]) as uow:
                uow.session.add(t.Delivery(forge="github", delivery_id=delivery_id,
                                           event="ping", payload="{}", **values))

        # Waiting for its retry time: pending, but not due, so not late however old.
        await deliver("later", received_at=now - timedelta(hours=2),
                      next_attempt_at=now + timedelta(minutes=5))
        # Handled long ago: not pending.
        await deliver("done", received_at=now - timedelta(days=1),
                      state=t.DeliveryState.HANDLED)
        # Received an hour ago, due again (its retry time passed) 100 s ago.
        await deliver("retried", received_at=now - timedelta(hours=1),
                      next_attempt_at=now - timedelta(seconds=100))
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 200 and body["status"] == "ok"
        assert body["queue"]["pending"] == 2
        assert 100 <= body["queue"]["oldest_due_seconds"] < 110

        # Due for ten minutes and not taken: the workers are stuck.
        await deliver("stuck", received_at=now - timedelta(minutes=10))
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 503
        assert (body["status"], body["database"]) == ("stalled", "ok")
        assert body["queue"]["pending"] == 3
        assert 600 <= body["queue"]["oldest_due_seconds"] < 610
