"""Forgejo's and Gitea's real webhook payloads, normalized into happenings; Forgejo's door."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from bountybot.forges.door import UNPROVEN
from bountybot.forges.events import SYNC_EVENT, Normalized
from bountybot.forges.forgejo_events import (
    EDGE,
    normalize,
    signature_ok,
    synced_comment,
    synced_label,
    synced_merge,
    topic,
)
from bountybot.refs import RepoRef
from bountybot.rules import (
    Comment,
    IssueClosed,
    IssueRetitled,
    LabelAbsent,
    LabelAdded,
    LinkClosed,
    LinkOpened,
)

from fixtures import ROOT, payload

SECRET = "s3cr3t-webhook"
DELIVERY = "0e3b6b5a-7d7c-4b9c-9d0e-6f1b2a3c4d5e"  # a UUID v4, as Forgejo sends


def fx(name: str) -> dict[str, Any]:
    return payload("forgejo", name)


def go(name: str) -> dict[str, Any]:
    """A payload serialized from Forgejo's own Go test fixtures (current key set)."""
    return payload("forgejo", f"forgejo-go-fixtures/{name}")


def norm(event: str, data: dict[str, Any], label: str = "bounty") -> Normalized:
    return normalize(event, data, label=label, bot_login="bountybot")


def recorded(name: str) -> Any:
    return json.loads((ROOT / "forgejo" / "api" / "recorded" / f"{name}.json").read_text())


# -- issues ------------------------------------------------------------------------------


def test_an_issue_opened_with_the_label_is_a_task_and_without_it_nothing():
    data = fx("issues.opened")
    n = norm("issues", data)
    assert n.happenings == [] and n.ignored == "issues opened changes nothing"
    data["issue"]["labels"] = [{"id": 9, "name": "Bounty", "color": "e11d21"}]
    (h,) = norm("issues", data).happenings
    assert h.what == LabelAdded()
    assert (h.repo.forge, h.repo.forge_repo_id, h.repo.full_path, h.repo.private) == (
        "forgejo", "1", "example/example", False)
    assert (h.number, h.title, h.url) == (1, "example",
                                         "http://localhost:3000/example/example/issues/1")
    data["repository"]["internal"] = True  # seen by the instance's users only
    assert norm("issues", data).happenings[0].repo.private is True
    del data["repository"]["private"], data["repository"]["internal"]
    assert norm("issues", data).happenings[0].repo.private is None


def test_a_label_update_carries_the_labels_so_ours_there_adds_the_task():
    # The real delivery: the issue now has "bug", and nothing says which label changed.
    data = fx("issue_label.label_updated")
    assert data["action"] == "label_updated"
    assert [label["name"] for label in data["issue"]["labels"]] == ["bug"]
    (h,) = norm("issues", data, label="BUG").happenings
    assert h.what == LabelAdded() and h.number == 1


def test_a_label_update_without_our_label_says_the_label_is_absent():
    # Forgejo sends the issue's labels, not the change: without ours, the payload cannot tell
    # a removal from "never there", so it says `LabelAbsent` and the rules decide from the
    # task's memory (tests/test_rules_stories.py: a `/goal` task is not cancelled by it).
    data = fx("issue_label.label_updated")
    (h,) = norm("issues", data, label="bounty").happenings
    assert h.what == LabelAbsent() and h.number == 1
    cleared = go("issue_label.label_updated")
    cleared["action"] = "label_cleared"
    assert [h.what for h in norm("issues", cleared).happenings] == [LabelAbsent()]
    # Current Forgejo's key set reads the same.
    current = go("issue_label.label_updated")
    current["issue"]["labels"] = [{"id": 1, "name": "bounty"}, {"id": 2, "name": "bug"}]
    (h,) = norm("issues", current).happenings
    assert h.what == LabelAdded() and (h.number, h.title) == (2, "crash")
    # Any other issue action that carries labels says nothing of them.
    edited = go("issue_label.label_updated")
    edited["action"] = "assigned"
    assert norm("issues", edited).happenings == []


def test_closed_reopened_and_retitled():
    (h,) = norm("issues", go("issues.closed")).happenings
    assert h.what == IssueClosed(not_planned=False)
    assert (h.repo.full_path, h.number, h.url) == ("test/repo", 2,
                                                  "http://localhost:3000/test/repo/issues/2")
    reopened = norm("issues", go("issues.reopened"))
    assert reopened.happenings == [] and reopened.ignored == "issues reopened changes nothing"
    edited = go("issues.opened")
    edited["action"] = "edited"
    edited["changes"] = {"title": {"from": "crash?"}}
    assert norm("issues", edited).happenings[0].what == IssueRetitled("crash")
    edited["changes"] = {"body": {"from": "old text"}}  # a body edit changes nothing
    assert norm("issues", edited).happenings == []


def test_a_pull_requests_label_changes_nothing():
    n = norm("pull_request", fx("pull_request_label.label_updated"), label="bug")
    assert n.happenings == [] and n.ignored == "pull_request label_updated links no issue"


# -- comments ----------------------------------------------------------------------------


def test_an_issue_comment_becomes_a_comment_from_its_author():
    data = fx("issue_comment.created")
    data["comment"]["body"] = "/pledge 20"
    (h,) = norm("issue_comment", data).happenings
    assert h.what == Comment("2", h.what.author, "/pledge 20")
    assert (h.what.author.login, h.what.author.is_bot) == ("example", False)
    assert (h.repo.forge_repo_id, h.number, h.title) == ("1", 1, "example")


def test_the_bots_own_comments_and_forgejos_pseudo_users_are_bots():
    data = fx("issue_comment.created")
    data["comment"]["user"]["login"] = "BountyBot"
    assert norm("issue_comment", data).happenings[0].what.author.is_bot
    data["comment"]["user"].update(login="forgejo-actions", id=-2)
    assert norm("issue_comment", data).happenings[0].what.author.is_bot


def test_comments_on_pull_requests_are_never_commands():
    # Gitea 2022: is_pull and issue.pull_request both set.
    data = fx("pull_request_comment.created")
    data["comment"]["body"] = "/pledge 20"
    n = norm("issue_comment", data)
    assert n.happenings == [] and n.ignored == "comment on a pull request"
    # Forgejo's own payload: is_pull alone (issue.pull_request is null there).
    current = go("pull_request_comment.created")
    assert current["is_pull"] is True and current["issue"]["pull_request"] is None
    assert norm("issue_comment", current).happenings == []
    assert norm("issue_comment", go("pull_request_comment.edited")).happenings == []
    # An issue comment whose issue says it is a pull request, is_pull notwithstanding.
    forged = fx("issue_comment.created")
    forged["issue"]["pull_request"] = {"merged": False, "merged_at": None}
    assert norm("issue_comment", forged).happenings == []
    # `pull_request_comment` is Forgejo's name for a review comment.
    assert norm("pull_request_comment", fx("issue_comment.created")).happenings == []


def test_an_edit_by_its_author_adds_commands_and_one_by_someone_else_does_not():
    data = fx("issue_comment.created")
    data["action"] = "edited"
    data["comment"]["body"] = "thanks\n/pledge 30"
    data["comment"]["updated_at"] = "2022-03-09T12:00:00Z"
    data["changes"] = {"body": {"from": "thanks"}}
    (h,) = norm("issue_comment", data).happenings
    assert h.what == Comment("2", h.what.author, "thanks\n/pledge 30",
                             "2022-03-09T12:00:00Z", "thanks")
    data["sender"]["login"] = "mallory"
    n = norm("issue_comment", data)
    assert n.happenings == [] and "someone other" in (n.ignored or "")
    data["sender"]["login"] = "example"
    data["comment"]["body"] = "just thanks"
    assert norm("issue_comment", data).ignored == "edit leaves no command"


def test_a_comment_without_an_author_is_not_applied():
    # Forgejo's test payload leaves `comment.user` null.
    n = norm("issue_comment", go("issue_comment.created"))
    assert n.happenings == [] and n.ignored == "comment without an author"
    deleted = fx("issue_comment.created")
    deleted["action"] = "deleted"
    assert norm("issue_comment", deleted).ignored == "issue_comment deleted"


# -- pull requests and closing references -------------------------------------------------


def pr(name: str, body: str, title: str | None = None) -> dict[str, Any]:
    data = fx(name)
    data["pull_request"]["body"] = body
    if title is not None:
        data["pull_request"]["title"] = title
    return data


def test_opened_synchronized_and_reopened_link_the_issues_they_close():
    (h,) = norm("pull_request", pr("pull_request.opened", "Fixes #1")).happenings
    assert h.what == LinkOpened(2, "example2", "http://localhost:3000/example/example/pulls/2")
    assert (h.repo.full_path, h.number) == ("example/example", 1)
    synced = fx("pull_request_sync.synchronized.trimmed")
    assert synced["action"] == "synchronized"
    synced["pull_request"]["body"] = "closes #7"
    (h,) = norm("pull_request", synced).happenings
    assert (h.number, h.what) == (7, LinkOpened(2, "test", synced["pull_request"]["html_url"]))
    (h,) = norm("pull_request", pr("pull_request.reopened.codeberg", "Resolves: #3")).happenings
    assert (h.repo.forge_repo_id, h.number, h.what.author) == ("138564", 3, "6543")


def test_forgejos_own_fixture_body_closes_nothing():
    # "fixes bug #2": the keyword must come right before the reference.
    data = go("pull_request.opened")
    assert data["pull_request"]["body"] == "fixes bug #2"
    n = norm("pull_request", data)
    assert n.happenings == [] and n.ignored == "pull_request opened links no issue"
    data["pull_request"]["body"] = "fixes #2"
    assert [h.number for h in norm("pull_request", data).happenings] == [2]



def test_current_forgejo_pull_request_payloads():
    # Forgejo's own fixture bodies say "fixes bug #2" (no reference); make it one.
    sync = go("pull_request_sync.synchronized")
    sync["pull_request"]["body"] = "fixes #2"
    (h,) = norm("pull_request", sync).happenings
    assert (h.repo.full_path, h.number, h.what) == (
        "test/repo", 2, LinkOpened(12, "user1", "http://localhost:3000/test/repo/pulls/12"))
    closed = go("pull_request.closed")
    closed["pull_request"]["body"] = "fixes #2"
    assert closed["pull_request"]["merged"] is False
    assert norm("pull_request", closed).happenings[0].what == LinkClosed(
        12, "user1", merged=False, url="http://localhost:3000/test/repo/pulls/12")
    edited = go("pull_request.edited")  # no `changes`: nothing was before
    edited["pull_request"]["body"] = "fixes #3"
    assert [(h.number, type(h.what)) for h in norm("pull_request", edited).happenings] == [
        (3, LinkOpened)]

def refs(body: str, title: str = "A change") -> list[tuple[str, int]]:
    data = pr("pull_request.opened", body, title)
    return [(h.repo_path, h.number) for h in norm("pull_request", data).happenings]


def test_every_keyword_with_or_without_a_colon_but_one_space_only():
    words = ["close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves",
             "resolved"]
    for n, word in enumerate(words, start=1):
        assert refs(f"{word} #{n}") == [("example/example", n)]
        assert refs(f"{word.upper()}: #{n}") == [("example/example", n)]
    assert refs("Fixes  #1") == []  # two spaces
    assert refs("Fixes:#1") == []
    assert refs("prefixes #1") == []
    assert refs("(fixes #4) and [closes #5]") == [("example/example", 4), ("example/example", 5)]
    assert refs("fixes #12abc") == []
    assert refs("fixes #6.") == [("example/example", 6)]
    assert refs("Refs #8, see #9") == []


def test_one_reference_per_keyword_as_forgejo_reads_them():
    assert refs("Fixes #1, #2 and #3") == [("example/example", 1)]
    assert refs("Fixes #1, fixes #2") == [("example/example", 1), ("example/example", 2)]


def test_cross_repo_references_name_the_other_repo_and_never_pay_alone():
    (h,) = norm("pull_request", pr("pull_request.opened", "Closes octo/widgets#12")).happenings
    assert (h.repo_path, h.repo, h.number) == ("octo/widgets", None, 12)
    assert h.what == LinkOpened(2, "example2", "http://localhost:3000/example/example/pulls/2",
                                repo="example/example")
    assert refs("Closes Example/Example#4") == [("example/example", 4)]  # case aside: our own
    assert refs("Closes a/b/c#4") == []


def test_an_issue_url_closes_from_the_title_but_not_from_the_body():
    url = "http://localhost:3000/example/example/issues/5"
    assert refs("", title=f"Fix {url}") == [("example/example", 5)]
    assert refs("", title="Fix http://localhost:3000/octo/widgets/pulls/6") == [
        ("octo/widgets", 6)]
    # Markdown: "closing/reopening keywords not supported with URLs".
    assert refs(f"Fixes {url}") == []
    # Another host's URL names nothing here.
    assert refs("", title="Fixes https://codeberg.org/example/example/issues/5") == []
    # Title and body together, without repeats.
    assert refs("fixes #5 and fixes #7", title=f"Fixes {url}") == [
        ("example/example", 5), ("example/example", 7)]


def test_an_instance_under_a_sub_path():
    data = pr("pull_request.opened", "")
    data["repository"]["html_url"] = "https://host.example/git/example/example"
    data["pull_request"]["title"] = "Fixes https://host.example/git/example/example/issues/9"
    assert [(h.repo_path, h.number) for h in norm("pull_request", data).happenings] == [
        ("example/example", 9)]


def test_merged_pays_and_closed_unmerged_unlinks():
    merged = fx("pull_request.closed.merged")
    assert merged["pull_request"]["merged"] is True
    merged["pull_request"]["body"] = "Fixes #4"
    (h,) = norm("pull_request", merged).happenings
    assert h.what == LinkClosed(1, "anbraten", merged=True,
                                url="https://gitea.com/anbraten/test-repo/pulls/1")
    assert (h.repo.forge_repo_id, h.number) == ("46534", 4)
    closed = fx("pull_request.closed")
    closed["pull_request"]["body"] = "Fixes #4"
    (h,) = norm("pull_request", closed).happenings
    assert h.what == LinkClosed(1, "anbraten", merged=False,
                                url="https://gitea.com/anbraten/test-repo/pulls/1")
    assert norm("pull_request", fx("pull_request.closed")).happenings == []


def test_an_edit_links_what_it_adds_and_unlinks_what_it_drops():
    data = fx("pull_request.edited.body.trimmed")
    data["pull_request"]["body"] = "Fixes #2"
    data["changes"] = {"body": {"from": "Fixes #1"}}
    happened = [(h.number, type(h.what)) for h in norm("pull_request", data).happenings]
    assert happened == [(2, LinkOpened), (1, LinkClosed)]
    title = fx("pull_request.edited.title.trimmed")
    assert title["changes"] == {"title": {"from": "Update .woodpecker.yml"}}
    title["pull_request"]["title"] = "Fixes #3"
    (h,) = norm("pull_request", title).happenings
    assert (h.number, h.what) == (
        3, LinkOpened(7, "jony", "https://gitea.com/a_nice_user/hello_world_ci/pulls/7"))


def test_edits_after_the_pull_request_is_merged_or_closed_never_link_or_pay():
    merged = fx("pull_request.closed.merged")
    merged["action"] = "edited"
    merged["pull_request"]["body"] = "Fixes #4"
    merged["changes"] = {"body": {"from": ""}}
    n = norm("pull_request", merged)
    assert n.happenings == [] and n.ignored == "pull_request edited while closed"
    closed = fx("pull_request.closed")
    closed["action"] = "edited"
    closed["pull_request"]["body"] = "Fixes #4"
    assert norm("pull_request", closed).happenings == []


def test_other_events_and_actions_are_ignored_with_the_reason():
    assert norm("push", {}).ignored == "event push is not used"
    assigned = fx("pull_request.opened")
    assigned["action"] = "assigned"
    assigned["pull_request"]["body"] = "Fixes #1"
    assert norm("pull_request", assigned).ignored == "pull_request assigned links no issue"


# -- topics ------------------------------------------------------------------------------


def test_topics_name_the_issue_or_pull_request_by_repo_id():
    assert topic("issues", fx("issues.opened")) == "forgejo:1:1"
    assert topic("issue_comment", fx("pull_request_comment.created")) == "forgejo:1:2"
    assert topic("pull_request", fx("pull_request.closed.merged")) == "forgejo:46534:1"
    assert topic("push", {"repository": {"id": 1}}) is None
    assert topic("issues", {"repository": {"id": "x"}, "issue": {"number": 1}}) is None
    assert topic("issues", ["not", "a", "payload"]) is None


# -- the door ----------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def forgejo_headers(body: bytes, event: str = "issue_comment") -> dict[str, str]:
    """What Forgejo sends: its own names and Gitea's, with one value each."""
    signature = sign(body)
    return {"X-Forgejo-Event": event, "X-Gitea-Event": event,
            "X-Forgejo-Event-Type": event, "X-Gitea-Event-Type": event,
            "X-Forgejo-Delivery": DELIVERY, "X-Gitea-Delivery": DELIVERY,
            "X-Forgejo-Signature": signature, "X-Gitea-Signature": signature,
            "X-Hub-Signature-256": f"sha256={signature}",
            "Content-Type": "application/json"}


def raw(name: str) -> bytes:
    return (ROOT / "forgejo" / "webhooks" / f"{name}.json").read_bytes()


def test_a_forgejo_delivery_is_identified_and_its_signature_checked():
    body = raw("forgejo-go-fixtures/issue_comment.created")
    headers = forgejo_headers(body)
    assert EDGE.sender(None, headers) is UNPROVEN
    assert signature_ok(SECRET, body, headers)
    assert EDGE.identify(headers) == (DELIVERY, "issue_comment")
    assert EDGE.turn_on == "BOUNTYBOT_FORGEJO_WEBHOOK_SECRET and BOUNTYBOT_FORGEJO_TOKEN"


def test_a_gitea_delivery_uses_giteas_header_names():
    body = raw("issue_comment.created")
    signature = sign(body)
    headers = {"X-Gitea-Event": "issue_comment", "X-Gitea-Delivery": DELIVERY,
               "X-Gitea-Signature": signature}
    assert EDGE.sender(None, headers) is UNPROVEN
    assert signature_ok(SECRET, body, headers)
    assert signature_ok(SECRET, bytearray(body), headers)
    assert EDGE.identify(headers) == (DELIVERY, "issue_comment")


def test_a_bad_signature_is_refused():
    body = raw("issue_comment.created")
    headers = forgejo_headers(body)
    assert not signature_ok("another-secret", body, headers)
    assert not signature_ok(SECRET, body + b" ", headers)  # not the bytes that were signed
    assert not signature_ok(SECRET, json.dumps(json.loads(body)).encode(), headers)
    assert not signature_ok("", body, {**headers, "X-Forgejo-Signature": sign(body, "")})
    # A good Gitea signature beside a bad Forgejo one is not enough.
    assert not signature_ok(SECRET, body, {**headers, "X-Forgejo-Signature": "0" * 64})
    # GitHub's header alone proves nothing here.
    github_only = {"X-Hub-Signature-256": headers["X-Hub-Signature-256"]}
    assert EDGE.sender(None, github_only) is None
    assert not signature_ok(SECRET, body, github_only)


def test_a_missing_or_malformed_signature_is_refused_before_the_body_is_read():
    body = raw("issue_comment.created")
    good = sign(body)
    for bad in ("", "sha256=" + good, good.upper(), good[:-1], good + "0", "z" * 64):
        headers = {"X-Forgejo-Signature": bad, "X-Forgejo-Event": "issues"}
        assert EDGE.sender(None, headers) is None, bad
    assert EDGE.sender(None, {}) is None


def test_identify_refuses_sync_names_unknown_events_and_bad_ids():
    ok = {"X-Forgejo-Delivery": DELIVERY}
    assert isinstance(EDGE.identify({**ok, "X-Forgejo-Event": SYNC_EVENT}), str)
    assert isinstance(EDGE.identify({**ok, "X-Gitea-Event": SYNC_EVENT}), str)
    for kind in ("issue_label", "pull_request_sync", "Issues", "ping", "issues "):
        assert isinstance(EDGE.identify({**ok, "X-Forgejo-Event": kind}), str), kind
    for kind in ("issues", "pull_request", "push", "pull_request_comment", "release"):
        assert EDGE.identify({**ok, "X-Forgejo-Event": kind}) == (DELIVERY, kind)
    assert "required" in str(EDGE.identify({"X-Forgejo-Event": "issues"}))
    assert "required" in str(EDGE.identify(ok))
    sync_id = EDGE.identify({"X-Forgejo-Delivery": "sync:forgejo:1", "X-Forgejo-Event": "issues"})
    assert "sync:" in str(sync_id)
    too_long = EDGE.identify({"X-Gitea-Delivery": "x" * 256, "X-Gitea-Event": "issues"})
    assert "X-Gitea-Delivery is longer" in str(too_long)
    # Forgejo sends both names with one value: two values are no Forgejo delivery.
    mixed = {**ok, "X-Gitea-Delivery": "another", "X-Forgejo-Event": "issues"}
    assert "disagree" in str(EDGE.identify(mixed))
    mixed = {**ok, "X-Forgejo-Event": "issues", "X-Gitea-Event": "push"}
    assert "disagree" in str(EDGE.identify(mixed))


# -- reconciliation readers, on recorded REST objects ----------------------------------------

REPO = RepoRef("forgejo", "16268", "gitea/test_repo")


def test_synced_label_reads_open_labelled_issues_only():
    issues = recorded("gitea-com.issues.list")
    found = [synced_label(issue, REPO, "question") for issue in issues]
    (label,) = [f for f in found if f is not None]  # #10 open and "Question"; #4 is closed
    assert (label.kind, label.key, label.at) == (
        "label", "label:30481", datetime(2020, 9, 1, 17, 48, 14, tzinfo=UTC))
    (h,) = label.happenings
    assert (h.number, h.what, h.title, h.url) == (
        10, LabelAdded(), "A'm I allowed to fork it?", "https://gitea.com/gitea/test_repo/issues/10")
    as_pull = {**issues[0], "pull_request": {"merged": False}}
    assert synced_label(as_pull, REPO, "question") is None


def test_synced_comment_reads_new_unedited_commands_on_issues():
    first, second = recorded("gitea-com.issue_comments.list")
    edited = {**first, "body": "/pledge 20"}  # updated a day after it was written
    assert synced_comment(edited, REPO, {}, bot_login="bountybot", since=None) is None
    # The second was written by a deleted account: Forgejo's Ghost (id -1) commands nothing.
    assert second["user"]["id"] == -1
    ghost = {**second, "body": "/pledge 20"}
    assert synced_comment(ghost, REPO, {}, bot_login="bountybot", since=None) is None
    comment = {**first, "body": "/pledge 20", "updated_at": first["created_at"]}
    found = synced_comment(comment, REPO, {}, bot_login="bountybot", since=None)
    assert found is not None and found.kind == "comment"
    assert found.key == f"comment:{first['id']}:{first['created_at']}"
    (h,) = found.happenings
    assert isinstance(h.what, Comment)
    assert (h.number, h.what.body, h.what.author.login) == (4, "/pledge 20", "6543")
    assert h.url == "https://gitea.com/gitea/test_repo/issues/4"
    later = datetime(2030, 1, 1, tzinfo=UTC)
    assert synced_comment(comment, REPO, {}, bot_login="bountybot", since=later) is None
    on_pull = {**comment, "issue_url": "", "pull_request_url": comment["issue_url"]}
    assert synced_comment(on_pull, REPO, {}, bot_login="bountybot", since=None) is None
    by_bot = {**comment, "user": {**comment["user"], "login": "bountybot"}}
    assert synced_comment(by_bot, REPO, {}, bot_login="bountybot", since=None) is None
    chatter = {**comment, "body": "thanks"}
    assert synced_comment(chatter, REPO, {}, bot_login="bountybot", since=None) is None


def test_synced_merge_reads_merged_pulls_and_distrusts_later_edits():
    pulls = recorded("gitea-com.pulls.list")
    merged = next(p for p in pulls if p["merged"])
    assert synced_merge(merged, REPO, None) is None  # "Dont Touch" closes nothing
    fixing = {**merged, "body": "Fixes #4"}
    found = synced_merge(fixing, REPO, None)
    assert found is not None and (found.kind, found.key) == ("merge", f"merge:{merged['id']}")
    (h,) = found.happenings
    # Updated after its merge: it may have been edited since, so it only pays a linked task.
    assert h.what == LinkClosed(12, "6543", merged=True, url=merged["html_url"],
                                only_linked=True)
    untouched = {**fixing, "updated_at": merged["merged_at"]}
    (h,) = synced_merge(untouched, REPO, None).happenings  # type: ignore[union-attr]
    assert h.what == LinkClosed(12, "6543", merged=True, url=merged["html_url"])
    assert synced_merge(fixing, REPO, datetime(2021, 1, 1, tzinfo=UTC)) is None
    still_open = next(p for p in pulls if not p["merged"])
    assert synced_merge({**still_open, "body": "Fixes #4"}, REPO, None) is None

