"""Forgejo (and Gitea) webhook payloads, and the REST objects reconciliation reads, turned into
normalized happenings; Forgejo's webhook door (signature, delivery id, event names), its topics
and its closing references (pure: no HTTP).

Facts this module leans on (Forgejo `505ab87`, Gitea v1.25.4; tests/fixtures/forgejo/SOURCES.md):

- A label change is `issues` with `action: label_updated` (or `label_cleared`) and carries the
  issue's *whole* label list, never the label added or removed. The bot's label being there
  is read as `LabelAdded` (it creates a task that does not exist, and the task remembers that it
  carries the label). Its absence is `LabelAbsent`: the payload cannot tell "just removed" from
  "never there", so the rules cancel only a task that carried the label, never one made by
  `/goal` on an unlabelled issue because someone added another label; see `label_event`.
- A comment on a pull request is `issue_comment` with `is_pull: true`; `issue.pull_request` is
  set by real instances but not by Forgejo's own test payloads, so both are checked.
- What a pull request closes is read as Forgejo reads it (`modules/references/references.go`):
  a keyword right before the reference (an optional colon, then exactly one space), one
  reference per keyword, `#N` or `owner/repo#N`; an issue URL of the instance counts in the
  title (plain text, where Forgejo turns URLs into references) but not in the body (markdown:
  "closing/reopening keywords not supported with URLs").
"""

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
    repo_named,
)
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
from bountybot.forges.links import closing_refs
from bountybot.forges.topics import as_id, dig, issue_topic
from bountybot.refs import RepoRef
from bountybot.rules import (
    Actor,
    Comment,
    Event,
    IssueClosed,
    IssueRetitled,
    LabelAbsent,
    LabelAdded,
    LinkClosed,
    LinkOpened,
)

FORGE = "forgejo"
# `[repository.pull-request] CLOSE_KEYWORDS`, the same default in Forgejo and Gitea.
KEYWORDS = r"close|closes|closed|fix|fixes|fixed|resolve|resolves|resolved"
_SHORT_REF = r"(?:[0-9A-Za-z_.-]+/[0-9A-Za-z_.-]+)?#\d+"
# What may follow a reference (Forgejo's `issueNumericPattern` tail): a space, the end, a
# closing bracket, or punctuation then a space or the end. `#12abc` is no reference.
_REF_END = r"(?=\s|$|[)\]]|[:;,.?!](?:\s|$))"


def _closing(ref: str) -> re.Pattern[str]:
    # Forgejo's `(?:\s|^|\(|\[)(kw):? $` on the text before a reference: the keyword starts
    # the text or follows a space or an opening bracket, then an optional colon and ONE space.
    return re.compile(rf"(?<![^\s(\[])(?:{KEYWORDS}):? (?P<refs>{ref}){_REF_END}",
                      re.IGNORECASE)


# The body (markdown): short references only. The title (plain text): URLs as well.
CLOSING = _closing(_SHORT_REF)
CLOSING_IN_TITLE = _closing(rf"https?://[^\s,)>\]]+|{_SHORT_REF}")
# Forgejo turns `<root>/owner/repo/issues/N` and `.../pulls/N` into `owner/repo#N` (one
# sequence of numbers for both).
ISSUE_PATHS = ("issues/", "pulls/")

# The `X-Forgejo-Event` / `X-Gitea-Event` values (`HookEventType.Event()` in
# `modules/webhook/type.go`): sub-types such as `issue_label` arrive as their parent
# (`issues`), told apart by `X-*-Event-Type`. Anything else is not Forgejo's, and never the
# reconciler's `bountybot.sync`.
EVENTS = frozenset({
    "create", "delete", "fork", "push", "issues", "issue_comment", "pull_request",
    "pull_request_approved", "pull_request_rejected", "pull_request_comment", "wiki",
    "repository", "release", "package", "status", "workflow_run", "workflow_job",
    "action_run_failure", "action_run_recover", "action_run_success",
})
# Forgejo sends both names of each header; Gitea only its own. Forgejo's is read first.
DELIVERY_HEADERS = ("X-Forgejo-Delivery", "X-Gitea-Delivery")
EVENT_HEADERS = ("X-Forgejo-Event", "X-Gitea-Event")
SIGNATURE_HEADERS = ("X-Forgejo-Signature", "X-Gitea-Signature")
# Lower-case hex, no prefix (`hex.EncodeToString` of the HMAC-SHA256).
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


# -- the door ----------------------------------------------------------------------------------


def signature(secret: str, body: bytes | bytearray) -> str:
    """The `X-Forgejo-Signature` Forgejo sends with `body`: the HMAC-SHA256 of the raw body,
    in lower-case hex, with no prefix."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _first(headers: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, value) of the first of `names` the headers carry with a value."""
    for name in names:
        value = headers.get(name)
        if value:
            return name, value
    return None


def _agreeing(headers: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | str | None:
    """The first of `names` given, or why not: Forgejo sends both names with one value, so two
    that differ are no Forgejo's."""
    given = [(name, headers[name]) for name in names if headers.get(name)]
    if len({value for _, value in given}) > 1:
        return f"{' and '.join(names)} disagree"
    return given[0] if given else None


def signature_ok(secret: str, body: bytes | bytearray, headers: Mapping[str, str]) -> bool:
    """Whether the delivery's signature is `body`'s; compared in constant time, as bytes (a
    header may hold anything). Every signature header given must be right, so a Gitea name
    cannot carry a good value beside a bad Forgejo one."""
    given = [headers[name] for name in SIGNATURE_HEADERS if headers.get(name)]
    if not given or not secret:
        return False
    expected = signature(secret, body).encode()
    return all(hmac.compare_digest(expected, header_bytes(value)) for value in given)


def sender(_settings: Any, headers: Mapping[str, str]) -> Sender | None:
    """Unproven until the body is read, but a request with no signature worth checking (none,
    or not 64 lower-case hex digits) is refused before any of its body is."""
    found = _first(headers, SIGNATURE_HEADERS)
    return UNPROVEN if found and _SIGNATURE.fullmatch(found[1]) else None


def signer(settings: Any, body: bytes | bytearray, headers: Mapping[str, str]) -> Sender | None:
    """Who signed the body (`settings`: the Forgejo section): the instance's secret, or the
    own secrets of repos and owners (`repo_secrets`), each good only for deliveries about its
    repo or the owner's repos; None when no secret signed it. Every secret is tried: one
    webhook secret shared by all the repos of an instance would let any repo's admin sign a
    delivery about another repo (a merge there, paid from its escrow)."""
    if signature_ok(settings.webhook_secret.get_secret_value(), body, headers):
        return PROVEN
    scopes = tuple(path for path, secret in settings.repo_secrets.items()
                   if signature_ok(secret.get_secret_value(), body, headers))
    return Sender(scopes=scopes) if scopes else None


def scoped_repo(payload: dict[str, Any]) -> tuple[str, str] | None:
    """(repo id, `owner/name`) of the repo a delivery is about, when the payload names one
    properly: what a repo's or owner's own secret may speak for."""
    return repo_named(payload, "repository", "full_name")


def identify(headers: Mapping[str, str]) -> tuple[str, str] | str:
    """(delivery id, event name), or why the headers do not say."""
    delivery, kind = _agreeing(headers, DELIVERY_HEADERS), _agreeing(headers, EVENT_HEADERS)
    for problem in (delivery, kind):
        if isinstance(problem, str):
            return problem
    if not isinstance(delivery, tuple) or not isinstance(kind, tuple):
        return "X-Forgejo-Delivery and X-Forgejo-Event (or X-Gitea-*) headers are required"
    if kind[1] == SYNC_EVENT or kind[1] not in EVENTS:
        return f"{kind[0]} is not one of Forgejo's webhook events (such as issue_comment)"
    return delivery_id_problem(delivery[0], delivery[1]) or (delivery[1], kind[1])


EDGE = Edge(
    turn_on="BOUNTYBOT_FORGEJO_WEBHOOK_SECRET and BOUNTYBOT_FORGEJO_TOKEN",
    sender=sender,
    signer=signer,
    refused="bad or missing X-Forgejo-Signature (or X-Gitea-Signature)",
    refused_event="webhook.bad_signature",
    identify=identify, scoped_repo=scoped_repo,
    out_of_scope="this delivery is signed with the secret of another repo or owner than the"
                 " one it is about")


def topic(_kind: str, payload: Any) -> str | None:
    """The issue or pull request a delivery is about (Forgejo numbers both in one sequence)."""
    repo = as_id(dig(payload, "repository", "id"))
    number = as_id(dig(payload, "issue", "number")) or as_id(
        dig(payload, "pull_request", "number"))
    return issue_topic(FORGE, repo, number) if repo and number else None


# -- payloads ----------------------------------------------------------------------------------


def _repo(repository: dict[str, Any]) -> RepoRef:
    private, internal = repository.get("private"), repository.get("internal")
    # An `internal` repo is seen only by the instance's signed-in users: not public here.
    hidden = private if isinstance(private, bool) else None
    if internal is True:
        hidden = True
    return RepoRef(FORGE, str(repository["id"]), repository["full_name"], None, hidden)


def _actor(user: dict[str, Any] | None, bot_login: str) -> Actor:
    user = user or {}
    login = str(user.get("login") or "")
    user_id = user.get("id")
    # Forgejo's own pseudo-users have negative ids: the ghost (-1), `forgejo-actions` (-2).
    pseudo = isinstance(user_id, int) and user_id < 0
    return Actor(login, is_bot=pseudo or login.lower() == bot_login.lower())


def _has_label(labels: list[dict[str, Any]] | None, label: str) -> bool:
    return any(str(item.get("name") or "").lower() == label.lower() for item in labels or [])


def label_event(action: str | None, labels: list[dict[str, Any]] | None,
                label: str) -> Event | None:
    """What a label delivery (`label_updated`, `label_cleared`) means. Forgejo sends the
    issue's labels, not the change: `LabelAdded` when they hold the bot's label, else
    `LabelAbsent`, which cancels a task only if it carried the label (the rules remember it),
    so adding another label to an issue whose task `/goal` opened changes nothing."""
    if action == "label_updated" and _has_label(labels, label):
        return LabelAdded()
    if action in ("label_updated", "label_cleared"):
        return LabelAbsent()
    return None


def normalize(event: str, payload: dict[str, Any], *, label: str, bot_login: str) -> Normalized:
    """Read one delivery. Unknown events and actions normalize to nothing (with the reason)."""
    action = payload.get("action")
    if event == "issues":
        return _issues(action, payload, label)
    if event == "issue_comment":
        return _issue_comment(action, payload, bot_login)
    if event == "pull_request":
        return _pull_request(action, payload)
    if event == "pull_request_comment":  # Forgejo's name for a *review* comment
        return Normalized(ignored="pull request review comment")
    return Normalized(ignored=f"event {event} is not used")


def _issues(action: str | None, payload: dict[str, Any], label: str) -> Normalized:
    issue = payload["issue"]
    if issue.get("pull_request"):
        return Normalized(ignored=f"issues {action} on a pull request")
    repo = _repo(payload["repository"])
    event: Event | None = None
    if action == "opened" and _has_label(issue.get("labels"), label):
        event = LabelAdded()
    elif action in ("label_updated", "label_cleared"):
        event = label_event(action, issue.get("labels"), label)
    elif action == "closed":
        # Forgejo has no "not planned": a closed issue is closed.
        event = IssueClosed(not_planned=False)
    elif action == "edited" and "title" in (payload.get("changes") or {}):
        event = IssueRetitled(issue.get("title") or "")
    if event is None:
        return Normalized(ignored=f"issues {action} changes nothing")
    return Normalized(happenings=[Happening(repo.full_path, repo, issue["number"], event,
                                            issue.get("title") or "",
                                            issue.get("html_url") or "")])


def _issue_comment(action: str | None, payload: dict[str, Any], bot_login: str) -> Normalized:
    issue = payload["issue"]
    if payload.get("is_pull") or issue.get("pull_request"):
        return Normalized(ignored="comment on a pull request")
    comment = payload["comment"]
    body = comment.get("body") or ""
    author = _actor(comment.get("user"), bot_login)
    revision = previous = None
    if action == "edited":
        # Commands an edit adds count only when the author made it: anyone who may edit a
        # comment (a maintainer) must not pledge in someone else's name.
        editor = str((payload.get("sender") or {}).get("login") or "")
        if not editor or not author.login or editor.lower() != author.login.lower():
            return Normalized(ignored="edit made by someone other than the comment's author")
        previous = ((payload.get("changes") or {}).get("body") or {}).get("from") or ""
        revision = comment.get("updated_at") or "edit"
        if not carries_commands(body, bot_login=bot_login):
            return Normalized(ignored="edit leaves no command")
    elif action != "created":
        return Normalized(ignored=f"issue_comment {action}")
    if not author.login:
        return Normalized(ignored="comment without an author")
    repo = _repo(payload["repository"])
    what = Comment(str(comment["id"]), author, body, revision, previous)
    return Normalized(happenings=[Happening(repo.full_path, repo, issue["number"], what,
                                            issue.get("title") or "",
                                            issue.get("html_url") or "")])


def closing(repo: RepoRef, html_url: str | None, title: str | None,
            body: str | None) -> list[tuple[str, int]]:
    """The issues a pull request's title and body say it closes, as Forgejo reads them: the
    title as plain text (issue URLs of the instance count), the body as markdown (they do
    not). `html_url` is the repo's page, for the instance's host and sub-path."""
    web = urlsplit(html_url or "")
    # An instance under a sub-path (https://host/git/owner/repo): its URLs carry the root,
    # which is no part of a repo's path.
    root = web.path.rstrip("/").removesuffix(repo.full_path).rstrip("/")
    title = title or ""
    if root:
        title = title.replace(f"{web.netloc}{root}/", f"{web.netloc}/")
    found = dict.fromkeys(closing_refs(title, pattern=CLOSING_IN_TITLE,
                                       repo_path=repo.full_path, web_host=web.netloc,
                                       issue_paths=ISSUE_PATHS))
    found.update(dict.fromkeys(closing_refs(body, pattern=CLOSING, repo_path=repo.full_path,
                                            web_host=web.netloc)))
    return list(found)


def _pull_request(action: str | None, payload: dict[str, Any]) -> Normalized:
    pr = payload["pull_request"]
    repository = payload["repository"]
    repo = _repo(repository)
    author = str((pr.get("user") or {}).get("login") or "")
    number = pr["number"]
    url = pr.get("html_url") or None

    def refs(title: str | None, body: str | None) -> list[tuple[str, int]]:
        return closing(repo, repository.get("html_url"), title, body)

    ended = bool(pr.get("merged")) or pr.get("state") == "closed"
    if action == "edited" and ended:
        # What a pull request closes is fixed when it ends: an edit of a closed or merged
        # one never links, unlinks or pays.
        return Normalized(ignored="pull_request edited while closed")
    now = refs(pr.get("title"), pr.get("body"))
    events: list[tuple[str, int, Event]] = []
    if action in ("opened", "reopened", "synchronized"):
        events = [(path, n, LinkOpened(number, author, url)) for path, n in now]
    elif action == "edited":
        changes = payload.get("changes") or {}
        before = refs((changes.get("title") or {}).get("from", pr.get("title")),
                      (changes.get("body") or {}).get("from", pr.get("body")))
        kept = {(path.lower(), n) for path, n in now}
        events = [(path, n, LinkOpened(number, author, url)) for path, n in now]
        events += [(path, n, LinkClosed(number, author, merged=False, url=url))
                   for path, n in before if (path.lower(), n) not in kept]
    elif action == "closed":
        merged = bool(pr.get("merged"))
        events = [(path, n, LinkClosed(number, author, merged=merged, url=url))
                  for path, n in now]
    if not events:
        return Normalized(ignored=f"pull_request {action} links no issue")
    return Normalized(happenings=[own_or_other(repo, path, n, ev) for path, n, ev in events])


# -- the REST API, read by reconciliation ---------------------------------------------------
# Forgejo's REST issue, comment and pull request objects are the webhook's own structs
# (`modules/structs`), so the readers above serve, each object going in as the delivery that
# was missed would have carried it. A REST issue and pull request carry no repository of
# their own worth reading (an issue's is `{id, name, owner, full_name}`), so the RepoRef is
# the one reconciliation asked about.


def _repository(repo: RepoRef, web_url: str) -> dict[str, Any]:
    return {"id": repo.forge_repo_id, "full_name": repo.full_path, "private": repo.private,
            "html_url": web_url}


def synced_label(issue: dict[str, Any], repo: RepoRef, label: str) -> Found | None:
    """An open issue (not a pull request) that carries the label, from `GET .../issues`."""
    if issue.get("pull_request") or issue.get("state") != "open" \
            or not _has_label(issue.get("labels"), label):
        return None
    h = Happening(repo.full_path, repo, issue["number"], LabelAdded(), issue.get("title") or "",
                  issue.get("html_url") or "")
    return Found("label", f"label:{issue['id']}", parse_time(issue["updated_at"]), (h,))


def _issue_number(comment: dict[str, Any]) -> int | None:
    """The issue a REST comment is on, from its `issue_url` (`""` on a pull request's)."""
    tail = str(comment.get("issue_url") or "").rstrip("/").rsplit("/", 2)
    if len(tail) != 3 or tail[1] != "issues" or not tail[2].isdigit() or len(tail[2]) > 10:
        return None
    return int(tail[2])


def synced_comment(comment: dict[str, Any], repo: RepoRef,
                   issues: Mapping[int, dict[str, Any]], *, bot_login: str,
                   since: datetime | None) -> Found | None:
    """A comment from `GET .../issues/comments`, when it is new since `since`, on an issue (not
    a pull request), written by someone other than the bot, never edited, and carries
    commands. An edited comment is not read: the API does not say who edited it, nor what the
    text was before; its commands are read from the edit's webhook only."""
    number = _issue_number(comment)
    if number is None or comment.get("pull_request_url") \
            or not since_or_later(comment.get("created_at"), since) \
            or edited_since_created(comment) \
            or not carries_commands(comment.get("body") or "", bot_login=bot_login):
        return None
    html = str(comment.get("html_url") or "")
    issue = issues.get(number) or {"number": number, "title": "", "html_url": html.split("#")[0]}
    payload = {"action": "created", "is_pull": False, "issue": issue, "comment": comment,
               "repository": _repository(repo, "")}
    normalized = _issue_comment("created", payload, bot_login)
    happenings = tuple(h for h in normalized.happenings
                       if isinstance(h.what, Comment) and not h.what.author.is_bot)
    if not happenings:
        return None
    return Found("comment", f"comment:{comment['id']}:{comment.get('updated_at')}",
                 parse_time(comment["created_at"]), happenings)


def synced_merge(pull: dict[str, Any], repo: RepoRef, since: datetime | None) -> Found | None:
    """A pull request from `GET .../pulls?state=closed`, merged since `since`, that closes
    issues. One merged earlier and only touched since (a late comment) is not a new merge.
    The text read now may have been edited after the merge: unless the pull request was not
    touched since it was merged, its merge counts only for tasks it was linked to while open."""
    merged_at = pull.get("merged_at")
    if not pull.get("merged") or not merged_at or not since_or_later(merged_at, since):
        return None
    html = str(pull.get("html_url") or "")
    web_url = html.split("/pulls/")[0] if "/pulls/" in html else ""
    payload = {"action": "closed", "pull_request": pull,
               "repository": _repository(repo, web_url)}
    normalized = _pull_request("closed", payload)
    if not normalized.happenings:
        return None
    happenings = after_the_fact(normalized.happenings, merged_at, pull.get("updated_at"))
    return Found("merge", f"merge:{pull['id']}", parse_time(merged_at), happenings)
