"""The rules on one large task, in this process: how long a `/pledge` takes to decide, and its
summary to render, as the task grows (pledges held by a third as many backers).

    .venv/bin/python bench/large_task.py [--sizes 100,1000,10000] [--runs 50]

Deciding copies the task (the rules never change what they were given); the summary, sent by
the outbox, sums each backer's pledges once.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from bountybot.money import Money
from bountybot.rules import Actor, Bounty, Comment, IssueRef, Pledge, decide_comment
from bountybot.rules.policy import Policy
from bountybot.rules.summary import render_summary
from bountybot.states import PledgeState, TaskState

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def task(pledges: int) -> Bounty:
    b = Bounty("github", "o/r", 1, "EUR", TaskState.OPEN, "A large task", "https://x/1",
               Money(10_000_000, "EUR"), created_at=NOW - timedelta(days=30), id=1)
    b.pledges = [Pledge(f"backer{i % max(1, pledges // 3)}", Money(500, "EUR"),
                        PledgeState.HELD, NOW - timedelta(minutes=pledges - i), str(i), i + 1)
                 for i in range(pledges)]
    return b


def timed(runs: int, work: object) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    policy = Policy()
    issue = IssueRef("github", "o/r", 1, "A large task", "https://x/1")
    comment = Comment("c-new", Actor("newcomer"), "/pledge 5")
    print("pledges   decide /pledge   render summary   (median ms)")
    for size in (int(s) for s in args.sizes.split(",")):
        b = task(size)
        decide = timed(args.runs, lambda b=b: decide_comment(b, issue, comment, policy, NOW))
        summary = timed(args.runs, lambda b=b: render_summary(b, "en", 250))
        decision = decide_comment(b, issue, comment, policy, NOW)
        assert decision.bounty is not None and len(decision.bounty.pledges) == size + 1
        print(f"{size:7d}   {decide:10.2f}       {summary:10.2f}")


if __name__ == "__main__":
    main()
