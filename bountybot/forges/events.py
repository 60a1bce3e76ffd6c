"""The normalized shape of a forge delivery: what happened, to which issue of which repo."""

from __future__ import annotations

from dataclasses import dataclass, field

from bountybot.forges.base import RepoRef
from bountybot.rules import Comment, Event


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
