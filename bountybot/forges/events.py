"""The normalized shape of a forge delivery: what happened, to which issue of which repo; and
what reconciliation reads of a repo, stored in the inbox as happenings (`SYNC_EVENT`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from bountybot.commands import parse_comment
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


@dataclass(frozen=True, slots=True)
class Happening:
    """One thing to apply to one issue. `repo` is None when the payload only names the issue's
    repo by path (a pull request in one repo that closes an issue of another)."""

    repo_path: str
    repo: RepoRef | None
    number: int
    what: Comment | Event
    title: str = ""
    url: str = ""
    # GitLab's Merge Request Hook names the MR's author only by id: the worker asks the forge
    # for the username (`ForgeClient.username`) and puts it in the LinkOpened/LinkClosed.
    author_id: int | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """An issue moved to another repo: its task follows it."""

    old: RepoRef
    old_number: int
    new: RepoRef
    new_number: int
    new_url: str


@dataclass
class Normalized:
    """Everything a delivery means to bountybot (often nothing)."""

    repos: list[RepoRef] = field(default_factory=list)
    happenings: list[Happening] = field(default_factory=list)
    transfer: Transfer | None = None
    ignored: str | None = None  # why nothing came of it, for the delivery's record


# Issue and pull request numbers are INTEGER columns, and the forges number from 1: a number
# outside this range in a payload is no issue of theirs (and must not reach the database).
MAX_NUMBER = 2**31 - 1


def valid_number(value: object) -> bool:
    """Whether `value` is an issue or pull request number a forge could have given."""
    return type(value) is int and 1 <= value <= MAX_NUMBER


def own_or_other(repo: RepoRef, path: str, number: int, what: Event) -> Happening:
    """The happening for issue `path#number`, said by a pull request of `repo`: about `repo`
    itself, or about an issue of another repo of the same forge, named by path (the worker
    looks it up among the repos of that forge only). A link from another repo says where the
    pull request is, so that it never pays by itself."""
    if path.lower() == repo.full_path.lower():
        return Happening(repo.full_path, repo, number, what)
    if isinstance(what, LinkOpened | LinkClosed):
        what = replace(what, repo=repo.full_path)
    return Happening(path, None, number, what)


def after_the_fact(happenings: Sequence[Happening], merged_at: str,
                   updated_at: str | None) -> tuple[Happening, ...]:
    """Merges read by reconciliation: their text is today's. Unless the pull request was not
    touched after it was merged, it may have been edited since, so the merge only counts for
    tasks it was linked to while open (`LinkClosed.only_linked`)."""
    if updated_at is not None and parse_time(updated_at) <= parse_time(merged_at):
        return tuple(happenings)
    return tuple(replace(h, what=replace(h.what, only_linked=True))
                 if isinstance(h.what, LinkClosed) else h for h in happenings)


def edited_since_created(comment: dict[str, Any]) -> bool:
    """Whether a REST comment (or note) was edited after it was written."""
    created, updated = comment.get("created_at"), comment.get("updated_at")
    if not isinstance(created, str) or not isinstance(updated, str):
        return False
    return parse_time(updated) > parse_time(created)


# -- reconciliation ------------------------------------------------------------------------

# The inbox kind of what reconciliation stores: its payload is `happenings_to_json`'s.
SYNC_EVENT = "bountybot.sync"


@dataclass(frozen=True, slots=True)
class Found:
    """Something reconciliation read on a forge, named for good by `key` (`label:<issue id>`,
    `comment:<id>:<updated_at>`, `merge:<pull request id>`), so reading it again stores
    nothing new. `at` is when it happened on the forge; labels go first, then the rest in
    time order, so a task exists before the comments that fund it are applied."""

    kind: str  # label, comment or merge
    key: str
    at: datetime
    happenings: tuple[Happening, ...]


@dataclass
class Changes:
    """What `ForgeClient.changes` read of one repo: what it found, the ETags to send next time,
    and how many requests it took (and how many of them the forge answered 304)."""

    etags: dict[str, str] = field(default_factory=dict)
    found: list[Found] = field(default_factory=list)
    requests: int = 0
    not_modified: int = 0


def carries_commands(body: str, *, bot_login: str) -> bool:
    """Whether a comment holds anything the bot answers (a command, or a refused one): the
    comments reconciliation passes on. The currency does not change what is a command."""
    return bool(parse_comment(body, bot_login=bot_login, currency="EUR"))


def since_or_later(stamp: str | None, since: datetime | None) -> bool:
    """Whether a forge timestamp (ISO 8601, `Z` or an offset) is at or after `since`."""
    if since is None:
        return True
    return stamp is not None and parse_time(stamp) >= since


def parse_time(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# The events a sync delivery may carry, by name: nothing else is read back.
_EVENTS: dict[str, type[Any]] = {cls.__name__: cls for cls in (
    LabelAdded, LabelRemoved, IssueClosed, IssueDeleted, IssueRetitled, LinkOpened, LinkClosed)}


def _what_to_dict(what: Comment | Event) -> dict[str, Any]:
    if isinstance(what, Comment):
        # Only what the forge said: whether the author maintains the repo is asked again.
        return {"type": "Comment", "id": what.id, "body": what.body, "revision": what.revision,
                "previous": what.previous,
                "author": {"login": what.author.login, "is_bot": what.author.is_bot}}
    if type(what).__name__ not in _EVENTS:
        raise TypeError(f"{type(what).__name__} is not a forge event")
    return {"type": type(what).__name__, **{f.name: getattr(what, f.name) for f in fields(what)}}


def _what_from_dict(data: dict[str, Any]) -> Comment | Event:
    kind = data.pop("type")
    if kind == "Comment":
        author = data.pop("author")
        return Comment(author=Actor(str(author["login"]), is_bot=bool(author["is_bot"])),
                       id=str(data["id"]), body=str(data["body"]),
                       revision=data.get("revision"), previous=data.get("previous"))
    event: Comment | Event = _EVENTS[kind](**data)
    return event


def happening_to_dict(h: Happening) -> dict[str, Any]:
    return {"repo_path": h.repo_path, "repo": asdict(h.repo) if h.repo else None,
            "number": h.number, "what": _what_to_dict(h.what), "title": h.title, "url": h.url,
            "author_id": h.author_id}


def happening_from_dict(data: dict[str, Any]) -> Happening:
    repo = data.get("repo")
    return Happening(str(data["repo_path"]), RepoRef(**repo) if repo else None,
                     int(data["number"]), _what_from_dict(dict(data["what"])),
                     str(data.get("title") or ""), str(data.get("url") or ""),
                     data.get("author_id"))


def happenings_to_json(happenings: Iterable[Happening]) -> str:
    return json.dumps({"happenings": [happening_to_dict(h) for h in happenings]})


def happenings_from_payload(payload: dict[str, Any]) -> list[Happening]:
    return [happening_from_dict(item) for item in payload["happenings"]]
