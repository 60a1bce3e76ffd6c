"""Whole bounties on GitLab: the published payloads with the real token header, a project in a
subgroup, the bot answering a local GitLab over loopback; and one bot serving GitHub and GitLab
at once. On SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from gitlab_harness import GL_SECRET, PROJECT, PROJECT_ID, GitLabBot

from bountybot.resources import SESSIONMAKER
from bountybot.states import ClaimState, LinkState, PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from github_harness import REPO, GitHubBot


@pytest.fixture
async def bot(db_url, gitlab_server):
    bot = await GitLabBot.start_gitlab(db_url, gitlab_server)
    try:
        yield bot
    finally:
        await bot.close()


async def test_the_whole_happy_path_in_a_subgroup_project(bot: GitLabBot):
    assert (await bot.label(1)).status == 202
    await bot.comment("maya", "/goal 110.50")
    for login, amount in (("alice", "60"), ("bob", "30"), ("erin", "20,50 €")):
        await bot.comment(login, f"/pledge {amount}")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.repo == PROJECT and task.state == TaskState.FUNDED
    await bot.comment("dave", "/claim")
    await bot.comment("frank", "/claim")
    await bot.comment("alice", "/withdraw")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.CLAIMED and task.waiting == ["frank"]
    await bot.pull_request("opened", "dave", 3, "Closes #1")
    await bot.settle()
    assert (await bot.existing_task(1)).state == TaskState.IN_REVIEW
    await bot.pull_request("closed", "dave", 3, "Closes #1", merged=True)
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor, p.state) for p in task.payouts] == [
        ("dave", 11050, PayoutState.PENDING)]
    assert task.links[0].author == "dave"  # named through the Users API, not the merger
    report = await run_audit(bot.app[SESSIONMAKER])
    assert report.ok, report.render()
    mine = bot.bot_comments(1)
    summaries = [n for n in mine if "bountybot:summary" in n.body]
    assert len(summaries) == 1 and "done" in summaries[0].body
    replies = [n for n in mine if n not in summaries]
    assert len(replies) == 1 and "locked" in replies[0].body
    awarded = [n for n in bot.gitlab.notes(PROJECT_ID, 1) if bot.gitlab.awards(n.id)]
    assert len(awarded) == 6
    assert all(r.headers.get("private-token") for r in bot.gitlab.writes())


async def test_a_non_maintainer_cannot_set_the_goal(bot: GitLabBot):
    await bot.label(1)
    await bot.comment("mallory", "/goal 5")
    await bot.settle()
    assert (await bot.existing_task(1)).goal is None
    (reply,) = [n for n in bot.bot_comments(1) if "bountybot:summary" not in n.body]
    assert "maintainer" in reply.body


async def test_a_redelivery_changes_nothing_and_old_note_hooks_are_read(bot: GitLabBot):
    await bot.label(1)
    first = await bot.comment("alice", "/pledge 10", delivery="idem-1", no_action=True)
    await bot.settle()
    writes = len(bot.gitlab.writes())
    stored = [d for d in await bot.rows(t.Delivery) if d.delivery_id == "idem-1"]
    again = await bot.post_gitlab("Note Hook", stored[0].payload.encode(), key="idem-1")
    await bot.settle()
    assert (first.status, again.status) == (202, 200)
    assert len((await bot.existing_task(1)).pledges) == 1
    assert len(bot.gitlab.writes()) == writes


async def test_bad_token_malformed_and_oversized_bodies_change_nothing(db_url,
                                                                     gitlab_server):
    bot = await GitLabBot.start_gitlab(db_url, gitlab_server, max_body=4096)
    try:
        body = json.dumps({"object_kind": "note"}).encode()
        assert (await bot.post_gitlab("Note Hook", body, token=None)).status == 401
        assert (await bot.post_gitlab("Note Hook", body, token=GL_SECRET + "x")).status == 401
        assert (await bot.post_gitlab("Note Hook", b"{nope")).status == 400
        huge = json.dumps({"note": "x" * 10_000}).encode()
        assert (await bot.post_gitlab("Note Hook", huge)).status == 413
        assert await bot.rows(t.Delivery) == []
        # Without Idempotency-Key (GitLab before 17.4) the event UUID identifies it.
        assert (await bot.post_gitlab("Note Hook", body, uuid_only=True)).status == 202
    finally:
        await bot.close()


async def test_gitlab_502_then_200_gives_one_note(bot: GitLabBot):
    await bot.label(1)
    await bot.settle()
    bot.gitlab.fail_next("POST", r"/issues/1/notes$", 502, times=2)
    await bot.comment("mallory", "/goal 5")
    await bot.settle()
    assert len([n for n in bot.bot_comments(1) if "maintainer" in n.body]) == 1


async def test_a_merge_by_someone_else_asks_for_an_award(bot: GitLabBot):
    await bot.label(1)
    await bot.comment("maya", "/goal 10")
    await bot.comment("alice", "/pledge 10")
    await bot.comment("dave", "/claim")
    await bot.pull_request("closed", "frank", 8, "Fixes commons/sub/garden#1", merged=True)
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.CLAIMED and not task.payouts
    assert any("/award @frank" in n.body for n in bot.bot_comments(1))
    await bot.comment("maya", "/award @frank")
    await bot.settle()
    assert (await bot.existing_task(1)).state == TaskState.DONE


async def test_a_closed_issue_can_be_cancelled_and_everyone_refunded(bot: GitLabBot):
    """GitLab has no "closed as not planned": a close without a merge asks a maintainer to
    /award or /cancel; removing the label cancels at once."""
    await bot.label(1)
    await bot.comment("alice", "/pledge 10")
    await bot.close_issue(1)
    await bot.settle()
    assert (await bot.existing_task(1)).state == TaskState.FUNDED
    assert any("/cancel" in n.body for n in bot.bot_comments(1))
    await bot.comment("maya", "/cancel")
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.CANCELLED and task.pledges[0].state == PledgeState.REFUNDED
    await bot.label(2)
    await bot.comment("bob", "/pledge 7", number=2)
    await bot.label(2, action="unlabeled")
    await bot.settle()
    assert (await bot.existing_task(2)).state == TaskState.CANCELLED
    assert (await run_audit(bot.app[SESSIONMAKER])).ok


async def test_a_merge_request_closed_unmerged_returns_the_claim(bot: GitLabBot):
    await bot.label(1)
    await bot.comment("alice", "/pledge 10")
    await bot.comment("dave", "/claim")
    await bot.pull_request("opened", "dave", 5, "Resolves #1")
    await bot.settle()
    claim = (await bot.existing_task(1)).live_claim()
    assert claim is not None and claim.state == ClaimState.IN_REVIEW
    await bot.pull_request("closed", "dave", 5, "Resolves #1", merged=False)
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    claim = task.live_claim()
    assert claim is not None and claim.state == ClaimState.ACTIVE
    assert task.links[0].state == LinkState.CLOSED


async def test_one_bot_serves_github_and_gitlab_without_mixing_them(db_url, github_server,
                                                                  gitlab_server):
    bot = await GitLabBot.start_gitlab(db_url, gitlab_server, github=github_server)
    try:
        await bot.label(1)
        await GitHubBot.label(bot, 1)
        await bot.comment("alice", "/pledge 10")
        await GitHubBot.comment(bot, "alice", "/pledge 25")
        await bot.settle()
        gl, gh = await bot.task(1), await GitHubBot.task(bot, 1)
        assert (gl.forge, gl.repo, gl.held().minor) == ("gitlab", PROJECT, 1000)
        assert (gh.forge, gh.repo, gh.held().minor) == ("github", REPO, 2500)
        assert gl.id != gh.id
        gl_summary = [n.body for n in bot.bot_comments(1) if "bountybot:summary" in n.body]
        gh_summary = [c.body for c in GitHubBot.bot_comments(bot, 1)
                      if "bountybot:summary" in c.body]
        assert len(gl_summary) == 1 and "€10.00" in gl_summary[0]
        assert len(gh_summary) == 1 and "€25.00" in gh_summary[0]
        assert (await run_audit(bot.app[SESSIONMAKER])).ok
    finally:
        await bot.close()
