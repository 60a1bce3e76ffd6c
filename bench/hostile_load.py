"""Benchmark: signed webhooks while the service is under hostile load (issue #10's measure).

    .venv/bin/python bench/hostile_load.py [--exports 40] [--webhooks 300] [--tasks 3000]

A real `bountybot serve` process on PostgreSQL (a schema of its own, dropped after), with books
large enough that an export takes a while, a poisoned delivery in its inbox (one that breaks
inside the database on every try), and `--exports` anonymous clients downloading
`/api/v1/export.json` over and over. Meanwhile signed GitHub webhooks (labels and `/pledge`
comments) are sent one at a time; printed: their answer times (p50, p99, max, how many took 1 s
or more), how long until every one of them was applied, the exports answered 200 and 503, what
`/healthz` said, and the poisoned delivery's tries. Everything runs on loopback, bounded in
count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from sqlalchemy import text

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import webhook_ingest as wi  # noqa: E402

from bountybot.forges.events import SYNC_EVENT  # noqa: E402
from bountybot.storage import tables as t  # noqa: E402
from bountybot.storage.engine import create_engine  # noqa: E402

from fakes.github import FakeGitHub  # noqa: E402


def poison() -> dict[str, object]:
    """An inbox row that fails inside the database on every try: a repo path holding a lone
    surrogate, which PostgreSQL's driver cannot encode (what the worker must count and fail
    after its tries, without holding up anything else)."""
    happening = {"repo_path": "codertocat/hello\ud800world", "repo": None, "number": 1,
                 "what": {"type": "LabelAdded"}, "title": "", "url": "", "author_id": None}
    return dict(forge="github", delivery_id="sync:github:bench-poison", event=SYNC_EVENT,
                payload=json.dumps({"happenings": [happening]}), topic=None,
                state=t.DeliveryState.PENDING, attempts=0, received_at=datetime.now(UTC))


async def seed(svc: wi.Service, tasks: int, pledges: int) -> None:
    """Books for the exports to read: `tasks` tasks of the bench repo, `pledges` each."""
    async with svc.sessionmaker() as session:
        found = await session.exec(text(  # type: ignore[call-overload]
            "SELECT id FROM repo WHERE forge_repo_id = :r"), params={"r": str(wi.REPO_ID)})
        repo_id = found.one()[0]
        now = datetime.now(UTC)
        for start in range(0, tasks, 200):
            rows = [dict(repo_id=repo_id, number=10_000 + n, title=f"Task {n}", url="",
                         state="open", currency="EUR", created_at=now, updated_at=now)
                    for n in range(start, min(tasks, start + 200))]
            ids = (await session.exec(t.Task.__table__.insert().values(rows)  # type: ignore[attr-defined]
                                      .returning(t.Task.__table__.c.id))).all()  # type: ignore[attr-defined]
            await session.exec(t.Pledge.__table__.insert().values([  # type: ignore[attr-defined]
                dict(task_id=task_id, backer=f"backer{k}", amount_minor=500 + k,
                     currency="EUR", state="pending", created_at=now, updated_at=now)
                for (task_id,) in ids for k in range(pledges)]))
        await session.exec(t.Delivery.__table__.insert().values([poison()]))  # type: ignore[attr-defined]
        await session.commit()


async def exporter(base: str, stop: asyncio.Event, counts: dict[int, int]) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            try:
                async with session.get(base + "/api/v1/export.json") as answer:
                    await answer.read()
                    counts[answer.status] = counts.get(answer.status, 0) + 1
                    if answer.status == 503:
                        await asyncio.sleep(0.2)
            except (aiohttp.ClientError, TimeoutError):
                counts[0] = counts.get(0, 0) + 1


async def run(exports: int, webhooks: int, tasks: int, pledges: int) -> None:
    pg = os.environ.get("BOUNTYBOT_TEST_PG_URL", wi.PG_DEFAULT)
    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(pg)
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = f"{pg}?search_path={schema}"
    fake = await FakeGitHub.start()
    fake.accept_token(wi.TOKEN)
    fake.add_repo(wi.REPO, wi.REPO_ID)
    deliveries = wi.Deliveries(fake)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with wi.Service(url, fake, Path(tmp)) as svc:
                await wi.send_all(svc.hook, [deliveries.label(1)], 1)
                await svc.wait_handled(1)
                await seed(svc, tasks, pledges)
                print(f"seeded {tasks} tasks, {tasks * pledges} pledges, one poisoned delivery")
                async with aiohttp.ClientSession() as session:
                    start = time.monotonic()
                    async with session.get(svc.base + "/api/v1/export.json") as answer:
                        size = len(await answer.read())
                    print(f"one export alone: {size / 1e6:.1f} MB in "
                          f"{time.monotonic() - start:.2f} s")
                stop = asyncio.Event()
                counts: dict[int, int] = {}
                loads = [asyncio.create_task(exporter(svc.base, stop, counts))
                         for _ in range(exports)]
                await asyncio.sleep(2.0)  # every exporter is in
                items = []
                for i in range(webhooks):
                    number = 2 + i % 20
                    items.append(deliveries.label(number) if i < 20 else
                                 deliveries.comment(f"user{i}", "/pledge 5", number))
                latencies: list[float] = []
                statuses: dict[int, int] = {}
                health: dict[str, int] = {}
                async with aiohttp.ClientSession() as session:
                    for kind, body in items:
                        headers = {"X-GitHub-Event": kind,
                                   "X-GitHub-Delivery": str(uuid.uuid4()),
                                   "X-Hub-Signature-256": wi.sign(body),
                                   "Content-Type": "application/json"}
                        begun = time.perf_counter()
                        async with session.post(svc.hook, data=body, headers=headers) as answer:
                            await answer.read()
                            statuses[answer.status] = statuses.get(answer.status, 0) + 1
                        latencies.append((time.perf_counter() - begun) * 1000)
                        if len(latencies) % 50 == 0:
                            async with session.get(svc.base + "/healthz") as answer:
                                said = (await answer.json()).get("status", "?")
                                health[f"{answer.status} {said}"] = health.get(
                                    f"{answer.status} {said}", 0) + 1
                        await asyncio.sleep(0.02)
                sent_at = time.monotonic()
                applied = await svc.wait_handled(1 + webhooks)
                stop.set()
                await asyncio.gather(*loads)
                async with svc.sessionmaker() as session:
                    tries = (await session.exec(text(  # type: ignore[call-overload]
                        "SELECT state, attempts FROM delivery WHERE delivery_id ="
                        " 'sync:github:bench-poison'"))).one()
                slow = sum(1 for ms in latencies if ms >= 1000)
                print(f"{webhooks} signed webhooks during {exports} concurrent exports:"
                      f" answers {statuses}, p50 {wi.pct(latencies, 50):.0f} ms,"
                      f" p99 {wi.pct(latencies, 99):.0f} ms, max {max(latencies):.0f} ms,"
                      f" {slow} took 1 s or more")
                print(f"every one applied {applied - sent_at:.1f} s after the last was sent;"
                      f" poisoned delivery: {tries[0]} after {tries[1]} tries")
                print(f"exports: {dict(sorted(counts.items()))} (0 = client error/timeout);"
                      f" /healthz: {health}")
    finally:
        await fake.close()
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=int, default=40)
    parser.add_argument("--webhooks", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--pledges", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.exports, args.webhooks, args.tasks, args.pledges))


if __name__ == "__main__":
    main()
