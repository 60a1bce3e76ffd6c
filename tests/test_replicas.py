"""Several `serve` processes on one PostgreSQL behave as one, even when one of them is killed.

Three real `python -m bountybot serve` processes share a fresh PostgreSQL schema and a local
GitHub (`fakes.github`) on loopback. A burst of 300 GitHub-signed `/pledge` and `/claim`
deliveries is spread over them round-robin; a POST that fails (refused, reset) is delivered
again to another replica with the same `X-GitHub-Delivery`, as GitHub does. In the crash run,
once ~100 deliveries have been sent, the replica whose reply the fake GitHub is receiving is
killed with SIGKILL (the reply gets posted, its sender never writes that down; its worker is
mid-batch too) and a new process takes its place. Then: the audit passes, every delivery is
handled exactly once, every comment is posted once, every reaction is on GitHub once.

Each run prints one `figures:` line (deliveries sent, POSTs, acknowledged, redelivered, handled,
duplicates, lost, comments posted, conflicts retried, seconds); to see them:

    .venv/bin/pytest -s -p no:cacheprovider tests/test_replicas.py
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bountybot.config import Settings
from bountybot.inbox import DeliveryWorker
from bountybot.inbox_writer import insert_new
from bountybot.storage import migrate
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit
from bountybot.storage.bounties import ensure_repo
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import UnitOfWork, is_conflict

from fakes.github import FakeGitHub
from fixtures import payload
from github_harness import MAINTAINER, REPO, REPO_ID, SECRET, TOKEN, sign

REPLICAS = 3
BURST = 300
TASKS = 6  # issues 1..6, each labelled with a goal before the burst
GOAL = "150"
CLAIMERS = 8  # developers; each claims every task once
IN_FLIGHT = 24  # deliveries being posted at once: a burst, not one instant
SETTLE_TIMEOUT = 90.0
START_TIMEOUT = 30.0
STARTED = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
MARKER = re.compile(r"<!-- bountybot:msg:(\d+) -->")


# -- the replicas ---------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/github"

    def output(self, last: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-last:])

    def alive(self) -> bool:
        return self.process.poll() is None


class Cluster:
    """The replicas, started from an empty working directory and configured by environment."""

    def __init__(self, tmp_path: Path, db_url: str, fake: FakeGitHub) -> None:
        self.tmp_path = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNTYBOT_")}
        self.env.update({
            "BOUNTYBOT_DATABASE_URL": db_url,
            "BOUNTYBOT_SERVER_PORT": "0",
            "BOUNTYBOT_GITHUB_API_URL": fake.url,
            "BOUNTYBOT_GITHUB_TOKEN": TOKEN,
            "BOUNTYBOT_GITHUB_WEBHOOK_SECRET": SECRET,
            # The burst is ~300 writes in seconds: far above GitHub's budget, which the
            # governor would (rightly) spread over minutes.
            "BOUNTYBOT_SCHEDULER_WRITES_PER_MINUTE": "100000",
            "BOUNTYBOT_SCHEDULER_WRITES_PER_HOUR": "1000000",
            # No reconciliation polls: this test is about the webhooks and the outbox.
            "BOUNTYBOT_SCHEDULER_SYNC_MINUTES": "0",
            # A killed sender's leased messages are due again after this: short here, so the
            # crash run does not wait two minutes (the fake answers at once).
            "BOUNTYBOT_SCHEDULER_OUTBOX_LEASE_SECONDS": "10",
        })
        self.workdir = tmp_path / "cwd"
        self.workdir.mkdir(exist_ok=True)
        self.replicas: list[Replica] = []
        self.dead: list[Replica] = []  # killed, kept for their logs
        self.count = itertools.count(1)

    def spawn(self) -> Replica:
        name = f"replica-{next(self.count)}"
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "bountybot", "serve"], cwd=self.workdir, env=self.env,
                stdout=out, stderr=subprocess.STDOUT)
        return Replica(name, process, log)

    async def ready(self, replica: Replica) -> Replica:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not replica.alive():
                pytest.fail(f"{replica.name} exited with {replica.process.returncode}:\n"
                            f"{replica.output()}")
            found = STARTED.search(replica.log.read_text(errors="replace"))
            if found:
                replica.port = int(found.group(1))
                return replica
            await asyncio.sleep(0.05)
        pytest.fail(f"{replica.name} did not start in {START_TIMEOUT}s:\n{replica.output()}")

    async def start(self, n: int) -> None:
        spawned = [self.spawn() for _ in range(n)]
        self.replicas = list(await asyncio.gather(*(self.ready(r) for r in spawned)))

    def stop(self) -> None:
        for r in self.replicas + self.dead:
            if r.alive():
                r.process.send_signal(signal.SIGTERM)
        for r in self.replicas + self.dead:
            try:
                r.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                r.process.kill()
                r.process.wait()

    def logs(self) -> str:
        return "\n\n".join(f"== {r.name}\n{r.output()}" for r in self.replicas + self.dead)


@pytest.fixture
def replica_db(empty_pg_url: str) -> str:
    """A fresh PostgreSQL schema at head, as an operator prepares it (`bountybot db upgrade`)."""
    migrate.upgrade(empty_pg_url)
    return empty_pg_url


@pytest.fixture
async def cluster(tmp_path: Path, replica_db: str,
                  github_server: FakeGitHub) -> AsyncIterator[Cluster]:
    github_server.accept_token(TOKEN)
    github_server.add_repo(REPO, REPO_ID)
    github_server.set_permission(REPO, MAINTAINER, "maintain")
    c = Cluster(tmp_path, replica_db, github_server)
    try:
        await c.start(REPLICAS)
        yield c
    finally:
        await asyncio.to_thread(c.stop)


@pytest.fixture
async def db(replica_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(replica_db)
    yield engine
    await engine.dispose()


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    yield engine
    await engine.dispose()


# -- deliveries -----------------------------------------------------------------------------


@dataclass
class Delivery:
    """One webhook as GitHub sends it: the same id and body every time it is delivered."""

    id: str
    event: str
    body: bytes
    kind: str = ""  # pledge, claim, refused, setup
    comment_id: int | None = None

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-GitHub-Event": self.event,
                "X-GitHub-Delivery": self.id, "X-Hub-Signature-256": sign(self.body),
                "User-Agent": "GitHub-Hookshot/test"}


def _issue(data: dict[str, Any], number: int) -> None:
    data["issue"]["number"] = number
    data["issue"]["html_url"] = f"https://github.com/{REPO}/issues/{number}"
    data["issue"]["title"] = f"Task {number}"


def label(number: int) -> Delivery:
    data = payload("github", "issues.labeled")
    data["label"]["name"] = "bounty"
    _issue(data, number)
    return Delivery(str(uuid.uuid4()), "issues", json.dumps(data).encode(), "setup")


def comment(fake: FakeGitHub, login: str, body: str, number: int, kind: str) -> Delivery:
    data = payload("github", "issue_comment.created")
    _issue(data, number)
    cid = fake.add_comment(REPO, number, body, login=login)
    data["comment"].update(id=cid, body=body)
    data["comment"]["user"].update(login=login, type="User")
    data["sender"].update(login=login)
    return Delivery(str(uuid.uuid4()), "issue_comment", json.dumps(data).encode(), kind, cid)


def burst(fake: FakeGitHub, rng: random.Random) -> list[Delivery]:
    """48 claims, 30 refused withdrawals (each needs a reply) and 222 pledges from 60 backers
    (some pledge more than once on a task), shuffled."""
    made = [comment(fake, f"dev{d}", "/claim", n, "claim")
            for d in range(CLAIMERS) for n in range(1, TASKS + 1)]
    made += [comment(fake, f"lurker{i}", "/withdraw", rng.randrange(1, TASKS + 1), "refused")
             for i in range(30)]
    amounts = ["5", "7.50", "10", "12,25", "€15", "20 EUR", "25", "30€"]
    while len(made) < BURST:
        backer = f"backer{rng.randrange(60)}"
        number = rng.randrange(1, TASKS + 1)
        made.append(comment(fake, backer, f"/pledge {rng.choice(amounts)}", number, "pledge"))
    rng.shuffle(made)
    return made


@dataclass
class Sending:
    """Who was sent what, and how it went."""

    posts: Counter[str] = field(default_factory=Counter)  # POSTs per delivery id
    acknowledged: dict[str, int] = field(default_factory=dict)  # delivery id -> HTTP status
    failed_posts: int = 0
    sent_to: Counter[str] = field(default_factory=Counter)  # POSTs per replica name

    @property
    def redelivered(self) -> int:
        return sum(1 for n in self.posts.values() if n > 1)


class Sender:
    """Posts deliveries round-robin; on a refused or broken POST, to the next replica."""

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session
        self.log = Sending()
        self.turn = itertools.count()
        self.hooks: list[Any] = []  # called after each POST leaves: the crash run kills here

    async def deliver(self, d: Delivery) -> None:
        start = next(self.turn)
        for attempt in range(40):
            replicas = self.cluster.replicas
            replica = replicas[(start + attempt) % len(replicas)]
            self.log.posts[d.id] += 1
            self.log.sent_to[replica.name] += 1
            for hook in self.hooks:
                hook(replica)
            try:
                if replica.port is None or not replica.alive():
                    raise aiohttp.ClientConnectionError("replica down")
                async with self.session.post(replica.url, data=d.body, headers=d.headers(),
                                             timeout=aiohttp.ClientTimeout(total=15)) as r:
                    await r.read()
                    if r.status in (200, 202):
                        self.log.acknowledged[d.id] = r.status
                        return
                    assert r.status >= 500, (r.status, await r.text())
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.log.failed_posts += 1
            await asyncio.sleep(0.05 * min(attempt + 1, 10))
        raise AssertionError(f"delivery {d.id} was never acknowledged")

    async def send_all(self, deliveries: list[Delivery], in_flight: int,
                       per_second: float | None = None,
                       hold_from: tuple[int, asyncio.Event] | None = None) -> None:
        """At most `in_flight` POSTs at once; the i-th not before i/`per_second` seconds, and
        from the n-th of `hold_from` (n, event) on, not before the event."""
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int, d: Delivery) -> None:
            if per_second:
                await asyncio.sleep(i / per_second)
            if hold_from and i >= hold_from[0]:
                await hold_from[1].wait()
            async with gate:
                await self.deliver(d)

        await asyncio.gather(*(one(i, d) for i, d in enumerate(deliveries)))


# -- waiting and looking --------------------------------------------------------------------


async def scalar(db: AsyncEngine, sql: str, **params: Any) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def rows(db: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def settle(db: AsyncEngine, cluster: Cluster, ids: list[str],
                 timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until every delivery of `ids` is handled (or failed) and the outbox is empty."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = await scalar(db, "SELECT count(*) FROM delivery WHERE state = 'pending'")
        stored = await scalar(db, "SELECT count(*) FROM delivery WHERE delivery_id = ANY(:ids)",
                              ids=ids)
        sending = await scalar(db, "SELECT count(*) FROM outbox WHERE state = 'pending'")
        if not waiting and not sending and stored == len(ids):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not settled after {timeout}s: {len(ids) - stored} deliveries missing, "
                f"{waiting} pending, {sending} messages pending\n{cluster.logs()}")
        await asyncio.sleep(0.25)


@dataclass
class Figures:
    sent: int
    posts: int
    acknowledged: int
    redelivered: int
    handled: int
    duplicates: int
    lost: int
    comments: int
    conflicts: int  # clashes between replicas' transactions, retried at once
    seconds: float = 0.0

    def line(self, run: str) -> str:
        return (f"figures: {run}: sent {self.sent}, posts {self.posts}, acknowledged "
                f"{self.acknowledged}, redelivered {self.redelivered}, handled {self.handled}, "
                f"duplicates {self.duplicates}, lost {self.lost}, comments posted "
                f"{self.comments}, conflicts retried {self.conflicts}, "
                f"seconds {self.seconds:.1f}")


async def check(db: AsyncEngine, fake: FakeGitHub, cluster: Cluster, sending: Sending,
                deliveries: list[Delivery], *, killed: bool) -> Figures:
    """Every invariant of several replicas; returns the run's figures."""
    ids = [d.id for d in deliveries]
    report = await run_audit(create_sessionmaker(db))
    assert report.ok, report.render()

    states = dict(await rows(db, "SELECT delivery_id, state FROM delivery"))
    handled = sum(1 for i in ids if states.get(i) == "handled")
    lost = sum(1 for i in ids if states.get(i) != "handled")
    assert all(n == 1 for n in Counter(await rows(
        db, "SELECT delivery_id FROM delivery")).values())
    failed = await rows(db, "SELECT delivery_id, error FROM delivery WHERE state <> 'handled'")
    assert not failed, failed
    # A clash between replicas is no failed attempt: none was counted.
    tried = await rows(db, "SELECT delivery_id, error FROM delivery WHERE attempts > 0")
    assert not tried, tried
    assert len(states) == len(ids) + TASKS * 2  # the burst, plus a label and a goal per task
    assert set(sending.acknowledged) == set(ids)

    # Handled once: one pledge row per pledge comment, nothing for the other comments.
    pledges = Counter(r[0] for r in await rows(db, "SELECT comment_id FROM pledge"))
    pledge_comments = {str(d.comment_id) for d in deliveries if d.kind == "pledge"}
    duplicates = sum(n - 1 for n in pledges.values() if n > 1)
    assert set(pledges) == pledge_comments, "a pledge comment made no pledge, or another did"

    # A claim comment is taken (claim or waiting list, with a reaction) or refused (a reply),
    # never both, and no developer claims or waits twice on a task.
    claims = Counter(await rows(db, "SELECT task_id, developer FROM claim"))
    waits = Counter(await rows(db, "SELECT task_id, login FROM waiting"))
    duplicates += sum(n - 1 for n in (claims + waits).values() if n > 1)
    assert all(n == 1 for n in (claims + waits).values()), (claims, waits)
    active = Counter(r[0] for r in await rows(
        db, "SELECT task_id FROM claim WHERE state = 'active'"))
    assert all(n == 1 for n in active.values()), active

    # The ledger: no key twice (the unique index says so too).
    keys = await rows(db, "SELECT key, count(*) FROM ledger_transaction GROUP BY key "
                          "HAVING count(*) > 1")
    assert not keys, keys

    # The outbox: everything sent, nothing dead or skipped.
    outbox = Counter(r[0] for r in await rows(db, "SELECT state FROM outbox"))
    assert set(outbox) <= {"sent"}, outbox
    if not killed:  # taken by one sender each, once (a dead sender's are taken again)
        again = await rows(db, "SELECT id, kind, attempts FROM outbox WHERE attempts > 1")
        assert not again, again

    # What GitHub saw: each reply and notice once, one summary per task, at most one reaction
    # per comment, and never a reply on a comment that was also acknowledged.
    mine = [c for n in range(1, TASKS + 1) for c in fake.comments(REPO, n)
            if c.login == "bountybot"]
    markers = Counter(m for c in mine for m in MARKER.findall(c.body))
    twice = {m: n for m, n in markers.items() if n > 1}
    duplicates += sum(n - 1 for n in twice.values())
    assert not twice, f"messages posted more than once: {twice}"
    sent_replies = {str(r[0]) for r in await rows(
        db, "SELECT id FROM outbox WHERE kind IN ('reply', 'notice') AND state = 'sent'")}
    assert set(markers) == sent_replies
    summaries = Counter(re.findall(r"<!-- task:(\d+) -->", " ".join(c.body for c in mine)))
    tasks = await scalar(db, "SELECT count(*) FROM task")
    assert tasks == TASKS and len(summaries) == TASKS, summaries
    assert all(n == 1 for n in summaries.values()), f"summaries posted twice: {summaries}"
    assert len(mine) == len(markers) + TASKS

    replied = {int(r[0]) for r in await rows(
        db, "SELECT payload->>'comment_id' FROM outbox WHERE kind = 'reply'")}
    acked = {int(r[0]): (r[1], r[2]) for r in await rows(
        db, "SELECT payload->>'comment_id', state, attempts FROM outbox WHERE kind = 'reaction'")}
    unseen = []
    for d in deliveries:
        assert d.comment_id is not None or d.kind == "setup"
        if d.comment_id is None:
            continue
        # The bot's side, strictly: one message per comment, a reaction or a reply.
        if (d.comment_id in acked) == (d.comment_id in replied):
            trace = await rows(db, "SELECT id, kind, state, attempts, dedup_key FROM outbox"
                                   f" WHERE payload->>'comment_id' = '{d.comment_id}'")
            handled_rows = await rows(db, "SELECT id, task_id FROM handled_comment"
                                          f" WHERE comment_id = '{d.comment_id}'")
            raise AssertionError(f"comment {d.comment_id} ({d.kind}): outbox {trace},"
                                 f" handled_comment {handled_rows}")
        reactions = fake.reactions(d.comment_id)
        assert len(reactions) <= 1, reactions
        assert not (reactions and d.comment_id in replied), d  # never both
        if d.comment_id in acked and not reactions:
            unseen.append((d.comment_id, d.kind, acked[d.comment_id]))
    # GitHub's side: no reaction the outbox marked sent is missing at the fake. (One was, in
    # about one run in ten, until the GitHub client stopped sharing PyGithub's connection object
    # between threads: its call went to another comment's URL. None is tolerated now.)
    assert not unseen, f"reactions marked sent but not at the fake: {unseen}"
    posted = Counter(r.path for r in fake.requests
                     if r.method == "POST" and r.path.endswith("/reactions"))
    if not killed:  # a dead sender's reaction may be sent again: GitHub keeps one
        assert all(n == 1 for n in posted.values()), "a reaction was posted twice"
    conflicts = sum(r.log.read_text(errors="replace").count(".conflict ")
                    for r in cluster.replicas + cluster.dead)
    return Figures(sent=len(ids), posts=sum(sending.posts.values()),
                   acknowledged=len(sending.acknowledged), redelivered=sending.redelivered,
                   handled=handled, duplicates=duplicates, lost=lost, comments=len(mine),
                   conflicts=conflicts)


async def set_up_tasks(cluster: Cluster, session: aiohttp.ClientSession, fake: FakeGitHub,
                       db: AsyncEngine) -> list[Delivery]:
    """Label issues 1..6 and give each a goal, all at once across the replicas (so two of them
    may meet creating the repo or the same task)."""
    sender = Sender(cluster, session)
    setup = [label(n) for n in range(1, TASKS + 1)]
    setup += [comment(fake, MAINTAINER, f"/goal {GOAL}", n, "setup")
              for n in range(1, TASKS + 1)]
    await sender.send_all(setup, in_flight=len(setup))
    await settle(db, cluster, [d.id for d in setup])
    goals = await rows(db, "SELECT number, goal_minor FROM task ORDER BY number")
    assert goals == [(n, int(GOAL) * 100) for n in range(1, TASKS + 1)], goals
    return setup


# -- the runs -------------------------------------------------------------------------------


async def test_three_replicas_handle_a_burst_once(cluster: Cluster, github_server: FakeGitHub,
                                                  db: AsyncEngine) -> None:
    async with aiohttp.ClientSession() as session:
        await set_up_tasks(cluster, session, github_server, db)
        deliveries = burst(github_server, random.Random(5))
        started = time.monotonic()
        sender = Sender(cluster, session)
        await sender.send_all(deliveries, IN_FLIGHT)
        await settle(db, cluster, [d.id for d in deliveries])
        seconds = time.monotonic() - started
    figures = await check(db, github_server, cluster, sender.log, deliveries, killed=False)
    figures.seconds = seconds
    print("\n" + figures.line(f"{REPLICAS} replicas"))
    assert sender.log.redelivered == 0  # nothing failed, so nothing was sent twice
    assert figures.handled == BURST and figures.lost == 0 and figures.duplicates == 0


def socket_owner(port: int, replicas: list[Replica]) -> Replica | None:
    """The replica whose TCP socket has the local port `port`: the one that sent a request the
    fake sees coming from that port (Linux `/proc`; None elsewhere)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for replica in replicas:
        fds = Path(f"/proc/{replica.process.pid}/fd")
        try:
            links = {os.readlink(fd) for fd in fds.iterdir()}
        except OSError:
            continue
        if links & inodes:
            return replica
    return None


async def test_a_replica_killed_mid_burst_loses_and_repeats_nothing(
        cluster: Cluster, github_server: FakeGitHub, db: AsyncEngine) -> None:
    """The replica killed is the one whose reply the fake GitHub is receiving once ~100
    deliveries of the burst have left: the reply is posted, but its sender dies before it can
    write that down. Its worker is busy with a batch too. A new process takes its place, and
    the rest of the burst (at least half) comes while it starts."""
    fake = github_server
    killed: list[str] = []
    restarted: list[asyncio.Task[Replica]] = []
    armed = asyncio.Event()
    resume = asyncio.Event()  # the second half of the burst waits for the kill
    sender: Sender

    def kill(victim: Replica, how: str) -> None:
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed.append(f"{victim.name} ({how}, {sum(sender.log.sent_to.values())} POSTs into "
                      "the burst)")
        cluster.dead.append(victim)
        fresh = cluster.spawn()
        # Down until its start line: the POSTs meant for it fail and go to another replica.
        cluster.replicas[cluster.replicas.index(victim)] = fresh
        restarted.append(asyncio.create_task(cluster.ready(fresh)))
        resume.set()

    async def kill_anyway() -> None:
        # Should no reply come (no /proc, a very slow machine), kill one while it has work.
        await asyncio.sleep(20)
        if not killed:
            kill(cluster.replicas[1], "no reply seen, sender unknown")

    hold = fake._hold

    async def kill_the_sender(request: Any) -> Any:
        if (armed.is_set() and not killed and request.method == "POST"
                and re.search(r"/issues/\d+/comments$", request.path)):
            peer = request.transport.get_extra_info("peername") if request.transport else None
            victim = socket_owner(peer[1], cluster.replicas) if peer else None
            # Without /proc, any replica: its own replies may then survive it, which is fine.
            kill(victim or cluster.replicas[1],
                 "a reply in flight" if victim else "mid-burst, sender unknown")
        return await hold(request)  # then the fake posts the comment, as GitHub would

    fake._hold = kill_the_sender  # type: ignore[method-assign]

    async with aiohttp.ClientSession() as session:
        await set_up_tasks(cluster, session, fake, db)
        deliveries = burst(fake, random.Random(7))
        started = time.monotonic()
        sender = Sender(cluster, session)

        def arm(_: Any) -> None:
            if sum(sender.log.sent_to.values()) >= 100:
                armed.set()

        sender.hooks.append(arm)
        # Paced (~75 a second), so that the replies to the first refusals come while POSTs
        # still go out; and from the 150th on, held until the kill: half the burst comes after.
        fallback = asyncio.create_task(kill_anyway())
        await sender.send_all(deliveries, IN_FLIGHT, per_second=75, hold_from=(150, resume))
        fallback.cancel()
        await restarted[0]
        await settle(db, cluster, [d.id for d in deliveries])
        seconds = time.monotonic() - started
    figures = await check(db, fake, cluster, sender.log, deliveries, killed=True)
    figures.seconds = seconds
    found = sum(r.log.read_text().count("found=marker") for r in cluster.replicas)
    repeats = sum(1 for status in sender.log.acknowledged.values() if status == 200)
    print("\n" + figures.line(f"SIGKILL of {killed[0]}")
          + f", redeliveries answered 200 (stored before the kill) {repeats}"
          + f", replies found on the forge instead of posted again {found}")
    assert figures.handled == BURST and figures.lost == 0 and figures.duplicates == 0
    assert all(r.process.returncode == -signal.SIGKILL for r in cluster.dead)


# -- what replicas meet, one at a time --------------------------------------------------------


async def waiting_for_a_lock(db: AsyncEngine, holder: int) -> None:
    """Return once some session waits for a lock that backend `holder` holds (bounded). Only
    that backend counts: other tests or programs on the same server may be waiting too."""
    query = (f"SELECT count(*) FROM pg_stat_activity"
             f" WHERE {int(holder)} = ANY(pg_blocking_pids(pid))")
    async with asyncio.timeout(10):
        while not await scalar(db, query):
            await asyncio.sleep(0.02)


async def test_a_task_another_replica_creates_meanwhile_is_tried_again_at_once(
        pg: AsyncEngine) -> None:
    """Two replicas handle the first events of issue 1 at once: both create its task. The one
    that loses the race on the unique key is no failure; its delivery is handled next turn."""
    sessionmaker = create_sessionmaker(pg)
    worker = DeliveryWorker(sessionmaker, Settings.model_validate({}), {})
    async with UnitOfWork(sessionmaker) as uow:
        repo_id = t.id_of(await ensure_repo(uow.session, "github", str(REPO_ID), REPO))
        await insert_new(uow.session, [dict(
            forge="github", delivery_id="d-label", event="issues",
            payload=label(1).body.decode(), state=t.DeliveryState.PENDING, attempts=0)])
    other = UnitOfWork(sessionmaker)  # the other replica, creating the task right now
    await other.__aenter__()
    other.session.add(t.Task(repo_id=repo_id, number=1, currency="EUR"))
    await other.session.flush()
    holder = (await other.session.exec(text("SELECT pg_backend_pid()"))  # type: ignore[call-overload]
              ).one()[0]
    handling = asyncio.create_task(worker.run_once())
    await waiting_for_a_lock(pg, holder)  # the worker's insert waits on the other's
    await other.__aexit__(None, None, None)
    assert await handling == 0
    (state, attempts, due), = await rows(
        pg, "SELECT state, attempts, next_attempt_at FROM delivery")
    assert (state, attempts, due) == ("pending", 0, None) and worker.clashed
    assert await worker.run_once() == 1
    assert await scalar(pg, "SELECT state FROM delivery") == "handled"
    assert await scalar(pg, "SELECT count(*) FROM task") == 1


async def test_what_is_a_clash_between_transactions(pg: AsyncEngine) -> None:
    """A deadlock and the same repo created twice are clashes, tried again at once; the same
    ledger key twice is a real failure, never retried as if it would pass."""
    async with pg.begin() as conn:
        ids = [(await conn.execute(text(
            "INSERT INTO repo (forge, forge_repo_id, full_path, created_at) "
            "VALUES ('github', :i, :p, now()) RETURNING id"), {"i": str(i), "p": f"o/{i}"}
        )).scalar() for i in (1, 2)]
    lock = "SELECT id FROM repo WHERE id = :id FOR UPDATE"
    async with pg.connect() as a, pg.connect() as b:
        await a.begin()
        await b.begin()
        await a.execute(text(lock), {"id": ids[0]})
        await b.execute(text(lock), {"id": ids[1]})
        crossed = {asyncio.create_task(a.execute(text(lock), {"id": ids[1]})): a,
                   asyncio.create_task(b.execute(text(lock), {"id": ids[0]})): b}
        done, waiting = await asyncio.wait(crossed, timeout=15,
                                           return_when=asyncio.FIRST_EXCEPTION)
        (lost,) = [task for task in done if task.exception()]
        await crossed[lost].rollback()  # the other one gets its lock now
        await asyncio.gather(*waiting)
        error = lost.exception()
        assert error is not None
        assert is_conflict(error)
    sessionmaker = create_sessionmaker(pg)
    with pytest.raises(Exception) as twice:
        async with UnitOfWork(sessionmaker) as uow:
            uow.session.add(t.Repo(forge="github", forge_repo_id="1", full_path="o/1"))
            await uow.session.flush()
    assert is_conflict(twice.value)
    with pytest.raises(Exception) as paid_twice:
        async with UnitOfWork(sessionmaker) as uow:
            for _ in range(2):
                uow.session.add(t.LedgerTransaction(key="payout.paid:1", kind="payout"))
            await uow.session.flush()
    assert not is_conflict(paid_twice.value)
    assert not is_conflict(ValueError("no database here"))
