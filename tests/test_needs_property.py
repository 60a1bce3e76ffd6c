"""The monthly appeal against the ledger: random stories over several months, played through the
rules and the real database; for every month, asked/funded/pledged/paid/refunded as
`bountybot.needs` computes them equal the sums recomputed here from ledger rows."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlmodel import select

from bountybot.money import Money
from bountybot.needs import history, month_figures, month_start, next_month, previous_months
from bountybot.rules import (
    Actor,
    Comment,
    IssueClosed,
    IssueRef,
    LabelAdded,
    LinkClosed,
    LinkOpened,
    PayoutPaid,
    Policy,
    decide_comment,
    decide_event,
)
from bountybot.states import PayoutState
from bountybot.storage import tables as t
from bountybot.storage.bounties import ensure_repo, load_bounty, save_decision
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.tables import metadata
from bountybot.storage.uow import UnitOfWork

REPO = "commons/garden"
START = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
BACKERS = ("alice", "bob", "carol")


def issue(number: int, repo: str = REPO) -> IssueRef:
    return IssueRef("github", repo, number, f"Task {number}",
                    f"https://github.com/{repo}/issues/{number}")


class Story:
    """Bounties on three issues of one repo, each step in its own unit of work, on a clock."""

    def __init__(self, sessionmaker: Any, repo: str = REPO, currency: str = "EUR") -> None:
        self.sessionmaker = sessionmaker
        self.repo = repo
        self.policy = Policy(currency=currency)
        self.now = START
        self.ids = itertools.count(1)
        self.pulls = itertools.count(100)

    async def _step(self, number: int, decide: Any) -> None:
        async with UnitOfWork(self.sessionmaker) as uow:
            repo = await ensure_repo(uow.session, "github", str(zlib.crc32(self.repo.encode())),
                                     self.repo)
            if repo.currency is None:
                repo.currency = self.policy.currency
            bounty = await load_bounty(uow.session, repo, number, lock=True)
            decision = decide(bounty)
            await save_decision(uow.session, repo, issue(number, self.repo), decision,
                                source=f"step:{next(self.ids)}", now=self.now)

    async def say(self, number: int, login: str, body: str) -> None:
        comment = Comment(str(next(self.ids)), Actor(login, is_maintainer=login == "maya"), body)
        await self._step(number, lambda b: decide_comment(b, issue(number, self.repo), comment,
                                                          self.policy, self.now))

    async def event(self, number: int, event: Any) -> None:
        await self._step(number, lambda b: decide_event(b, issue(number, self.repo), event,
                                                        self.policy, self.now))

    async def play(self, step: tuple[Any, ...]) -> None:
        days, number, action, *args = step
        self.now += timedelta(days=days, minutes=1)
        if action == "label":
            await self.event(number, LabelAdded())
        elif action == "goal":
            await self.say(number, "maya", f"/goal {args[0]}")
        elif action == "pledge":
            await self.say(number, args[0], f"/pledge {args[1]}")
        elif action == "withdraw":
            await self.say(number, args[0], "/withdraw")
        elif action == "claim":
            await self.say(number, "dev", "/claim")
        elif action == "merge":
            pr = next(self.pulls)
            await self.event(number, LinkOpened(pr, "dev"))
            await self.event(number, LinkClosed(pr, "dev", merged=True))
        elif action == "cancel":
            await self.event(number, IssueClosed(not_planned=True))
        elif action == "paid":
            async with self.sessionmaker() as session:
                stmt = select(t.Payout).where(t.Payout.state == PayoutState.PENDING)
                pending = (await session.exec(stmt)).all()
                tasks = {p.task_id: (await session.get(t.Task, p.task_id)) for p in pending}
            for payout in pending:
                task = tasks[payout.task_id]
                assert task is not None and payout.id is not None
                await self.event(task.number, PayoutPaid(payout.id, f"ref-{payout.id}"))


numbers = st.integers(1, 3)
days = st.integers(0, 25)
steps = st.one_of(
    st.tuples(days, numbers, st.just("label")),
    st.tuples(days, numbers, st.just("goal"), st.integers(10, 200)),
    st.tuples(days, numbers, st.just("pledge"), st.sampled_from(BACKERS), st.integers(1, 120)),
    st.tuples(days, numbers, st.just("withdraw"), st.sampled_from(BACKERS)),
    st.tuples(days, numbers, st.just("claim")),
    st.tuples(days, numbers, st.just("merge")),
    st.tuples(days, numbers, st.just("cancel")),
    st.tuples(days, numbers, st.just("paid")),
)


async def recompute(sessionmaker: Any, month: date, now: datetime) -> dict[str, int]:
    """The month's figures summed straight from ledger rows, tasks and audit lines."""
    start, end = month_start(month), month_start(next_month(month))
    cutoff = min(end, now)
    async with sessionmaker() as session:
        txns = {x.id: x for x in (await session.exec(select(t.LedgerTransaction))).all()}
        entries = (await session.exec(select(t.LedgerEntry))).all()
        tasks = (await session.exec(select(t.Task))).all()
        audit = (await session.exec(select(t.AuditEvent))).all()

    def at(x: Any) -> datetime:
        return x.created_at if x.created_at.tzinfo else x.created_at.replace(tzinfo=UTC)

    out: dict[str, int] = defaultdict(int)
    committed: dict[int | None, int] = defaultdict(int)
    for e in entries:
        txn = txns[e.transaction_id]
        if e.account.startswith("backer:") and at(txn) < cutoff:
            committed[txn.task_id] -= e.amount_minor
        if not start <= at(txn) < end:
            continue
        if txn.kind == "pledge.held" and e.account.startswith("escrow:"):
            out["pledged"] += e.amount_minor
        if txn.kind == "payout.paid" and e.account == "external":
            out["paid"] += e.amount_minor
        if txn.kind in ("pledge.refunded", "pledge.withdrawn") and e.account.startswith("backer:"):
            out["refunded"] += e.amount_minor
    for task in tasks:
        ends = [at(a) for a in audit if a.task_id == task.id
                and a.action in ("task.done", "task.cancelled", "task.expired")]
        if at(task) >= end or (ends and min(ends) < start) or task.goal_minor is None:
            continue
        out["asked"] += task.goal_minor
        out["funded"] += min(max(0, committed[task.id]), task.goal_minor)
    return dict(out)


def test_monthly_figures_equal_the_ledger_for_random_stories(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)

    async def play(script: list[tuple[Any, ...]]) -> None:
        async with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                await conn.execute(text(f'DELETE FROM "{table.name}"'))
        story = Story(sessionmaker)
        for n in (1, 2, 3):  # every task exists from the start; the script does the rest
            await story.play((0, n, "label"))
        for step in script:
            await story.play(step)
        now = story.now + timedelta(days=1)
        month = date(START.year, START.month, 1)
        checked = 0
        async with sessionmaker() as session:
            while month_start(month) <= now:
                got = await month_figures(session, None, month, now=now)
                main = got.main
                want = await recompute(sessionmaker, month, now)
                assert {k: getattr(main, k) for k in want} == want, (month, script)
                assert main.asked >= main.funded >= 0
                assert 0 <= got.percent <= 100
                # The per-item lists add up to the totals.
                assert sum(p.amount.minor for p in got.payouts) == main.paid
                assert sum(r.amount.minor for r in got.refunds) == main.refunded
                assert sum(x.goal or 0 for x in got.tasks) == main.asked
                month = next_month(month)
                checked += 1
            # history() (a few grouped queries) equals month_figures() (the reference) month by
            # month, from the month before the first task to the last one, on every repo's
            # books and on one repo's; the newest month with its tasks, payouts and refunds.
            last = date(now.year, now.month, 1)
            repo_id = (await session.exec(select(t.Repo.id))).first()
            for where in (None, repo_id):
                months = [await month_figures(session, where, m, now=now)
                          for m in previous_months(last, checked + 1)]
                got_all = await history(session, where, last, checked + 1, now=now)
                assert got_all[0] == months[0], script
                assert got_all[1:] == [replace(m, tasks=(), payouts=(), refunds=())
                                       for m in months[1:]], script
                bare = await history(session, where, last, checked + 1, now=now, detail=False)
                assert bare == [replace(m, tasks=(), payouts=(), refunds=()) for m in months]
                # A window that ends before the last month (an older needs page).
                if checked > 1:
                    older = await history(session, where, previous_months(last, 2)[1], 2,
                                          now=now)
                    assert older[0] == months[1], script
                    assert older[1] == replace(months[2], tasks=(), payouts=(), refunds=())
        assert checked >= 1

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(script=st.lists(steps, max_size=25))
    def run(script: list[tuple[Any, ...]]) -> None:
        loop.run_until_complete(play(script))

    try:
        run()
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()


async def test_a_told_story_gives_the_figures_a_person_would_count(sessionmaker: Any) -> None:
    """January: two tasks asked 100 and 50; alice 60 and bob 40 on #1, carol 20 on #2, then
    withdrawn; #1 merged on the 24th;
    February: #1 paid, #2 cancelled; March: nothing is live."""
    story = Story(sessionmaker)
    script: list[tuple[Any, ...]] = [
        (0, 1, "label"), (0, 1, "goal", 100), (0, 1, "pledge", "alice", 60),
        (1, 1, "pledge", "bob", 40), (0, 2, "label"), (0, 2, "goal", 50),
        (1, 2, "pledge", "carol", 20), (1, 2, "withdraw", "carol"), (1, 1, "claim"),
        (10, 1, "merge"), (20, 1, "paid"), (2, 2, "cancel"),
    ]
    for step in script:
        await story.play(step)
    now = datetime(2026, 3, 15, tzinfo=UTC)
    async with sessionmaker() as session:
        jan = await month_figures(session, None, date(2026, 1, 1), now=now)
        feb = await month_figures(session, None, date(2026, 2, 1), now=now)
        mar = await month_figures(session, None, date(2026, 3, 1), now=now)
    assert (jan.asked.minor, jan.funded.minor, jan.percent) == (15000, 10000, 66)
    assert (jan.main.pledged, jan.main.refunded, jan.main.paid) == (12000, 2000, 0)
    assert [(r.backer, r.why) for r in jan.refunds] == [("carol", "withdrawn")]
    assert (feb.asked.minor, feb.funded.minor, feb.main.paid) == (5000, 0, 10000)
    [paid] = feb.payouts
    assert (paid.developer, paid.number, paid.pull_request) == ("dev", 1, 100)
    assert paid.reference is not None
    assert (mar.asked.minor, mar.tasks, mar.days_left) == (0, (), 16)
    assert jan.days_left == 0 and not jan.current and mar.current


async def test_currencies_are_kept_apart_never_converted(sessionmaker: Any) -> None:
    """Two repos, one in euros and one in dollars: the instance's month lists both."""
    euros, dollars = Story(sessionmaker), Story(sessionmaker, "commons/orchard", "USD")
    for story, goal, pledge in ((euros, 100, 30), (dollars, 300, 90)):
        for step in ((0, 1, "label"), (0, 1, "goal", goal), (0, 1, "pledge", "alice", pledge)):
            await story.play(step)
    now = datetime(2026, 1, 20, tzinfo=UTC)
    async with sessionmaker() as session:
        both = await month_figures(session, None, date(2026, 1, 1), now=now)
        only = await month_figures(session, None, date(2026, 1, 1), now=now,
                                   default_currency="USD")
    got = {f.currency: (f.asked, f.funded, f.pledged, f.percent) for f in both.by_currency}
    assert got == {"EUR": (10000, 3000, 3000, 30), "USD": (30000, 9000, 9000, 30)}
    # The main currency is the one with the most asked, unless the default ties it.
    assert both.currency == "USD" and both.asked == Money(30000, "USD")
    assert only.currency == "USD" and both.goal_tasks == 2


async def test_history_is_month_figures_month_by_month(sessionmaker: Any) -> None:
    """The told story with a third task that stays open (asked 70, bob 30): #1 paid in February
    leaves March's figures, #3 stays in them; two currencies in one month."""
    story = Story(sessionmaker)
    script: list[tuple[Any, ...]] = [
        (0, 3, "label"), (0, 3, "goal", 70), (0, 3, "pledge", "bob", 30),
        (0, 1, "label"), (0, 1, "goal", 100), (0, 1, "pledge", "alice", 60),
        (1, 1, "pledge", "bob", 40), (0, 2, "label"), (0, 2, "goal", 50),
        (1, 2, "pledge", "carol", 20), (1, 2, "withdraw", "carol"), (1, 1, "claim"),
        (10, 1, "merge"), (20, 1, "paid"), (2, 2, "cancel"),
    ]
    for step in script:
        await story.play(step)
    dollars = Story(sessionmaker, "commons/orchard", "USD")
    dollars.now = datetime(2026, 3, 1, tzinfo=UTC)
    for step in ((0, 1, "label"), (0, 1, "goal", 300), (0, 1, "pledge", "alice", 90)):
        await dollars.play(step)
    now = datetime(2026, 3, 15, tzinfo=UTC)
    async with sessionmaker() as session:
        want = [await month_figures(session, None, m, now=now)
                for m in previous_months(date(2026, 4, 1), 5)]
        got = await history(session, None, date(2026, 4, 1), 5, now=now)
        bare = await history(session, None, date(2026, 3, 1), 4, now=now, detail=False)
    assert got[0] == want[0] and got[0].tasks  # April: #3 and the dollars' #1, still live
    assert got[1:] == [replace(m, tasks=(), payouts=(), refunds=()) for m in want[1:]]
    assert bare == got[1:]
    apr, mar, feb, jan, dec = got
    assert (mar.main.asked, mar.main.funded, mar.currency) == (30000, 9000, "USD")
    assert {f.currency: (f.asked, f.funded) for f in mar.by_currency} == {
        "USD": (30000, 9000), "EUR": (7000, 3000)}
    assert (feb.asked.minor, feb.funded.minor, feb.main.paid) == (12000, 3000, 10000)
    assert (jan.asked.minor, jan.funded.minor, jan.main.pledged) == (22000, 13000, 15000)
    assert dec.by_currency == () and apr.days_left == 30 and not apr.current
