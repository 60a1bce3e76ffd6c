"""The GitLab adapter: `ForgeClient` over python-gitlab, one HTTP request per operation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import gitlab
import requests
from gitlab.exceptions import GitlabError, GitlabHttpError

from bountybot.clock import utc_now
from bountybot.forges import gitlab_events
from bountybot.forges.base import DEFAULT_RATE_LIMIT_WAIT, ForgeError, parse_retry_after
from bountybot.forges.events import Changes, since_or_later
from bountybot.forges.forge import Forge
from bountybot.forges.gitlab_events import synced_label, synced_merge, synced_note
from bountybot.refs import RepoRef

if TYPE_CHECKING:
    from bountybot.config import Settings

# The award emoji that acknowledges a command (👍).
AWARD = "thumbsup"
# When a 429 says nothing about when to come back.
_MAX_MESSAGE = 200
T = TypeVar("T")



def _raise_for_status(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A requests response hook: a 4xx/5xx answer leaves python-gitlab as `HTTPError` at once.

    python-gitlab's `http_request` retries on its own: `obey_rate_limit` defaults to True on
    every call (not settable on `Gitlab`), so a 429 makes it `time.sleep(Retry-After)` up to
    `max_retries=10` times in our worker thread; `retry_transient_errors` does the same for
    5xx. Raising from the hook, before its retry loop looks at the status, turns all of that
    off in one place and keeps the answer's headers (its own exceptions drop them), which
    `Retry-After` needs. Timeouts and refused connections are not retried either, because
    `retry_transient_errors=False`."""
    if response.status_code >= 400:
        _ = response.content  # read the body, so the connection goes back to the pool
        response.raise_for_status()


class GitLabClient:
    """gitlab.com or a self-managed GitLab, with a personal, group or project access token.

    Projects are addressed by their numeric id (`RepoRef.forge_repo_id`), stable across moves
    and renames, through python-gitlab's lazy objects, so each call is exactly one request.
    `is_maintainer` costs two requests the first time (the login's user id, then the member
    with inherited memberships), one once the id is known (`user_ttl`), none within
    `maintainer_ttl`."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        bot_login: str,
        maintainer_level: int = 40,
        maintainer_ttl: float = 300.0,
        user_ttl: float = 3600.0,
        clock: Callable[[], datetime] = utc_now,
        timeout: float = 15.0,
    ) -> None:
        self._token = token
        self._bot_login = bot_login.lower()
        self._maintainer_level = maintainer_level
        self._maintainer_ttl = timedelta(seconds=maintainer_ttl)
        # A login's id is cached longer, but not for ever: a freed username can be taken by
        # someone else, who must not inherit the old owner's access.
        self._user_ttl = timedelta(seconds=user_ttl)
        self._clock = clock
        session = requests.Session()
        session.hooks["response"].append(_raise_for_status)
        self._gl = gitlab.Gitlab(
            url.rstrip("/"), private_token=token, timeout=timeout, session=session,
            retry_transient_errors=False,
            # Follow pagination links on our host even when GitLab's external_url differs
            # (a self-managed instance behind a proxy).
            keep_base_url=True,
        )
        self._maintainers: dict[tuple[int, str], tuple[datetime, bool]] = {}
        self._user_ids: dict[str, tuple[datetime, int]] = {}
        self._usernames: dict[int, tuple[datetime, str]] = {}

    async def close(self) -> None:
        """Close the HTTP connections."""
        self._gl.session.close()

    async def _run(self, verb: str, path: str, call: Callable[[], T]) -> T:
        """Run one blocking python-gitlab call in a worker thread, its failure as ForgeError."""
        where = f"GitLab {verb} {path}"
        try:
            return await asyncio.to_thread(call)
        except requests.HTTPError as e:
            if e.response is None:
                raise ForgeError(f"{where}: HTTPError") from e
            raise self._error(where, e.response) from e
        except (requests.Timeout, requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError) as e:
            raise ForgeError(f"{where}: {type(e).__name__}", retryable=True) from e
        except requests.RequestException as e:
            raise ForgeError(f"{where}: {type(e).__name__}") from e
        except GitlabError as e:  # a 2xx that is not JSON, a redirected write
            said = self._scrub(str(e.error_message)[:_MAX_MESSAGE])
            raise ForgeError(f"{where}: {type(e).__name__} {said}",
                             status=e.response_code) from e

    def _error(self, where: str, response: requests.Response) -> ForgeError:
        status = response.status_code
        message = self._scrub(f"{where}: {status} {_said(response)}".rstrip())
        headers = response.headers  # case-insensitive
        if status == 429:
            return ForgeError(message, status=status, retryable=True,
                              retry_after=self._rate_limit_wait(headers))
        if status >= 500:
            wait = parse_retry_after(headers["retry-after"], self._clock()) \
                if "retry-after" in headers else None
            return ForgeError(message, status=status, retryable=True, retry_after=wait)
        return ForgeError(message, status=status)

    def _rate_limit_wait(self, headers: Mapping[str, str]) -> float:
        """GitLab's throttles send `Retry-After` (seconds) and `RateLimit-Reset` (epoch)."""
        now = self._clock()
        if "retry-after" in headers:
            return parse_retry_after(headers["retry-after"], now)
        try:
            return max(float(headers["ratelimit-reset"]) - now.timestamp(), 1.0)
        except (KeyError, ValueError):
            return DEFAULT_RATE_LIMIT_WAIT

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _issue(self, project_id: int, number: int) -> Any:
        # Lazy objects make no request: only the call made on them does.
        project = self._gl.projects.get(project_id, lazy=True)
        return project.issues.get(number, lazy=True)

    async def create_comment(self, repo: RepoRef, number: int, body: str) -> str:
        pid = _project_id(repo)
        note = await self._run(
            "POST", f"/projects/{pid}/issues/{number}/notes",
            lambda: self._issue(pid, number).notes.create({"body": body}),
        )
        return str(note.get_id())

    async def edit_comment(self, repo: RepoRef, number: int, comment_id: str, body: str) -> None:
        pid, note_id = _project_id(repo), int(comment_id)
        await self._run(
            "PUT", f"/projects/{pid}/issues/{number}/notes/{note_id}",
            lambda: self._issue(pid, number).notes.update(note_id, {"body": body}),
        )

    async def find_comment(self, repo: RepoRef, number: int, marker: str) -> str | None:
        pid = _project_id(repo)

        def scan() -> str | None:
            # iterator=True: one request per page of 100, the next one only if still needed.
            notes = self._issue(pid, number).notes.list(
                iterator=True, per_page=100, sort="asc", order_by="created_at")
            for note in notes:
                data = note.attributes
                author = str((data.get("author") or {}).get("username", "")).lower()
                if author == self._bot_login and marker in (data.get("body") or ""):
                    return str(data["id"])
            return None

        return await self._run("GET", f"/projects/{pid}/issues/{number}/notes", scan)

    async def react(self, repo: RepoRef, number: int, comment_id: str) -> None:
        pid, note_id = _project_id(repo), int(comment_id)

        def award() -> None:
            note = self._issue(pid, number).notes.get(note_id, lazy=True)
            try:
                note.awardemojis.create({"name": AWARD})
            except requests.HTTPError as e:
                if not _already_awarded(e.response):
                    raise

        await self._run("POST", f"/projects/{pid}/issues/{number}/notes/{note_id}/award_emoji",
                        award)

    async def comment(self, repo: RepoRef, number: int, comment_id: str
                      ) -> tuple[str, str] | None:
        if not comment_id.isdigit():
            return None
        pid, note_id = _project_id(repo), int(comment_id)

        def read() -> tuple[str, str] | None:
            try:
                data = self._issue(pid, number).notes.get(note_id).attributes
            except requests.HTTPError as e:
                # "404 Not found": no such note on this issue. Any other answer (and "404
                # Project Not Found") is an error to retry, not a verdict on the note.
                if e.response is not None and e.response.status_code == 404 \
                        and "project" not in _said(e.response).lower():
                    return None
                raise
            author = str((data.get("author") or {}).get("username") or "")
            return author, str(data.get("body") or "")

        return await self._run("GET", f"/projects/{pid}/issues/{number}/notes/{note_id}", read)

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def user_login(self, repo: RepoRef, login: str) -> str | None:  # noqa: ARG002
        user_id = await self._user_id(login)
        if user_id is None:
            return None
        cached = self._usernames.get(user_id)
        return cached[1] if cached is not None else login

    async def is_maintainer(self, repo: RepoRef, login: str) -> bool:
        pid = _project_id(repo)
        key = (pid, login.lower())
        now = self._clock()
        cached = self._maintainers.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        user_id = await self._user_id(login)
        maintainer = False
        if user_id is not None:
            member = await self._run("GET", f"/projects/{pid}/members/all/{user_id}",
                                     lambda: self._member(pid, user_id))
            maintainer = member is not None and _counts(member, self._maintainer_level)
        self._maintainers[key] = (self._clock() + self._maintainer_ttl, maintainer)
        return maintainer

    def _member(self, project_id: int, user_id: int) -> dict[str, Any] | None:
        """The member with inherited memberships (the highest level), None if not one."""
        project = self._gl.projects.get(project_id, lazy=True)
        try:
            return dict(project.members_all.get(user_id).attributes)
        except requests.HTTPError as e:
            # "404 Not found": not a member. "404 Project Not Found" is an error: the project
            # is gone or the token lost access, which must not read as "not a maintainer".
            if e.response is not None and e.response.status_code == 404 \
                    and "project" not in _said(e.response).lower():
                return None
            raise

    async def _user_id(self, login: str) -> int | None:
        key = login.lower()
        cached = self._user_ids.get(key)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        found = await self._run(
            "GET", f"/users?username={login}",
            lambda: [u.attributes for u in self._gl.users.list(username=login, get_all=False)],
        )
        for user in found:  # GitLab matches the username exactly, case aside
            if str(user.get("username", "")).lower() == key:
                self._remember(int(user["id"]), str(user["username"]))
                return int(user["id"])
        return None

    def _remember(self, user_id: int, username: str) -> None:
        now = self._clock()
        self._user_ids[username.lower()] = (now + self._user_ttl, user_id)
        self._usernames[user_id] = (now + self._maintainer_ttl, username)

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def username(self, repo: RepoRef, user_id: int) -> str:  # noqa: ARG002
        # Needs no project: a Merge Request Hook's repo may not be known by id yet.
        cached = self._usernames.get(user_id)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        user = await self._run("GET", f"/users/{int(user_id)}",
                               lambda: self._gl.users.get(int(user_id)).attributes)
        username = str(user["username"])
        self._remember(int(user_id), username)
        return username

    async def changes(self, repo: RepoRef, *, label: str, since: datetime | None,
                      etags: dict[str, str]) -> Changes:
        """Two lists, newest first, each read down to `since` with If-None-Match on its first
        page: the project's issues (any label: a `/goal` note creates a task on an unlabelled
        one) and its merged merge requests; then the notes of each issue updated since (a new
        note touches its issue). Their URLs do not move with the cursor, so an unchanged
        project costs two requests, each a 304 if this GitLab honours If-None-Match on its API
        (GitLab counts those against its throttles all the same)."""
        pid = _project_id(repo)
        out = Changes(etags=dict(etags))
        newest: dict[str, Any] = {"order_by": "updated_at", "sort": "desc", "per_page": 100}
        issues = await self._list(out, "issues", f"/projects/{pid}/issues", newest, since)
        merged = await self._list(out, "merge_requests", f"/projects/{pid}/merge_requests",
                                  {"state": "merged", **newest}, since)
        found = [synced_label(issue, repo, label) for issue in issues]
        for issue in issues:
            if issue.get("user_notes_count") == 0:
                continue
            notes = await self._list(out, None, f"/projects/{pid}/issues/{issue['iid']}/notes",
                                     newest, since)
            found += [synced_note(note, repo, issue, bot_login=self._bot_login, since=since)
                      for note in notes]
        found += [synced_merge(mr, repo, since) for mr in merged]
        out.found = [f for f in found if f is not None]
        return out

    async def _list(self, out: Changes, key: str | None, path: str, params: dict[str, Any],
                    since: datetime | None) -> list[dict[str, Any]]:
        """The items of a list sorted newest first, page by page down to `since`; none when
        the first page is unchanged since the ETag kept under `key` (a 304)."""
        etag = out.etags.get(key) if key else None

        def read() -> tuple[list[dict[str, Any]], int, str | None]:
            """(items, requests, new ETag); the ETag is None for a 304."""
            items: list[dict[str, Any]] = []
            page, requests = 1, 0
            headers = {"If-None-Match": etag} if etag else None  # the first page only
            new_etag: str | None = None
            while True:
                requests += 1
                try:
                    response = self._gl.http_request(
                        "get", path, query_data={**params, "page": page}, extra_headers=headers)
                except GitlabHttpError as e:  # python-gitlab raises for anything but a 2xx
                    if e.response_code == 304:
                        return [], requests, None
                    raise
                if page == 1:
                    new_etag = response.headers.get("ETag") or ""
                batch = response.json()
                fresh = [item for item in batch
                         if since_or_later(item.get("updated_at"), since)]
                items += fresh
                following = response.headers.get("X-Next-Page")
                if len(fresh) < len(batch) or not following:
                    return items, requests, new_etag
                page, headers = int(following), None

        items, requests, new_etag = await self._run("GET", path, read)
        out.requests += requests
        if new_etag is None:
            out.not_modified += 1
        elif key is not None and new_etag:
            out.etags[key] = new_etag
        return items


def _project_id(repo: RepoRef) -> int:
    try:
        return int(repo.forge_repo_id)
    except ValueError:
        raise ForgeError(f"GitLab: no project id known for {repo.full_path}") from None


def _counts(member: dict[str, Any], level: int) -> bool:
    # A member awaiting a seat (user cap) has no access yet, whatever its level says.
    if member.get("membership_state", "active") != "active":
        return False
    return int(member.get("access_level") or 0) >= level


def _said(response: requests.Response) -> str:
    """GitLab's own words (`message` or `error`), else the status line's reason."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error"):
            if data.get(key):
                return str(data[key])[:_MAX_MESSAGE]
    return response.reason or ""


def _already_awarded(response: requests.Response | None) -> bool:
    """GitLab answers a duplicate award with 404 "Award Emoji Name has already been taken"
    (the API turns the failed validation into not_found!), some versions with 409."""
    if response is None:
        return False
    return response.status_code == 409 or (
        response.status_code == 404 and "already been taken" in _said(response))


def client_from_settings(settings: Settings) -> GitLabClient | None:
    """The GitLab client the settings describe, or None when GitLab is off."""
    gl = settings.gitlab
    if not gl.enabled():
        return None
    assert gl.token is not None  # enabled() means a token is set
    return GitLabClient(gl.url, token=gl.token.get_secret_value(), bot_login=settings.bot.login,
                        maintainer_level=gl.maintainer_access_level)


def web_url(settings: Settings, path: str) -> str:
    """The project at `path` on the GitLab of `gitlab.url`."""
    return f"{settings.gitlab.url.rstrip('/')}/{path}"


FORGE = Forge(
    name="gitlab", title="GitLab", edge=gitlab_events.EDGE,
    normalize=gitlab_events.normalize, topic=gitlab_events.topic,
    client=client_from_settings, web_url=web_url, comment_limit=1_000_000,
    # One instance token signs every project's hooks: a note's commands are confirmed
    # through the API (that note, by that author, on that issue) before they apply.
    confirms_comments=True)
