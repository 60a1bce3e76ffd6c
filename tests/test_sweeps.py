"""Time-driven work with a moved clock: claim reminders and expiry with the waiting list
promoted, funding deadlines refunding everyone, payouts released after the waiting period or
held by a dispute until a maintainer decides, and forge writes parked as dead then retried by
hand. Through the real app, GitHub's published payloads and the local fake GitHub; on SQLite and
PostgreSQL. Nothing sleeps: the tests move the clock and run the sweep."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bountybot import cli
from bountybot.operator.outbox import list_messages
from bountybot.operator.payouts import PayoutError, due_payouts, mark_paid
from bountybot.resources import SESSIONMAKER
from bountybot.service import RUNTIME
from bountybot.states import ClaimState, PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from clocks import Clock
from github_harness import MAINTAINER, QUICK_SENDER, REPO, GitHubBot


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))


async def start(db_url, fake, clock, **bot) -> GitHubBot:
    return await GitHubBot.start(db_url, fake, clock=clock, **bot)


async def sweep(bot: GitHubBot):
    report = await bot.app[RUNTIME].sweeper.run_once()
    await bot.settle()
    return report


def notices(bot: GitHubBot, words: str) -> list[str]:
    return [c.body for c in bot.bot_comments(1) if words in c.body]


async def funded(bot: GitHubBot, goal: str = "100") -> None:
    await bot.label(1)
    await bot.comment(MAINTAINER, f"/goal {goal}")
    await bot.comment("alice", f"/pledge {goal}")
    await bot.settle()


async def test_claim_reminder_then_expiry_promotes_the_waiting_list(db_url, github_server,
                                                                   clock):
    bot = await start(db_url, github_server, clock, claim_days=14)
    try:
        await funded(bot)
        await bot.comment("dave", "/claim")
        await bot.comment("erin", "/claim")
        await bot.settle()
        assert (await sweep(bot)).changed == 0  # nothing is due yet

        clock.move(days=7, seconds=1)
        assert (await sweep(bot)).changed == 1
        reminders = notices(bot, "a reminder")
        assert len(reminders) == 1 and "@dave" in reminders[0]
        assert (await sweep(bot)).changed == 0  # once only
        assert len(notices(bot, "a reminder")) == 1

        clock.move(days=7)
        assert (await sweep(bot)).changed == 1
        task = await bot.task(1)
        assert [(c.developer, c.state) for c in task.claims] == [
            ("dave", ClaimState.EXPIRED), ("erin", ClaimState.ACTIVE)]
        assert task.state == TaskState.CLAIMED and task.waiting == []
        assert task.claims[1].expires_at == clock.now + timedelta(days=14)
        assert len(notices(bot, "has expired")) == 1
        assert len(notices(bot, "@erin, the claim on this task is yours")) == 1
        summary = [c.body for c in bot.bot_comments(1) if "bountybot:summary" in c.body]
        assert len(summary) == 1 and "@erin" in summary[0]
        assert (await sweep(bot)).changed == 0
        assert (await run_audit(bot.app[SESSIONMAKER])).ok
    finally:
        await bot.close()


async def test_a_claim_in_review_does_not_expire(db_url, github_server, clock):
    bot = await start(db_url, github_server, clock, claim_days=14)
    try:
        await funded(bot)
        await bot.comment("dave", "/claim")
        await bot.pull_request("opened", "dave", 5, "Fixes #1")
        await bot.settle()
        clock.move(days=60)
        await sweep(bot)
        task = await bot.task(1)
        assert task.state == TaskState.IN_REVIEW
        assert task.claims[0].state == ClaimState.IN_REVIEW
        assert not notices(bot, "has expired") and not notices(bot, "a reminder")
    finally:
        await bot.close()


async def test_a_missed_deadline_refunds_every_backer(db_url, github_server, clock):
    bot = await start(db_url, github_server, clock)
    try:
        await bot.label(1)
        await bot.comment(MAINTAINER, "/goal 100\n/deadline 2026-11-10")
        await bot.comment("alice", "/pledge 30")
        await bot.comment("bob", "/pledge 25")
        await bot.settle()
        clock.move(days=8)  # 2026-11-10 09:00: the deadline day is not over
        assert (await sweep(bot)).changed == 0
        clock.move(days=1)
        assert (await sweep(bot)).changed == 1
        task = await bot.task(1)
        assert task.state == TaskState.EXPIRED
        assert {p.state for p in task.pledges} == {PledgeState.REFUNDED}
        said = notices(bot, "The funding deadline (November 10, 2026) has passed")
        assert len(said) == 1 and "€55.00" in said[0] and "€100.00" in said[0]
        assert (await sweep(bot)).changed == 0
        report = await run_audit(bot.app[SESSIONMAKER])
        assert report.ok, report.render()
        refunds = [txn for txn in await bot.rows(t.LedgerTransaction)
                   if txn.kind == "pledge.refunded"]
        assert len(refunds) == 2
    finally:
        await bot.close()


async def merged(bot: GitHubBot) -> None:
    await funded(bot)
    await bot.comment("bob", "/pledge 20")
    await bot.comment("dave", "/claim")
    await bot.pull_request("opened", "dave", 5, "Fixes #1")
    await bot.pull_request("closed", "dave", 5, "Fixes #1", merged=True)
    await bot.settle()


async def test_payouts_wait_then_are_released(db_url, github_server, clock):
    bot = await start(db_url, github_server, clock, release_after_days=7)
    sm = bot.app[SESSIONMAKER]
    try:
        await merged(bot)
        task = await bot.task(1)
        assert task.state == TaskState.DONE
        [payout] = task.payouts
        assert payout.released_at is None and payout.due_at == clock.now + timedelta(days=7)
        assert await due_payouts(sm) == []
        assert [p.id for p in await due_payouts(sm, waiting=True)] == [payout.id]
        with pytest.raises(PayoutError, match="not released"):
            await mark_paid(sm, bot_settings(bot), payout.id, "SEPA-1", now=clock.now)
        clock.move(days=6)
        assert (await sweep(bot)).changed == 0
        clock.move(days=1)
        assert (await sweep(bot)).changed == 1
        assert len(notices(bot, "payouts are released")) == 1
        assert [p.id for p in await due_payouts(sm)] == [payout.id]
        await mark_paid(sm, bot_settings(bot), payout.id, "SEPA-1", now=clock.now)
        assert (await bot.existing_task(1)).payouts[0].state == PayoutState.PAID
        assert (await run_audit(sm)).ok
    finally:
        await bot.close()


def bot_settings(bot: GitHubBot):
    from bountybot.resources import SETTINGS

    return bot.app[SETTINGS]


async def test_a_dispute_holds_the_payout_until_a_maintainer_awards(db_url, github_server,
                                                                   clock):
    bot = await start(db_url, github_server, clock, release_after_days=7)
    sm = bot.app[SESSIONMAKER]
    try:
        await merged(bot)
        await bot.comment("zed", "/dispute it does not build")  # not a backer
        await bot.comment("bob", "/dispute the fix breaks Windows")
        await bot.settle()
        replies = [c.body for c in bot.bot_comments(1) if "bountybot:summary" not in c.body]
        assert any("Only the backers" in r for r in replies)
        assert any("@bob disputes the payout" in r and "breaks Windows" in r for r in replies)
        task = await bot.task(1)
        assert task.dispute is not None and task.dispute.by == "bob"
        clock.move(days=30)
        assert (await sweep(bot)).changed == 0  # held: the waiting time passing changes nothing
        assert await due_payouts(sm) == []
        assert "held: disputed by @bob" in (await due_payouts(sm, waiting=True))[0].state

        await bot.comment(MAINTAINER, "/award @dave 70% @erin 30%")
        await bot.settle()
        task = await bot.task(1)
        assert task.dispute is None and task.state == TaskState.DONE
        live = [(p.developer, p.amount.minor) for p in task.payouts
                if p.state == PayoutState.PENDING]
        assert live == [("dave", 8400), ("erin", 3600)]
        assert [p.state for p in task.payouts].count(PayoutState.CANCELLED) == 1
        assert sorted(p.developer for p in await due_payouts(sm)) == ["dave", "erin"]
        report = await run_audit(sm)
        assert report.ok, report.render()
    finally:
        await bot.close()


async def test_a_dispute_decided_by_cancel_refunds_everyone_with_the_fee(db_url, github_server,
                                                                        clock):
    bot = await start(db_url, github_server, clock, release_after_days=7, fee_percent="5")
    sm = bot.app[SESSIONMAKER]
    try:
        await merged(bot)
        await bot.comment("alice", "/dispute nothing was fixed")
        await bot.comment(MAINTAINER, "/cancel")
        await bot.settle()
        task = await bot.task(1)
        assert task.state == TaskState.CANCELLED and task.dispute is None
        assert {p.state for p in task.pledges} == {PledgeState.REFUNDED}
        assert [p.state for p in task.payouts] == [PayoutState.CANCELLED]
        assert await due_payouts(sm) == [] and await due_payouts(sm, waiting=True) == []
        report = await run_audit(sm)
        assert report.ok, report.render()
        entries = await bot.rows(t.LedgerEntry)
        balance: dict[str, int] = {}
        for e in entries:
            balance[e.account] = balance.get(e.account, 0) + e.amount_minor
        assert balance["fees"] == 0  # the fee went back with the rest
        assert balance["backer:github:alice"] == 0 and balance["backer:github:bob"] == 0
        assert balance["developer:github:dave"] == 0
    finally:
        await bot.close()


async def test_no_dispute_after_release_or_without_a_window(db_url, github_server, clock):
    bot = await start(db_url, github_server, clock)  # release_after_days = 0
    try:
        await merged(bot)
        await bot.comment("alice", "/dispute too late")
        await bot.settle()
        assert notices(bot, "released at the merge")
        assert (await bot.existing_task(1)).dispute is None
    finally:
        await bot.close()


async def test_a_dead_message_is_listed_and_retried_by_hand(db_url, github_server, capsys,
                                                            monkeypatch):
    # The command line revives messages for the real now, so this bot's clock starts there.
    clock = Clock(datetime.now(UTC))
    bot = await start(db_url, github_server, clock,
                      sender_options=replace(QUICK_SENDER, max_attempts=2, base_delay=60.0))
    sm = bot.app[SESSIONMAKER]
    runtime = bot.app[RUNTIME]
    try:
        await bot.label(1)
        await bot.settle()  # the summary is out; /status changes nothing, so only a reply
        github_server.fail_next("POST", r"/issues/1/comments$", 500, times=2)
        await bot.comment("alice", "/status")
        # The background loops send; the test only moves time past each backoff.
        for _ in range(200):
            if await list_messages(sm, "dead"):
                break
            clock.move(hours=2)
            runtime.wake_worker.set()
            runtime.wake_outbox.set()
            await asyncio.sleep(0.05)
        dead = await list_messages(sm, "dead")
        assert [m.kind for m in dead] == ["reply"] and dead[0].attempts >= 2, [
            (m.kind, m.state, m.attempts, m.last_error) for m in await list_messages(sm)]
        assert not [c for c in bot.bot_comments(1) if "bountybot:summary" not in c.body]

        monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
        assert await asyncio.to_thread(cli.main, ["outbox"]) == 0
        listed = capsys.readouterr().out
        assert "dead" in listed and "reply" in listed and "outbox retry" in listed
        assert await asyncio.to_thread(cli.main, ["outbox", "retry", str(dead[0].id)]) == 0
        assert "1 dead message(s) queued again" in capsys.readouterr().out
        assert await asyncio.to_thread(cli.main, ["outbox", "retry", "999999"]) == 1
        capsys.readouterr()
        await bot.settle()
        replies = [c for c in bot.bot_comments(1) if "bountybot:summary" not in c.body]
        assert len(replies) == 1 and "open" in replies[0].body.lower()
        assert await list_messages(sm, "dead") == []
    finally:
        await bot.close()


async def test_the_scheduler_runs_the_sweep_in_a_served_app(db_url, github_server, clock):
    """With the scheduler on, the sweep job runs by itself (first tick within seconds)."""
    from bountybot.config import Settings
    from bountybot.scheduler import start as start_scheduler
    from bountybot.scheduler import stop as stop_scheduler
    from bountybot.service import scheduled_jobs

    bot = await start(db_url, github_server, clock, claim_days=2)
    try:
        await funded(bot)
        await bot.comment("dave", "/claim")
        await bot.settle()
        clock.move(days=3)
        settings = Settings.model_validate({"scheduler": {"sweep_seconds": 1}})
        scheduler = start_scheduler(scheduled_jobs(bot.app[RUNTIME], settings))
        try:
            for _ in range(100):
                task = await bot.task(1)
                if task.claims[0].state == ClaimState.EXPIRED:
                    break
                await asyncio.sleep(0.1)
        finally:
            stop_scheduler(scheduler)
        assert (await bot.existing_task(1)).claims[0].state == ClaimState.EXPIRED
    finally:
        await bot.close()


async def test_the_scheduled_sync_job_recovers_a_comment_whose_webhook_was_lost(db_url,
                                                                               github_server):
    """The scheduler's `sync` job is reconciliation: a pledge whose webhook never came is
    applied by the job alone (and the job is off when `sync_minutes` is 0)."""
    from bountybot.config import Settings
    from bountybot.service import scheduled_jobs

    bot = await GitHubBot.start(db_url, github_server)
    try:
        await bot.label(1)
        await bot.comment(MAINTAINER, "/goal 50")
        await bot.settle()
        runtime = bot.app[RUNTIME]
        off = Settings.model_validate({"scheduler": {"sync_minutes": 0}})
        assert set(scheduled_jobs(runtime, off)) == {"sweep"}
        jobs = scheduled_jobs(runtime, Settings.model_validate({"scheduler": {"sync_minutes": 5}}))
        assert jobs["sync"][0] == 300.0
        github_server.add_comment(REPO, 1, "/pledge 50", login="alice")  # no webhook
        await jobs["sync"][1]()
        await bot.settle()
        task = await bot.task(1)
        assert [(p.backer, p.amount.minor) for p in task.pledges] == [("alice", 5000)]
        assert task.state == TaskState.FUNDED
    finally:
        await bot.close()


async def test_two_replicas_sweeping_at_once_do_each_task_once(db_url, github_server, clock):
    """Sweeps on several replicas: each due task is ticked by one of them (the other skips the
    rows it holds, or finds nothing left to do), so no reminder or expiry is doubled."""
    from bountybot.resources import SETTINGS
    from bountybot.storage.engine import create_engine, create_sessionmaker
    from bountybot.sweeps import Sweeper

    bot = await start(db_url, github_server, clock, claim_days=14)
    other_engine = create_engine(db_url)  # the other replica's own connections
    try:
        for number in (1, 2, 3):
            await bot.label(number)
            await bot.comment(MAINTAINER, "/goal 10", number)
            await bot.comment("alice", "/pledge 10", number)
            await bot.comment(f"dev{number}", "/claim", number)
        await bot.settle()
        clock.move(days=7, seconds=1)
        mine = bot.app[RUNTIME].sweeper
        other = Sweeper(create_sessionmaker(other_engine), bot.app[SETTINGS], clock=clock)
        first, second = await asyncio.gather(mine.run_once(), other.run_once())
        assert first.changed + second.changed == 3
        assert (await mine.run_once()).changed == 0
        await bot.settle()
        for number in (1, 2, 3):
            said = [c.body for c in bot.bot_comments(number) if "a reminder" in c.body]
            assert len(said) == 1 and f"@dev{number}" in said[0]
        trail = [e for e in await bot.rows(t.AuditEvent) if e.action == "claim.reminded"]
        assert len(trail) == 3
    finally:
        await other_engine.dispose()
        await bot.close()
