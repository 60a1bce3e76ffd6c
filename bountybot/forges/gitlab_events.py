"""GitLab webhook payloads, and the REST objects reconciliation reads, turned into normalized
happenings; GitLab's webhook door (tokens, delivery ids, event names), its topics and its
closing keywords (pure: no HTTP, no python-gitlab).

Read by `X-Gitlab-Event` (`Issue Hook`, `Note Hook`, `Merge Request Hook`, their `Confidential`
variants, or the payload's `object_kind` passed as the event); anything else normalizes to
nothing, with the reason. Issues and merge requests are numbered by `iid`, the per-project
number people see, never by the global `id`.

What GitLab's payloads do not say, and what this module does about it:

- Closed as what: an Issue Hook `close` carries no reason like GitHub's `state_reason`
  (`duplicated_to_id` and `moved_to_id` say where an issue went, not whether its work was
  wanted), so every close is `IssueClosed(not_planned=False)`: the task stays, and a maintainer
  who wants the money back removes the label or says `/cancel`.
- Note edits: a Note Hook `update` (GitLab 16.11+) sends only the new text, with no `changes`
  and no previous body, and its `user` is whoever edited (a maintainer may edit anyone's note).
  The commands an edit adds cannot be told from those it repeats, so edits are not read.
- Merge request authors: a Merge Request Hook names the author only by `object_attributes.
  author_id` (its `user` is whoever acted, e.g. merged), so links carry `author=""` and the
  happening carries `author_id` for the worker to resolve.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from bountybot.forges.door import Edge, Sender, delivery_id_problem, header_bytes, repo_named
from bountybot.forges.events import (
    SYNC_EVENT,
    Found,
    Happening,
    Normalized,
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
    IssueRetitled,
    LabelAdded,
    LabelRemoved,
    LinkClosed,
    LinkOpened,
)

FORGE = "gitlab"
# GitLab's default closing pattern: GitHub's keywords, their -ing forms, and "implement".
KEYWORDS = (r"clos(?:e[sd]?|ing)|fix(?:e[sd]|ing)?|resolv(?:e[sd]?|ing)"
            r"|implement(?:s|ed|ing)?")
CLOSING = closing_pattern(KEYWORDS)
# Issue URLs: `group/project/-/issues/N`, and the older `group/project/issues/N`.
ISSUE_PATHS = ("-/issues/", "issues/")
# The X-Gitlab-Event values GitLab documents for project, group and system hooks
# (docs.gitlab.com: user/project/integrations/webhook_events, administration/system_hooks).
EVENTS = frozenset({
    "Push Hook", "Tag Push Hook", "Issue Hook", "Confidential Issue Hook", "Note Hook",
    "Confidential Note Hook", "Merge Request Hook", "Wiki Page Hook", "Pipeline Hook",
    "Job Hook", "Deployment Hook", "Feature Flag Hook", "Release Hook", "Emoji Hook",
    "Resource Access Token Hook", "Member Hook", "Subgroup Hook", "Project Hook",
    "Milestone Hook", "Vulnerability Hook", "System Hook",
})


# -- the door ----------------------------------------------------------------------------------


def sender(settings: Any, headers: Mapping[str, str]) -> Sender | None:
    """The instance's secret (`settings`: the GitLab section), or the secrets of the projects
    and groups that share this token; None when the token is none of them. Every secret is
    compared, in constant time."""
    header = headers.get("X-Gitlab-Token")
    if header is None or settings.webhook_secret is None:
        return None
    given = header_bytes(header)
    proven = hmac.compare_digest(given, settings.webhook_secret.get_secret_value().encode())
    scopes = tuple(path for path, secret in settings.project_secrets.items()
                   if secret.get_secret_value()  # never an empty one (the settings refuse it)
                   and hmac.compare_digest(given, secret.get_secret_value().encode()))
    if proven:
        return Sender(proven=True)
    return Sender(scopes=scopes) if scopes else None


def identify(headers: Mapping[str, str]) -> tuple[str, str] | str:
    """(delivery id, event name), or why the headers do not say."""
    kind = headers.get("X-Gitlab-Event")
    if not kind:
        return "the X-Gitlab-Event header is required"
    if kind == SYNC_EVENT or kind not in EVENTS:
        return "X-Gitlab-Event is not one of GitLab's webhook events (such as Note Hook)"
    # Idempotency-Key is stable across GitLab's own retries (17.4+); before that, the event
    # UUID names one delivery of one kind.
    delivery_id = headers.get("Idempotency-Key")
    if delivery_id:
        return delivery_id_problem("Idempotency-Key", delivery_id) or (delivery_id, kind)
    uuid = headers.get("X-Gitlab-Event-UUID")
    if not uuid:
        return "Idempotency-Key or X-Gitlab-Event-UUID is required"
    composite = f"{uuid}:{kind}"
    return delivery_id_problem("X-Gitlab-Event-UUID", composite) or (composite, kind)


def scoped_repo(payload: dict[str, Any]) -> tuple[str, str] | None:
    """(project id, path) of the project a delivery is about, when the payload names one
    properly: what a project's or group's own secret may speak for (`within` its path)."""
    return repo_named(payload, "project", "path_with_namespace")


EDGE = Edge(
    turn_on="BOUNTYBOT_GITLAB_WEBHOOK_SECRET and BOUNTYBOT_GITLAB_TOKEN",
    sender=sender,
    signer=lambda _settings, _body, _headers: None,  # the token alone proves a GitLab delivery
    refused="bad or missing X-Gitlab-Token", refused_event="webhook.bad_token",
    identify=identify, scoped_repo=scoped_repo,
    out_of_scope="this X-Gitlab-Token is the secret of another project or group than the"
                 " delivery's")


def topic(_kind: str, payload: Any) -> str | None:
    """The issue or merge request a delivery is about (numbered apart: `issue`, `mr`)."""
    repo = as_id(dig(payload, "project", "id"))
    if repo is None:
        return None
    object_kind = dig(payload, "object_kind")
    if object_kind in ("issue", "work_item"):
        number, which = as_id(dig(payload, "object_attributes", "iid")), "issue"
    elif object_kind == "merge_request":
        number, which = as_id(dig(payload, "object_attributes", "iid")), "mr"
    elif object_kind == "note":
        number, which = as_id(dig(payload, "issue", "iid")), "issue"
        if number is None:
            number, which = as_id(dig(payload, "merge_request", "iid")), "mr"
    else:
        return None
    return issue_topic(FORGE, repo, number, which) if number else None


# -- payloads ----------------------------------------------------------------------------------

# The X-Gitlab-Event header, and the payload's object_kind, to the kind of hook it is.
_KINDS = {
    "Issue Hook": "issue", "Confidential Issue Hook": "issue",
    "Note Hook": "note", "Confidential Note Hook": "note",
    "Merge Request Hook": "merge_request",
    "issue": "issue", "note": "note", "merge_request": "merge_request",
}
_APPROVALS = frozenset({"approved", "unapproved", "approval", "unapproval"})

# Bot users GitLab makes for project and group access tokens: `project_<id>_bot_<hex>` and
# `group_<id>_bot_<hex>` today, `project_<id>_bot` / `project_<id>_bot<n>` in older GitLab.
_TOKEN_BOT = re.compile(r"(?:project|group)_\d+_bot(?:_[0-9a-f]+)?\d*")


def is_bot_user(user: dict[str, Any]) -> bool:
    """Whether a webhook `user` is a bot. Webhook user objects carry no `bot` flag (only the
    Users API does), so the username decides: `bot: true` if present; access token bots
    (`project_<id>_bot_<hex>`, `group_<id>_bot_<hex>`); service accounts
    (`service_account_...`, e.g. review bots); and any name ending in `-bot` or `_bot`, which
    covers GitLab's own (`support-bot` posts Service Desk mail, `alert-bot`, ...)."""
    if user.get("bot") is True:
        return True
    name = (user.get("username") or "").lower()
    return (bool(_TOKEN_BOT.fullmatch(name)) or name.startswith("service_account_")
            or name.endswith(("-bot", "_bot")))


# GitLab's visibility levels: 0 private, 10 internal (any signed-in user), 20 public. Only a
# public project's data is public here.
_PUBLIC = 20


def _repo(project: dict[str, Any]) -> RepoRef:
    level = project.get("visibility_level")
    private = None if isinstance(level, bool) or not isinstance(level, int) else level < _PUBLIC
    return RepoRef(FORGE, str(project["id"]), project["path_with_namespace"], None, private)


def _titles(labels: list[dict[str, Any]] | None) -> set[str]:
    return {(item.get("title") or "").lower() for item in labels or []}


# Every forge's normalize takes `bot_login`, passed by keyword; GitLab's needs none.
def normalize(event: str, payload: dict[str, Any], *, label: str, bot_login: str) -> Normalized:  # noqa: ARG001
    """Read one delivery. Unknown events and actions normalize to nothing (with the reason).
    `bot_login` is unused: GitLab note edits are not read (see the module docstring)."""
    kind = _KINDS.get(event)
    if kind is None:
        return Normalized(ignored=f"event {event} is not used")
    object_kind = payload.get("object_kind")
    if object_kind == "work_item" and kind == "issue":
        kind_of = (payload.get("object_attributes") or {}).get("type") or "work item"
        return Normalized(ignored=f"a {kind_of} is not an issue")
    if object_kind is not None and object_kind != kind:
        return Normalized(ignored=f"event {event} carries a {object_kind} payload")
    project = payload.get("project")
    if not isinstance(project, dict):  # a group-level work item (an epic) has no project
        return Normalized(ignored=f"{kind} outside a project")
    if kind == "issue":
        return _issue(payload, _repo(project), label)
    if kind == "note":
        return _note(payload, _repo(project), project)
    return _merge_request(payload, _repo(project), project)


def _issue(payload: dict[str, Any], repo: RepoRef, label: str) -> Normalized:
    attrs = payload["object_attributes"]
    action = attrs.get("action")
    if attrs.get("type") not in (None, "Issue"):
        return Normalized(ignored=f"a {attrs['type']} is not an issue")
    changes = payload.get("changes") or {}
    ours = label.lower()
    events: list[Event] = []
    if "labels" in changes:
        before = _titles(changes["labels"].get("previous"))
        now = _titles(changes["labels"].get("current"))
        if ours in now - before:
            events.append(LabelAdded())
    else:
        before, now = set(), _titles(payload.get("labels") or attrs.get("labels"))
        if action == "open" and ours in now:  # opened with the label on
            events.append(LabelAdded())
    if "title" in changes:
        events.append(IssueRetitled(attrs.get("title") or changes["title"].get("current") or ""))
    # Removing the label before the close: a maintainer who does both wants the task cancelled,
    # not told that it was closed unpaid.
    if ours in before - now:
        events.append(LabelRemoved())
    if action == "close":
        events.append(IssueClosed(not_planned=False))
    if not events:
        return Normalized(ignored=f"issue {action} changes nothing")
    number, title, url = attrs["iid"], attrs.get("title") or "", attrs.get("url") or ""
    return Normalized(happenings=[Happening(repo.full_path, repo, number, ev, title, url)
                                  for ev in events])


def _note(payload: dict[str, Any], repo: RepoRef, project: dict[str, Any]) -> Normalized:
    attrs = payload["object_attributes"]
    if attrs.get("noteable_type") != "Issue":
        return Normalized(ignored=f"note on a {attrs.get('noteable_type')}")
    action = attrs.get("action", "create")  # before GitLab 16.11 notes were only created
    if action == "update":
        return Normalized(ignored="note edits are not read: GitLab does not send the old text")
    if action != "create":
        return Normalized(ignored=f"note {action}")
    if attrs.get("system"):
        return Normalized(ignored="system note")
    issue = payload["issue"]
    if issue.get("type") not in (None, "Issue"):
        return Normalized(ignored=f"note on a {issue['type']}")
    user = payload["user"]
    number = issue["iid"]
    url = issue.get("url") or f"{project.get('web_url', '').rstrip('/')}/-/issues/{number}"
    what = Comment(str(attrs["id"]), Actor(user["username"], is_bot=is_bot_user(user)),
                   attrs.get("note") or "")
    return Normalized(happenings=[Happening(repo.full_path, repo, number, what,
                                            issue.get("title") or "", url)])


def _refs(repo: RepoRef, web_url: str | None, title: str | None,
          description: str | None) -> list[tuple[str, int]]:
    """The issues a merge request's title and description say it closes."""
    web = urlsplit(web_url or "https://gitlab.com")
    # A self-managed GitLab under a relative URL root (https://host/gitlab/group/project):
    # issue URLs carry the root, which is no part of a project's path.
    root = web.path.rstrip("/").removesuffix(repo.full_path).rstrip("/")
    text = f"{title or ''}\n{description or ''}"
    if root:
        text = text.replace(f"{web.netloc}{root}/", f"{web.netloc}/")
    return closing_refs(text, pattern=CLOSING, repo_path=repo.full_path, web_host=web.netloc,
                        issue_paths=ISSUE_PATHS)


def _merge_request(payload: dict[str, Any], repo: RepoRef,
                   project: dict[str, Any]) -> Normalized:
    mr = payload["object_attributes"]
    action, state = mr.get("action"), mr.get("state")
    if action in _APPROVALS:
        return Normalized(ignored=f"merge request {action}")
    refs = functools.partial(_refs, repo, project.get("web_url"))
    number, url = mr["iid"], mr.get("url")
    now = refs(mr.get("title"), mr.get("description"))
    events: list[tuple[str, int, Event]] = []
    if action == "merge" or (action is None and state == "merged"):
        events = [(path, n, LinkClosed(number, "", merged=True, url=url)) for path, n in now]
    elif action == "close" or (action is None and state == "closed"):
        events = [(path, n, LinkClosed(number, "", merged=False, url=url)) for path, n in now]
    elif action == "update" and state in ("merged", "closed"):
        # An edit after the fact must not link (or, merged, pay for) an issue the merge
        # request did not close when it ended.
        return Normalized(ignored=f"merge request update while {state}")
    elif action in ("open", "reopen", "update") or (action is None and state == "opened"):
        events = [(path, n, LinkOpened(number, "", url)) for path, n in now]
        if action == "update":
            changes = payload.get("changes") or {}
            title, description = changes.get("title"), changes.get("description")
            before = refs(title.get("previous") if title else mr.get("title"),
                          description.get("previous") if description else mr.get("description"))
            kept = {(path.lower(), n) for path, n in now}
            events += [(path, n, LinkClosed(number, "", merged=False, url=url))
                       for path, n in before if (path.lower(), n) not in kept]
    if not events:
        return Normalized(ignored=f"merge request {action} links no issue")
    author_id = mr.get("author_id")
    # An issue of another project is named by path only: the worker looks the project up.
    return Normalized(happenings=[replace(own_or_other(repo, path, n, ev), author_id=author_id)
                                  for path, n, ev in events])


# -- the REST API, read by reconciliation ---------------------------------------------------
# GitLab's REST objects are not its hooks' (`labels` are names, a note's author is `author`,
# a merge request names its author), so each is mapped here field by field.


def synced_label(issue: dict[str, Any], repo: RepoRef, label: str) -> Found | None:
    """An open issue carrying the label, from `GET /projects/:id/issues`."""
    if issue.get("state") != "opened" or (issue.get("issue_type") or "issue") != "issue":
        return None
    names = {str(item if isinstance(item, str) else item.get("name", "")).lower()
             for item in issue.get("labels") or []}  # names, or objects with_labels_details
    if label.lower() not in names:
        return None
    h = Happening(repo.full_path, repo, issue["iid"], LabelAdded(), issue.get("title") or "",
                  issue.get("web_url") or "")
    return Found("label", f"label:{issue['id']}", parse_time(issue["updated_at"]), (h,))


def synced_note(note: dict[str, Any], repo: RepoRef, issue: dict[str, Any], *,
                bot_login: str, since: datetime | None) -> Found | None:
    """A note from `GET /projects/:id/issues/:iid/notes`, when it is new since `since`, written
    by a person (not a system note, not a bot) and carries commands. Edits are not read, as
    on the hooks (see the module docstring)."""
    if note.get("system") or note.get("noteable_type", "Issue") != "Issue" \
            or not since_or_later(note.get("created_at"), since) or edited_since_created(note):
        return None
    author = note.get("author") or {}
    login = str(author.get("username") or "")
    body = note.get("body") or ""
    if not login or is_bot_user(author) or login.lower() == bot_login.lower() \
            or not carries_commands(body, bot_login=bot_login):
        return None
    what = Comment(str(note["id"]), Actor(login), body)
    h = Happening(repo.full_path, repo, issue["iid"], what, issue.get("title") or "",
                  issue.get("web_url") or "")
    return Found("comment", f"comment:{note['id']}:{note.get('updated_at')}",
                 parse_time(note["created_at"]), (h,))


def synced_merge(mr: dict[str, Any], repo: RepoRef, since: datetime | None) -> Found | None:
    """A merge request from `GET /projects/:id/merge_requests?state=merged`, merged since
    `since`, that closes issues. The REST object names its author, so no lookup is needed."""
    merged_at = mr.get("merged_at")
    if mr.get("state") != "merged" or not merged_at or not since_or_later(merged_at, since):
        return None
    url = mr.get("web_url") or ""
    project_url = url.split("/-/merge_requests/")[0] if "/-/merge_requests/" in url else None
    author = str((mr.get("author") or {}).get("username") or "")
    merged = LinkClosed(mr["iid"], author, merged=True, url=url or None)
    happenings = [own_or_other(repo, path, n, merged)
                  for path, n in _refs(repo, project_url, mr.get("title"), mr.get("description"))]
    if not happenings:
        return None
    return Found("merge", f"merge:{mr['id']}", parse_time(merged_at),
                 after_the_fact(happenings, merged_at, mr.get("updated_at")))
