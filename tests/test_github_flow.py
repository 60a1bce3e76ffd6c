"""Whole bounties on GitHub: published payloads, signed, posted to the real app; the bot answers
a local GitHub over loopback. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from bountybot.resources import SESSIONMAKER
from bountybot.states import ClaimState, LinkState, PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from clocks import Ticks
from github_harness import MAINTAINER, REPO, SECRET, TOKEN, GitHubBot, sign


@pytest.fixture
async def bot(db_url, github_server):
    bot = await GitHubBot.start(db_url, github_server)
    try:
        yield bot
    finally:
        await bot.close()


async def test_the_whole_happy_path(bot: GitHubBot):
    fake = bot.fake
    assert (await bot.label(1)).status == 202
    await bot.comment("maya", "/goal 110.50")
    for login, amount in (("alice", "60"), ("bob", "30"), ("carol", "20,50 €")):
        await bot.comment(login, f"/pledge {amount}")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.FUNDED and task.held().minor == 11050
    await bot.comment("dave", "/claim")
    await bot.comment("erin", "/claim")
    await bot.comment("alice", "/withdraw")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.CLAIMED and task.waiting == ["erin"]
    assert task.backer_total("alice", frozenset({PledgeState.HELD})).minor == 6000
    await bot.pull_request("opened", "dave", 77, "Fixes #1\n\nAll done.")
    await bot.settle()
    assert (await bot.existing_task(1)).state == TaskState.IN_REVIEW
    await bot.pull_request("closed", "dave", 77, "Fixes #1\n\nAll done.", merged=True)
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor, p.state) for p in task.payouts] == [
        ("dave", 11050, PayoutState.PENDING)]
    assert task.claims[0].state == ClaimState.DONE and task.links[0].state == LinkState.MERGED
    report = await run_audit(bot.app[SESSIONMAKER])
    assert report.ok, report.render()

    # What GitHub saw: one summary comment, edited in place, showing the final state; one
    # reply (the refused withdrawal); a +1 on every accepted command.
    mine = bot.bot_comments(1)
    summaries = [c for c in mine if "bountybot:summary" in c.body]
    assert len(summaries) == 1
    assert "110.50" in summaries[0].body and "done" in summaries[0].body
    replies = [c for c in mine if c not in summaries]
    assert len(replies) == 1 and "locked" in replies[0].body
    accepted = [c for c in fake.comments(REPO, 1) if c.login in {"maya", "alice", "bob", "carol",
                                                                 "dave", "erin"}]
    reacted = [c for c in accepted if fake.reactions(c.id)]
    assert len(reacted) == 6  # all but the refused withdrawal
    assert all(r.content == "+1" for c in reacted for r in fake.reactions(c.id))
    assert all(w.headers.get("authorization") == f"token {TOKEN}" for w in fake.writes())


async def test_a_non_maintainer_cannot_set_the_goal(bot: GitHubBot):
    await bot.label(1)
    await bot.comment("mallory", "/goal 5")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.goal is None
    (reply,) = [c for c in bot.bot_comments(1) if "bountybot:summary" not in c.body]
    assert "maintainer" in reply.body
    asked = [r for r in bot.fake.requests if r.path.endswith("/collaborators/mallory/permission")]
    assert len(asked) == 1


async def test_a_redelivery_changes_nothing(bot: GitHubBot):
    await bot.label(1)
    first = await bot.comment("alice", "/pledge 10", delivery="d-1")
    await bot.settle()
    writes = len(bot.fake.writes())
    data = json.loads((await bot.rows(t.Delivery))[-1].payload)
    again = await bot.post("issue_comment", data, delivery="d-1")
    await bot.settle()
    assert (first.status, again.status) == (202, 200)
    assert (await again.json())["status"] == "duplicate"
    assert len((await bot.existing_task(1)).pledges) == 1
    assert len(bot.fake.writes()) == writes
    assert len(await bot.rows(t.Delivery)) == 2  # the label and the comment


async def test_bad_signature_malformed_and_oversized_bodies_change_nothing(db_url,
                                                                        github_server):
    bot = await GitHubBot.start(db_url, github_server, max_body=4096)
    try:
        body = json.dumps({"zen": "x"}).encode()
        assert (await bot.post("ping", body, signature="sha256=" + "0" * 64)).status == 401
        assert (await bot.post("ping", body, signature=sign(body, SECRET + "x"))).status == 401
        unsigned = await bot.client.post("/webhooks/github", data=body,
                                         headers={"X-GitHub-Event": "ping",
                                                  "X-GitHub-Delivery": "u"})
        assert unsigned.status == 401
        bad = b"{not json"
        answer = await bot.post("ping", bad)
        assert answer.status == 400 and "JSON" in (await answer.json())["error"]
        assert (await bot.post("ping", b"[1, 2]")).status == 400
        huge = json.dumps({"zen": "x" * 10_000}).encode()
        assert (await bot.post("ping", huge)).status == 413
        text = await (await bot.post("ping", body, signature="sha256=00")).text()
        assert SECRET not in text
        assert await bot.rows(t.Delivery) == []
        assert (await bot.post("ping", body)).status == 202
    finally:
        await bot.close()


async def test_github_502_then_200_gives_one_comment(bot: GitHubBot):
    await bot.label(1)
    await bot.settle()
    bot.fake.fail_next("POST", r"/issues/1/comments$", 502, times=2)
    await bot.comment("mallory", "/goal 5")  # refused: a reply must be written
    await bot.settle()
    replies = [c for c in bot.bot_comments(1) if "maintainer" in c.body]
    assert len(replies) == 1
    posts = [r for r in bot.fake.requests
             if r.method == "POST" and r.path.endswith("/issues/1/comments")]
    assert len(posts) >= 3  # two 502s, then the one that worked
    rows = [o for o in await bot.rows(t.Outbox) if o.kind == "reply"]
    assert rows[0].state == t.OutboxState.SENT and rows[0].attempts == 3


async def test_a_merge_by_someone_else_asks_for_an_award(bot: GitHubBot):
    await bot.label(1)
    await bot.comment("maya", "/goal 10")
    await bot.comment("alice", "/pledge 10")
    await bot.comment("dave", "/claim")
    await bot.pull_request("closed", "frank", 80, "fixes #1", merged=True)
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.CLAIMED and not task.payouts
    assert any("/award @frank" in c.body for c in bot.bot_comments(1))
    await bot.comment("maya", "/award @frank 70% @dave 30%")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor) for p in task.payouts] == [("frank", 700),
                                                                     ("dave", 300)]


async def test_closed_as_not_planned_refunds_everyone(bot: GitHubBot):
    await bot.label(1)
    await bot.comment("alice", "/pledge 10")
    await bot.comment("bob", "/pledge 15")
    await bot.close_issue(1, "not_planned")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.CANCELLED
    assert {p.state for p in task.pledges} == {PledgeState.REFUNDED}
    assert any("refunded" in c.body for c in bot.bot_comments(1))
    assert (await run_audit(bot.app[SESSIONMAKER])).ok


async def test_a_pull_request_closed_unmerged_returns_the_claim(bot: GitHubBot):
    await bot.label(1)
    await bot.comment("alice", "/pledge 10")
    await bot.comment("dave", "/claim")
    await bot.pull_request("opened", "dave", 5, "Closes #1")
    await bot.settle()
    claim = (await bot.existing_task(1)).live_claim()
    assert claim is not None and claim.state == ClaimState.IN_REVIEW
    await bot.pull_request("closed", "dave", 5, "Closes #1", merged=False)
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.CLAIMED
    claim = task.live_claim()
    assert claim is not None
    assert claim.state == ClaimState.ACTIVE and claim.expires_at
    assert task.links[0].state == LinkState.CLOSED


async def test_bots_are_never_read(bot: GitHubBot):
    await bot.label(1)
    await bot.comment("dependabot[bot]", "/pledge 10", user_type="Bot")
    await bot.comment("bountybot", "/pledge 10")
    await bot.settle()
    assert (await bot.existing_task(1)).pledges == []


async def test_a_burst_of_pledges_stays_inside_the_write_budget(db_url, github_server):
    from sqlalchemy import func
    from sqlmodel import select

    from bountybot.governor import Governor
    from bountybot.resources import SESSIONMAKER
    from bountybot.service import RUNTIME

    # The governor's clock stands still: however slow the run, no write leaves the minute.
    bot = await GitHubBot.start(db_url, github_server,
                                governor=Governor(per_minute=12, clock=Ticks()))
    try:
        await bot.label(1)
        await bot.settle()
        for i in range(20):
            await bot.comment(f"backer{i}", "/pledge 5")
        for _ in range(200):  # every delivery handled, then the outbox has had its turns
            async with bot.app[SESSIONMAKER]() as session:
                waiting = (await session.exec(select(func.count()).select_from(t.Delivery)
                                              .where(t.Delivery.state == "pending"))).one()
            if not waiting:
                break
            await asyncio.sleep(0.05)
        # The outbox clears its wake at the start of each round: the second clear after the
        # deliveries were handled ends a whole round that saw all they queued.
        runtime = bot.app[RUNTIME]
        async with asyncio.timeout(20):
            for _ in range(2):
                runtime.wake_outbox.set()
                while runtime.wake_outbox.is_set():
                    await asyncio.sleep(0.02)
        writes = bot.fake.writes()
        assert len(writes) <= 12  # the minute's whole budget, and fewer than the comments
        assert (await bot.existing_task(1)).held().minor == 10000
        rows = await bot.rows(t.Outbox)
        reactions = [o for o in rows if o.kind == "reaction"]
        # Nothing is lost: the reactions the minute cannot afford wait for a later one (not
        # skipped, and not counted as attempts), as does the summary.
        assert not any(o.state == t.OutboxState.SKIPPED for o in rows)
        assert any(o.state == t.OutboxState.PENDING and o.attempts == 0 for o in reactions)
        assert all(o.kind in ("summary", "reaction")
                   for o in rows if o.state == t.OutboxState.PENDING)
        summaries = [c for c in bot.bot_comments(1) if "bountybot:summary" in c.body]
        assert len(summaries) == 1
    finally:
        await bot.close()


async def test_a_forge_that_is_off_answers_404_saying_so(bot: GitHubBot):
    answer = await bot.client.post("/webhooks/gitlab", data=b"{}",
                                   headers={"X-Gitlab-Token": "x", "X-Gitlab-Event": "Note Hook"})
    assert answer.status == 404
    assert "GitLab is off" in (await answer.json())["error"]
    assert await bot.rows(t.Delivery) == []


async def test_the_log_line_of_a_delivery_says_what_was_decided(bot: GitHubBot, caplog):
    """`delivery.handled`, one line per delivery as an operator reads it (the service's own
    formatter): the task, the commands applied and refused by name, the task's new state.
    Never what people wrote beyond the command names, nor a secret."""
    import logging

    from bountybot.logs import LineFormatter

    caplog.set_level(logging.INFO, logger="bountybot")
    await bot.label(1)
    await bot.comment(MAINTAINER, "/goal 50")
    await bot.comment("bob", "Happy to fund this, my IBAN is FR76-SECRET-0042\n/pledge 50\n"
                      "/claim\n/withdraw because-I-changed-my-mind")
    await bot.comment("erin", "@bountybot frobnicate-the-widgets please\n/pledge 1e3 EUR")
    await bot.comment("carol", "Nice work, nothing for the bot here")
    await bot.settle()

    lines = [LineFormatter().format(r) for r in caplog.records
             if r.getMessage() == "delivery.handled"]
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    label, goal, bob, erin, carol = lines
    task = f"task={REPO}#1"
    assert f"{task} state=open " in label and "commands=" not in label
    assert f"{task} commands=goal state=open " in goal
    assert f"{task} commands=pledge,claim refused=withdraw state=claimed " in bob
    # An unknown word is named `unknown`; a pledge that cannot be read is still a pledge.
    assert f"{task} refused=unknown,pledge state=claimed " in erin
    assert "task=" not in carol and "state=" not in carol  # no command: nothing decided
    # The deliveries' random UUIDs may hold "1e3" or "0042" by chance: not what was written.
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>",
                  "\n".join(lines))
    for said in ("IBAN", "SECRET", "0042", "because", "frobnicate", "widgets", "1e3",
                 "Happy", "Nice", SECRET, TOKEN):
        assert said not in text, said
