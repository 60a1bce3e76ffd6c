"""The GitHub adapter: `ForgeClient` over PyGithub's requester, one HTTP request per operation."""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

import requests
from github import Auth, Github, GithubException, GithubIntegration, RateLimitExceededException
from github.Requester import Requester
from requests.utils import parse_header_links

from bountybot.clock import utc_now
from bountybot.forges import github_events
from bountybot.forges.base import DEFAULT_RATE_LIMIT_WAIT, ForgeError, parse_retry_after
from bountybot.forges.events import Changes, since_or_later
from bountybot.forges.forge import Forge
from bountybot.forges.github_events import synced_comment, synced_label, synced_merge
from bountybot.refs import RepoRef

if TYPE_CHECKING:
    from bountybot.config import Settings

# A token must outlive the request that carries it: refresh this long before it expires.
TOKEN_REFRESH_MARGIN = timedelta(minutes=1)
# GitHub's advice when a rate-limit answer says nothing about when to come back.
_MAINTAINER_ROLES = frozenset({"admin", "maintain", "write"})
_MAX_MESSAGE = 200
# A GitHub login: letters, digits and single hyphens, at most 39 characters.
_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
T = TypeVar("T")



class _GrantError(Exception):
    """GitHub refused an installation token: told apart from the refusal of the call itself
    (a 404 here means the app was uninstalled, not that a user is no collaborator)."""

    def __init__(self, installation_id: int, cause: GithubException) -> None:
        super().__init__(installation_id)
        self.url = f"/app/installations/{installation_id}/access_tokens"
        self.cause = cause


class _InstallationAuth(Auth.Auth):
    """An installation token, fetched with the app's JWT and refreshed by *our* clock.

    Not PyGithub's AppInstallationAuth: that one checks expiry against the wall clock with a
    20 s margin (so an injected clock cannot drive it) and has no lock, so worker threads
    racing on an expired token would each mint a new one."""

    def __init__(self, integration: GithubIntegration, installation_id: int,
                 clock: Callable[[], datetime], lock: threading.Lock) -> None:
        self._integration = integration
        self._installation_id = installation_id
        self._clock = clock
        self._lock = lock  # shared by the installations: they share the integration's requester
        self._token: str | None = None
        self._expires_at = datetime.min.replace(tzinfo=UTC)

    @property
    def token_type(self) -> str:
        return "token"

    @property
    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - TOKEN_REFRESH_MARGIN:
                try:
                    grant = self._integration.get_access_token(self._installation_id)
                except GithubException as e:
                    raise _GrantError(self._installation_id, e) from e
                self._token, self._expires_at = grant.token, grant.expires_at
            return self._token

    @property
    def _masked_token(self) -> str:
        return "token (installation token removed)"


class GitHubClient:
    """github.com or GitHub Enterprise, with a personal token or as a GitHub App."""

    def __init__(
        self,
        api_url: str,
        *,
        bot_login: str,
        token: str | None = None,
        app_id: int | None = None,
        private_key: str | None = None,
        maintainer_ttl: float = 300.0,
        clock: Callable[[], datetime] = utc_now,
        timeout: float = 15.0,
    ) -> None:
        if (token is None) == (app_id is None or private_key is None):
            raise ValueError("GitHubClient needs either token, or app_id with private_key")
        self._api_url = api_url.rstrip("/")
        login = bot_login.lower().removesuffix("[bot]")
        # An app comments as `<slug>[bot]`; the same name may be configured with or without it.
        self._bot_logins = frozenset({login, f"{login}[bot]"})
        self._bot_login = login
        self._maintainer_ttl = timedelta(seconds=maintainer_ttl)
        self._clock = clock
        # PyGithub asserts an int timeout (Github and GithubIntegration), so round up.
        self._timeout = max(1, math.ceil(timeout))
        self._maintainers: dict[tuple[str, str], tuple[datetime, bool]] = {}
        self._users: dict[str, tuple[datetime, str | None]] = {}
        self._token_github = self._new_github(Auth.Token(token)) if token is not None else None
        self._integration: GithubIntegration | None = None
        if app_id is not None and private_key is not None:
            self._integration = GithubIntegration(
                auth=Auth.AppAuth(app_id, private_key), **self._pygithub_options()
            )
        self._installations: dict[int, Github] = {}
        # One call at a time per Github object (see `_guarded`), and one installation-token
        # grant at a time: the integration's requester is shared by every installation.
        self._serial: dict[int, asyncio.Lock] = {}
        self._grants = threading.Lock()

    def _pygithub_options(self) -> dict[str, Any]:
        # No retries, no throttling inside PyGithub: the outbox retries with backoff and a governor
        # paces writes; PyGithub sleeping in a worker thread would stall it and hide 502s and
        # rate limits. retry=None gives requests' HTTPAdapter(max_retries=0) instead of the
        # default GithubRetry; None for the two pauses skips Requester.__deferRequest's sleep.
        return {
            "base_url": self._api_url,
            "timeout": self._timeout,
            "retry": None,
            "seconds_between_requests": None,
            "seconds_between_writes": None,
            "per_page": 100,
        }

    def _new_github(self, auth: Auth.Auth) -> Github:
        return Github(auth=auth, **self._pygithub_options())

    def _github(self, repo: RepoRef) -> Github:
        if self._token_github is not None:
            return self._token_github
        assert self._integration is not None
        try:
            installation_id = int(repo.installation_id or "")
        except ValueError:
            raise ForgeError(f"GitHub: no app installation known for {repo.full_path}") from None
        gh = self._installations.get(installation_id)
        if gh is None:
            auth = _InstallationAuth(self._integration, installation_id, self._clock,
                                     self._grants)
            gh = self._installations[installation_id] = self._new_github(auth)
        return gh

    async def close(self) -> None:
        """Close the HTTP connections."""
        for gh in [self._token_github, *self._installations.values()]:
            if gh is not None:
                gh.close()
        if self._integration is not None:
            self._integration.close()

    async def _request(self, repo: RepoRef, verb: str, url: str, *,
                       params: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
                       none_if_missing: bool = False) -> tuple[dict[str, Any], Any]:
        """(headers, JSON) of one call; ({}, None) for a 404 when `none_if_missing`."""
        gh = self._github(repo)
        answer = await self._guarded(gh, verb, url, lambda: gh.requester.requestJsonAndCheck(
            verb, url, parameters=params, input=body), none_if_missing=none_if_missing)
        return answer if answer is not None else ({}, None)

    async def _guarded(self, gh: Github, verb: str, url: str, call: Callable[[], T], *,
                       none_if_missing: bool = False) -> T | None:
        """Run one blocking PyGithub call of `gh` in a worker thread, its failure as ForgeError;
        None for a 404 when `none_if_missing`.

        One call at a time per `gh`: PyGithub's requester keeps one connection object whose
        `request()` stores the verb, URL, headers and body that `getresponse()` then sends, so
        two threads sharing it can send one call's body to the other's URL (a reaction posted
        twice and another never; a summary written into the wrong issue). GitHub asks for
        the same: one request at a time per token or installation."""
        lock = self._serial.setdefault(id(gh), asyncio.Lock())
        try:
            async with lock:
                return await asyncio.to_thread(call)
        except GithubException as e:
            if none_if_missing and e.status == 404:
                return None
            raise self._error(verb, url, e) from e
        except _GrantError as e:
            raise self._error("POST", e.url, e.cause) from e
        except (requests.Timeout, requests.ConnectionError) as e:
            raise ForgeError(f"GitHub {verb} {_path(url)}: {type(e).__name__}",
                             retryable=True) from e
        except requests.RequestException as e:
            raise ForgeError(f"GitHub {verb} {_path(url)}: {type(e).__name__}") from e

    def _error(self, verb: str, url: str, e: GithubException) -> ForgeError:
        status = e.status
        headers = {k.lower(): str(v) for k, v in (e.headers or {}).items()}
        said = e.data.get("message") if isinstance(e.data, dict) else None
        message = f"GitHub {verb} {_path(url)}: {status}"
        if said:
            message += f" {str(said)[:_MAX_MESSAGE]}"
        now = self._clock()
        if status >= 500:
            wait = parse_retry_after(headers["retry-after"], now) \
                if "retry-after" in headers else None
            return ForgeError(message, status=status, retryable=True, retry_after=wait)
        if status in (403, 429):
            wait = _rate_limit_wait(status, headers, isinstance(e, RateLimitExceededException), now)
            if wait is not None:
                return ForgeError(message, status=status, retryable=True, retry_after=wait)
        return ForgeError(message, status=status)

    async def create_comment(self, repo: RepoRef, number: int, body: str) -> str:
        _, data = await self._request(
            repo, "POST", f"{_repo_path(repo)}/issues/{number}/comments", body={"body": body}
        )
        return str(data["id"])

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def edit_comment(self, repo: RepoRef, number: int, comment_id: str, body: str) -> None:  # noqa: ARG002
        await self._request(repo, "PATCH", f"{_repo_path(repo)}/issues/comments/{int(comment_id)}",
                            body={"body": body})

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def username(self, repo: RepoRef, user_id: int) -> str:  # noqa: ARG002
        """GitHub payloads always carry logins; nothing asks this of GitHub."""
        raise ForgeError("GitHub users are named in the payloads, not looked up by id")

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def react(self, repo: RepoRef, number: int, comment_id: str) -> None:  # noqa: ARG002
        # 201 for a new reaction, 200 when the bot had already reacted: both are success.
        await self._request(
            repo, "POST", f"{_repo_path(repo)}/issues/comments/{int(comment_id)}/reactions",
            body={"content": "+1"},
        )

    async def find_comment(self, repo: RepoRef, number: int, marker: str) -> str | None:
        url: str | None = f"{_repo_path(repo)}/issues/{number}/comments"
        params: dict[str, Any] | None = {"per_page": 100}
        while url is not None:
            headers, page = await self._request(repo, "GET", url, params=params)
            for comment in page:
                login = str((comment.get("user") or {}).get("login", "")).lower()
                if login in self._bot_logins and marker in (comment.get("body") or ""):
                    return str(comment["id"])
            url, params = _next_link(headers.get("link")), None  # the link carries the query
        return None

    async def comment(self, repo: RepoRef, number: int, comment_id: str
                      ) -> tuple[str, str] | None:
        if not comment_id.isdigit():
            return None
        _, data = await self._request(
            repo, "GET", f"{_repo_path(repo)}/issues/comments/{int(comment_id)}",
            none_if_missing=True)
        if not data or not str(data.get("issue_url") or "").endswith(f"/issues/{number}"):
            return None
        return str((data.get("user") or {}).get("login") or ""), str(data.get("body") or "")

    async def user_login(self, repo: RepoRef, login: str) -> str | None:
        if not _LOGIN.fullmatch(login):  # GitHub's own rule for a login: no need to ask
            return None
        key = login.lower()
        now = self._clock()
        cached = self._users.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        _, data = await self._request(repo, "GET", f"/users/{quote(login, safe='')}",
                                      none_if_missing=True)
        found = str(data["login"]) if data and data.get("login") else None
        self._users[key] = (now + self._maintainer_ttl, found)
        return found

    async def is_maintainer(self, repo: RepoRef, login: str) -> bool:
        key = (repo.full_path.lower(), login.lower())
        now = self._clock()
        cached = self._maintainers.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        _, data = await self._request(
            repo, "GET", f"{_repo_path(repo)}/collaborators/{quote(login, safe='')}/permission",
            none_if_missing=True,  # 404: not a collaborator at all
        )
        data = data or {}
        maintainer = (data.get("permission") in ("admin", "write")
                      or data.get("role_name") in _MAINTAINER_ROLES)
        self._maintainers[key] = (now + self._maintainer_ttl, maintainer)
        return maintainer

    async def changes(self, repo: RepoRef, *, label: str, since: datetime | None,
                      etags: dict[str, str]) -> Changes:
        """Three lists, newest first, each read down to `since`: the labelled open issues, the
        repo's issue comments (one list for all its issues) and its closed pull requests. Their
        URLs do not move with the cursor, so the ETag of an unchanged list still matches: an
        unchanged repo costs three 304s, which GitHub does not count against the rate limit."""
        out = Changes(etags=dict(etags))
        base = _repo_path(repo)
        newest: dict[str, Any] = {"sort": "updated", "direction": "desc", "per_page": 100}
        issues = await self._list(repo, out, "issues", f"{base}/issues",
                                  {"labels": label, "state": "open", **newest}, since)
        comments = await self._list(repo, out, "comments", f"{base}/issues/comments", newest,
                                    since)
        pulls = await self._list(repo, out, "pulls", f"{base}/pulls",
                                 {"state": "closed", **newest}, since)
        by_number = {issue["number"]: issue for issue in issues}
        found = [synced_label(issue, repo, label) for issue in issues]
        found += [synced_comment(c, repo, by_number, bot_login=self._bot_login, since=since)
                  for c in comments]
        found += [synced_merge(pull, repo, since) for pull in pulls]
        out.found = [f for f in found if f is not None]
        return out

    async def _list(self, repo: RepoRef, out: Changes, key: str, url: str,
                    params: dict[str, Any], since: datetime | None) -> list[dict[str, Any]]:
        """The items of a list sorted newest first, page by page down to `since`; none when
        the first page is unchanged since the ETag kept under `key` (a 304)."""
        gh = self._github(repo)
        requester = gh.requester
        items: list[dict[str, Any]] = []
        page_url: str | None = url
        query: dict[str, Any] | None = params
        etag = out.etags.get(key)
        conditional = {"If-None-Match": etag} if etag else None  # the first page only
        while page_url is not None:

            def get(at: str = page_url, q: dict[str, Any] | None = query,
                    headers: dict[str, str] | None = conditional) -> tuple[int, Any, Any]:
                return _conditional_get(requester, at, q, headers)

            answer = await self._guarded(gh, "GET", page_url, get)
            assert answer is not None
            status, headers, page = answer
            out.requests += 1
            if status == 304:
                out.not_modified += 1
                return []
            if page_url == url and headers.get("etag"):
                out.etags[key] = str(headers["etag"])
            page = page or []
            fresh = [item for item in page if since_or_later(item.get("updated_at"), since)]
            items += fresh
            if len(fresh) < len(page):
                break  # the rest is older than the cursor
            # The next link is absolute and carries the query.
            page_url, query, conditional = _next_link(headers.get("link")), None, None
        return items


def _repo_path(repo: RepoRef) -> str:
    owner, _, name = repo.full_path.partition("/")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


def _conditional_get(requester: Requester, url: str, params: dict[str, Any] | None,
                     headers: dict[str, str] | None) -> tuple[int, dict[str, Any], Any]:
    """(status, headers, JSON) of a GET that may be answered 304 (no body). Made as PyGithub's
    own `GithubObject.update()` makes its conditional requests: `requestJson`, the status
    looked at before the error check, which would take a 304 for a success with no body."""
    status, answered, body = requester.requestJson(
        "GET", url, parameters=dict(params or {}), headers=dict(headers or {}))
    if status == 304:
        return status, answered, None
    try:
        data = json.loads(body) if body else None
    except ValueError:  # a proxy's HTML error page
        data = {"message": body[:_MAX_MESSAGE]}
    if status >= 400:
        said = data if isinstance(data, dict) else {"message": str(data)[:_MAX_MESSAGE]}
        raise requester.createException(status, answered, said)
    return status, answered, data


def _path(url: str) -> str:
    """The path alone, for messages: a Link URL is absolute, and its query is noise."""
    return urlsplit(url).path


def _next_link(link: str | None) -> str | None:
    for item in parse_header_links(link or ""):
        if item.get("rel") == "next":
            return item["url"]
    return None


def _rate_limit_wait(status: int, headers: dict[str, str], said_rate_limit: bool,
                     now: datetime) -> float | None:
    """Seconds to wait when a 403/429 is a rate limit (GitHub's documented order:
    Retry-After, then X-RateLimit-Reset when nothing remains, else a minute); None otherwise."""
    if "retry-after" in headers:
        return parse_retry_after(headers["retry-after"], now)
    if headers.get("x-ratelimit-remaining", "").strip() == "0":
        try:
            return max(float(headers["x-ratelimit-reset"]) - now.timestamp(), 1.0)
        except (KeyError, ValueError):
            return DEFAULT_RATE_LIMIT_WAIT
    if status == 429 or said_rate_limit:
        return DEFAULT_RATE_LIMIT_WAIT
    return None


def client_from_settings(settings: Settings) -> GitHubClient | None:
    """The GitHub client the settings describe, or None when GitHub is off."""
    gh = settings.github
    if not gh.enabled():
        return None
    if gh.token is not None:
        return GitHubClient(gh.api_url, bot_login=settings.bot.login,
                            token=gh.token.get_secret_value())
    assert gh.private_key_file is not None  # enabled() without a token means an app
    return GitHubClient(gh.api_url, bot_login=settings.bot.login, app_id=gh.app_id,
                        private_key=gh.private_key_file.read_text())


def web_url(settings: Settings, path: str) -> str:
    """The repo at `path` on GitHub: github.com, or the Enterprise host of `github.api_url`."""
    api = settings.github.api_url.rstrip("/")
    if urlsplit(api).hostname == "api.github.com":
        return f"https://github.com/{path}"
    return f"{re.sub(r'/api/v3$', '', api)}/{path}"


FORGE = Forge(
    name="github", title="GitHub", edge=github_events.EDGE,
    normalize=github_events.normalize, topic=github_events.topic,
    client=client_from_settings, web_url=web_url, comment_limit=65_536)
