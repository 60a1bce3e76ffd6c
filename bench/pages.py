"""Benchmark: the public pages on large books (issue #12's measure).

    .venv/bin/python bench/pages.py [--tasks 10000] [--pledges 10] [--requests 50]

A real `bountybot serve` process on PostgreSQL (a schema of its own, dropped after; the server
is `BOUNTYBOT_TEST_PG_URL`, default postgres@127.0.0.1:5432/test), seeded in SQL with `--tasks`
tasks of one repo spread over the last year (70 % open, 10 % funded, 10 % done, 10 % cancelled;
four in five with a goal) and `--pledges` held pledges each, with their ledger transactions
(`pledge.held`: backer -> escrow; `pledge.refunded` back for the cancelled tasks) and the
`task.done` / `task.cancelled` audit lines the monthly appeal reads. Then `--requests` GETs,
one at a time, of the repo page, the monthly appeal and the repo's Atom feed; printed: p50, p95
and max of each, in milliseconds, and the page's size; then the SQL statements one GET of each
runs (the same app in this process, with a counter on its engine).

Measured on the 2-core CI box (10,000 tasks, 100,000 pledges, 219,720 ledger entries; other
jobs running beside it), `--requests 10` (before: `--requests 5`, the pages took seconds):

    page            before (needs.history = 12 x month_figures)   after (history in SQL)
    repo page       p50 13.3 s  p95 21.2 s  ~55 statements        p50 410 ms  p95 445 ms  10
    /-/needs        p50 20.2 s  p95 38.4 s  ~49 statements        p50 928 ms  p95 959 ms   6
    /-/feed.atom    p50  4.8 s  p95  5.5 s  ~10 statements        p50 150 ms  p95 154 ms   5

(The first run of this bench, on a quieter box, had the repo page at p50 45 s.) Where the
time goes now: the two ledger passes of `history` (~60-110 ms each: every backer leg of the
live tasks, and every posting of the twelve months), rendering 200 open tasks (~75 ms) and their
six child queries (~50 ms); on /-/needs, its 8,028 live tasks (1.3 MB of HTML).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from sqlalchemy import text

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import webhook_ingest as wi  # noqa: E402

from fakes.github import FakeGitHub  # noqa: E402

SEED = [
    # Tasks: numbers from 1000, created over the last 365 days, ended (done, cancelled) 5 days on.
    """INSERT INTO task (repo_id, number, title, url, state, goal_minor, currency, created_at,
                         updated_at)
       SELECT :repo, 1000 + g, 'Task ' || g, '',
              CASE WHEN g % 10 < 7 THEN 'open' WHEN g % 10 = 7 THEN 'funded'
                   WHEN g % 10 = 8 THEN 'done' ELSE 'cancelled' END,
              CASE WHEN g % 5 = 0 THEN NULL ELSE 10000 + (g % 50) * 1000 END, 'EUR',
              now() - (g % 365) * interval '1 day' - interval '1 hour',
              now() - (g % 365) * interval '1 day' + interval '5 days'
       FROM generate_series(1, :tasks) AS g""",
    """INSERT INTO pledge (task_id, backer, amount_minor, currency, state, created_at, updated_at)
       SELECT t.id, 'backer' || k, 500 + k * 100, 'EUR',
              CASE t.state WHEN 'cancelled' THEN 'refunded' WHEN 'done' THEN 'paid_out'
                           ELSE 'held' END,
              least(t.created_at + k * interval '1 hour', now()), t.updated_at
       FROM task AS t CROSS JOIN generate_series(1, :pledges) AS k
       WHERE t.repo_id = :repo AND t.number >= 1000""",
    """INSERT INTO ledger_transaction (key, kind, task_id, created_at)
       SELECT 'pledge.held:' || p.id, 'pledge.held', p.task_id, p.created_at
       FROM pledge AS p WHERE p.backer LIKE 'backer%'""",
    """INSERT INTO ledger_entry (transaction_id, account, amount_minor, currency)
       SELECT l.id, a.account, a.amount, 'EUR'
       FROM ledger_transaction AS l
       JOIN pledge AS p ON l.key = 'pledge.held:' || p.id
       CROSS JOIN LATERAL (VALUES
                ('backer:github:' || p.backer, -p.amount_minor),
                ('escrow:task:' || p.task_id, p.amount_minor)) AS a(account, amount)
       WHERE l.kind = 'pledge.held'""",
    """INSERT INTO ledger_transaction (key, kind, task_id, created_at)
       SELECT 'pledge.refunded:' || p.id, 'pledge.refunded', p.task_id, t.updated_at
       FROM pledge AS p JOIN task AS t ON t.id = p.task_id
       WHERE p.state = 'refunded' AND t.updated_at < now()""",
    """INSERT INTO ledger_entry (transaction_id, account, amount_minor, currency)
       SELECT l.id, a.account, a.amount, 'EUR'
       FROM ledger_transaction AS l
       JOIN pledge AS p ON l.key = 'pledge.refunded:' || p.id
       CROSS JOIN LATERAL (VALUES
                ('backer:github:' || p.backer, p.amount_minor),
                ('escrow:task:' || p.task_id, -p.amount_minor)) AS a(account, amount)
       WHERE l.kind = 'pledge.refunded'""",
    """INSERT INTO audit_event (task_id, actor, action, detail, created_at)
       SELECT t.id, 'bench', 'task.' || t.state, '{}', least(t.updated_at, now())
       FROM task AS t WHERE t.repo_id = :repo AND t.state IN ('done', 'cancelled')""",
    "ANALYZE",
]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def seed(svc: wi.Service, tasks: int, pledges: int) -> None:
    async with svc.sessionmaker() as session:
        found = await session.exec(text(  # type: ignore[call-overload]
            "SELECT id FROM repo WHERE forge_repo_id = :r"), params={"r": str(wi.REPO_ID)})
        repo_id = found.one()[0]
        for sql in SEED:
            params = {"repo": repo_id, "tasks": tasks, "pledges": pledges}
            used = {k: v for k, v in params.items() if f":{k}" in sql}
            await session.exec(text(sql), params=used)  # type: ignore[call-overload]
        await session.commit()
        counts = (await session.exec(text(  # type: ignore[call-overload]
            "SELECT (SELECT count(*) FROM task), (SELECT count(*) FROM pledge),"
            " (SELECT count(*) FROM ledger_entry)"))).one()
    print(f"seeded {counts[0]} tasks, {counts[1]} pledges, {counts[2]} ledger entries")


async def time_get(session: aiohttp.ClientSession, url: str, count: int) -> None:
    times: list[float] = []
    size = 0
    for _ in range(count):
        begun = time.perf_counter()
        async with session.get(url) as answer:
            body = await answer.read()
            assert answer.status == 200, (url, answer.status, body[:200])
        times.append((time.perf_counter() - begun) * 1000)
        size = len(body)
    path = url.split("/", 3)[3]
    print(f"GET /{path:<48} p50 {pct(times, 50):7.1f} ms  p95 {pct(times, 95):7.1f} ms"
          f"  max {max(times):7.1f} ms  ({size / 1000:.0f} kB, {count} requests)")


async def count_statements(svc: wi.Service, paths: list[str]) -> None:
    """The SQL statements one GET of each path runs: the same app in this process, on the
    same books, with a counter on its engine (the server's own engine cannot be watched)."""
    from aiohttp.test_utils import TestClient, TestServer
    from sqlalchemy import event

    from bountybot.app import create_app
    from bountybot.config import Settings
    from bountybot.storage.engine import create_engine
    from bountybot.web import feeds, pages

    os.environ.update(svc.env)
    engine = create_engine(svc.db_url)
    seen: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda *args: seen.append(args[2]))
    app = create_app(Settings(), engine=engine, features=[pages.setup, feeds.setup])
    try:
        async with TestClient(TestServer(app)) as client:
            for path in paths:
                (await (await client.get(path)).read())  # warm up
                seen.clear()
                answer = await client.get(path)
                await answer.read()
                assert answer.status == 200, (path, answer.status)
                print(f"GET {path:<49} {len(seen)} SQL statements")
    finally:
        await engine.dispose()


async def run(tasks: int, pledges: int, requests: int) -> None:
    pg = os.environ.get("BOUNTYBOT_TEST_PG_URL", wi.PG_DEFAULT)
    fake = await FakeGitHub.start()
    fake.accept_token(wi.TOKEN)
    fake.add_repo(wi.REPO, wi.REPO_ID)
    deliveries = wi.Deliveries(fake)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with wi.pg_schema(pg) as url, wi.Service(url, fake, Path(tmp)) as svc:
                await wi.send_all(svc.hook, [deliveries.label(1)], 1)
                await svc.wait_handled(1)
                await seed(svc, tasks, pledges)
                path = f"/github/{wi.REPO}"
                paths = [path, f"{path}/-/needs", f"{path}/-/feed.atom"]
                async with aiohttp.ClientSession() as session:
                    for url_ in paths:
                        async with session.get(svc.base + url_) as answer:  # warm up
                            await answer.read()
                        await time_get(session, svc.base + url_, requests)
                await count_statements(svc, paths)
    finally:
        await fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--pledges", type=int, default=10)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.tasks, args.pledges, args.requests))


if __name__ == "__main__":
    main()
