"""Whole bounties on Forgejo (Codeberg, Gitea): the published payloads, signed with the raw
body's HMAC, posted to the real app; the bot answers a local Forgejo over loopback, confirming
each comment through its API; reconciliation, and one bot serving three forges. On SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from forgejo_harness import FJ_REPO, FJ_SECRET, FJ_TOKEN, ForgejoBot, fj_sign
from gitlab_harness import GL_TOKEN, PROJECT, GitLabBot

from bountybot.reconcile import Reconciler
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.service import RUNTIME, scheduled_jobs
from bountybot.states import ClaimState, LinkState, PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from github_harness import REPO, TOKEN, GitHubBot

SUMMARY = "bountybot:summary"


@pytest.fixture
async def bot(db_url, forgejo_server):
    bot = await ForgejoBot.start_forgejo(db_url, forgejo_server)
    try:
        yield bot
    finally:
        await bot.close()


def replies(bot: ForgejoBot, number: int = 1) -> list[Any]:
    return [c for c in bot.bot_comments(number) if SUMMARY not in c.body]


def summaries(bot: ForgejoBot, number: int = 1) -> list[Any]:
    return [c for c in bot.bot_comments(number) if SUMMARY in c.body]


async def pledges(bot: ForgejoBot, number: int = 1) -> list[tuple[str, int, str]]:
    task = await bot.existing_task(number)
    return [(p.backer, p.amount.minor, p.state) for p in task.pledges]


async def test_the_whole_happy_path(bot: ForgejoBot):
    fake = bot.forgejo
    # Opened with the label, then the `label_updated` Forgejo sends after it: one task.
    assert (await bot.opened(1, ["bounty", "help wanted"])).status == 202
    await bot.settle()
    opened = await bot.existing_task(1)
    assert (await bot.labels(1, ["bounty", "help wanted"])).status == 202
    await bot.settle()
    assert (await bot.existing_task(1)).id == opened.id
    assert len(await bot.rows(t.Task)) == 1
    await bot.comment("maya", "/goal 110.50")
    for login, amount in (("alice", "60"), ("bob", "30"), ("carol", "20,50 €")):
        await bot.comment(login, f"/pledge {amount}")
    await bot.settle()
    task = await bot.existing_task(1)
    assert (task.forge, task.repo) == ("forgejo", FJ_REPO)
    assert task.state == TaskState.FUNDED and task.held().minor == 11050
    await bot.comment("dave", "/claim")
    await bot.comment("erin", "/claim")
    await bot.comment("alice", "/withdraw")  # refused: the task is claimed
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.CLAIMED and task.waiting == ["erin"]
    await bot.pull_request("opened", "dave", 77, "Fixes #1\n\nAll done.")
    await bot.settle()
    assert (await bot.existing_task(1)).state == TaskState.IN_REVIEW
    await bot.pull_request("closed", "dave", 77, "Fixes #1\n\nAll done.", merged=True)
    await bot.close_issue(1)  # Forgejo then closes the issue the merge fixed
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor, p.state) for p in task.payouts] == [
        ("dave", 11050, PayoutState.PENDING)]
    assert task.claims[0].state == ClaimState.DONE and task.links[0].state == LinkState.MERGED
    assert task.links[0].author == "dave"  # the pull request's author, not the merger (maya)
    report = await run_audit(bot.app[SESSIONMAKER])
    assert report.ok, report.render()

    # What Forgejo saw: one summary, made once then edited in place, showing the end; one
    # reply (the refused withdrawal); a +1 on every accepted command; each command comment
    # read back through the API before it applied.
    (summary,) = summaries(bot)
    assert "110.50" in summary.body and "done" in summary.body
    edits = [r for r in fake.writes()
             if r.method == "PATCH" and r.path.endswith(f"/issues/comments/{summary.id}")]
    assert edits
    creates = [r for r in fake.writes() if r.method == "POST" and r.path.endswith("/comments")]
    assert len(creates) == 2  # the summary and the reply, nothing else
    (reply,) = replies(bot)
    assert "locked" in reply.body
    people = [c for c in fake.comments(FJ_REPO, 1) if c.login != "bountybot"]
    assert len(people) == 7
    reacted = [c for c in people if fake.reactions(c.id)]
    assert [c.body for c in reacted] == [c.body for c in people if c.body != "/withdraw"]
    assert {(r.content, r.login) for c in reacted for r in fake.reactions(c.id)} == {
        ("+1", "bountybot")}
    read_back = {r.path.rsplit("/", 1)[1] for r in fake.requests
                 if r.method == "GET" and "/issues/comments/" in r.path}
    assert read_back >= {str(c.id) for c in people}
    assert all(w.headers.get("authorization") == f"token {FJ_TOKEN}" for w in fake.writes())


async def test_a_non_maintainer_cannot_set_the_goal(bot: ForgejoBot):
    bot.forgejo.set_permission(FJ_REPO, "nobody", "none")
    await bot.label(1)
    await bot.comment("mallory", "/goal 5")  # Forgejo says "read"
    await bot.comment("nobody", "/goal 6")  # and "none"
    await bot.settle()
    assert (await bot.existing_task(1)).goal is None
    said = replies(bot)
    assert len(said) == 2 and all("maintainer" in c.body for c in said)
    asked = [r.path.rsplit("/", 2)[1] for r in bot.forgejo.requests
             if r.path.endswith("/permission")]
    assert asked == ["mallory", "nobody"]


async def test_a_redelivery_and_a_replay_from_the_ui_change_nothing(bot: ForgejoBot):
    await bot.label(1)
    first = await bot.comment("alice", "/pledge 10\n/goal 5", delivery="fj-1")
    await bot.settle()
    assert await pledges(bot) == [("alice", 1000, PledgeState.HELD)]
    assert len(replies(bot)) == 1  # the /goal: alice maintains nothing
    writes = len(bot.forgejo.writes())
    stored = [d for d in await bot.rows(t.Delivery) if d.delivery_id == "fj-1"]
    body = stored[0].payload.encode()
    # The same delivery again (the same id): a duplicate at the door.
    again = await bot.post_forgejo("issue_comment", body, delivery="fj-1")
    # "Replay" in Forgejo's UI: the same body under a new delivery id, stored and read, and
    # a no-op because the comment was handled.
    replay = await bot.post_forgejo("issue_comment", body, delivery="fj-2")
    await bot.settle()
    assert (first.status, again.status, replay.status) == (202, 200, 202)
    assert (await again.json())["status"] == "duplicate"
    assert await pledges(bot) == [("alice", 1000, PledgeState.HELD)]
    assert len(replies(bot)) == 1
    assert len(bot.forgejo.writes()) == writes
    states = {d.delivery_id: d.state for d in await bot.rows(t.Delivery)}
    assert states["fj-2"] == t.DeliveryState.HANDLED and len(states) == 3


async def test_bad_signature_malformed_and_oversized_bodies_change_nothing(db_url,
                                                                        forgejo_server):
    bot = await ForgejoBot.start_forgejo(db_url, forgejo_server, max_body=4096)
    try:
        body = json.dumps({"action": "created"}, indent=2).encode()
        post = bot.post_forgejo
        assert (await post("issue_comment", body, secret=FJ_SECRET + "x")).status == 401
        assert (await post("issue_comment", body, signature="")).status == 401
        assert (await post("issue_comment", body, signature="0" * 64)).status == 401
        # Signed over other bytes (the same JSON re-indented): the raw body is what counts.
        other = fj_sign(json.dumps({"action": "created"}).encode())
        assert (await post("issue_comment", body, signature=other)).status == 401
        bad = await post("issue_comment", b"{not json")
        assert bad.status == 400 and "JSON" in (await bad.json())["error"]
        assert (await post("issue_comment", b"[1, 2]")).status == 400
        huge = json.dumps({"body": "x" * 10_000}).encode()
        assert (await post("issue_comment", huge)).status == 413
        text = await (await post("issue_comment", body, secret="nope")).text()
        assert FJ_SECRET not in text
        assert await bot.rows(t.Delivery) == []
        assert (await post("issue_comment", body)).status == 202  # the door itself is open
        # Gitea sends its own header names only (X-Gitea-Signature, X-Gitea-Delivery...).
        assert (await post("issue_comment", body, brands=("Gitea",))).status == 202
        assert len(await bot.rows(t.Delivery)) == 2
    finally:
        await bot.close()


async def test_forgejo_502_then_200_gives_one_reply_and_one_summary(bot: ForgejoBot):
    fake = bot.forgejo
    fake.fail_next("POST", r"/issues/1/comments$", 502, times=2)  # the summary's first tries
    await bot.label(1)
    await bot.settle()
    fake.fail_next("POST", r"/issues/1/comments$", 502, times=2, body="<html>Bad Gateway</html>")
    fake.fail_next("PATCH", r"/issues/comments/\d+$", 502)
    await bot.comment("mallory", "/goal 5")  # refused: a reply must be written
    await bot.comment("alice", "/pledge 5")  # the summary must be edited
    await bot.settle()
    (reply,) = replies(bot)
    assert "maintainer" in reply.body
    (summary,) = summaries(bot)
    assert "€5.00" in summary.body
    posts = [r for r in fake.requests
             if r.method == "POST" and r.path.endswith("/issues/1/comments")]
    assert len(posts) == 6  # each of the two: two 502s, then the one that worked
    rows = [o for o in await bot.rows(t.Outbox) if o.kind in ("reply", "summary")]
    assert {o.state for o in rows} == {t.OutboxState.SENT}


async def test_a_merge_by_someone_else_asks_for_an_award(bot: ForgejoBot):
    await bot.label(1)
    await bot.comment("maya", "/goal 10")
    await bot.comment("alice", "/pledge 10")
    await bot.comment("dave", "/claim")
    await bot.pull_request("closed", "frank", 80, "fixes #1", merged=True)
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.CLAIMED and not task.payouts
    assert task.links[0].author == "frank" and task.links[0].state == LinkState.MERGED
    assert any("/award @frank" in c.body for c in bot.bot_comments(1))
    await bot.comment("maya", "/award @frank 70% @dave 30%")
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor) for p in task.payouts] == [("frank", 700),
                                                                     ("dave", 300)]
    asked = {r.path.rsplit("/", 1)[1] for r in bot.forgejo.requests
             if "/api/v1/users/" in r.path}
    assert asked == {"frank", "dave"}  # both logins checked to exist before paying them
    assert (await run_audit(bot.app[SESSIONMAKER])).ok


async def test_a_pull_request_closed_unmerged_returns_the_claim(bot: ForgejoBot):
    await bot.label(1)
    await bot.comment("alice", "/pledge 10")
    await bot.comment("dave", "/claim")
    await bot.pull_request("opened", "dave", 5, "Closes #1")
    await bot.settle()
    claim = (await bot.existing_task(1)).live_claim()
    assert claim is not None and claim.state == ClaimState.IN_REVIEW
    await bot.pull_request("closed", "dave", 5, "Closes #1", merged=False)
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.CLAIMED and not task.payouts
    claim = task.live_claim()
    assert claim is not None and claim.state == ClaimState.ACTIVE and claim.expires_at
    assert task.links[0].state == LinkState.CLOSED
    assert await pledges(bot) == [("alice", 1000, PledgeState.HELD)]


@pytest.mark.parametrize("removal", ["label_updated", "label_cleared"])
async def test_removing_the_label_cancels_and_refunds(bot: ForgejoBot, removal: str):
    await bot.labels(1, ["bug", "bounty"])
    await bot.comment("alice", "/pledge 10")
    await bot.comment("bob", "/pledge 15")
    await bot.settle()
    # `label_updated` holding what is left (`bug`), or `label_cleared` with nothing.
    await bot.labels(1, ["bug"] if removal == "label_updated" else [], action=removal)
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.CANCELLED
    assert {p.state for p in task.pledges} == {PledgeState.REFUNDED}
    assert "cancelled" in summaries(bot)[0].body
    report = await run_audit(bot.app[SESSIONMAKER])
    assert report.ok, report.render()


async def test_another_label_on_a_task_opened_by_goal_cancels_nothing(bot: ForgejoBot):
    await bot.comment("maya", "/goal 20", 2)  # no label: /goal opens the task
    await bot.comment("alice", "/pledge 10", 2)
    await bot.settle()
    assert (await bot.existing_task(2)).state == TaskState.OPEN
    await bot.labels(2, ["help wanted"])  # no `bounty` in the list: yet never carried it
    await bot.labels(2, [], action="label_cleared")
    await bot.settle()
    task = await bot.existing_task(2)
    assert task.state == TaskState.OPEN and task.held().minor == 1000
    assert await pledges(bot, 2) == [("alice", 1000, PledgeState.HELD)]


@pytest.mark.parametrize("marked", [True, False], ids=["pull_request set", "is_pull alone"])
async def test_a_comment_on_a_pull_request_is_ignored(bot: ForgejoBot, marked: bool):
    """A real instance sets `issue.pull_request`; Forgejo's own test payloads only `is_pull`."""
    fake = bot.forgejo
    await bot.label(1)
    await bot.settle()
    fake.add_pull(FJ_REPO, 2, "Fixes #1", login="dave")
    writes = len(fake.writes())
    answers = [await bot.comment("alice", "/pledge 10", 2, on_pull=True, pull_marked=marked),
               await bot.comment("maya", "/goal 10", 2, on_pull=True, pull_marked=marked)]
    await bot.settle()
    assert [a.status for a in answers] == [202, 202]
    assert await bot.task(2) is None
    assert (await bot.existing_task(1)).pledges == []
    assert len(fake.writes()) == writes  # no reaction, no reply
    assert not [r for r in fake.requests if "/issues/comments/" in r.path]  # nothing to confirm
    assert {d.state for d in await bot.rows(t.Delivery)} == {t.DeliveryState.HANDLED}


async def test_the_bot_and_forgejos_pseudo_users_are_never_read(bot: ForgejoBot):
    """Forgejo sends a hook for the bot's own comments too; its ghost (-1) and Actions (-2)
    users are no people."""
    await bot.label(1)
    await bot.comment("bountybot", "/pledge 10")
    await bot.comment("Ghost", "/pledge 10", author_id=-1)
    await bot.comment("forgejo-actions", "/pledge 10", author_id=-2)
    await bot.settle()
    assert (await bot.existing_task(1)).pledges == []
    assert not [r for r in bot.forgejo.requests if "/reactions" in r.path]


async def test_a_repo_secret_speaks_for_its_repo_only(db_url, forgejo_server):
    own = "own-secret-of-seed-library"
    bot = await ForgejoBot.start_forgejo(db_url, forgejo_server, repo_secrets={FJ_REPO: own})
    try:
        forgejo_server.add_repo("commons/orchard", 4711)
        assert (await bot.labels(1, ["bounty"], secret=own)).status == 202
        assert (await bot.comment("alice", "/pledge 10", secret=own)).status == 202
        # The same secret, for another repo of the same owner: refused at the door.
        assert (await bot.labels(1, ["bounty"], path="commons/orchard", repo_id=4711,
                                 secret=own)).status == 403
        assert (await bot.comment("alice", "/pledge 10", path="commons/orchard",
                                  repo_id=4711, secret=own)).status == 403
        await bot.settle()
        assert await pledges(bot) == [("alice", 1000, PledgeState.HELD)]
        repos = {(r.forge, r.full_path) for r in await bot.rows(t.Repo)}
        assert repos == {("forgejo", FJ_REPO)}
        assert len(await bot.rows(t.Delivery)) == 2
    finally:
        await bot.close()


async def test_a_comment_the_api_does_not_confirm_applies_nothing(bot: ForgejoBot):
    fake = bot.forgejo
    await bot.label(1)
    await bot.comment("maya", "/goal 10")
    await bot.settle()
    # The hook says one thing, Forgejo's API another: its text, its author.
    await bot.comment("alice", "/pledge 500", api_body="Nice idea!")
    await bot.comment("maya", "/cancel", api_login="mallory")
    await bot.comment("bob", "/pledge 7\n/pledge 9", api_body="/pledge 7")
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.OPEN
    assert await pledges(bot) == [("bob", 700, PledgeState.HELD)]  # the line both show
    _, alice, maya_said, bob = [c for c in fake.comments(FJ_REPO, 1) if c.login != "bountybot"]
    assert fake.reactions(alice.id) == [] and fake.reactions(maya_said.id) == []
    assert [r.content for r in fake.reactions(bob.id)] == ["+1"]
    assert (await run_audit(bot.app[SESSIONMAKER])).ok


async def test_one_bot_serves_github_gitlab_and_codeberg_without_mixing_them(
        db_url, github_server, gitlab_server, forgejo_server):
    bot = await ForgejoBot.start_forgejo(db_url, forgejo_server, github=github_server,
                                         gitlab=gitlab_server)
    try:
        await bot.label(1)
        await GitHubBot.label(bot, 1)
        await GitLabBot.label(bot, 1)
        await bot.comment("alice", "/pledge 40")
        await GitHubBot.comment(bot, "alice", "/pledge 25")
        await GitLabBot.comment(bot, "alice", "/pledge 10")
        await bot.settle()
        fj, gh, gl = (await bot.task(1), await GitHubBot.task(bot, 1),
                      await GitLabBot.task(bot, 1))
        assert fj is not None and gh is not None and gl is not None
        assert (fj.forge, fj.repo, fj.held().minor) == ("forgejo", FJ_REPO, 4000)
        assert (gh.forge, gh.repo, gh.held().minor) == ("github", REPO, 2500)
        assert (gl.forge, gl.repo, gl.held().minor) == ("gitlab", PROJECT, 1000)
        assert len({fj.id, gh.id, gl.id}) == 3
        for said, amount in ((summaries(bot), "€40.00"),
                             ([c for c in GitHubBot.bot_comments(bot, 1) if SUMMARY in c.body],
                              "€25.00"),
                             ([n for n in GitLabBot.bot_comments(bot, 1) if SUMMARY in n.body],
                              "€10.00")):
            assert len(said) == 1 and amount in said[0].body
        # Each forge got its own writes, with its own credential.
        assert all(w.headers.get("authorization") == f"token {FJ_TOKEN}"
                   for w in forgejo_server.writes())
        assert all(w.headers.get("private-token") == GL_TOKEN for w in gitlab_server.writes())
        assert all(w.headers.get("authorization") == f"token {TOKEN}"
                   for w in github_server.writes())
        assert (await run_audit(bot.app[SESSIONMAKER])).ok

        # Forgejo is reconciled on its own job, every 5 minutes; the others on the common 10.
        runtime, settings = bot.app[RUNTIME], bot.app[SETTINGS]
        assert settings.scheduler.sync_minutes == 10
        jobs = scheduled_jobs(runtime, settings)
        assert {name: every for name, (every, _) in jobs.items()} == {
            "sweep": 60.0, "sync": 600.0, "sync:forgejo": 300.0}
        before = (len(github_server.requests), len(gitlab_server.requests))
        forgejo_server.add_comment(FJ_REPO, 1, "/pledge 2", login="bob")  # no webhook
        await jobs["sync:forgejo"][1]()
        await bot.settle()
        assert (await bot.existing_task(1)).held().minor == 4200
        assert (len(github_server.requests), len(gitlab_server.requests)) == before
    finally:
        await bot.close()


def reconciler(bot: ForgejoBot) -> Reconciler:
    runtime = bot.app[RUNTIME]
    return Reconciler(bot.app[SESSIONMAKER], bot.app[SETTINGS], runtime.clients,
                      on_stored=runtime.wake_worker.set)


async def test_reconciliation_recovers_a_missed_comment_and_merge_once(bot: ForgejoBot):
    """Forgejo never redelivers a failed hook: what is lost is read back from the API."""
    fake = bot.forgejo
    await bot.label(1)
    await bot.comment("maya", "/goal 10")
    await bot.settle()
    pledge = fake.add_comment(FJ_REPO, 1, "/pledge 10", login="alice")  # no webhook
    report = await reconciler(bot).run_once()
    await bot.settle()
    assert report.failed == [] and report.repos[0].found == 3  # the label, /goal, /pledge
    task = await bot.existing_task(1)
    assert task.state == TaskState.FUNDED and task.goal is not None and task.goal.minor == 1000
    assert await pledges(bot) == [("alice", 1000, PledgeState.HELD)]
    assert [(r.content, r.login) for r in fake.reactions(pledge)] == [("+1", "bountybot")]
    goal = fake.comments(FJ_REPO, 1)[0]
    reacted = [r for r in fake.requests if r.method == "POST"
               and r.path.endswith(f"/issues/comments/{goal.id}/reactions")]
    assert goal.body == "/goal 10" and len(reacted) == 1  # /goal, read again, not applied again
    (summary,) = summaries(bot)
    assert "@alice" in summary.body
    writes, deliveries = len(fake.writes()), len(await bot.rows(t.Delivery))
    again = await reconciler(bot).run_once()
    await bot.settle()
    assert again.failed == [] and again.repos[0].queued == 0
    assert await pledges(bot) == [("alice", 1000, PledgeState.HELD)]
    assert (len(fake.writes()), len(await bot.rows(t.Delivery))) == (writes, deliveries)

    # A merge whose hook was lost: the claimant is paid, once.
    await bot.comment("dave", "/claim")
    await bot.settle()
    fake.add_pull(FJ_REPO, 7, "Fixes #1", login="dave")
    fake.merge_pull(FJ_REPO, 7)
    await reconciler(bot).run_once()
    await bot.settle()
    await reconciler(bot).run_once()
    await bot.settle()
    task = await bot.existing_task(1)
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor, p.state) for p in task.payouts] == [
        ("dave", 1000, PayoutState.PENDING)]
    assert (await run_audit(bot.app[SESSIONMAKER])).ok
