"""The Forgejo adapter (Codeberg, any Forgejo or Gitea): `ForgeClient` over REST API v1 with
aiohttp, one HTTP request per operation.

No client library: the bot uses eight endpoints, aiohttp is already the service's HTTP stack
and is non-blocking (no worker threads, unlike PyGithub and python-gitlab), and every answer's
status and headers (`Retry-After`, `ETag`, `Link`) stay in reach. `pyforgejo` was looked at
(its PyPI page, not installed): a client generated from Forgejo's OpenAPI spec whose 2.x
rewrite returns pydantic models. Not taken: a second HTTP stack and a model layer for eight
calls, models that would have to follow Forgejo's and Gitea's differing fields, and the
headers the outbox needs would have to be dug out of raw responses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from bountybot.clock import utc_now
from bountybot.forges import forgejo_events
from bountybot.forges.base import DEFAULT_RATE_LIMIT_WAIT, ForgeError, parse_retry_after
from bountybot.forges.events import Changes, since_or_later
from bountybot.forges.forge import Forge
from bountybot.forges.forgejo_events import synced_comment, synced_label, synced_merge
from bountybot.refs import RepoRef

if TYPE_CHECKING:
    from bountybot.config import Settings

# `GET .../collaborators/{user}/permission` answers none, read, write, admin or owner.
_MAINTAINER_PERMISSIONS = frozenset({"write", "admin", "owner"})
# The default `[api] MAX_RESPONSE_ITEMS`: a larger `limit` is cut to it.
PAGE_SIZE = 50
_MAX_MESSAGE = 200
# Forgejo's rule for a username (`IsValidUsername`): letters, digits, `-`, `_` and `.`.
_LOGIN = re.compile(r"[A-Za-z0-9_.-]{1,40}")


class ForgejoClient:
    """A Forgejo (or Gitea) instance at `url` (its root, as in `https://codeberg.org`), with an
    access token (scopes `write:issue`, `read:repository`, `read:user`). The token must be an
    admin of each repo: only admins may ask about other users' permission."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        bot_login: str,
        maintainer_ttl: float = 300.0,
        clock: Callable[[], datetime] = utc_now,
        timeout: float = 15.0,
    ) -> None:
        self._api = url.rstrip("/") + "/api/v1"
        self._token = token
        self._bot_login = bot_login.lower()
        self._maintainer_ttl = timedelta(seconds=maintainer_ttl)
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._maintainers: dict[tuple[str, str], tuple[datetime, bool]] = {}
        self._users: dict[str, tuple[datetime, str | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"Authorization": f"token {self._token}",
                         "Accept": "application/json"})
        return self._session

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._session is not None:
            await self._session.close()

    async def _request(self, verb: str, path: str, *, params: Mapping[str, str] | None = None,
                       body: dict[str, Any] | None = None,
                       headers: Mapping[str, str] | None = None,
                       none_if_missing: bool = False) -> tuple[int, Mapping[str, str], Any]:
        """(status, headers, JSON) of one call; (404, ..., None) when `none_if_missing`; a 304
        comes back with no body. Anything else that is not a success is a ForgeError."""
        where = f"Forgejo {verb} {path}"
        try:
            async with self._http().request(verb, self._api + path, params=params, json=body,
                                            headers=headers) as response:
                status, answered = response.status, response.headers
                text = await response.text(errors="replace")
        except TimeoutError as e:  # asyncio's and aiohttp's timeouts are TimeoutErrors
            raise ForgeError(f"{where}: timeout", retryable=True) from e
        except aiohttp.ClientConnectionError as e:
            raise ForgeError(f"{where}: {type(e).__name__}", retryable=True) from e
        except aiohttp.ClientError as e:
            raise ForgeError(f"{where}: {type(e).__name__}") from e
        if status == 304:
            return status, answered, None
        data = _json(text)
        if status == 404 and none_if_missing:
            return status, answered, None
        if status >= 400:
            raise self._error(where, status, answered, data)
        if data is _NOT_JSON:
            raise ForgeError(f"{where}: {status}, not JSON", status=status)
        return status, answered, data

    def _error(self, where: str, status: int, headers: Mapping[str, str],
               data: Any) -> ForgeError:
        # Forgejo's own words (`{"message", "url"}`); a proxy's HTML page says nothing useful.
        said = data.get("message") if isinstance(data, dict) else None
        message = self._scrub(f"{where}: {status} {str(said or '')[:_MAX_MESSAGE]}".rstrip())
        wait = parse_retry_after(headers["Retry-After"], self._clock()) \
            if "Retry-After" in headers else None
        if status == 429:
            return ForgeError(message, status=status, retryable=True,
                              retry_after=DEFAULT_RATE_LIMIT_WAIT if wait is None else wait)
        if status >= 500:
            return ForgeError(message, status=status, retryable=True, retry_after=wait)
        return ForgeError(message, status=status)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    # -- comments ---------------------------------------------------------------------------

    async def create_comment(self, repo: RepoRef, number: int, body: str) -> str:
        _, _, data = await self._request(
            "POST", f"{_repo_path(repo)}/issues/{int(number)}/comments", body={"body": body})
        return str(data["id"])

    async def edit_comment(self, repo: RepoRef, number: int, comment_id: str, body: str) -> None:  # noqa: ARG002
        await self._request("PATCH", f"{_repo_path(repo)}/issues/comments/{int(comment_id)}",
                            body={"body": body})

    async def find_comment(self, repo: RepoRef, number: int, marker: str) -> str | None:
        # This list is not paged: Forgejo answers every comment of the issue at once.
        _, _, data = await self._request("GET",
                                         f"{_repo_path(repo)}/issues/{int(number)}/comments")
        for comment in data or []:
            login = str((comment.get("user") or {}).get("login") or "").lower()
            if login == self._bot_login and marker in (comment.get("body") or ""):
                return str(comment["id"])
        return None

    async def react(self, repo: RepoRef, number: int, comment_id: str) -> None:  # noqa: ARG002
        # 201 for a new reaction, 200 when the bot had already reacted: both are success.
        await self._request(
            "POST", f"{_repo_path(repo)}/issues/comments/{int(comment_id)}/reactions",
            body={"content": "+1"})

    async def comment(self, repo: RepoRef, number: int, comment_id: str
                      ) -> tuple[str, str] | None:
        if not comment_id.isdigit():
            return None
        status, _, data = await self._request(
            "GET", f"{_repo_path(repo)}/issues/comments/{int(comment_id)}", none_if_missing=True)
        # 204: a comment of a kind with no text (a timeline event), no comment of ours.
        if status == 204 or not isinstance(data, dict) \
                or not str(data.get("issue_url") or "").endswith(f"/issues/{int(number)}"):
            return None
        return str((data.get("user") or {}).get("login") or ""), str(data.get("body") or "")

    # -- users ------------------------------------------------------------------------------

    async def username(self, repo: RepoRef, user_id: int) -> str:  # noqa: ARG002
        """Forgejo payloads always carry logins; nothing asks this of Forgejo."""
        raise ForgeError("Forgejo users are named in the payloads, not looked up by id")

    async def user_login(self, repo: RepoRef, login: str) -> str | None:  # noqa: ARG002
        if not _LOGIN.fullmatch(login):  # no account can have this name: no need to ask
            return None
        key = login.lower()
        now = self._clock()
        cached = self._users.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        _, _, data = await self._request("GET", f"/users/{quote(login, safe='')}",
                                         none_if_missing=True)
        found = str(data["login"]) if isinstance(data, dict) and data.get("login") else None
        self._users[key] = (now + self._maintainer_ttl, found)
        return found

    async def is_maintainer(self, repo: RepoRef, login: str) -> bool:
        key = (repo.forge_repo_id or repo.full_path.lower(), login.lower())
        now = self._clock()
        cached = self._maintainers.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        # 404: no such user. 403 (the token is not an admin of the repo) is an error, not "no".
        _, _, data = await self._request(
            "GET", f"{_repo_path(repo)}/collaborators/{quote(login, safe='')}/permission",
            none_if_missing=True)
        permission = data.get("permission") if isinstance(data, dict) else None
        maintainer = permission in _MAINTAINER_PERMISSIONS
        self._maintainers[key] = (now + self._maintainer_ttl, maintainer)
        return maintainer

    # -- reconciliation ---------------------------------------------------------------------

    async def changes(self, repo: RepoRef, *, label: str, since: datetime | None,
                      etags: dict[str, str]) -> Changes:
        """Three lists: the open issues carrying the label and the repo's issue comments, both
        updated since `since` (Forgejo filters them itself), and the closed pull requests,
        most recently updated first, read down to `since` (that list takes no `since`)."""
        out = Changes(etags=dict(etags))
        base = _repo_path(repo)
        after = {"since": _rfc3339(since)} if since is not None else {}
        issues = await self._list(out, "issues", f"{base}/issues", {
            "state": "open", "type": "issues", "labels": label, **after}, since)
        comments = await self._list(out, "comments", f"{base}/issues/comments", after, since)
        pulls = await self._list(out, "pulls", f"{base}/pulls", {
            "state": "closed", "sort": "recentupdate"}, since)
        by_number = {issue["number"]: issue for issue in issues}
        found = [synced_label(issue, repo, label) for issue in issues]
        found += [synced_comment(c, repo, by_number, bot_login=self._bot_login, since=since)
                  for c in comments]
        found += [synced_merge(pull, repo, since) for pull in pulls]
        out.found = [f for f in found if f is not None]
        return out

    async def _list(self, out: Changes, key: str, path: str, params: dict[str, str],
                    since: datetime | None) -> list[dict[str, Any]]:
        """The items of a list, page by page, stopping at the last page (no `rel="next"`) or
        at the first item older than `since`; none when the first page is unchanged since the
        ETag kept under `key` (a 304). Pages are asked of our own URL, never of the `Link`
        header's, which carries the instance's ROOT_URL (it may differ behind a proxy)."""
        items: list[dict[str, Any]] = []
        etag = out.etags.get(key)
        page = 1
        while True:
            conditional = {"If-None-Match": etag} if etag and page == 1 else None
            status, headers, data = await self._request(
                "GET", path, params={**params, "limit": str(PAGE_SIZE), "page": str(page)},
                headers=conditional)
            out.requests += 1
            if status == 304:
                out.not_modified += 1
                return []
            if page == 1 and headers.get("ETag"):
                out.etags[key] = headers["ETag"]
            batch = [item for item in data or [] if isinstance(item, dict)]
            fresh = [item for item in batch if since_or_later(item.get("updated_at"), since)]
            items += fresh
            last = 'rel="next"' not in headers.get("Link", "")
            if last or not batch or len(fresh) < len(batch):
                return items
            page += 1


_NOT_JSON = object()


def _json(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:  # a proxy's HTML error page
        return _NOT_JSON


def _repo_path(repo: RepoRef) -> str:
    owner, _, name = repo.full_path.partition("/")
    if not owner or not name:
        raise ForgeError(f"Forgejo: {repo.full_path!r} is no owner/name")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def client_from_settings(settings: Settings) -> ForgejoClient | None:
    """The Forgejo client the settings describe, or None when Forgejo is off."""
    fj = settings.forgejo
    if not fj.enabled():
        return None
    assert fj.token is not None  # enabled() means a token is set
    return ForgejoClient(fj.url, token=fj.token.get_secret_value(), bot_login=settings.bot.login)


def web_url(settings: Settings, path: str) -> str:
    """The repo at `path` on the Forgejo of `forgejo.url`."""
    return f"{settings.forgejo.url.rstrip('/')}/{path}"


# Comments are a `TEXT` column in Forgejo's database, but its API and UI are not made for
# more than GitHub's size; the same limit keeps every summary and reply sendable.
FORGE = Forge(
    name="forgejo", title="Forgejo", edge=forgejo_events.EDGE,
    normalize=forgejo_events.normalize, topic=forgejo_events.topic,
    client=client_from_settings, web_url=web_url, comment_limit=65_536,
    confirms_comments=True)


__all__ = ["FORGE", "ForgejoClient", "client_from_settings", "web_url"]
