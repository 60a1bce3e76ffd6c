"""Money cannot be steered by a hostile input (issue #10): each attack a hostile test found, sent
through the real door (signed GitHub webhooks, GitLab's token header) to the real app, on SQLite
and PostgreSQL, with the books audited after. Each of these paid or counted wrongly before."""

from __future__ import annotations

from typing import Any

import pytest
from gitlab_harness import PROJECT, PROJECT_ID, USERS, GitLabBot
from sqlmodel import select

from bountybot.reconcile import Reconciler
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.service import RUNTIME
from bountybot.states import ClaimState, LinkState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from clocks import Shifted
from fakes.github import FakeGitHub
from fixtures import payload
from github_harness import REPO, REPO_ID, GitHubBot

HELD = frozenset({PledgeState.HELD})


@pytest.fixture
async def bot(db_url: str, github_server: FakeGitHub):
    clock = Shifted()
    github_server.clock = clock
    bot = await GitHubBot.start(db_url, github_server)
    bot.forge_clock = clock  # type: ignore[attr-defined]
    try:
        yield bot
    finally:
        await bot.close()


async def claimed(bot: GitHubBot, number: int, *, developer: str = "dave",
                  amount: str = "100") -> None:
    """A task funded by alice and claimed by `developer`."""
    await bot.label(number)
    await bot.comment("maya", f"/goal {amount}", number)
    await bot.comment("alice", f"/pledge {amount}", number)
    await bot.comment(developer, "/claim", number)
    await bot.settle()
    task = await bot.task(number)
    assert task is not None and task.state == TaskState.CLAIMED


def pull_payload(action: str, author: str, pr: int, body: str, *, repo: str = REPO,
                 repo_id: int = REPO_ID, merged: bool = False,
                 before: str | None = None) -> dict[str, Any]:
    """A `pull_request` delivery of `repo` (a published payload, changed)."""
    data = payload("github", "pull_request.opened")
    data["action"] = action
    data["number"] = pr
    data["repository"].update(id=repo_id, full_name=repo, name=repo.split("/")[1],
                              html_url=f"https://github.com/{repo}")
    data["pull_request"].update(number=pr, body=body, merged=merged,
                                html_url=f"https://github.com/{repo}/pull/{pr}",
                                state="closed" if action == "closed" or merged else "open")
    data["pull_request"]["user"]["login"] = author
    if before is not None:
        data["changes"] = {"body": {"from": before}}
    return data


async def audited(bot: GitHubBot) -> None:
    report = await run_audit(bot.app[SESSIONMAKER])
    assert report.ok, report.render()


async def sync(bot: GitHubBot) -> None:
    runtime = bot.app[RUNTIME]
    await Reconciler(bot.app[SESSIONMAKER], bot.app[SETTINGS], runtime.clients,
                     on_stored=runtime.wake_worker.set).run_once()
    await bot.settle()


# -- 1. a merge in another repository ----------------------------------------------------------


async def test_a_merge_in_another_repo_pays_nobody_until_a_maintainer_awards(bot: GitHubBot):
    await claimed(bot, 16)
    bot.fake.add_repo("mallory/sandbox", 555)
    body = "Fixes Codertocat/Hello-World#16"
    for action, merged in (("opened", False), ("closed", True)):
        response = await bot.post("pull_request", pull_payload(
            action, "dave", 3, body, repo="mallory/sandbox", repo_id=555, merged=merged))
        assert response.status == 202
        await bot.settle()
        task = await bot.existing_task(16)
        # Not even the claim's clock stops for a pull request in a repo of one's own.
        assert task.state == TaskState.CLAIMED and task.claims[0].state == ClaimState.ACTIVE
    assert task.payouts == [] and task.held().minor == 10000
    [link] = task.links
    assert (link.repo_path, link.number, link.state) == ("mallory/sandbox", 3, LinkState.MERGED)
    notices = [c.body for c in bot.bot_comments(16) if "another repository" in c.body]
    assert len(notices) == 1 and "/award @dave" in notices[0]
    # A maintainer of the task's repo who accepts the work confirms it.
    await bot.comment("maya", "/award @dave", 16)
    await bot.settle()
    task = await bot.existing_task(16)
    assert task.state == TaskState.DONE
    assert [(p.developer, p.amount.minor) for p in task.payouts] == [("dave", 10000)]
    await audited(bot)


async def test_a_pull_request_numbered_like_one_of_the_repo_stays_apart(bot: GitHubBot):
    """PR 5 of another repo and PR 5 of the task's repo are two links: the foreign one's merge
    must not count as the own one's."""
    await claimed(bot, 17)
    bot.fake.add_repo("mallory/sandbox", 555)
    await bot.post("pull_request", pull_payload(
        "closed", "dave", 5, "Fixes Codertocat/Hello-World#17", repo="mallory/sandbox",
        repo_id=555, merged=True))
    await bot.pull_request("opened", "dave", 5, "Fixes #17")
    await bot.settle()
    task = await bot.task(17)
    assert task is not None
    assert task.state == TaskState.IN_REVIEW and task.payouts == []
    assert sorted((li.repo_path, li.state) for li in task.links) == [
        ("", LinkState.OPEN), ("mallory/sandbox", LinkState.MERGED)]
    await bot.pull_request("closed", "dave", 5, "Fixes #17", merged=True)
    await bot.settle()
    task = await bot.task(17)
    assert task is not None
    assert task.state == TaskState.DONE and [p.developer for p in task.payouts] == ["dave"]


async def test_a_reference_never_crosses_forges(db_url: str, github_server: FakeGitHub,
                                                gitlab_server: Any):
    bot = await GitLabBot.start_gitlab(db_url, gitlab_server, github=github_server)
    try:
        # A GitHub task, through the GitHub door of the same service.
        await GitHubBot.label(bot, 16)
        for login, body in (("maya", "/goal 100"), ("alice", "/pledge 100"), ("dave", "/claim")):
            await GitHubBot.comment(bot, login, body, 16)
        await bot.settle()
        before = await GitHubBot.task(bot, 16)
        assert before is not None and before.state == TaskState.CLAIMED
        # dave is also a GitLab user; his merge request in a GitLab project names the GitHub
        # repo's path, which no GitLab project of this bot has.
        data = payload("gitlab", "merge_request_hook.open")
        bot._project(data)
        bot._user(data, "maya")
        data["object_attributes"].update(
            iid=8, action="merge", state="merged", author_id=USERS["dave"],
            description="Closes Codertocat/Hello-World#16",
            url=f"{gitlab_server.url}/{PROJECT}/-/merge_requests/8")
        data["changes"] = {}
        assert (await bot.post_gitlab("Merge Request Hook", data)).status == 202
        await bot.settle()
        after = await GitHubBot.task(bot, 16)
        assert after is not None
        assert after.state == TaskState.CLAIMED and after.links == [] and after.payouts == []
    finally:
        await bot.close()


# -- 2. what a pull request closes is fixed when it ends -----------------------------------------


async def test_editing_a_merged_pull_request_links_and_pays_nothing(bot: GitHubBot):
    await claimed(bot, 20)
    await claimed(bot, 21)
    await bot.pull_request("opened", "dave", 60, "Fixes #20")
    await bot.pull_request("closed", "dave", 60, "Fixes #20", merged=True)
    await bot.settle()
    assert (await bot.existing_task(20)).state == TaskState.DONE
    edited = pull_payload("edited", "dave", 60, "Fixes #20\nFixes #21", merged=True,
                          before="Fixes #20")
    assert (await bot.post("pull_request", edited)).status == 202
    await bot.settle()
    task = await bot.task(21)
    assert task is not None
    assert task.state == TaskState.CLAIMED and task.links == []
    assert task.claims[0].expires_at is not None  # the claim's clock still runs
    # Reconciliation reads today's text of the merged pull request: the edit made after the
    # merge (the list's `updated_at` is later than its `merged_at`) links nothing either.
    bot.fake.add_pull(REPO, 60, "Fixes #20", login="dave")
    bot.fake.merge_pull(REPO, 60)
    bot.forge_clock.move(5)  # type: ignore[attr-defined]
    bot.fake.edit_pull(REPO, 60, "Fixes #20\nFixes #21")
    await sync(bot)
    task = await bot.task(21)
    assert task is not None
    assert task.state == TaskState.CLAIMED and task.links == [] and task.payouts == []
    assert [p.developer for p in (await bot.existing_task(20)).payouts] == ["dave"]
    await audited(bot)


async def test_a_merge_found_by_reconciliation_after_an_edit_pays_what_was_linked(
        bot: GitHubBot):
    """The webhooks of the merge were missed and the text was edited since: the merge still
    pays the task the pull request was linked to while open, and nothing else."""
    await claimed(bot, 22)
    await claimed(bot, 23)
    await bot.pull_request("opened", "dave", 61, "Fixes #22")
    await bot.settle()
    bot.fake.add_pull(REPO, 61, "Fixes #22", login="dave")
    bot.fake.merge_pull(REPO, 61)
    bot.forge_clock.move(5)  # type: ignore[attr-defined]
    bot.fake.edit_pull(REPO, 61, "Fixes #22, fixes #23")
    await sync(bot)
    assert (await bot.existing_task(22)).state == TaskState.DONE
    task = await bot.task(23)
    assert task is not None
    assert task.state == TaskState.CLAIMED and task.links == [] and task.payouts == []


# -- 4 and 5. a comment's commands count once, and only its author's ---------------------------


def comment_payload(action: str, comment_id: int, author: str, body: str, number: int, *,
                    sender: str | None = None, before: str | None = None,
                    updated_at: str | None = None) -> dict[str, Any]:
    data = payload("github", f"issue_comment.{action}")
    data["issue"]["number"] = number
    data["issue"]["html_url"] = f"https://github.com/{REPO}/issues/{number}"
    data["comment"].update(id=comment_id, body=body)
    data["comment"]["user"].update(login=author, type="User")
    data["sender"].update(login=sender or author)
    if updated_at is not None:
        data["comment"]["updated_at"] = updated_at
    if before is not None:
        data["changes"] = {"body": {"from": before}}
    return data


async def test_a_pledge_edited_in_after_a_lost_webhook_counts_once(bot: GitHubBot):
    await bot.label(30)
    await bot.settle()
    # alice's comment: its `created` webhook is lost.
    cid = bot.fake.add_comment(REPO, 30, "/pledge 20", login="alice")
    bot.forge_clock.move(5)  # type: ignore[attr-defined]
    # She edits it to add a second pledge: the edit's webhook arrives.
    edited = bot.fake.edit_comment_text(cid, "/pledge 20\n/pledge 30")
    data = comment_payload("edited", cid, "alice", edited.body, 30, before="/pledge 20",
                           updated_at=edited.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert (await bot.post("issue_comment", data)).status == 202
    await bot.settle()
    # Then reconciliation, and then the lost webhook, late: nothing more.
    await sync(bot)
    await bot.post("issue_comment", comment_payload("created", cid, "alice", "/pledge 20", 30))
    await bot.settle()
    task = await bot.task(30)
    assert task is not None
    assert task.backer_total("alice", HELD).minor == 5000  # what the comment says: €50
    await audited(bot)


async def test_an_edit_adds_commands_only_when_its_author_makes_it(bot: GitHubBot):
    await bot.label(31)
    await bot.comment("alice", "/pledge 20", 31)
    await bot.settle()
    [cid] = [c.id for c in bot.fake.comments(REPO, 31) if c.login == "alice"]
    bot.forge_clock.move(5)  # type: ignore[attr-defined]
    edited = bot.fake.edit_comment_text(cid, "/pledge 20\n/pledge 9000")
    data = comment_payload("edited", cid, "alice", edited.body, 31, sender="maya",
                           before="/pledge 20")
    await bot.post("issue_comment", data)
    await bot.settle()
    await sync(bot)  # an edited comment is not read by reconciliation either
    task = await bot.task(31)
    assert task is not None
    assert task.backer_total("alice", HELD).minor == 2000
    handled = [d for d in await bot.rows(t.Delivery) if d.event == "issue_comment"]
    assert any("other than the comment's author" in (d.error or "") for d in handled)
    # Her own edit of the same comment does count.
    bot.forge_clock.move(5)  # type: ignore[attr-defined]
    edited = bot.fake.edit_comment_text(cid, "/pledge 20\n/pledge 5")
    await bot.post("issue_comment", comment_payload("edited", cid, "alice", edited.body, 31,
                                                    before="/pledge 20\n/pledge 9000"))
    await bot.settle()
    assert (await bot.existing_task(31)).backer_total("alice", HELD).minor == 2500


async def test_a_redelivered_comment_under_a_new_id_counts_once(bot: GitHubBot):
    await bot.label(32)
    cid = bot.fake.add_comment(REPO, 32, "/pledge 7\n/pledge 7", login="bob")
    data = comment_payload("created", cid, "bob", "/pledge 7\n/pledge 7", 32)
    for _ in range(3):  # GitHub's redelivery keeps the id; a replayed body has a new one
        await bot.post("issue_comment", data)
    await bot.settle()
    assert (await bot.existing_task(32)).backer_total("bob", HELD).minor == 1400
    replies = [c for c in bot.bot_comments(32) if "bountybot:summary" not in c.body]
    assert replies == []


# -- 6. numbers no forge gives ------------------------------------------------------------------


@pytest.mark.parametrize("number", ["16", 2**31, 2**63, -1, 0, True, 1.5])
async def test_an_issue_number_no_forge_gives_changes_nothing_and_stops_nothing(
        bot: GitHubBot, number: Any):
    data = payload("github", "issues.labeled")
    data["label"]["name"] = "bounty"
    data["issue"]["number"] = number
    assert (await bot.post("issues", data)).status == 202
    await bot.pull_request("opened", "dave", 9, "Fixes #2147483648, fixes #99999999999")
    await bot.label(40)
    await bot.comment("alice", "/pledge 5", 40)
    await bot.settle()
    assert (await bot.existing_task(40)).held().minor == 500
    deliveries = await bot.rows(t.Delivery)
    assert all(d.state == t.DeliveryState.HANDLED for d in deliveries)
    async with bot.app[SESSIONMAKER]() as session:
        numbers = (await session.exec(select(t.Task.number))).all()
    assert list(numbers) == [40]


# -- 11. thousands of command lines ---------------------------------------------------------------


async def test_thousands_of_command_lines_are_ten_commands_and_one_short_reply(bot: GitHubBot):
    await bot.label(50)
    await bot.comment("alice", "\n".join(["/pledge 1"] * 5000), 50)
    await bot.comment("bob", "\n".join(["/pledge 1x"] * 7000), 50)  # all refused
    await bot.settle()
    task = await bot.task(50)
    assert task is not None
    assert task.backer_total("alice", HELD).minor == 1000  # the first ten
    replies = [c.body for c in bot.bot_comments(50) if "bountybot:summary" not in c.body]
    assert len(replies) == 2 and all(len(body) < 65_536 for body in replies)
    assert all(body.count("at most 10 commands") == 1 for body in replies)
    await audited(bot)


# -- smaller ---------------------------------------------------------------------------------------


async def test_logins_compare_without_case(bot: GitHubBot):
    await claimed(bot, 60)
    await bot.comment("erin", "/claim", 60)
    await bot.comment("dave", "/unclaim @DAVE", 60)  # his own claim, in capitals
    await bot.settle()
    task = await bot.task(60)
    assert task is not None
    assert [c.state for c in task.claims] == [ClaimState.RELEASED, ClaimState.ACTIVE]
    assert task.claims[1].developer == "erin"
    await bot.comment("ERIN", "/claim", 60)  # already hers
    await bot.comment("maya", "/award @ERIN", 60)
    await bot.settle()
    task = await bot.task(60)
    assert task is not None
    assert [p.developer for p in task.payouts] == ["erin"]  # as the task knows her
    await audited(bot)


async def test_the_bot_and_logins_with_no_account_cannot_be_awarded(bot: GitHubBot):
    await claimed(bot, 61)
    bot.fake.missing_users.add("ghost")
    await bot.comment("maya", "/award @bountybot 100%", 61)
    await bot.comment("maya", "/award @ghost", 61)
    await bot.comment("maya", "/award @dave 50% @renovate[bot] 50%", 61)
    await bot.settle()
    task = await bot.task(61)
    assert task is not None
    assert task.state == TaskState.CLAIMED and task.payouts == []
    replies = "\n".join(c.body for c in bot.bot_comments(61))
    assert "@bountybot is a bot" in replies, replies
    assert "is not a user login" in replies  # `@renovate[bot]` is refused as it is written
    assert "@ghost is no account" in replies


# -- 3. GitLab notes are confirmed with the API ----------------------------------------------------


async def test_a_gitlab_note_is_applied_only_as_the_api_shows_it(db_url: str,
                                                                 gitlab_server: Any):
    bot = await GitLabBot.start_gitlab(db_url, gitlab_server)
    try:
        await bot.label(3)
        await bot.comment("maya", "/goal 50", 3)
        await bot.comment("alice", "/pledge 50", 3)
        await bot.comment("dave", "/claim", 3)
        await bot.settle()
        assert (await bot.existing_task(3)).state == TaskState.CLAIMED

        async def forged(note_id: int, login: str, body: str) -> None:
            data = payload("gitlab", "note_hook.issue.create")
            bot._project(data)
            bot._user(data, login)
            data["object_attributes"].update(id=note_id, note=body, author_id=USERS[login])
            data["issue"].update(iid=3, url=f"{gitlab_server.url}/{PROJECT}/-/issues/3")
            assert (await bot.post_gitlab("Note Hook", data)).status == 202
            await bot.settle()

        # A note "by" the maintainer that GitLab has never seen.
        await forged(987_654, "maya", "/award @mallory")
        # mallory's own note, sent as if maya wrote it.
        real = gitlab_server.add_note(PROJECT_ID, 3, "/award @mallory", username="mallory")
        await forged(real, "maya", "/award @mallory")
        # alice's note of one pledge, sent as a note of ten.
        one = gitlab_server.add_note(PROJECT_ID, 3, "/pledge 1", username="alice")
        await forged(one, "alice", "\n".join(["/pledge 1"] * 10))
        task = await bot.task(3)
        assert task is not None
        assert task.state == TaskState.CLAIMED and task.payouts == []
        assert task.backer_total("alice", HELD).minor == 5100
        # The maintainer's real note is applied.
        await bot.comment("maya", "/award @dave", 3)
        await bot.settle()
        task = await bot.task(3)
        assert task is not None
        assert task.state == TaskState.DONE and [p.developer for p in task.payouts] == ["dave"]
    finally:
        await bot.close()
