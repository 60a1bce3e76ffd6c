"""Reconciliation: comments and merges whose webhooks never arrived are read from the local
GitHub and GitLab and applied once; an unchanged repo is only 304s; `bountybot sync`; the lease
that keeps several processes from syncing one repo at once. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from gitlab_harness import PROJECT, PROJECT_ID, GitLabBot
from sqlmodel import select

from bountybot.cli import main
from bountybot.forges.base import ForgeClient
from bountybot.forges.events import (
    Happening,
    happening_from_dict,
    happening_to_dict,
    happenings_from_payload,
)
from bountybot.reconcile import LEASE, Reconciler, SyncReport
from bountybot.refs import RepoRef
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.rules import (
    Actor,
    Comment,
    IssueClosed,
    IssueDeleted,
    IssueRetitled,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
)
from bountybot.service import RUNTIME
from bountybot.states import PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit
from bountybot.storage.engine import create_engine, create_sessionmaker

from clocks import Shifted
from fakes.github import FakeGitHub
from fixtures import payload
from github_harness import REPO, TOKEN, GitHubBot


def reconciler(bot: GitHubBot, **options: Any) -> Reconciler:
    runtime = bot.app[RUNTIME]
    return Reconciler(bot.app[SESSIONMAKER], bot.app[SETTINGS], runtime.clients,
                      on_stored=runtime.wake_worker.set, **options)


async def sync(bot: GitHubBot) -> SyncReport:
    report = await reconciler(bot).run_once()
    await bot.settle()
    return report


@pytest.fixture
async def github(db_url, github_server):
    bot = await GitHubBot.start(db_url, github_server)
    try:
        yield bot
    finally:
        await bot.close()


@pytest.fixture
async def gitlab(db_url, gitlab_server):
    bot = await GitLabBot.start_gitlab(db_url, gitlab_server)
    try:
        yield bot
    finally:
        await bot.close()


async def github_task_with_goal(bot: GitHubBot, number: int = 1) -> None:
    """Issue `number` labelled and given a goal of 10, by webhooks."""
    bot.fake.label_issue(REPO, number, "bounty")
    await bot.label(number)
    await bot.comment("maya", "/goal 10", number)
    await bot.settle()


async def github_comment_webhook(bot: GitHubBot, comment_id: int, login: str, body: str,
                                 number: int) -> None:
    """The webhook of a comment already on the fake (delivered late)."""
    data = payload("github", "issue_comment.created")
    data["issue"].update(number=number, html_url=f"https://github.com/{REPO}/issues/{number}")
    data["comment"].update(id=comment_id, body=body)
    data["comment"]["user"].update(login=login, type="User")
    data["sender"].update(login=login)
    assert (await bot.post("issue_comment", data)).status == 202


async def test_a_missed_pledge_and_a_missed_merge_are_recovered_on_github(github: GitHubBot):
    fake = github.fake
    await github_task_with_goal(github)
    pledge = fake.add_comment(REPO, 1, "/pledge 10", login="alice")  # no webhook
    report = await sync(github)
    assert report.failed == [] and report.repos[0].found == 3  # the label, /goal, /pledge
    task = await github.task(1)
    assert task is not None
    assert task.state == TaskState.FUNDED
    assert [(p.backer, p.amount.minor, p.state) for p in task.pledges] == [
        ("alice", 1000, PledgeState.HELD)]
    assert task.goal is not None
    assert task.goal.minor == 1000  # /goal, read again, was not applied twice
    await github.comment("dave", "/claim")
    await github.settle()
    fake.add_pull(REPO, 7, "Fixes #1", login="dave")
    fake.merge_pull(REPO, 7)  # no webhook
    await sync(github)
    task = await github.task(1)
    assert task is not None
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor, p.state) for p in task.payouts] == [
        ("dave", 1000, PayoutState.PENDING)]
    (summary,) = [c for c in github.bot_comments(1) if "bountybot:summary" in c.body]
    assert "done" in summary.body and "@alice" in summary.body
    assert [r.content for r in fake.reactions(pledge)] == ["+1"]
    assert (await run_audit(github.app[SESSIONMAKER])).ok


async def test_an_unchanged_repo_is_three_304s_and_queues_nothing(github: GitHubBot):
    fake = github.fake
    await github_task_with_goal(github)
    fake.add_comment(REPO, 1, "/pledge 10", login="alice")
    await sync(github)
    await sync(github)  # reads the bot's own writes (summary, reaction): nothing for it
    before, not_modified = len(fake.requests), fake.not_modified
    report = await sync(github)
    asked = fake.requests[before:]
    assert [r.path.rsplit("/", 2)[-2:] for r in asked] == [
        ["Hello-World", "issues"], ["issues", "comments"], ["Hello-World", "pulls"]]
    assert all(r.method == "GET" and r.headers.get("if-none-match") for r in asked)
    assert fake.not_modified - not_modified == 3
    (repo,) = report.repos
    assert (repo.requests, repo.not_modified, repo.found, repo.queued) == (3, 3, 0, 0)
    assert "3 requests, 3 unchanged" in repo.line()


async def test_a_comment_from_a_webhook_and_a_sync_is_applied_once(github: GitHubBot):
    fake = github.fake
    await github_task_with_goal(github, 1)
    await github_task_with_goal(github, 2)
    # On issue 1 the webhook comes first, then the sync reads the same comment.
    await github.comment("alice", "/pledge 10", 1)
    await github.settle()
    first = fake.comments(REPO, 1)[-1].id
    # On issue 2 the sync reads it first, then its webhook arrives late.
    second = fake.add_comment(REPO, 2, "/pledge 10", login="bob")
    await sync(github)
    await github_comment_webhook(github, second, "bob", "/pledge 10", 2)
    await github.settle()
    for number, backer, comment in ((1, "alice", first), (2, "bob", second)):
        task = await github.task(number)
        assert task is not None
        assert [(p.backer, p.amount.minor) for p in task.pledges] == [(backer, 1000)]
        assert len(fake.reactions(comment)) == 1
    handled = [r for r in await github.rows(t.HandledComment)
               if r.comment_id in (str(first), str(second))]
    assert len(handled) == 2 and all(r.task_id is not None for r in handled)
    reactions = [o for o in await github.rows(t.Outbox) if o.kind == "reaction"
                 and o.payload["comment_id"] in (str(first), str(second))]
    assert len(reactions) == 2


async def test_what_sync_leaves_alone_on_github(github: GitHubBot):
    """Bots, pull request comments, edits of older comments, and merges from before the
    cursor (a late comment on an old pull request) are not read as new."""
    fake = github.fake
    await github_task_with_goal(github)
    fake.add_pull(REPO, 3, "Fixes #1", login="erin")
    pull = fake.merge_pull(REPO, 3)
    fake.add_comment(REPO, 1, "/pledge 99", login="dependabot[bot]", user_type="Bot")
    fake.add_comment(REPO, 1, "/pledge 99", login="bountybot")
    fake.add_comment(REPO, 3, "/pledge 99", login="alice")  # on the pull request
    fake.add_comment(REPO, 1, "nice work", login="carol")  # no command
    old = fake.comments(REPO, 1)[0]
    old.created_at -= timedelta(hours=1)  # a comment from before the cursor, edited since
    old.body += "\n/pledge 50"
    report = await sync(github)
    kinds = sorted(d.delivery_id.split(":")[2] for d in await github.rows(t.Delivery)
                   if d.delivery_id.startswith("sync:"))
    assert kinds == ["label", "merge"] and report.repos[0].queued == 2
    # The merge in this window, by someone who holds no claim: a maintainer is asked.
    task = await github.task(1)
    assert task is not None
    assert task.pledges == [] and task.links[0].state == "merged"
    # Ten minutes on, the cursor is past the merge; a late comment touches the pull request,
    # which does not make it a new merge.
    later = reconciler(github, clock=_later(timedelta(minutes=10)))
    await later.run_once()
    pull.updated_at = datetime.now(UTC) + timedelta(minutes=9)
    report = await later.run_once()
    assert (report.repos[0].found, report.repos[0].not_modified) == (0, 2)  # pulls: a 200


def _later(shift: timedelta) -> Shifted:
    clock = Shifted()
    clock.shift = shift
    return clock


async def test_a_missed_pledge_and_a_missed_merge_are_recovered_on_gitlab(gitlab: GitLabBot):
    fake = gitlab.gitlab
    fake.label_issue(PROJECT_ID, 1, "bounty")
    await gitlab.label(1)
    await gitlab.comment("maya", "/goal 10")
    await gitlab.settle()
    note = fake.add_note(PROJECT_ID, 1, "/pledge 10", username="alice")  # no webhook
    report = await sync(gitlab)
    assert report.failed == [] and report.repos[0].found == 3
    task = await gitlab.task(1)
    assert task is not None
    assert task.state == TaskState.FUNDED and task.held().minor == 1000
    assert task.goal is not None
    assert task.goal.minor == 1000
    await gitlab.comment("dave", "/claim")
    await gitlab.settle()
    fake.add_merge_request(PROJECT_ID, 4, f"Closes {PROJECT}#1", username="dave")
    fake.merge(PROJECT_ID, 4)  # no webhook
    await sync(gitlab)
    task = await gitlab.task(1)
    assert task is not None
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor, p.state) for p in task.payouts] == [
        ("dave", 1000, PayoutState.PENDING)]
    assert task.links[0].author == "dave"  # the REST object names its author
    (summary,) = [n for n in gitlab.bot_comments(1) if "bountybot:summary" in n.body]
    assert "done" in summary.body
    assert len(fake.awards(note)) == 1
    # Nothing new: after one read of the bot's own writes, two requests, both 304.
    await sync(gitlab)
    before = len(fake.requests)
    report = await sync(gitlab)
    asked = fake.requests[before:]
    assert [r.path.rsplit("/", 1)[-1] for r in asked] == ["issues", "merge_requests"]
    assert all(r.headers.get("if-none-match") for r in asked)
    (repo,) = report.repos
    assert (repo.requests, repo.not_modified, repo.queued) == (2, 2, 0)
    assert (await run_audit(gitlab.app[SESSIONMAKER])).ok


async def test_a_forge_error_is_reported_and_changes_no_cursor(github: GitHubBot):
    await github_task_with_goal(github)
    github.fake.fail_next("GET", r"/issues/comments$", 502)
    report = await sync(github)
    (repo,) = report.repos
    assert repo.error is not None and "502" in repo.error and TOKEN not in repo.error
    (cursor,) = await github.rows(t.SyncCursor)
    assert cursor.since is None and cursor.lease_owner is None and "502" in cursor.last_error
    github.fake.add_comment(REPO, 1, "/pledge 10", login="alice")
    report = await sync(github)
    assert report.failed == [] and (await github.existing_task(1)).held().minor == 1000
    (cursor,) = await github.rows(t.SyncCursor)
    assert cursor.since is not None and cursor.last_error is None and cursor.etags


class Gated:
    """A forge client whose `changes` waits at a gate: the lease is held meanwhile."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def changes(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        return await self.inner.changes(*args, **kwargs)


async def test_several_reconcilers_at_once_sync_a_repo_once(github: GitHubBot, db_url):
    await github_task_with_goal(github)
    github.fake.add_comment(REPO, 1, "/pledge 10", login="alice")
    gated = Gated(github.app[RUNTIME].clients["github"])
    engines = [create_engine(db_url) for _ in range(4)]  # as many processes
    try:
        clients = {"github": cast(ForgeClient, gated)}  # a stand-in with only `changes`
        readers = [Reconciler(create_sessionmaker(e), github.app[SETTINGS], clients,
                              owner=f"replica-{i}") for i, e in enumerate(engines)]
        runs = [asyncio.create_task(r.run_once()) for r in readers]
        await gated.entered.wait()
        pending = set(runs)
        while len(pending) > 1:  # all but the one at the gate find the repo leased
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        gated.gate.set()
        reports = [(await run).repos[0] for run in runs]
    finally:
        for engine in engines:
            await engine.dispose()
    assert gated.calls == 1
    assert sorted(r.busy for r in reports) == [False, True, True, True]
    assert sum(r.queued for r in reports) == 3
    assert "another process" in next(r for r in reports if r.busy).line()
    await github.settle()
    assert (await github.existing_task(1)).held().minor == 1000


async def test_a_lease_left_by_a_dead_process_runs_out(github: GitHubBot):
    await github_task_with_goal(github)
    clock = Shifted()
    dead = reconciler(github, clock=clock, owner="dead")
    async with github.app[SESSIONMAKER]() as session:
        (repo,) = (await session.exec(select(t.Repo))).all()
    assert await dead._take_lease(t.id_of(repo)) is not None  # then it was killed
    alive = reconciler(github, clock=clock, owner="alive")
    assert (await alive.run_once()).repos[0].busy
    clock.shift = LEASE + timedelta(seconds=1)
    report = await alive.run_once()
    assert not report.repos[0].busy and report.repos[0].queued == 2  # the label and /goal


@pytest.fixture
def root_logger():
    """The command sets up logging: put the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logger")
async def test_bountybot_sync_end_to_end(db_url, github_server: FakeGitHub, monkeypatch,
                                         capsys):
    bot = await GitHubBot.start(db_url, github_server)
    try:
        await github_task_with_goal(bot)
    finally:
        await bot.close()  # the service is down: the command does the work itself
    github_server.add_comment(REPO, 1, "/pledge 10", login="alice")
    for name, value in (("DATABASE_URL", db_url), ("GITHUB_API_URL", github_server.url),
                        ("GITHUB_TOKEN", TOKEN), ("GITHUB_WEBHOOK_SECRET", "whsec-cli-0a1b2c")):
        monkeypatch.setenv(f"BOUNTYBOT_{name}", value)
    assert await asyncio.to_thread(main, ["sync"]) == 0
    out = capsys.readouterr().out
    assert f"github {REPO}: 3 found, 3 queued" in out
    assert "synced 1 repos: 3 found, 3 queued" in out and "3 deliveries handled" in out
    engine = create_engine(db_url)
    try:
        async with create_sessionmaker(engine)() as session:
            pledges = (await session.exec(select(t.Pledge))).all()
        assert [(p.backer, p.amount_minor, p.state) for p in pledges] == [
            ("alice", 1000, PledgeState.HELD)]
    finally:
        await engine.dispose()
    github_server.fail_next("GET", r"/pulls$", 503)
    assert await asyncio.to_thread(main, ["sync", "--repo", REPO.lower()]) == 1
    captured = capsys.readouterr()
    assert f"github {REPO}: failed: GitHub GET" in captured.err and "503" in captured.err
    assert TOKEN not in captured.err + captured.out and "1 failed" in captured.out
    assert await asyncio.to_thread(main, ["sync", "--repo", "nobody/nothing"]) == 1
    assert "no repo nobody/nothing is known" in capsys.readouterr().err


@pytest.mark.parametrize("what", [
    Comment("77", Actor("alice", is_maintainer=True, is_bot=False), "/pledge 5", "2026-01-01"),
    LabelAdded(), LabelRemoved(), IssueClosed(not_planned=True), IssueDeleted(),
    IssueRetitled("New title"), LinkOpened(3, "dave", "https://x/3"),
    LinkClosed(3, "dave", merged=True, url=None),
])
def test_a_happening_survives_the_inbox(what):
    repo = RepoRef("github", "42", "octo/widgets", "7")
    h = Happening("octo/widgets", repo, 5, what, "Title", "https://x/5", author_id=None)
    back = happening_from_dict(json.loads(json.dumps(happening_to_dict(h))))
    if isinstance(what, Comment):  # whether the author maintains the repo is asked again
        assert back.what == Comment("77", Actor("alice"), "/pledge 5", "2026-01-01")
        assert back == Happening("octo/widgets", repo, 5, back.what, "Title", "https://x/5")
    else:
        assert back == h
    other = Happening("other/repo", None, 9, LinkClosed(3, "", merged=True), author_id=11)
    assert happenings_from_payload({"happenings": [happening_to_dict(other)]}) == [other]
