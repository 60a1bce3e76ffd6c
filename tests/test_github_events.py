"""GitHub's published webhook payloads, normalized into happenings."""

from __future__ import annotations

import pytest

from bountybot.forges import github_events, gitlab_events
from bountybot.forges.github_events import normalize
from bountybot.forges.links import closing_refs
from bountybot.rules import (
    Comment,
    IssueClosed,
    IssueDeleted,
    IssueRetitled,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
)

from fixtures import payload


def norm(event: str, data: dict, label: str = "bug"):  # type: ignore[no-untyped-def]
    return normalize(event, data, label=label, bot_login="bountybot")


def test_the_configured_label_opens_a_task_and_others_do_not():
    data = payload("github", "issues.labeled")
    n = norm("issues", data, label="BUG")
    (h,) = n.happenings
    assert isinstance(h.what, LabelAdded)
    assert (h.repo.forge_repo_id, h.repo.full_path, h.number) == ("186853002",
                                                                  "Codertocat/Hello-World", 1)
    assert h.title == "Spelling error in the README file"
    assert norm("issues", data, label="bounty").happenings == []


def test_unlabeled_closed_deleted_and_retitled():
    assert isinstance(norm("issues", payload("github", "issues.unlabeled")).happenings[0].what,
                      LabelRemoved)
    closed = payload("github", "issues.closed")
    (h,) = norm("issues", closed).happenings
    assert h.what == IssueClosed(not_planned=False)
    assert h.repo.installation_id == "54005"
    closed["issue"]["state_reason"] = "not_planned"  # today's payloads carry it
    assert norm("issues", closed).happenings[0].what == IssueClosed(not_planned=True)
    assert isinstance(norm("issues", payload("github", "issues.deleted")).happenings[0].what,
                      IssueDeleted)
    edited = payload("github", "issues.edited")
    edited["changes"] = {"title": {"from": "old"}}
    assert norm("issues", edited).happenings[0].what == IssueRetitled(edited["issue"]["title"])


def test_an_issue_opened_with_the_label_is_a_task():
    data = payload("github", "issues.opened")
    data["issue"]["labels"] = [{"name": "bounty"}]
    assert isinstance(norm("issues", data, label="bounty").happenings[0].what, LabelAdded)


def test_a_transfer_moves_the_task():
    n = norm("issues", payload("github", "issues.transferred"))
    assert n.transfer is not None
    assert n.transfer.old.full_path == "octo-org/octo-repo"
    assert n.transfer.new.full_path == "Codertocat/Hello-World"


def test_a_comment_becomes_a_comment_from_its_author():
    data = payload("github", "issue_comment.created")
    data["comment"]["body"] = "/pledge 20"
    (h,) = norm("issue_comment", data).happenings
    assert h.what == Comment("492700400", h.what.author, "/pledge 20")
    assert h.what.author.login == "Codertocat" and not h.what.author.is_bot


def test_bot_comments_are_marked_as_bots():
    data = payload("github", "issue_comment.created")
    data["comment"]["user"]["type"] = "Bot"
    assert norm("issue_comment", data).happenings[0].what.author.is_bot


def test_an_edit_by_its_author_is_read_whole_when_it_holds_commands():
    data = payload("github", "issue_comment.edited")
    assert norm("issue_comment", data).happenings == []  # the published edit holds none
    data["changes"]["body"]["from"] = "/pledge 2O"
    data["comment"]["body"] = "/pledge 20\nthanks"
    (h,) = norm("issue_comment", data).happenings
    # The whole text, with the text before: the worker applies the lines never applied before.
    assert h.what.body == "/pledge 20\nthanks" and h.what.previous == "/pledge 2O"
    assert h.what.revision
    # Even an edit that only adds prose: the comment's own webhook may have been lost.
    data["changes"]["body"]["from"] = "/pledge 20"
    (h,) = norm("issue_comment", data).happenings
    assert h.what.body == "/pledge 20\nthanks"


def test_comments_on_pull_requests_are_not_commands():
    data = payload("github", "issue_comment.created")
    data["issue"]["pull_request"] = {"url": "x"}
    assert norm("issue_comment", data).happenings == []


def test_a_pull_request_that_fixes_an_issue_is_a_link():
    data = payload("github", "pull_request.opened")
    assert norm("pull_request", data).happenings == []  # the published body links nothing
    data["pull_request"]["body"] = "Fixes #1, closes Codertocat/Other#4"
    hs = norm("pull_request", data).happenings
    link = LinkOpened(2, "Codertocat", data["pull_request"]["html_url"])
    elsewhere = LinkOpened(2, "Codertocat", data["pull_request"]["html_url"],
                           repo="Codertocat/Hello-World")
    assert [(h.repo_path, h.number, h.what) for h in hs] == [
        ("Codertocat/Hello-World", 1, link), ("Codertocat/Other", 4, elsewhere)]
    assert hs[0].repo is not None and hs[1].repo is None


def test_a_merged_pull_request_closes_its_links_merged():
    data = payload("github", "pull_request.closed.merged")
    data["pull_request"]["body"] = "Resolves #7"
    (h,) = norm("pull_request", data).happenings
    assert h.what == LinkClosed(36, "bkeepers", merged=True, url=data["pull_request"]["html_url"])
    data = payload("github", "pull_request.closed")
    data["pull_request"]["title"] = "fix #3"
    assert norm("pull_request", data).happenings[0].what.merged is False


def test_editing_the_closing_keyword_away_drops_the_link():
    data = payload("github", "pull_request.opened")
    data["action"] = "edited"
    data["pull_request"]["body"] = "Fixes #2"
    data["changes"] = {"body": {"from": "Fixes #1"}}
    hs = norm("pull_request", data).happenings
    assert [(h.number, type(h.what).__name__) for h in hs] == [(2, "LinkOpened"),
                                                               (1, "LinkClosed")]


@pytest.mark.parametrize("event", ["ping", "installation", "installation_repositories",
                                   "pull_request_review"])
def test_other_events_are_acknowledged(event):
    files = {"ping": "ping", "installation": "installation.created",
             "installation_repositories": "installation_repositories.added",
             "pull_request_review": "pull_request_review.submitted"}
    n = norm(event, payload("github", files[event]))
    assert n.happenings == []
    if event == "installation":
        assert [r.full_path for r in n.repos] == ["Codertocat/Hello-World"]
        assert n.repos[0].installation_id == "957387"
    if event == "installation_repositories":
        assert [r.full_path for r in n.repos] == ["Codertocat/Space"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fixes #12", [("o/r", 12)]),
        ("closes: #3 and #4", [("o/r", 3), ("o/r", 4)]),
        ("RESOLVED o/other#9", [("o/other", 9)]),
        ("Fix https://github.com/o/r/issues/5.", [("o/r", 5)]),
        ("fixed https://evil.example/o/r/issues/5", []),
        ("prefix#3 refixes #2 see #4", []),
        ("Closing #7", []),  # GitLab's keyword, not GitHub's
        ("", []),
    ],
)
def test_github_closing_keywords(text, expected):
    assert closing_refs(text, pattern=github_events.CLOSING, repo_path="o/r",
                        web_host="github.com") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Closing #7", [("g/s/p", 7)]),
        ("Implements g/s/other#2", [("g/s/other", 2)]),
        ("fixing https://gitlab.com/g/s/p/-/issues/8", [("g/s/p", 8)]),
        ("Resolving #1, #2", [("g/s/p", 1), ("g/s/p", 2)]),
    ],
)
def test_gitlab_closing_pattern(text, expected):
    assert closing_refs(text, pattern=gitlab_events.CLOSING, repo_path="g/s/p",
                        web_host="gitlab.com", issue_paths=gitlab_events.ISSUE_PATHS) == expected
