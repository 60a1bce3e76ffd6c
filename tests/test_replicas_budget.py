"""Three replicas on one PostgreSQL spend one write budget per token, and drop no reaction.

Three real `serve` processes (the machinery of `tests/test_replicas.py`) share a fresh
PostgreSQL schema and a local GitHub, all writing with one token. A burst of 1,000 signed
`/pledge` deliveries (about 12 a second, so that the summaries keep changing) asks for far more
writes than the budget allows. GitHub's 80 writes a minute and 500 an hour are scaled down to 20
and 30 here, so that the hour's limit is reached within two minutes; the bot is configured a
tenth below them (18 and 27), as it is below GitHub's (72 and 450), for the moment between a
write's slot and its arrival. The run goes on until every delivery is handled and the minute
window alone would have let more writes go; then:

- the fake GitHub's arrival times hold no more than 20 writes in any 60 s, 30 in the hour;
- the start times the replicas recorded in the database hold no more than 18 and 27, and are
  exactly the writes GitHub received: the hour's budget was spent, not more, not less;
- every pledge was handled, no message is dead or skipped, and the reactions that wait for a
  later budget were never counted as attempts.

`.venv/bin/pytest -s -p no:cacheprovider tests/test_replicas_budget.py` prints the figures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from test_replicas import (  # noqa: F401 - db, replica_db: fixtures
    REPLICAS,
    Cluster,
    Delivery,
    Sender,
    comment,
    db,
    label,
    replica_db,
    rows,
    scalar,
    settle,
)

from bountybot.governor import token_key

from fakes.github import FakeGitHub
from github_harness import MAINTAINER, REPO, REPO_ID, TOKEN

BURST = 1000
TASKS = 3
PER_SECOND = 12.5  # deliveries sent a second: the burst lasts 80 s
GITHUB_MINUTE, GITHUB_HOUR = 20, 30  # the forge's limits, GitHub's 80 and 500 scaled down
PER_MINUTE, PER_HOUR = 18, 27  # the bot's, a tenth in hand
RUN_LIMIT = 300.0  # seconds; the run needs about 100
KEY = token_key("github")


def most_in(starts: Sequence[float], window: float) -> int:
    """The most start times any window of `window` seconds holds."""
    times = sorted(starts)
    most = lo = 0
    for hi, at in enumerate(times):
        while at - times[lo] >= window:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


@pytest.fixture
async def cluster(tmp_path: Path, replica_db: str,  # noqa: F811 - the fixture imported above
                  github_server: FakeGitHub) -> AsyncIterator[Cluster]:
    github_server.accept_token(TOKEN)
    github_server.add_repo(REPO, REPO_ID)
    github_server.set_permission(REPO, MAINTAINER, "maintain")
    c = Cluster(tmp_path, replica_db, github_server)
    c.env.update({"BOUNTYBOT_SCHEDULER_WRITES_PER_MINUTE": str(PER_MINUTE),
                  "BOUNTYBOT_SCHEDULER_WRITES_PER_HOUR": str(PER_HOUR)})
    try:
        await c.start(REPLICAS)
        yield c
    finally:
        await asyncio.to_thread(c.stop)


async def db_now(db: AsyncEngine) -> float:  # noqa: F811 - the fixture's name, as a parameter
    return float(await scalar(db, "SELECT extract(epoch FROM clock_timestamp())"))


async def recorded(db: AsyncEngine) -> list[float]:  # noqa: F811
    """The write start times the replicas recorded for the token (the database's clock)."""
    return [float(r[0]) for r in await rows(
        db, "SELECT extract(epoch FROM started_at) FROM write_budget WHERE key = :key"
            " ORDER BY started_at", key=KEY)]


async def run_past_the_hour_budget(db: AsyncEngine, cluster: Cluster,  # noqa: F811
                                   sending: asyncio.Task[None], ids: list[str]) -> None:
    """Until the burst is sent and handled, and the first 18 writes have left the minute (so
    that the minute alone would allow more writes than the hour has left)."""
    deadline = time.monotonic() + RUN_LIMIT
    while True:
        starts = await recorded(db)
        handled = await scalar(db, "SELECT count(*) FROM delivery WHERE state = 'handled'"
                                   " AND delivery_id = ANY(:ids)", ids=ids)
        if (sending.done() and handled == len(ids) and len(starts) >= PER_MINUTE
                and await db_now(db) >= starts[PER_MINUTE - 1] + 62):
            await sending  # raises what the sender raised, if anything
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {RUN_LIMIT}s: {handled} of {len(ids)} handled,"
                                 f" {len(starts)} writes\n{cluster.logs()}")
        await asyncio.sleep(0.5)  # polling real processes, not standing for a clock


async def test_three_replicas_share_one_write_budget_through_a_burst(
        cluster: Cluster, github_server: FakeGitHub, db: AsyncEngine) -> None:  # noqa: F811
    fake = github_server
    async with aiohttp.ClientSession() as session:
        setup = [label(n) for n in range(1, TASKS + 1)]
        await Sender(cluster, session).send_all(setup, in_flight=TASKS)
        await settle(db, cluster, [d.id for d in setup])
        rng = random.Random(11)
        deliveries: list[Delivery] = [
            comment(fake, f"backer{rng.randrange(200)}", f"/pledge {rng.randrange(1, 50)}",
                    rng.randrange(1, TASKS + 1), "pledge") for _ in range(BURST)]
        started = time.monotonic()
        sender = Sender(cluster, session)
        sending = asyncio.create_task(sender.send_all(deliveries, 24, per_second=PER_SECOND))
        ids = [d.id for d in deliveries]
        await run_past_the_hour_budget(db, cluster, sending, ids)
        seconds = time.monotonic() - started
    await asyncio.to_thread(cluster.stop)  # nothing more is sent from here on

    arrivals = [r.at for r in fake.writes()]
    starts = await recorded(db)
    pledges = await scalar(db, "SELECT count(*) FROM pledge")
    states = dict(await rows(db, "SELECT state, count(*) FROM outbox GROUP BY state"))
    waiting = await rows(db, "SELECT kind, attempts FROM outbox WHERE state = 'pending'")
    print(f"\nfigures: {REPLICAS} replicas, {BURST} pledges: writes {len(arrivals)}"
          f" (recorded {len(starts)}), most in any 60 s {most_in(arrivals, 60)} at GitHub"
          f" ({most_in(starts, 60)} recorded), most in any hour {most_in(arrivals, 3600)},"
          f" limits {PER_MINUTE}/min {PER_HOUR}/h (GitHub's here {GITHUB_MINUTE}, {GITHUB_HOUR}),"
          f" outbox {states}, seconds {seconds:.1f}")

    # The forge's view, and the replicas' shared record of it.
    assert most_in(arrivals, 60) <= GITHUB_MINUTE and most_in(arrivals, 3600) <= GITHUB_HOUR
    assert most_in(starts, 60) <= PER_MINUTE and len(starts) <= PER_HOUR
    # The whole hour's budget was spent (the burst asked for far more), and every write the
    # budget granted is one GitHub received: none went around it.
    assert len(starts) == PER_HOUR == len(arrivals)
    assert all(r.headers.get("authorization", "").endswith(TOKEN) for r in fake.writes())
    # Nothing lost: every pledge recorded; the unsent reactions wait, none skipped or dead,
    # and waiting was never counted as an attempt (a message leased at the stop has one).
    assert pledges == BURST
    assert set(states) <= {"sent", "pending"}, states
    assert waiting and {kind for kind, _ in waiting} <= {"reaction", "summary"}
    assert max(attempts for _, attempts in waiting) <= 1
