"""Benchmark: the public pages on large books (issue #12's measure).

    .venv/bin/python bench/pages.py [--tasks 10000] [--pledges 10] [--requests 50] [--steady 30]

A real `bountybot serve` process on PostgreSQL (a schema of its own, dropped after; the server
is `BOUNTYBOT_TEST_PG_URL`, default postgres@127.0.0.1:5432/test), seeded in SQL with `--tasks`
tasks of one repo spread over the last year (70 % open, 10 % funded, 10 % done, 10 % cancelled;
four in five with a goal) and `--pledges` held pledges each, with their ledger transactions
(`pledge.held`: backer -> escrow; `pledge.refunded` back for the cancelled tasks) and the
`task.done` / `task.cancelled` audit lines the monthly appeal reads. Then, against the server
(page cache on, `server.page_cache_seconds` = 10):

- "served": `--requests` GETs of the repo page, the monthly appeal and the repo's Atom feed, one
  at a time, with no warm-up: "first" is the first request, which finds the cache cold and
  computes the page (what a reader waits for after a write of this process, or after 20 s
  without readers); p50, p95 and max are over all the requests, the first included;
- "steady": the three in turn, one GET every 50 ms for `--steady` seconds (30): the pages go
  stale every 10 s and are computed again in the background while readers keep coming;

then, in this process, on the same books, with the cache off (`page_cache_seconds = 0`): the SQL
statements one GET of each runs, and "uncached": `--requests` GETs of each, every one computing
its page (client and server share this process's one event loop, so these are slower than the
server's own "first").

Measured on the 2-core CI box (10,000 tasks, 100,000 pledges, 219,720 ledger entries),
`.venv/bin/python bench/pages.py --requests 50`:

    page           first   served p50/p95   steady p50/p95/max   uncached p50/p95  statements
    repo page     299 ms   0.2 / 0.4 ms     1.0 / 1.4 / 5.4 ms   387 / 436 ms      11
    /-/needs      334 ms   0.3 / 0.6 ms     1.1 / 1.4 / 3.8 ms   642 / 741 ms       6
    /-/feed.atom  120 ms   0.2 / 0.5 ms     1.0 / 1.3 / 41.5 ms  151 / 210 ms       5

So p95 is far under the 50 ms asked once a page has been computed; computing one still takes
300-350 ms (the figures of `needs.history`), paid by the first reader after a write of this
process (other readers of the same page wait for that one computation, not their own) or
after twice the TTL without readers. The pages are bounded: the repo page lists the 50 newest
open tasks (was 200) and the appeal the 100 newest live tasks (was all 8,028: 1.3 MB, now 21 kB).

Before the cache, `--requests 10` (before: `--requests 5`, the pages took seconds):

    page            before (needs.history = 12 x month_figures)   after (history in SQL)
    repo page       p50 13.3 s  p95 21.2 s  ~55 statements        p50 410 ms  p95 445 ms  10
    /-/needs        p50 20.2 s  p95 38.4 s  ~49 statements        p50 928 ms  p95 959 ms   6
    /-/feed.atom    p50  4.8 s  p95  5.5 s  ~10 statements        p50 150 ms  p95 154 ms   5

(The first run of this bench, on a quieter box, had the repo page at p50 45 s.) Where the
time goes when a page is computed: the two ledger passes of `history` (~60-110 ms each: every
backer leg of the live tasks, and every posting of the twelve months) and, on /-/needs, building
its 8,028 live tasks (of which 100 are shown); rendering 50 open tasks and their child queries.
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


async def time_get(session: aiohttp.ClientSession, url: str, count: int,
                   label: str = "") -> None:
    """`count` GETs of `url` one at a time; the first is printed apart ("first"), then p50,
    p95 and max of all `count` (the first included)."""
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
    print(f"{label}GET /{path:<40} first {times[0]:7.1f} ms  p50 {pct(times, 50):7.1f} ms"
          f"  p95 {pct(times, 95):7.1f} ms  max {max(times):7.1f} ms"
          f"  ({size / 1000:.0f} kB, {count} requests)")
    # Issue #16: every page under 50 ms p95 (here with the books this run seeded).
    p95 = pct(times, 95)
    TARGETS.append(f"  [{'met' if p95 < 50 else 'MISSED'}] {label.strip()} /{path}: p95"
                   f" {p95:.1f} ms, first {times[0]:.1f} ms (target p95 < 50 ms)")


TARGETS: list[str] = []


async def steady(session: aiohttp.ClientSession, urls: list[str], seconds: float) -> None:
    """GETs of `urls` in turn, one every 50 ms, for `seconds`: long enough for the pages to go
    stale (`server.page_cache_seconds`, 10 s) and be refreshed in the background, on the
    server's one event loop, while readers keep coming."""
    times: dict[str, list[float]] = {url: [] for url in urls}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for url in urls:
            begun = time.perf_counter()
            async with session.get(url) as answer:
                await answer.read()
                assert answer.status == 200, (url, answer.status)
            times[url].append((time.perf_counter() - begun) * 1000)
            await asyncio.sleep(0.05)
    for url, values in times.items():
        path = url.split("/", 3)[3]
        print(f"steady   GET /{path:<40} p50 {pct(values, 50):7.1f} ms  p95 {pct(values, 95):7.1f}"
              f" ms  p99 {pct(values, 99):7.1f} ms  max {max(values):7.1f} ms"
              f"  ({len(values)} requests over {seconds:.0f} s)")


async def count_statements(svc: wi.Service, paths: list[str], requests: int) -> None:
    """The SQL statements one GET of each path runs, and `requests` GETs of each with the page
    cache off (every one computes the page): the same app in this process, on the same books,
    with a counter on its engine (the server's own engine cannot be watched)."""
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
    settings = Settings()
    settings = settings.model_copy(update={"server": settings.server.model_copy(
        update={"page_cache_seconds": 0})})
    app = create_app(settings, engine=engine, features=[pages.setup, feeds.setup])
    try:
        async with TestClient(TestServer(app)) as client:
            for path in paths:
                (await (await client.get(path)).read())  # warm up
                seen.clear()
                answer = await client.get(path)
                await answer.read()
                assert answer.status == 200, (path, answer.status)
                print(f"GET {path:<49} {len(seen)} SQL statements")
            for path in paths:
                url = str(client.make_url(path))
                await time_get(client.session, url, requests, "uncached ")
    finally:
        await engine.dispose()


async def run(tasks: int, pledges: int, requests: int, seconds: float) -> None:
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
                    # No warm-up: the first request finds the page cache cold and computes.
                    for url_ in paths:
                        await time_get(session, svc.base + url_, requests, "served   ")
                    if seconds:
                        await steady(session, [svc.base + u for u in paths], seconds)
                await count_statements(svc, paths, requests)
    finally:
        await fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--pledges", type=int, default=10)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--steady", type=float, default=30, metavar="SECONDS")
    args = parser.parse_args()
    asyncio.run(run(args.tasks, args.pledges, args.requests, args.steady))
    print(f"targets (issue #16; {args.tasks} tasks, {args.tasks * args.pledges} pledges):")
    print("\n".join(TARGETS))


if __name__ == "__main__":
    main()
