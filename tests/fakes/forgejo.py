"""A small local Forgejo REST API v1 on loopback: the bot's paths, recorded, failures on demand.

Shapes come from Forgejo: the user, comment, issue and pull request objects are the recorded
ones (`tests/fixtures/forgejo/api/recorded/`, gitea.com 1.23) with their values replaced; the
paths, status codes and rules follow `api/ENDPOINTS.md` (Forgejo `505ab87`): a comment is
created 201 and edited 200, a reaction is 201 when new and 200 when the user already had it,
only `[ui] REACTIONS` are allowed (403 otherwise), permission is none/read/write/admin/owner
and only a repo admin may ask about someone else (403), lists take `page`/`limit` (at most
50) and answer `Link` and `X-Total-Count`, the issue and comment lists take `since`
(updated since), and an error is `{"message", "url"}`.

    fake = await FakeForgejo.start()          # or the `forgejo_server` fixture
    fake.accept_token("...")                  # acting as `bountybot`
    fake.add_repo("octo/widgets", 1296269)
    fake.set_permission("octo/widgets", "alice", "write")
    fake.label_issue("octo/widgets", 7, "bounty"); fake.add_comment(...)  # no webhook sent
    fake.set_labels("octo/widgets", 7, ["bug"])  # the whole list, as a label change leaves it
    fake.add_pull("octo/widgets", 9, "Fixes #7", login="dave"); fake.merge_pull(...)
    fake.fail_next("POST", r"/comments$", 502)
    ... point ForgejoClient at fake.url ...
    fake.requests, fake.writes(), fake.comments("octo/widgets", 7)
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web

from fakes.recording import JSON_BODY, FakeIssue, FakePull, RecordingServer, Refused

RECORDED = Path(__file__).resolve().parent.parent / "fixtures/forgejo/api/recorded"
API = "/api/v1"
PERMISSIONS = ("none", "read", "write", "admin", "owner")
# `[ui] REACTIONS`, Forgejo's default.
REACTIONS = ("+1", "-1", "laugh", "hooray", "confused", "heart", "rocket", "eyes")
MAX_RESPONSE_ITEMS = 50
DEFAULT_PAGING_NUM = 30

LOGIN = web.RequestKey("login", str)


@dataclass
class FakeComment:
    id: int
    repo: str
    number: int
    body: str
    login: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class FakeReaction:
    comment_id: int
    content: str
    login: str
    created_at: datetime


@dataclass
class _Repo:
    full_path: str
    repo_id: int
    roles: dict[str, str] = field(default_factory=dict)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _recorded(name: str) -> Any:
    return json.loads((RECORDED / f"{name}.json").read_text())


class FakeForgejo(RecordingServer):
    """A Forgejo at `url`: repos, issues, pull requests, comments, reactions, permissions."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.clock = clock or (lambda: datetime.now(UTC))
        comment = _recorded("gitea-com.issue_comments.list")[0]
        self._user_template: dict[str, Any] = comment["user"]
        self._comment_keys = list(comment)
        self._issue_template: dict[str, Any] = _recorded("gitea-com.issues.list")[0]
        self._pull_template: dict[str, Any] = next(
            p for p in _recorded("gitea-com.pulls.list") if p["merged"])
        self._tokens: dict[str, str] = {}
        self._repos: dict[str, _Repo] = {}
        self._comments: dict[int, FakeComment] = {}
        self._issues: dict[tuple[str, int], FakeIssue] = {}
        self._pulls: dict[tuple[str, int], FakePull] = {}
        self._reactions: list[FakeReaction] = []
        self._user_ids: dict[str, int] = {}
        # Logins with no account (404); every other login exists.
        self.missing_users: set[str] = set()
        # Whether the bot's token is an admin of the repos: if not, asking about another
        # user's permission is a 403, as on Forgejo.
        self.token_is_admin = True
        self._ids = itertools.count(100_001)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, *, clock: Callable[[], datetime] | None = None) -> FakeForgejo:
        """A fake listening on 127.0.0.1, on a port the system chose (see `url`)."""
        fake = cls(clock=clock)

        app = fake._app()
        repo = API + "/repos/{owner}/{name}"
        app.router.add_post(repo + "/issues/{number:\\d+}/comments", fake._create_comment)
        app.router.add_get(repo + "/issues/{number:\\d+}/comments", fake._issue_comments)
        app.router.add_get(repo + "/issues/comments/{comment:\\d+}", fake._get_comment)
        app.router.add_patch(repo + "/issues/comments/{comment:\\d+}", fake._edit_comment)
        app.router.add_post(repo + "/issues/comments/{comment:\\d+}/reactions", fake._react)
        app.router.add_get(repo + "/collaborators/{login}/permission", fake._permission)
        app.router.add_get(repo + "/issues", fake._list_issues)
        app.router.add_get(repo + "/issues/comments", fake._repo_comments)
        app.router.add_get(repo + "/pulls", fake._list_pulls)
        app.router.add_get(API + "/users/{login}", fake._get_user)
        await fake._listen(app)
        return fake

    # -- state ----------------------------------------------------------------------------

    def accept_token(self, token: str, *, login: str = "bountybot") -> None:
        """Accept an access token, acting as `login`."""
        self._tokens[token] = login

    def add_repo(self, full_path: str, repo_id: int) -> None:
        self._repos[full_path.lower()] = _Repo(full_path, repo_id)

    def set_permission(self, full_path: str, login: str, permission: str) -> None:
        """Give `login` a permission on the repo: none, read, write, admin or owner."""
        assert permission in PERMISSIONS, permission
        self._repo(full_path).roles[login.lower()] = permission

    def add_comment(self, full_path: str, number: int, body: str, *,
                    login: str = "alice") -> int:
        """A comment someone wrote, sending no webhook; returns its id."""
        now = self.clock()
        comment = FakeComment(next(self._ids), self._repo(full_path).full_path, number, body,
                              login, now, now)
        self._comments[comment.id] = comment
        issue = self._issues.get((comment.repo, number))
        if issue is not None:  # a comment updates its issue
            issue.updated_at = now
        return comment.id

    def add_issue(self, full_path: str, number: int, title: str = "An issue", *,
                  labels: tuple[str, ...] = (), login: str = "maya") -> FakeIssue:
        """An open issue, sending no webhook."""
        now = self.clock()
        path = self._repo(full_path).full_path
        issue = FakeIssue(next(self._ids), path, number, title, list(labels), login, now, now)
        self._issues[(path, number)] = issue
        return issue

    def label_issue(self, full_path: str, number: int, label: str) -> FakeIssue:
        """Put a label on an issue (made if new), sending no webhook."""
        path = self._repo(full_path).full_path
        issue = self._issues.get((path, number)) or self.add_issue(path, number)
        if label not in issue.labels:
            issue.labels.append(label)
        issue.updated_at = self.clock()
        return issue

    def set_labels(self, full_path: str, number: int, labels: list[str]) -> FakeIssue:
        """Give an issue (made if new) exactly `labels`, as a label change does, sending no
        webhook."""
        path = self._repo(full_path).full_path
        issue = self._issues.get((path, number)) or self.add_issue(path, number)
        issue.labels = list(labels)
        issue.updated_at = self.clock()
        return issue

    def add_pull(self, full_path: str, number: int, body: str, *, login: str,
                 title: str = "A change") -> FakePull:
        """An open pull request, sending no webhook."""
        now = self.clock()
        path = self._repo(full_path).full_path
        pull = FakePull(next(self._ids), path, number, title, body, login, now, now)
        self._pulls[(path, number)] = pull
        return pull

    def merge_pull(self, full_path: str, number: int) -> FakePull:
        """Merge a pull request, sending no webhook."""
        pull = self._pulls[(self._repo(full_path).full_path, number)]
        pull.state, pull.merged_at = "closed", self.clock()
        pull.updated_at = pull.merged_at
        return pull

    def edit_comment_text(self, comment_id: int, body: str) -> FakeComment:
        """Someone edits a comment, sending no webhook (its `updated_at` moves)."""
        comment = self._comments[comment_id]
        comment.body, comment.updated_at = body, self.clock()
        return comment

    def comments(self, full_path: str, number: int) -> list[FakeComment]:
        path = self._repo(full_path).full_path
        return [c for c in self._comments.values() if c.repo == path and c.number == number]

    def reactions(self, comment_id: int) -> list[FakeReaction]:
        return [r for r in self._reactions if r.comment_id == comment_id]

    # -- failure injection ----------------------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, *, times: int = 1,
                  headers: dict[str, str] | None = None, body: Any = None) -> None:
        """Answer the next `times` matching requests with `status` (method `*`: any); `body`
        is JSON, or a str sent as it is (a proxy's HTML 502 page), default Forgejo's shape."""
        if body is None:
            body = self._error_body(HTTPStatus(status).phrase)
        self._fail(method, path_regex, status, times, dict(headers or {}), body)

    # -- serving --------------------------------------------------------------------------

    async def _serve(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        parsed = await self._record(request)
        held = await self._hold(request)
        if held is not None:
            return held
        response: web.StreamResponse
        failure = self._failure(request)
        if failure is not None:
            response = self._answer(failure.body, failure.status)
            response.headers.update(failure.headers or {})
            return response
        try:
            if not parsed:
                raise Refused(422, "invalid JSON")
            request[LOGIN] = self._authenticate(request)
            response = await handler(request)
        except Refused as e:
            response = self._answer(self._error_body(e.message), e.status)
        except web.HTTPException as e:  # no such route, or method not allowed
            response = self._answer(self._error_body(e.reason), e.status)
        return self._conditional(request, response)

    def _error_body(self, message: str) -> dict[str, str]:
        # Forgejo's `APIError`: a message and the API's documentation URL.
        return {"message": message, "url": f"{self.url}/api/swagger"}

    @staticmethod
    def _answer(body: Any, status: int = 200) -> web.Response:
        if isinstance(body, str):
            return web.Response(text=body, status=status, content_type="text/html")
        return web.Response(text=json.dumps(body), status=status,
                            content_type="application/json", charset="utf-8")

    def _authenticate(self, request: web.Request) -> str:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        login = self._tokens.get(credential) if scheme.lower() in ("token", "bearer") else None
        if login is None:
            raise Refused(401, "token is required")
        return login

    def _repo(self, full_path: str) -> _Repo:
        try:
            return self._repos[full_path.lower()]
        except KeyError:
            raise Refused(404, "The target couldn't be found.") from None

    def _request_repo(self, request: web.Request) -> _Repo:
        return self._repo(f"{request.match_info['owner']}/{request.match_info['name']}")

    def _comment(self, request: web.Request) -> FakeComment:
        repo = self._request_repo(request)
        comment = self._comments.get(int(request.match_info["comment"]))
        if comment is None or comment.repo != repo.full_path:
            raise Refused(404, "The target couldn't be found.")
        return comment

    @staticmethod
    def _body_text(request: web.Request, key: str) -> str:
        payload = request[JSON_BODY]
        if not isinstance(payload, dict) or not isinstance(payload.get(key), str):
            raise Refused(422, f"[{key.capitalize()}]: Required")
        return str(payload[key])

    def _permission_of(self, repo: _Repo, login: str) -> str:
        if repo.full_path.split("/")[0].lower() == login.lower():
            return "owner"
        return repo.roles.get(login.lower(), "read")  # anyone reads a public repo

    # -- JSON shapes ----------------------------------------------------------------------

    def _user(self, login: str) -> dict[str, Any]:
        """A user object with the recorded one's keys, its login, URLs and ids replaced."""
        user = copy.deepcopy(self._user_template)
        user_id = self._user_ids.setdefault(login.lower(), 1001 + len(self._user_ids))
        user.update(id=user_id, login=login, username=login, full_name="",
                    email=f"{login}@noreply.localhost", html_url=f"{self.url}/{login}",
                    avatar_url=f"{self.url}/avatars/{user_id}", website="", location="",
                    description="")
        return user

    def _comment_json(self, c: FakeComment) -> dict[str, Any]:
        on_pull = (c.repo, c.number) in self._pulls
        web_url = f"{self.url}/{c.repo}/{'pulls' if on_pull else 'issues'}/{c.number}"
        values = {
            "id": c.id,
            "html_url": f"{web_url}#issuecomment-{c.id}",
            # A pull request's comment names no issue (NOTES.md), and the reverse.
            "pull_request_url": web_url if on_pull else "",
            "issue_url": "" if on_pull else web_url,
            "user": self._user(c.login),
            "original_author": "", "original_author_id": 0,
            "body": c.body, "assets": [],
            "created_at": _iso(c.created_at), "updated_at": _iso(c.updated_at),
        }
        return {key: values[key] for key in self._comment_keys}

    def _label_json(self, repo: _Repo, name: str) -> dict[str, Any]:
        label_id = sum(name.encode()) % 10_000
        return {"id": label_id, "name": name, "exclusive": False, "is_archived": False,
                "color": "e11d21", "description": "",
                "url": f"{self.url}{API}/repos/{repo.full_path}/labels/{label_id}"}

    def _issue_json(self, i: FakeIssue) -> dict[str, Any]:
        repo = self._repo(i.repo)
        issue = copy.deepcopy(self._issue_template)
        owner, name = i.repo.split("/")
        issue.update(
            id=i.id, url=f"{self.url}{API}/repos/{i.repo}/issues/{i.number}",
            html_url=f"{self.url}/{i.repo}/issues/{i.number}", number=i.number,
            user=self._user(i.login), title=i.title, body="",
            labels=[self._label_json(repo, label) for label in i.labels], state=i.state,
            comments=len(self.comments(i.repo, i.number)), created_at=_iso(i.created_at),
            updated_at=_iso(i.updated_at), closed_at=None, pull_request=None,
            repository={"id": repo.repo_id, "name": name, "owner": owner,
                        "full_name": i.repo})
        return issue

    def _pull_json(self, p: FakePull) -> dict[str, Any]:
        repo = self._repo(p.repo)
        pull = copy.deepcopy(self._pull_template)
        merged = p.merged_at is not None
        html = f"{self.url}/{p.repo}/pulls/{p.number}"
        pull.update(
            id=p.id, url=html, number=p.number, user=self._user(p.login), title=p.title,
            body=p.body, labels=[], state=p.state, html_url=html,
            diff_url=f"{html}.diff", patch_url=f"{html}.patch", merged=merged,
            merged_at=_iso(p.merged_at) if p.merged_at else None,
            merge_commit_sha=pull["merge_commit_sha"] if merged else None,
            merged_by=self._user("maya") if merged else None,
            created_at=_iso(p.created_at), updated_at=_iso(p.updated_at),
            closed_at=_iso(p.updated_at) if p.state == "closed" else None)
        for side in ("base", "head"):
            pull[side]["repo_id"] = repo.repo_id
            if isinstance(pull[side].get("repo"), dict):
                pull[side]["repo"].update(id=repo.repo_id, full_name=p.repo,
                                          name=p.repo.split("/")[1])
        return pull

    # -- handlers -------------------------------------------------------------------------

    async def _create_comment(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        body = self._body_text(request, "body")
        comment_id = self.add_comment(repo.full_path, int(request.match_info["number"]), body,
                                      login=request[LOGIN])
        return self._answer(self._comment_json(self._comments[comment_id]), 201)

    async def _issue_comments(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        number = int(request.match_info["number"])
        found = sorted(self.comments(repo.full_path, number), key=lambda c: c.id)
        return self._answer([self._comment_json(c) for c in found])  # not paged

    async def _get_comment(self, request: web.Request) -> web.Response:
        return self._answer(self._comment_json(self._comment(request)))

    async def _edit_comment(self, request: web.Request) -> web.Response:
        comment = self._comment(request)
        body = self._body_text(request, "body")
        if comment.login.lower() != request[LOGIN].lower():
            raise Refused(403, "user should have permission to write to a comment")
        comment.body, comment.updated_at = body, self.clock()
        return self._answer(self._comment_json(comment))

    async def _react(self, request: web.Request) -> web.Response:
        comment = self._comment(request)
        content = self._body_text(request, "content")
        if content not in REACTIONS:
            raise Refused(403, f"'{content}' is not an allowed reaction")
        login = request[LOGIN]
        for reaction in self.reactions(comment.id):
            if reaction.login == login and reaction.content == content:
                return self._answer({"user": self._user(login), "content": content,
                                     "created_at": _iso(reaction.created_at)}, 200)
        reaction = FakeReaction(comment.id, content, login, self.clock())
        self._reactions.append(reaction)
        return self._answer({"user": self._user(login), "content": content,
                             "created_at": _iso(reaction.created_at)}, 201)

    async def _permission(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        login = request.match_info["login"]
        if login.lower() in self.missing_users:
            raise Refused(404, "user does not exist")
        caller = request[LOGIN]
        if not self.token_is_admin and caller.lower() != login.lower():
            raise Refused(403, "Only admins can query all permissions, repo admins can query "
                               "all repo permissions, collaborators can query only their own")
        permission = self._permission_of(repo, login)
        return self._answer({"permission": permission, "role_name": permission,
                             "user": self._user(login)})

    async def _get_user(self, request: web.Request) -> web.Response:
        login = request.match_info["login"]
        if login.lower() in self.missing_users:
            raise Refused(404, "user does not exist")
        return self._answer(self._user(login))

    async def _list_issues(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        query = request.query
        state = query.get("state", "open")
        wanted = {name.strip().lower() for name in query.get("labels", "").split(",")
                  if name.strip()}
        since = _since(query)
        issues = [i for i in self._issues.values() if i.repo == repo.full_path
                  and state in ("all", i.state)
                  and wanted <= {label.lower() for label in i.labels}
                  and (since is None or i.updated_at >= since)]
        items = [self._issue_json(i) for i in sorted(issues, key=lambda i: -i.id)]
        if query.get("type") != "issues":  # issues and pull requests mixed
            items += [{**self._pull_json(p), "pull_request": {"merged": p.merged_at is not None}}
                      for p in self._pulls.values() if p.repo == repo.full_path]
        return self._page(request, items)

    async def _repo_comments(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        since = _since(request.query)
        found = [c for c in self._comments.values() if c.repo == repo.full_path
                 and (since is None or c.updated_at >= since)]
        return self._page(request, [self._comment_json(c)
                                    for c in sorted(found, key=lambda c: c.id)])

    async def _list_pulls(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        state = request.query.get("state", "open")
        pulls = [p for p in self._pulls.values() if p.repo == repo.full_path
                 and state in ("all", p.state)]
        if request.query.get("sort") == "recentupdate":
            pulls.sort(key=lambda p: (p.updated_at, p.id), reverse=True)
        return self._page(request, [self._pull_json(p) for p in pulls])

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        try:
            limit = int(request.query.get("limit", DEFAULT_PAGING_NUM))
            page = max(int(request.query.get("page", 1)), 1)
        except ValueError:
            raise Refused(422, "invalid page or limit") from None
        limit = min(max(limit, 1), MAX_RESPONSE_ITEMS)
        last = max(1, math.ceil(len(items) / limit))
        response = self._answer(items[(page - 1) * limit:page * limit])
        response.headers["X-Total-Count"] = str(len(items))
        links = []
        if page < last:
            links.append(f'<{self._link(request, page + 1)}>; rel="next"')
            links.append(f'<{self._link(request, last)}>; rel="last"')
        if page > 1:
            links.append(f'<{self._link(request, 1)}>; rel="first"')
            links.append(f'<{self._link(request, page - 1)}>; rel="prev"')
        if links:
            response.headers["Link"] = ",".join(links)
        return response

    def _link(self, request: web.Request, page: int) -> str:
        return f"{self.url}{request.path}?{urlencode({**request.query, 'page': str(page)})}"


def _since(query: Any) -> datetime | None:
    given = query.get("since")
    if not given:
        return None
    try:
        return datetime.fromisoformat(given.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(422, "invalid since") from None


@pytest.fixture
async def forgejo_server() -> AsyncIterator[FakeForgejo]:
    """A started FakeForgejo, closed after the test."""
    fake = await FakeForgejo.start()
    try:
        yield fake
    finally:
        await fake.close()
