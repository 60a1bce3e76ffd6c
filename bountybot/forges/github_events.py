"""GitHub webhook payloads, and the REST objects reconciliation reads, turned into normalized
happenings; GitHub's webhook door (signature, delivery id, event names), its topics and its
closing keywords (pure: no HTTP, no PyGithub)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from bountybot.forges.door import (
    PROVEN,
    UNPROVEN,
    Edge,
    Sender,
    delivery_id_problem,
    header_bytes,
)
from bountybot.forges.events import (
    SYNC_EVENT,
    Found,
    Happening,
    Normalized,
    Transfer,
    after_the_fact,
    carries_commands,
    edited_since_created,
    own_or_other,
    parse_time,
    since_or_later,
)
from bountybot.forges.links import closing_pattern, closing_refs
from bountybot.forges.topics import as_id, dig, issue_topic
from bountybot.refs import RepoRef
from bountybot.rules import (
    Actor,
    Comment,
    Event,
    IssueClosed,
    IssueDeleted,
    IssueRetitled,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
)

FORGE = "github"
# GitHub's closing keywords (docs: "Linking a pull request to an issue").
KEYWORDS = r"close[sd]?|fix(?:e[sd])?|resolve[sd]?"
CLOSING = closing_pattern(KEYWORDS)
# GitHub's event names: lower case words joined by underscores, some with a digit
# (`projects_v2_item`). Anything else is not GitHub's, and never the reconciler's
# `bountybot.sync`.
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")


# -- the door ----------------------------------------------------------------------------------


def signature(secret: str, body: bytes | bytearray) -> str:
    """The `X-Hub-Signature-256` GitHub sends with `body`: `sha256=` and the HMAC-SHA256 of the
    raw body in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes | bytearray, header: str | None) -> bool:
    """Whether `header` is `body`'s `X-Hub-Signature-256`; compared in constant time, as bytes
    (a header may hold anything)."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header_bytes(header))


def sender(_settings: Any, headers: Mapping[str, str]) -> Sender | None:
    """Unproven until the body is read, but a request with no signature worth checking is
    refused before any of its body is."""
    given = headers.get("X-Hub-Signature-256")
    return UNPROVEN if given and _SIGNATURE.fullmatch(given) else None


def identify(headers: Mapping[str, str]) -> tuple[str, str] | str:
    """(delivery id, event name), or why the headers do not say."""
    delivery_id, kind = headers.get("X-GitHub-Delivery"), headers.get("X-GitHub-Event")
    if not delivery_id or not kind:
        return "X-GitHub-Delivery and X-GitHub-Event headers are required"
    if kind == SYNC_EVENT or not EVENT_NAME.fullmatch(kind):
        return "X-GitHub-Event is not a GitHub event name (such as issue_comment)"
    return delivery_id_problem("X-GitHub-Delivery", delivery_id) or (delivery_id, kind)


EDGE = Edge(
    turn_on="BOUNTYBOT_GITHUB_WEBHOOK_SECRET and BOUNTYBOT_GITHUB_TOKEN (or a GitHub App)",
    sender=sender,
    signer=lambda settings, body, headers: PROVEN if signature_ok(
        settings.webhook_secret.get_secret_value(), body,
        headers.get("X-Hub-Signature-256")) else None,
    refused="bad or missing X-Hub-Signature-256", refused_event="webhook.bad_signature",
    identify=identify)


def topic(_kind: str, payload: Any) -> str | None:
    """The issue or pull request a delivery is about (GitHub numbers both in one sequence)."""
    repo = as_id(dig(payload, "repository", "id"))
    number = as_id(dig(payload, "issue", "number")) or as_id(
        dig(payload, "pull_request", "number"))
    return issue_topic(FORGE, repo, number) if repo and number else None


# -- payloads ----------------------------------------------------------------------------------


def _repo(payload: dict[str, Any], repository: dict[str, Any] | None = None) -> RepoRef:
    repository = repository if repository is not None else payload["repository"]
    installation = payload.get("installation") or {}
    inst = installation.get("id")
    return RepoRef(FORGE, str(repository["id"]), repository["full_name"],
                   str(inst) if inst is not None else None, _private(repository))


def _private(repository: dict[str, Any]) -> bool | None:
    private = repository.get("private")
    return private if isinstance(private, bool) else None


def _actor(user: dict[str, Any]) -> Actor:
    return Actor(user["login"], is_bot=user.get("type") == "Bot")


def _web_host(payload: dict[str, Any]) -> str:
    return urlsplit(payload["repository"].get("html_url") or "https://github.com").netloc


def _has_label(labels: list[dict[str, Any]] | None, label: str) -> bool:
    return any((item.get("name") or "").lower() == label.lower() for item in labels or [])


def normalize(event: str, payload: dict[str, Any], *, label: str, bot_login: str) -> Normalized:
    """Read one delivery. Unknown events and actions normalize to nothing (with the reason)."""
    action = payload.get("action")
    if event == "ping":
        return Normalized(ignored="ping")
    if event == "installation":
        inst = str(payload["installation"]["id"])
        if action in ("created", "new_permissions_accepted", "unsuspend"):
            return Normalized(repos=[RepoRef(FORGE, str(r["id"]), r["full_name"], inst,
                                             _private(r))
                                     for r in payload.get("repositories") or []])
        return Normalized(ignored=f"installation {action}")
    if event == "installation_repositories":
        inst = str(payload["installation"]["id"])
        return Normalized(repos=[RepoRef(FORGE, str(r["id"]), r["full_name"], inst,
                                         _private(r))
                                 for r in payload.get("repositories_added") or []])
    if event == "issues":
        return _issues(action, payload, label)
    if event == "issue_comment":
        return _issue_comment(action, payload, bot_login)
    if event == "pull_request":
        return _pull_request(action, payload)
    return Normalized(ignored=f"event {event} is not used")


def _issues(action: str | None, payload: dict[str, Any], label: str) -> Normalized:
    issue = payload["issue"]
    repo = _repo(payload)
    event: Event | None = None
    if (action == "labeled" and _has_label([payload.get("label") or {}], label)) or (
            action == "opened" and _has_label(issue.get("labels"), label)):
        event = LabelAdded()
    elif action == "unlabeled" and _has_label([payload.get("label") or {}], label):
        event = LabelRemoved()
    elif action == "closed":
        event = IssueClosed(not_planned=issue.get("state_reason") == "not_planned")
    elif action == "edited" and "title" in (payload.get("changes") or {}):
        event = IssueRetitled(issue.get("title") or "")
    elif action == "deleted":
        event = IssueDeleted()
    elif action == "transferred":
        changes = payload["changes"]
        new_repo = _repo(payload, changes["new_repository"])
        new_issue = changes["new_issue"]
        return Normalized(transfer=Transfer(repo, issue["number"], new_repo,
                                            new_issue["number"], new_issue.get("html_url", "")))
    if event is None:
        return Normalized(ignored=f"issues {action} changes nothing")
    return Normalized(happenings=[Happening(repo.full_path, repo, issue["number"], event,
                                            issue.get("title") or "", issue.get("html_url", ""))])


def _issue_comment(action: str | None, payload: dict[str, Any], bot_login: str) -> Normalized:
    issue = payload["issue"]
    if issue.get("pull_request"):
        return Normalized(ignored="comment on a pull request")
    comment = payload["comment"]
    body = comment.get("body") or ""
    revision = previous = None
    if action == "edited":
        # Commands an edit adds count only when the author made it: anyone who may edit a
        # comment (a maintainer, a moderator) must not pledge in someone else's name.
        editor = str((payload.get("sender") or {}).get("login") or "")
        if not editor or editor.lower() != str(comment["user"]["login"]).lower():
            return Normalized(ignored="edit made by someone other than the comment's author")
        previous = ((payload.get("changes") or {}).get("body") or {}).get("from") or ""
        revision = comment.get("updated_at") or "edit"
        # Not only the lines the edit added: the comment's own webhook may have been lost, and
        # reconciliation never reads an edited comment. The worker applies the command lines
        # never applied before (`comment_lines.fresh_lines`), whatever the edit changed.
        if not carries_commands(body, bot_login=bot_login):
            return Normalized(ignored="edit leaves no command")
    elif action != "created":
        return Normalized(ignored=f"issue_comment {action}")
    repo = _repo(payload)
    what = Comment(str(comment["id"]), _actor(comment["user"]), body, revision, previous)
    return Normalized(happenings=[Happening(repo.full_path, repo, issue["number"], what,
                                            issue.get("title") or "", issue.get("html_url", ""))])


def _pull_request(action: str | None, payload: dict[str, Any]) -> Normalized:
    pr = payload["pull_request"]
    repo = _repo(payload)
    host = _web_host(payload)
    author = pr["user"]["login"]
    number = pr["number"]
    url = pr.get("html_url")

    def refs(title: str | None, body: str | None) -> list[tuple[str, int]]:
        text = f"{title or ''}\n{body or ''}"
        return closing_refs(text, pattern=CLOSING, repo_path=repo.full_path, web_host=host)

    now = refs(pr.get("title"), pr.get("body"))
    events: list[tuple[str, int, Event]] = []
    if action == "edited" and (pr.get("state") != "open" or pr.get("merged")):
        # What a pull request closes is fixed when it ends: an edit of a closed or merged
        # one never links, unlinks or pays.
        return Normalized(ignored="pull_request edited while closed")
    if action in ("opened", "reopened", "synchronize", "ready_for_review"):
        events = [(path, n, LinkOpened(number, author, url)) for path, n in now]
    elif action == "edited":
        changes = payload.get("changes") or {}
        before = refs((changes.get("title") or {}).get("from", pr.get("title")),
                      (changes.get("body") or {}).get("from", pr.get("body")))
        gone = [ref for ref in before if ref not in now]
        events = [(path, n, LinkOpened(number, author, url)) for path, n in now]
        events += [(path, n, LinkClosed(number, author, merged=False, url=url))
                   for path, n in gone]
    elif action == "closed":
        merged = bool(pr.get("merged"))
        events = [(path, n, LinkClosed(number, author, merged=merged, url=url))
                  for path, n in now]
    if not events:
        return Normalized(ignored=f"pull_request {action} links no issue")
    return Normalized(happenings=[own_or_other(repo, path, n, ev) for path, n, ev in events])



# -- the REST API, read by reconciliation ---------------------------------------------------
# GitHub's REST issue, comment and pull request objects are the webhook's own, so the readers
# above serve: each object goes in as the delivery that was missed would have carried it.


def _rest_payload(repo: RepoRef, repository: dict[str, Any] | None = None,
                  **objects: Any) -> dict[str, Any]:
    repository = repository or {"id": repo.forge_repo_id, "full_name": repo.full_path}
    installation = {"id": repo.installation_id} if repo.installation_id else None
    return {"repository": repository, "installation": installation, **objects}


def synced_label(issue: dict[str, Any], repo: RepoRef, label: str) -> Found | None:
    """An open issue (not a pull request) that carries the label, from `GET .../issues`."""
    if issue.get("pull_request") or issue.get("state") != "open" \
            or not _has_label(issue.get("labels"), label):
        return None
    h = Happening(repo.full_path, repo, issue["number"], LabelAdded(), issue.get("title") or "",
                  issue.get("html_url", ""))
    return Found("label", f"label:{issue['id']}", parse_time(issue["updated_at"]), (h,))


def synced_comment(comment: dict[str, Any], repo: RepoRef,
                   issues: Mapping[int, dict[str, Any]], *, bot_login: str,
                   since: datetime | None) -> Found | None:
    """A comment from `GET .../issues/comments`, when it is new since `since`, on an issue (not
    a pull request), written by someone other than a bot, never edited, and carries commands.
    An edited comment is not read: the API does not say who edited it, nor what the text was
    before (GitLab's note edits are not read for the same reason)."""
    html = comment.get("html_url") or ""
    if "/pull/" in urlsplit(html).path or not since_or_later(comment.get("created_at"), since):
        return None
    if edited_since_created(comment):
        # Who edited it is not said: the commands of an edited comment are read only from the
        # edit's webhook, which names the editor (a comment's commands are applied once).
        return None
    if not carries_commands(comment.get("body") or "", bot_login=bot_login):
        return None
    number = int(str(comment["issue_url"]).rstrip("/").rsplit("/", 1)[1])
    # The issue as the labelled list gave it, else all a comment says of it (no title).
    issue = issues.get(number) or {"number": number, "title": "", "html_url": html.split("#")[0]}
    normalized = _issue_comment("created", _rest_payload(repo, comment=comment, issue=issue),
                                bot_login)
    bot = bot_login.lower().removesuffix("[bot]")
    happenings = [h for h in normalized.happenings if isinstance(h.what, Comment)
                  and not h.what.author.is_bot
                  and h.what.author.login.lower().removesuffix("[bot]") != bot
                  and not h.what.author.login.lower().endswith("[bot]")]
    if not happenings:
        return None
    return Found("comment", f"comment:{comment['id']}:{comment.get('updated_at')}",
                 parse_time(comment["created_at"]), tuple(happenings))


def synced_merge(pull: dict[str, Any], repo: RepoRef, since: datetime | None) -> Found | None:
    """A pull request from `GET .../pulls?state=closed`, merged since `since`, that closes
    issues. One merged earlier and only touched since (a late comment) is not a new merge.
    The text read now may have been edited after the merge: unless the pull request was not
    touched since it was merged, its merge counts only for tasks it was linked to while open."""
    merged_at = pull.get("merged_at")
    if not merged_at or not since_or_later(merged_at, since):
        return None
    # The list's pull requests have no `merged` flag, only `merged_at`.
    payload = _rest_payload(repo, (pull.get("base") or {}).get("repo"),
                            pull_request={**pull, "merged": True})
    normalized = _pull_request("closed", payload)
    if not normalized.happenings:
        return None
    happenings = after_the_fact(normalized.happenings, merged_at, pull.get("updated_at"))
    return Found("merge", f"merge:{pull['id']}", parse_time(merged_at), happenings)
