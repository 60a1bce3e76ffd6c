"""Benchmark: every public read (API routes, pages, badges, feeds) on books of 1k to 100k tasks.

    .venv/bin/python bench/reads.py [--sizes 1000,10000,100000] [--requests 20]
                                    [--route-seconds 4] [--export-total-max 1000]

Issue #16's "Reads" and "Growth" targets: every API route and public page under 50 ms p95 with
100,000 tasks and 1,000,000 pledges in PostgreSQL, a task with 10,000 pledges among them; the
growth of each figure from 1k to 100k tasks printed beside the growth of what it returns.

A real `bountybot serve` on PostgreSQL (`BOUNTYBOT_TEST_PG_URL`, default
postgres@127.0.0.1:5432/test; a schema of its own, dropped after) with the page cache off
(`server.page_cache_seconds = 0`: every GET computes its page). The books grow in place from
one size to the next, seeded in SQL through asyncpg (`INSERT ... SELECT generate_series`, with
triggers and foreign-key checks off for the seeding session: `session_replication_role =
replica`), in the shape bench/pages.py seeds: one repo, tasks over the last year (70 % open,
10 % funded, 10 % done, 10 % cancelled; four in five with a goal), 10 pledges each from backers
shared by ten tasks (so a backer's statement stays the same size), their `pledge.held` ledger
transactions (backer -> escrow) and `pledge.held` audit lines; refunds (`pledge.refunded`) for
the cancelled tasks, a paid payout for each done task (`task.done`: escrow -> developer,
`payout.paid`: developer -> external), the `task.done` / `task.cancelled` audit lines; plus,
from the first size on, task #1 with 10,000 pledges. Then `ANALYZE`.

Each route is asked `--requests` times one at a time (at most `--route-seconds` each, at least
twice; `n` says how many), p50 and p95 printed beside the 50 ms target, with the size of the
answer. The exports
are measured to their first byte (the connection is then closed) and, for sizes up to
`--export-total-max`, once to their last byte. A route that does not answer 200 (or 301 for
`/tasks/{id}`) is printed with its status. Last, the growth table: each p95 at every size, the
ratio of the largest to the smallest, and the same ratio for the answer's bytes.

Measured on the shared 2-core box (other suites running beside it, so +-50 %), p95 at 100,000
tasks and 1,010,000 pledges, `.venv/bin/python bench/reads.py --requests 20` (before: the tree
without keyset pages, pledge sums, bounded task pages, migration 0011; `--requests 10`):

    route                      before      after   (answer before -> after)
    api tasks (first page)     527 ms      88 ms   (1.7 MB -> 120 kB: the 10k-pledge task)
    api tasks ?after= (deep)   731 ms      37 ms   (after= did not exist: it was page 1)
    api task, 10k pledges      875 ms      31 ms   (1.6 MB -> 3.8 kB)
    api task ledger, 10k      2233 ms      24 ms   (3.6 MB -> 34 kB, 100 a page)
    page task, 10k pledges    3510 ms      56 ms   (1.6 MB -> 9.5 kB)
    badge task, 10k pledges    745 ms      25 ms
    export.json / .csv first byte  1836 / 1842 ms  ->  5 / 3 ms
    api needs                15371 ms    4873 ms   (29 MB -> 76 kB)
    page repo / needs       7164 / 15263 ms  ->  4953 / 5379 ms

The appeal's figures (`needs.history`: the repo page, /-/needs, the index, the feeds, the needs
badges, `GET /api/v1/repos` and `.../needs`) still read every ledger posting of their window:
they grow with the books (x17 to x64 from 1k to 100k) and are served from the page cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import webhook_ingest as wi  # noqa: E402

from fakes.github import FakeGitHub  # noqa: E402

TARGET_MS = 50.0
BIG_PLEDGES = 10_000
PLEDGES = 10
PATH = "octo/books"

# One increment of the books: the tasks numbered from 1000 + :lo + 1 to 1000 + :hi, each with
# their children. `:task0`, `:pledge0` and `:payout0` are the largest ids before it, so that
# each statement touches only the new rows.
GROW = [
    """INSERT INTO task (repo_id, number, title, url, state, goal_minor, currency, created_at,
                         updated_at)
       SELECT :repo, 1000 + g, 'Task ' || g, 'https://github.com/octo/books/issues/' || (1000 + g),
              CASE WHEN g % 10 < 7 THEN 'open' WHEN g % 10 = 7 THEN 'funded'
                   WHEN g % 10 = 8 THEN 'done' ELSE 'cancelled' END,
              CASE WHEN g % 5 = 0 THEN NULL ELSE 10000 + (g % 50) * 1000 END, 'EUR',
              now() - (g % 365) * interval '1 day' - interval '1 hour',
              now() - (g % 365) * interval '1 day' + interval '5 days'
       FROM generate_series(:lo + 1, :hi) AS g""",
    """INSERT INTO pledge (task_id, backer, amount_minor, currency, state, created_at, updated_at)
       SELECT t.id, 'backer' || ((t.number / 10) * 10 + k), 500 + k * 100, 'EUR',
              CASE t.state WHEN 'cancelled' THEN 'refunded' WHEN 'done' THEN 'paid_out'
                           ELSE 'held' END,
              least(t.created_at + k * interval '1 hour', now()), t.updated_at
       FROM task AS t CROSS JOIN generate_series(1, :pledges) AS k
       WHERE t.id > :task0
       ORDER BY t.id, k""",
    # Ledger transaction ids: a pledge's own id when held, 10M on when refunded, 20M on for a
    # task's `task.done`, 30M on for a payout's `payout.paid`: the entries join on integers.
    """INSERT INTO ledger_transaction (id, key, kind, task_id, memo, created_at)
       SELECT p.id, 'pledge.held:' || p.id, 'pledge.held', p.task_id, p.backer || ' pledges',
              p.created_at
       FROM pledge AS p WHERE p.id > :pledge0""",
    """INSERT INTO ledger_entry (transaction_id, account, amount_minor, currency)
       SELECT p.id, a.account, a.amount, 'EUR'
       FROM pledge AS p
       CROSS JOIN LATERAL (VALUES
                ('backer:github:' || p.backer, -p.amount_minor),
                ('escrow:task:' || p.task_id, p.amount_minor)) AS a(account, amount)
       WHERE p.id > :pledge0""",
    """INSERT INTO audit_event (task_id, actor, action, detail, created_at)
       SELECT p.task_id, p.backer, 'pledge.held',
              json_build_object('backer', p.backer, 'amount', p.amount_minor, 'pledge', p.id),
              p.created_at
       FROM pledge AS p WHERE p.id > :pledge0""",
    """INSERT INTO ledger_transaction (id, key, kind, task_id, memo, created_at)
       SELECT 10000000 + p.id, 'pledge.refunded:' || p.id, 'pledge.refunded', p.task_id,
              'back to ' || p.backer, t.updated_at
       FROM pledge AS p JOIN task AS t ON t.id = p.task_id
       WHERE p.id > :pledge0 AND p.state = 'refunded' AND t.updated_at < now()""",
    """INSERT INTO ledger_entry (transaction_id, account, amount_minor, currency)
       SELECT 10000000 + p.id, a.account, a.amount, 'EUR'
       FROM pledge AS p JOIN task AS t ON t.id = p.task_id
       CROSS JOIN LATERAL (VALUES
                ('backer:github:' || p.backer, p.amount_minor),
                ('escrow:task:' || p.task_id, -p.amount_minor)) AS a(account, amount)
       WHERE p.id > :pledge0 AND p.state = 'refunded' AND t.updated_at < now()""",
    """INSERT INTO payout (task_id, developer, amount_minor, currency, state, reference,
                           attempts, created_at, paid_at, released_at)
       SELECT t.id, 'dev' || (t.number / 100), s.total, 'EUR', 'paid', 'ref-' || t.id, 0,
              least(t.updated_at, now()), least(t.updated_at, now()), least(t.updated_at, now())
       FROM task AS t
       JOIN (SELECT task_id, sum(amount_minor) AS total FROM pledge
             WHERE task_id > :task0 GROUP BY task_id) AS s ON s.task_id = t.id
       WHERE t.id > :task0 AND t.state = 'done'""",
    """INSERT INTO ledger_transaction (id, key, kind, task_id, memo, created_at)
       SELECT 20000000 + po.task_id, 'task.done:' || po.task_id, 'task.done', po.task_id,
              'merged', po.created_at
       FROM payout AS po WHERE po.id > :payout0""",
    """INSERT INTO ledger_entry (transaction_id, account, amount_minor, currency)
       SELECT 20000000 + po.task_id, a.account, a.amount, 'EUR'
       FROM payout AS po CROSS JOIN LATERAL (VALUES
                ('escrow:task:' || po.task_id, -po.amount_minor),
                ('developer:github:' || po.developer, po.amount_minor)) AS a(account, amount)
       WHERE po.id > :payout0""",
    """INSERT INTO ledger_transaction (id, key, kind, task_id, memo, created_at)
       SELECT 30000000 + po.id, 'payout.paid:' || po.id, 'payout.paid', po.task_id,
              po.reference, po.paid_at
       FROM payout AS po WHERE po.id > :payout0""",
    """INSERT INTO ledger_entry (transaction_id, account, amount_minor, currency)
       SELECT 30000000 + po.id, a.account, a.amount, 'EUR'
       FROM payout AS po CROSS JOIN LATERAL (VALUES
                ('developer:github:' || po.developer, -po.amount_minor),
                ('external', po.amount_minor)) AS a(account, amount)
       WHERE po.id > :payout0""",
    """INSERT INTO audit_event (task_id, actor, action, detail, created_at)
       SELECT t.id, 'bench', 'task.' || t.state, '{}', least(t.updated_at, now())
       FROM task AS t WHERE t.id > :task0 AND t.state IN ('done', 'cancelled')""",
]

# Task #1: 10,000 pledges from as many backers, all held.
BIG = [
    """INSERT INTO task (repo_id, number, title, url, state, goal_minor, currency, created_at,
                         updated_at)
       VALUES (:repo, 1, 'The big one', 'https://github.com/octo/books/issues/1', 'funded',
               1000000, 'EUR', now() - interval '20 days', now() - interval '1 day')""",
]


def _sql(statement: str, params: dict[str, int]) -> str:
    """`:name` parameters filled in (integers only, from this file)."""
    for name in sorted(params, key=len, reverse=True):
        statement = statement.replace(f":{name}", str(int(params[name])))
    return statement


async def _largest(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {table}"))


async def grow(conn: asyncpg.Connection, repo: int, lo: int, hi: int, big: bool) -> float:
    """Add tasks `lo + 1` to `hi` (and task #1 with its 10,000 pledges if `big`); seconds."""
    begun = time.perf_counter()
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        params = {"repo": repo, "lo": lo, "hi": hi, "pledges": PLEDGES,
                  "task0": await _largest(conn, "task"),
                  "pledge0": await _largest(conn, "pledge"),
                  "payout0": await _largest(conn, "payout")}
        if big:
            for statement in BIG:
                await conn.execute(_sql(statement, params))
            # Its pledges through the same statements, with `pledges` = 10,000 and lo = hi.
            one = {**params, "lo": hi, "pledges": BIG_PLEDGES}
            for statement in GROW[1:]:
                await conn.execute(_sql(statement, one).replace(
                    "'backer' || ((t.number / 10) * 10 + k)", "'big' || k"))
            params.update(task0=await _largest(conn, "task"),
                          pledge0=await _largest(conn, "pledge"),
                          payout0=await _largest(conn, "payout"))
        for statement in GROW:
            await conn.execute(_sql(statement, params))
        for table in ("task", "pledge", "payout", "ledger_transaction", "ledger_entry",
                      "audit_event"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                               f" (SELECT max(id) FROM {table}))")
    # What autovacuum would have done by then: statistics and the visibility map (which
    # index-only scans need).
    await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - begun


@dataclass
class Figure:
    """One route measured at one size."""

    p50: float | None = None
    p95: float | None = None
    size: int = 0
    status: int = 200
    note: str = ""
    total: float | None = None  # an export's last byte, once
    count: int = 0  # requests measured


@dataclass
class Size:
    tasks: int
    pledges: int = 0
    seeded: float = 0.0
    figures: dict[str, Figure] = field(default_factory=dict)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(session: aiohttp.ClientSession, url: str, requests: int, seconds: float,
                  ok: int = 200) -> Figure:
    """GETs of `url` one at a time: `requests` of them, or as many as `seconds` allow (two
    or more; the count is printed beside the figures)."""
    times: list[float] = []
    size, status = 0, ok
    end = time.perf_counter() + seconds
    while len(times) < requests and (len(times) < 2 or time.perf_counter() < end):
        begun = time.perf_counter()
        async with session.get(url, allow_redirects=False) as answer:
            body = await answer.read()
            status = answer.status
        times.append((time.perf_counter() - begun) * 1000)
        size = len(body)
        if status != ok:
            return Figure(status=status, size=size, note=body[:120].decode(errors="replace"))
    return Figure(pct(times, 50), pct(times, 95), size, status, count=len(times))


async def first_byte(session: aiohttp.ClientSession, url: str, requests: int,
                     seconds: float) -> Figure:
    """An export's time to its first bytes; the connection is closed after them."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < requests and (len(times) < 2 or time.perf_counter() < end):
        begun = time.perf_counter()
        answer = await session.get(url)
        try:
            if answer.status != 200:
                return Figure(status=answer.status)
            await answer.content.readany()
            times.append((time.perf_counter() - begun) * 1000)
        finally:
            answer.close()
        await asyncio.sleep(0.05)  # the server lets go of its turn of the heavy reads
    return Figure(pct(times, 50), pct(times, 95), count=len(times))


async def last_byte(session: aiohttp.ClientSession, url: str, figure: Figure) -> None:
    begun = time.perf_counter()
    size = 0
    async with session.get(url) as answer:
        async for chunk in answer.content.iter_chunked(1 << 16):
            size += len(chunk)
    figure.total = (time.perf_counter() - begun) * 1000
    figure.size = size


async def routes(conn: asyncpg.Connection, repo: int) -> list[tuple[str, str]]:
    """(name, path) of every public read, with ids from the books."""
    task = await conn.fetchrow(
        "SELECT id, number FROM task WHERE number = 1000 + 7 ORDER BY id LIMIT 1")
    big = await conn.fetchrow("SELECT id, number FROM task WHERE number = 1")
    total = int(await conn.fetchval("SELECT count(*) FROM task"))
    deep_page = max(1, total // 50 - 1)
    deep_id = int(await conn.fetchval(
        "SELECT id FROM task ORDER BY id OFFSET $1 LIMIT 1", max(0, total - 60)))
    month = datetime.now(UTC).date().replace(day=1)
    last = f"{month.year - (month.month == 1)}-{(month.month - 2) % 12 + 1:02d}"
    repo_path = f"/github/{PATH}"
    issue = f"{repo_path}/-/issues/{task['number']}"
    big_issue = f"{repo_path}/-/issues/{big['number']}"
    return [
        ("api tasks (first page)", "/api/v1/tasks"),
        ("api tasks (deep page=)", f"/api/v1/tasks?page={deep_page}"),
        ("api tasks (deep after=)", f"/api/v1/tasks?after={deep_id}"),
        ("api tasks repo+state", f"/api/v1/tasks?repo={PATH}&state=open"),
        ("api task", f"/api/v1/tasks/{task['id']}"),
        ("api task 10k pledges", f"/api/v1/tasks/{big['id']}"),
        ("api task pledges 10k", f"/api/v1/tasks/{big['id']}/pledges"),
        ("api task ledger", f"/api/v1/tasks/{task['id']}/ledger"),
        ("api task ledger 10k", f"/api/v1/tasks/{big['id']}/ledger"),
        ("api repos", "/api/v1/repos"),
        ("api needs", f"/api/v1/repos/{repo}/needs"),
        ("api needs last month", f"/api/v1/repos/{repo}/needs/{last}"),
        ("api statement backer", "/api/v1/statements/github/backers/backer1017"),
        ("api statement developer", "/api/v1/statements/github/developers/dev12"),
        ("page /", "/"),
        ("page repo", repo_path),
        ("page needs", f"{repo_path}/-/needs"),
        ("page needs last month", f"{repo_path}/-/needs/{last}"),
        ("page task", issue),
        ("page task 10k pledges", big_issue),
        ("page /tasks/{id} (301)", f"/tasks/{task['id']}"),
        ("badge task svg", f"{issue}/badge.svg"),
        ("badge task json", f"{issue}/badge.json"),
        ("badge task 10k svg", f"{big_issue}/badge.svg"),
        ("badge needs svg", f"{repo_path}/-/needs/badge.svg"),
        ("badge needs json", f"{repo_path}/-/needs/badge.json"),
        ("feed instance", "/feed.atom"),
        ("feed repo", f"{repo_path}/-/feed.atom"),
        ("stylesheet", "/static/bountybot.css"),
        ("export.json", "/api/v1/export.json"),
        ("export.csv", "/api/v1/export.csv"),
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _size(value: int) -> str:
    return f"{value / 1000:.1f} kB" if value < 10_000_000 else f"{value / 1e6:.0f} MB"


def print_size(size: Size) -> None:
    print(f"\n{size.tasks:,} tasks, {size.pledges:,} pledges (seeded in {size.seeded:.1f} s),"
          " page cache off; target p95 < 50 ms")
    print(f"  {'route':<26} {'p50 ms':>8} {'p95 ms':>8}  {'target':<7} {'answer':>9} {'n':>3}"
          "  notes")
    for name, f in size.figures.items():
        if f.status not in (200, 301):
            print(f"  {name:<26} {'-':>8} {'-':>8}  {'n/a':<7} {'':>9}  status {f.status}"
                  f" {f.note[:60]!r}")
            continue
        met = "met" if f.p95 is not None and f.p95 < TARGET_MS else "MISSED"
        extra = f"first byte; whole file {_ms(f.total)} ms" if f.total is not None else (
            "first byte" if name.startswith("export") else "")
        print(f"  {name:<26} {_ms(f.p50):>8} {_ms(f.p95):>8}  {met:<7} {_size(f.size):>9}"
              f" {f.count:>3}  {extra}")


def print_growth(sizes: list[Size]) -> None:
    first, last = sizes[0], sizes[-1]
    head = "".join(f"{s.tasks:>10,}" for s in sizes)
    print(f"\ngrowth of p95 (ms) from {first.tasks:,} to {last.tasks:,} tasks"
          " (x: largest / smallest), beside the growth of the answer's bytes")
    print(f"  {'route':<26}{head}  {'x p95':>7} {'x bytes':>8}  target at {last.tasks:,}")
    for name in last.figures:
        row = [s.figures.get(name, Figure(status=0)) for s in sizes]
        cells = "".join(f"{_ms(f.p95) if f.status in (200, 301) else f.status:>10}"
                        for f in row)
        a, b = row[0], row[-1]
        ratio = (f"{b.p95 / a.p95:7.1f}" if a.p95 and b.p95 is not None else f"{'-':>7}")
        grown = (f"{b.size / a.size:8.1f}" if a.size and b.size and not name.startswith(
            "export") else f"{'-':>8}")
        met = ("met" if b.p95 is not None and b.p95 < TARGET_MS else "MISSED"
               if b.status in (200, 301) else "n/a")
        print(f"  {name:<26}{cells}  {ratio} {grown}  {met}")


async def run(sizes: list[int], requests: int, seconds: float, export_total_max: int) -> None:
    pg = os.environ.get("BOUNTYBOT_TEST_PG_URL", wi.PG_DEFAULT)
    fake = await FakeGitHub.start()
    fake.accept_token(wi.TOKEN)
    measured: list[Size] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with wi.pg_schema(pg) as url:
                svc = wi.Service(url, fake, Path(tmp))
                # Every GET computes its page: what a reader waits for after a write.
                svc.env["BOUNTYBOT_SERVER_PAGE_CACHE_SECONDS"] = "0"
                svc.env["BOUNTYBOT_SERVER_READ_WAIT_SECONDS"] = "30"
                async with svc:
                    print(f"schema migrated to revision {svc.revision}")
                    dsn = pg.replace("postgresql+asyncpg://", "postgresql://")
                    conn = await asyncpg.connect(
                        dsn, server_settings={"search_path": url.rsplit("=", 1)[1]})
                    try:
                        repo = int(await conn.fetchval(
                            "INSERT INTO repo (forge, forge_repo_id, full_path, private,"
                            " published, created_at) VALUES ('github', '1', $1, false, false,"
                            " now()) RETURNING id", PATH))
                        done = 0
                        async with aiohttp.ClientSession() as session:
                            for tasks in sizes:
                                size = Size(tasks)
                                size.seeded = await grow(conn, repo, done, tasks, big=done == 0)
                                done = tasks
                                size.pledges = int(await conn.fetchval(
                                    "SELECT count(*) FROM pledge"))
                                for name, path in await routes(conn, repo):
                                    full = svc.base + path
                                    if name.startswith("export"):
                                        f = await first_byte(session, full, requests, seconds)
                                        if f.status == 200 and tasks <= export_total_max:
                                            await last_byte(session, full, f)
                                    else:
                                        ok = 301 if "(301)" in name else 200
                                        f = await measure(session, full, requests, seconds, ok)
                                    size.figures[name] = f
                                print_size(size)
                                measured.append(size)
                    finally:
                        await conn.close()
    finally:
        await fake.close()
    if len(measured) > 1:
        print_growth(measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="task counts, growing (default 1000,10000,100000)")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--route-seconds", type=float, default=4.0,
                        help="at most this long per route and size (at least 3 requests)")
    parser.add_argument("--export-total-max", type=int, default=1_000,
                        help="download the whole exports only up to this many tasks")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] < 1:
        parser.error("--sizes must grow, from 1")
    begun = time.perf_counter()
    asyncio.run(run(sizes, args.requests, args.route_seconds, args.export_total_max))
    print(f"\n(the whole run took {time.perf_counter() - begun:.0f} s)")


if __name__ == "__main__":
    main()
