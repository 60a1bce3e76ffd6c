"""`serve --role web` and `--role worker`: the HTTP side and the background work in processes of
their own, on one PostgreSQL, behave as one `serve`. Real processes, a local GitHub."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine
from test_replicas import Cluster, Replica, Sender, comment, label, rows

from bountybot.storage import migrate
from bountybot.storage.books import run_audit
from bountybot.storage.engine import create_engine, create_sessionmaker

from fakes.github import FakeGitHub
from github_harness import MAINTAINER, REPO, REPO_ID, TOKEN

HANDLED_TIMEOUT = 60.0
# How long the web process alone is watched for any sign of a worker: long enough for its
# delivery worker (which would look within 0.05 s of the commit) to have acted many times.
WATCH = 2.0


class Roles(Cluster):
    """A web process and worker processes, started by role. Deliveries go to `replicas` (the
    web processes); every process spawned, a worker too, is stopped at the end."""

    def __init__(self, tmp_path: Path, db_url: str, fake: FakeGitHub) -> None:
        super().__init__(tmp_path, db_url, fake)
        self.spawned: list[Replica] = []

    def spawn_role(self, role: str) -> Replica:
        name = f"{role}-{next(self.count)}"
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "bountybot", "serve", "--role", role], cwd=self.workdir,
                env=self.env, stdout=out, stderr=subprocess.STDOUT)
        replica = Replica(name, process, log)
        self.spawned.append(replica)
        return replica

    def stop(self) -> None:
        # A worker left running would hold its database connections after the test (it did).
        self.dead += [r for r in self.spawned if r not in self.replicas + self.dead]
        super().stop()
        assert all(not r.alive() for r in self.spawned)



@pytest.fixture
async def roles(tmp_path: Path, empty_pg_url: str,
                github_server: FakeGitHub) -> AsyncIterator[Roles]:
    migrate.upgrade(empty_pg_url)
    github_server.accept_token(TOKEN)
    github_server.add_repo(REPO, REPO_ID)
    github_server.set_permission(REPO, MAINTAINER, "maintain")
    r = Roles(tmp_path, empty_pg_url, github_server)
    try:
        yield r
    finally:
        await asyncio.to_thread(r.stop)


async def states(db: AsyncEngine) -> dict[str, int]:
    return {state: n for state, n in await rows(
        db, "SELECT state, count(*) FROM delivery GROUP BY state")}


async def test_a_web_process_stores_and_a_worker_process_applies(
        roles: Roles, github_server: FakeGitHub, empty_pg_url: str) -> None:
    web = await roles.ready(roles.spawn_role("web"))
    roles.replicas = [web]
    assert "(web: no workers) listening on" in web.output()
    deliveries = [label(1), comment(github_server, MAINTAINER, "/goal 50", 1, "setup"),
                  *(comment(github_server, f"backer{i}", "/pledge 10", 1, "pledge")
                    for i in range(5))]
    db = create_engine(empty_pg_url)
    try:
        async with aiohttp.ClientSession() as session:
            sender = Sender(roles, session)
            for d in deliveries:  # in order: the label, the goal, then the pledges
                await sender.deliver(d)
        assert set(sender.log.acknowledged.values()) == {202}
        # The web process stores and decides nothing, and writes nothing to GitHub.
        await asyncio.sleep(WATCH)
        assert await states(db) == {"pending": len(deliveries)}
        assert github_server.writes() == []

        worker = await roles.ready(roles.spawn_role("worker"))
        assert "(worker: deliveries, outbox, payments, scheduler)" in worker.output()
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{worker.port}"
            # A worker takes no webhook and serves no page: its port is for its health and
            # its metrics (what it handles is counted there, not on the web process).
            async with session.post(f"{base}/webhooks/github", data=b"{}") as answer:
                assert answer.status == 404
            async with session.get(f"{base}/") as answer:
                assert answer.status == 404
            async with session.get(f"{base}/healthz") as answer:
                assert answer.status == 200
        deadline = time.monotonic() + HANDLED_TIMEOUT
        while await states(db) != {"handled": len(deliveries)}:
            assert time.monotonic() < deadline, (await states(db), roles.logs())
            await asyncio.sleep(0.05)
        (task,) = await rows(db, "SELECT state, goal_minor FROM task")
        assert tuple(task) == ("funded", 5000)
        report = await run_audit(create_sessionmaker(db))
        assert report.ok, report.render()
        # Then a pledge stored by the web process is applied by the worker, which was told
        # (PostgreSQL's NOTIFY) or looked: the story goes on across processes.
        more = comment(github_server, "late", "/pledge 5", 1, "pledge")
        async with aiohttp.ClientSession() as session:
            await Sender(roles, session).deliver(more)
        deadline = time.monotonic() + HANDLED_TIMEOUT
        while (await states(db)).get("handled") != len(deliveries) + 1:
            assert time.monotonic() < deadline, (await states(db), roles.logs())
            await asyncio.sleep(0.05)
        pledged = await rows(db, "SELECT count(*) FROM pledge")
        assert pledged[0][0] == 6
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{worker.port}/metrics") as answer:
            scrape = await answer.text()
        assert answer.status == 200
        applied = {sample.labels["command"]: sample.value
                   for family in text_string_to_metric_families(scrape)
                   for sample in family.samples if sample.name == "bountybot_commands_total"
                   and sample.labels["outcome"] == "applied"}
        assert applied["pledge"] == 6 and applied["goal"] == 1, scrape
    finally:
        await db.dispose()
