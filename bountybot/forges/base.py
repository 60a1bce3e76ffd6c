"""What the rest of bountybot sees of a forge: one client protocol, one repo reference, one error.

The adapters (`forges/github.py`, `forges/gitlab.py`) implement `ForgeClient` over PyGithub and
python-gitlab, calling those blocking libraries through `asyncio.to_thread`; nothing else
imports a forge library. Tests implement it too, or point the real adapter at a local server.
"""

from __future__ import annotations

import email.utils
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from bountybot.refs import RepoRef

if TYPE_CHECKING:
    from bountybot.forges.events import Changes

# How long to wait when a forge says "slow down" without saying for how long.
DEFAULT_RATE_LIMIT_WAIT = 60.0


def parse_retry_after(value: str, now: datetime) -> float:
    """Seconds to wait from a `Retry-After` header: a number of seconds, or an HTTP date."""
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # the other form RFC 9110 allows: an HTTP date
        return max((email.utils.parsedate_to_datetime(value) - now).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return DEFAULT_RATE_LIMIT_WAIT


class ForgeError(Exception):
    """A forge call that failed. `retryable` errors (5xx, timeouts, rate limits) are tried again
    by the outbox after `retry_after` seconds (or its own backoff); the others are not.
    The message never holds a token."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class ForgeClient(Protocol):
    """The forge operations the bot needs."""

    async def is_maintainer(self, repo: RepoRef, login: str) -> bool:
        """Write, maintain or admin on GitHub; access level >= 40 on GitLab (cached briefly)."""
        ...

    async def create_comment(self, repo: RepoRef, number: int, body: str) -> str:
        """Post a new comment on issue `number`; returns the comment's id."""
        ...

    async def edit_comment(self, repo: RepoRef, number: int, comment_id: str, body: str) -> None:
        """Replace the body of one of the bot's comments."""
        ...

    async def find_comment(self, repo: RepoRef, number: int, marker: str) -> str | None:
        """The id of the bot's own comment on issue `number` whose body holds `marker`, if
        any: how a summary created just before a crash is found again instead of doubled."""
        ...

    async def react(self, repo: RepoRef, number: int, comment_id: str) -> None:
        """Acknowledge a comment (+1 on GitHub, an award emoji on GitLab)."""
        ...

    async def username(self, repo: RepoRef, user_id: int) -> str:
        """The username of the forge user `user_id` (cached): GitLab's Merge Request Hook
        names the author only by id. GitHub's payloads always carry logins."""
        ...

    async def comment(self, repo: RepoRef, number: int, comment_id: str
                      ) -> tuple[str, str] | None:
        """(author's login, body) of comment `comment_id` on issue `number`, as the forge has
        it now; None when there is no such comment on that issue. How the worker confirms a
        GitLab note before applying its commands: a note hook proves only that its sender
        held the instance's webhook token."""
        ...

    async def user_login(self, repo: RepoRef, login: str) -> str | None:
        """The login of the account named `login` (as the forge writes it), None when no
        account has that name (cached briefly): nobody is awarded under a name that is no
        account."""
        ...

    async def changes(self, repo: RepoRef, *, label: str, since: datetime | None,
                      etags: dict[str, str]) -> Changes:
        """What changed in `repo` since `since` (everything when None), for reconciliation:
        labelled open issues, new comments that carry commands, pull/merge requests merged,
        each as the webhook would have said it. Lists are asked with `If-None-Match: etags[..]`
        and one answered 304 is skipped; the new ETags come back in `Changes.etags`."""
        ...
