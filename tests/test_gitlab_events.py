"""GitLab's published webhook payloads, normalized into happenings.

The four examples are from GitLab's webhook docs (recent GitLab: work item `type` since 17.2,
note `action` since 16.11; see tests/fixtures/SOURCES.md). GitLab publishes no close, reopen,
update or merge example: those are built here from the `open` ones, as are the older shapes
(a Note Hook without `action`, from before 16.11; an issue in a note hook without `url`, as
in the published example).
"""

from __future__ import annotations

from typing import Any

import pytest

from bountybot.forges.events import Normalized
from bountybot.forges.gitlab_events import is_bot_user, normalize
from bountybot.rules import (
    Comment,
    IssueClosed,
    IssueRetitled,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
)

from fixtures import payload

BOUNTY = {"id": 7, "title": "Bounty", "color": "#428BCA", "project_id": 1,
          "type": "ProjectLabel", "group_id": None, "template": False, "description": None}
API = {"id": 206, "title": "API"}


def norm(event: str, data: dict[str, Any], label: str = "bounty") -> Normalized:
    return normalize(event, data, label=label, bot_login="bountybot")


def kinds(n: Normalized) -> list[str]:
    return [type(h.what).__name__ for h in n.happenings]


def issue_update(previous: list[dict[str, Any]], current: list[dict[str, Any]],
                 **changes: Any) -> dict[str, Any]:
    data = payload("gitlab", "issue_hook.open")
    data["object_attributes"].update(action="update")
    data["labels"] = current
    data["changes"] = {"labels": {"previous": previous, "current": current}, **changes}
    return data


def subgroup(data: dict[str, Any], path: str = "commons/sub/garden", pid: int = 4242) -> None:
    data["project"].update(id=pid, path_with_namespace=path, web_url=f"https://gl.example/{path}")


# Issue Hook


def test_the_published_issue_hook_reads_its_label_changes():
    data = payload("gitlab", "issue_hook.open")  # labels went from API to Platform
    (h,) = norm("Issue Hook", data, label="PLATFORM").happenings
    assert h.what == LabelAdded()
    assert h.repo is not None
    assert (h.repo.forge, h.repo.forge_repo_id, h.repo.full_path, h.repo.installation_id) == (
        "gitlab", "1", "gitlabhq/gitlab-test", None)
    assert (h.repo_path, h.number) == ("gitlabhq/gitlab-test", 23)  # the iid, not the id 301
    assert h.title == "New API: create/update/delete file"
    assert h.url == "http://example.com/diaspora/issues/23"
    assert norm("Issue Hook", data, label="api").happenings[0].what == LabelRemoved()


def test_the_label_added_and_removed_through_changes():
    n = norm("Issue Hook", issue_update([API], [API, BOUNTY]))
    assert kinds(n) == ["LabelAdded"]
    n = norm("Issue Hook", issue_update([BOUNTY, API], [API]))
    assert kinds(n) == ["LabelRemoved"]


def test_a_label_that_is_not_ours_changes_nothing():
    n = norm("Issue Hook", issue_update([], [API]))
    assert n.happenings == [] and n.ignored == "issue update changes nothing"
    # Our label staying on while another comes and goes is no news either.
    assert norm("Issue Hook", issue_update([BOUNTY], [BOUNTY, API])).happenings == []


def test_an_issue_opened_with_the_label_is_a_task():
    data = payload("gitlab", "issue_hook.open")
    data["changes"] = {}
    assert norm("Issue Hook", data).happenings == []
    data["labels"] = [BOUNTY]
    assert kinds(norm("Issue Hook", data)) == ["LabelAdded"]
    # Opened with the label, reported in `changes` as well: one LabelAdded, not two.
    data["changes"] = {"labels": {"previous": [], "current": [BOUNTY]}}
    assert kinds(norm("Issue Hook", data)) == ["LabelAdded"]


def test_a_close_is_never_not_planned():
    data = payload("gitlab", "issue_hook.open")
    data["object_attributes"].update(action="close", state="closed", state_id=2)
    data["changes"] = {}
    (h,) = norm("Issue Hook", data).happenings
    assert h.what == IssueClosed(not_planned=False)
    data["object_attributes"]["duplicated_to_id"] = 302  # closed as a duplicate: still no reason
    assert norm("Issue Hook", data).happenings[0].what == IssueClosed(not_planned=False)


def test_a_reopen_changes_nothing():
    data = payload("gitlab", "issue_hook.open")
    data["object_attributes"].update(action="reopen")
    data["changes"] = {}
    assert norm("Issue Hook", data).ignored == "issue reopen changes nothing"


def test_a_retitle():
    data = payload("gitlab", "issue_hook.open")
    data["object_attributes"].update(action="update", title="Seed library")
    data["changes"] = {"title": {"previous": "Seeds", "current": "Seed library"}}
    (h,) = norm("Issue Hook", data).happenings
    assert h.what == IssueRetitled("Seed library") and h.title == "Seed library"


def test_several_changes_in_one_update_come_in_order():
    data = issue_update([API], [API, BOUNTY], title={"previous": "a", "current": "b"})
    data["object_attributes"]["title"] = "b"
    assert kinds(norm("Issue Hook", data)) == ["LabelAdded", "IssueRetitled"]
    # `/unlabel ~bounty` and `/close` in one note: the label goes first, then the close.
    data = issue_update([BOUNTY], [])
    data["object_attributes"].update(action="close", state="closed")
    assert kinds(norm("Issue Hook", data)) == ["LabelRemoved", "IssueClosed"]


def test_confidential_and_object_kind_events_read_the_same():
    data = issue_update([], [BOUNTY])
    for event in ("Confidential Issue Hook", "issue"):
        assert kinds(norm(event, data)) == ["LabelAdded"]


def test_work_items_that_are_not_issues_are_ignored():
    data = issue_update([], [BOUNTY])
    data["object_kind"] = "work_item"
    data["object_attributes"]["type"] = "Task"
    assert norm("Issue Hook", data).ignored == "a Task is not an issue"
    data["object_kind"] = "issue"
    data["object_attributes"]["type"] = "Incident"
    assert norm("Issue Hook", data).happenings == []


def test_an_issue_in_a_subgroup_project():
    data = issue_update([], [BOUNTY])
    subgroup(data)
    (h,) = norm("Issue Hook", data).happenings
    assert h.repo is not None
    assert (h.repo_path, h.repo.full_path, h.repo.forge_repo_id) == (
        "commons/sub/garden", "commons/sub/garden", "4242")


# Note Hook


def note(body: str = "/pledge 20", **user: Any) -> dict[str, Any]:
    data = payload("gitlab", "note_hook.issue.create")
    data["object_attributes"]["note"] = body
    data["user"].update(user)
    return data


def test_a_note_is_a_comment_from_its_author():
    data = note()
    (h,) = norm("Note Hook", data).happenings
    assert h.what == Comment("1241", h.what.author, "/pledge 20", None)
    assert h.what.author.login == "root" and not h.what.author.is_bot
    assert h.repo is not None
    assert (h.repo.forge_repo_id, h.repo.full_path) == ("5", "gitlab-org/gitlab-test")
    assert (h.number, h.title) == (17, "test")  # the issue's iid, not its id 92
    # The published issue has no `url` (GitLab's own do): it is built from the project's.
    assert h.url == "http://example.com/gitlab-org/gitlab-test/-/issues/17"
    data["issue"]["url"] = "http://example.com/gitlab-org/gitlab-test/-/issues/17"
    assert norm("Note Hook", data).happenings[0].url == data["issue"]["url"]


def test_a_note_hook_without_action_is_a_new_note():
    data = note()
    del data["object_attributes"]["action"]  # GitLab before 16.11
    (h,) = norm("Note Hook", data).happenings
    assert isinstance(h.what, Comment) and h.what.body == "/pledge 20"
    assert h.what.revision is None


def test_note_edits_are_not_read():
    data = note("/pledge 20\n/claim")
    data["object_attributes"]["action"] = "update"
    n = norm("Note Hook", data)
    assert n.happenings == []
    assert n.ignored == "note edits are not read: GitLab does not send the old text"
    assert "changes" not in payload("gitlab", "note_hook.issue.create")


@pytest.mark.parametrize("username", [
    "project_278964_bot_0d7a8a9c7e2f4b1c9d3e5f60718293a4",
    "project_12_bot", "project_12_bot3",
    "group_9970_bot_0d7a8a9c7e2f4b1c9d3e5f60718293a4",
    "service_account_group_345_c468757e6df2fc104de54ea470539bb5",
    "support-bot", "alert-bot", "renovate_bot",
])
def test_notes_by_bots_are_marked_as_bots(username):
    (h,) = norm("Note Hook", note(username=username)).happenings
    assert h.what.author.is_bot


def test_the_bot_flag_and_ordinary_names():
    assert is_bot_user({"username": "someone", "bot": True})
    for name in ("root", "botanist", "project_manager", "robot", "abbot", "project_12_bottle"):
        assert not is_bot_user({"username": name}), name


def test_notes_on_other_things_are_ignored():
    n = norm("Note Hook", payload("gitlab", "note_hook.merge_request.create"))
    assert n.happenings == [] and n.ignored == "note on a MergeRequest"
    for noteable in ("Commit", "Snippet"):
        data = note()
        data["object_attributes"]["noteable_type"] = noteable
        assert norm("Note Hook", data).happenings == []


def test_notes_on_tasks_and_unknown_note_actions_are_ignored():
    data = note()
    data["issue"]["type"] = "Task"  # GitLab 17.2+ names the work item type
    assert norm("Note Hook", data).ignored == "note on a Task"
    data = note()
    data["object_attributes"]["action"] = "delete"  # not sent today; read as nothing
    assert norm("Note Hook", data).ignored == "note delete"


def test_system_notes_and_confidential_notes():
    data = note()
    data["object_attributes"]["system"] = True
    assert norm("Note Hook", data).ignored == "system note"
    data = note()
    data["event_type"] = "confidential_note"
    assert kinds(norm("Confidential Note Hook", data)) == ["Comment"]
    assert kinds(norm("note", data)) == ["Comment"]


# Merge Request Hook


def mr(description: str, action: str = "open", state: str = "opened",
       title: str = "MS-Viewport") -> dict[str, Any]:
    data = payload("gitlab", "merge_request_hook.open")
    data["object_attributes"].update(action=action, state=state, title=title,
                                     description=description)
    data["changes"] = {}
    return data


def links(n: Normalized) -> list[tuple[str, bool, int, Any]]:
    return [(h.repo_path, h.repo is not None, h.number, h.what) for h in n.happenings]


URL = "http://example.com/diaspora/merge_requests/1"
OPENED = LinkOpened(1, "", URL)


def test_the_published_merge_request_links_nothing():
    n = norm("Merge Request Hook", payload("gitlab", "merge_request_hook.open"))
    assert n.happenings == [] and n.ignored == "merge request open links no issue"


def test_an_opened_merge_request_links_the_issues_it_closes():
    n = norm("Merge Request Hook", mr("Closes #3\nFixes gitlabhq/gitlab-test#4"))
    assert links(n) == [("gitlabhq/gitlab-test", True, 3, OPENED),
                        ("gitlabhq/gitlab-test", True, 4, OPENED)]
    for h in n.happenings:
        assert h.author_id == 51  # the author, not the `user` who acted (id 1)
        assert h.repo is not None and h.repo.forge_repo_id == "1"


def test_the_title_counts_and_refs_of_this_project_ignore_case():
    n = norm("Merge Request Hook", mr("", title="Resolve GitlabHQ/Gitlab-Test#9"))
    assert links(n) == [("gitlabhq/gitlab-test", True, 9, OPENED)]


def test_a_full_issue_url_and_a_cross_project_ref():
    text = ("Fixes http://example.com/gitlabhq/gitlab-test/-/issues/5\n"
            "Closes other-group/sub/other#6, https://elsewhere.example/x/y/-/issues/7")
    n = norm("Merge Request Hook", mr(text))
    # The link to another project's issue says which project the merge request is in.
    assert links(n) == [("gitlabhq/gitlab-test", True, 5, OPENED),
                        ("other-group/sub/other", False, 6,
                         LinkOpened(1, "", URL, repo="gitlabhq/gitlab-test"))]
    assert n.happenings[1].repo is None and n.happenings[1].author_id == 51


def test_a_merge_request_in_a_subgroup_project():
    data = mr("Fixes commons/sub/garden#1, closes https://gl.example/commons/sub/garden/-/issues/2")
    subgroup(data)
    n = norm("Merge Request Hook", data)
    assert [(h.repo_path, h.repo is not None, h.number) for h in n.happenings] == [
        ("commons/sub/garden", True, 1), ("commons/sub/garden", True, 2)]


def test_a_gitlab_under_a_relative_url_root():
    data = mr("Fixes https://host.example/gitlab/commons/sub/garden/-/issues/8")
    data["project"].update(path_with_namespace="commons/sub/garden",
                           web_url="https://host.example/gitlab/commons/sub/garden")
    assert links(norm("Merge Request Hook", data)) == [("commons/sub/garden", True, 8, OPENED)]


@pytest.mark.parametrize(("action", "state", "expected"), [
    ("reopen", "opened", OPENED),
    ("update", "opened", OPENED),  # e.g. a push: the link is said again, harmlessly
    ("close", "closed", LinkClosed(1, "", merged=False, url=URL)),
    ("merge", "merged", LinkClosed(1, "", merged=True, url=URL)),
])
def test_merge_request_actions(action, state, expected):
    (h,) = norm("Merge Request Hook", mr("Closes #3", action, state)).happenings
    assert (h.number, h.what, h.author_id) == (3, expected, 51)
    assert h.what.author == ""  # the worker names the author from author_id


def test_an_old_hook_without_action_is_read_by_state():
    data = mr("Closes #3", state="merged")
    del data["object_attributes"]["action"]
    assert norm("Merge Request Hook", data).happenings[0].what.merged is True


def test_an_update_that_drops_a_ref_closes_that_link():
    data = mr("Fixes #2", action="update", title="Seeds")
    data["changes"] = {"description": {"previous": "Fixes #1, #2", "current": "Fixes #2"},
                       "title": {"previous": "Closes #9", "current": "Seeds"}}
    n = norm("Merge Request Hook", data)
    assert [(h.number, type(h.what).__name__) for h in n.happenings] == [
        (2, "LinkOpened"), (9, "LinkClosed"), (1, "LinkClosed")]  # title, then description
    assert n.happenings[2].what == LinkClosed(1, "", merged=False, url=URL)
    # A description written for the first time: nothing was there before.
    data["changes"] = {"description": {"previous": None, "current": "Fixes #2"}}
    assert kinds(norm("Merge Request Hook", data)) == ["LinkOpened"]


def test_edits_to_a_merged_or_closed_merge_request_change_nothing():
    # Adding `Closes #N` to a long-merged merge request must not pay anyone for issue N.
    for state in ("merged", "closed"):
        data = mr("Closes #3", action="update", state=state)
        data["changes"] = {"description": {"previous": "", "current": "Closes #3"}}
        n = norm("Merge Request Hook", data)
        assert n.happenings == [] and n.ignored == f"merge request update while {state}"


@pytest.mark.parametrize("action", ["approved", "unapproved", "approval", "unapproval"])
def test_approvals_are_ignored(action):
    n = norm("Merge Request Hook", mr("Closes #3", action))
    assert n.happenings == [] and n.ignored == f"merge request {action}"


# Other events


@pytest.mark.parametrize("event", ["Push Hook", "Pipeline Hook", "System Hook", "Emoji Hook",
                                   "work_item", ""])
def test_other_events_are_ignored(event):
    n = norm(event, payload("gitlab", "merge_request_hook.open"))
    assert n.happenings == [] and n.ignored == f"event {event} is not used"


def test_a_header_that_disagrees_with_the_payload_is_ignored():
    n = norm("Issue Hook", note())
    assert n.happenings == [] and n.ignored == "event Issue Hook carries a note payload"


def test_a_group_level_payload_without_a_project_is_ignored():
    data = note()
    del data["project"]
    assert norm("Note Hook", data).ignored == "note outside a project"
