"""A small local GitHub REST API on loopback: the bot's paths, recorded, failures on demand.

Shapes come from GitHub: the standard response headers and the user object are taken from a
recorded exchange (`tests/fixtures/github/api/paginate-issues.json`, octokit/fixtures), comment,
reaction, permission and installation-token answers follow GitHub's REST reference, and comment
lists are paginated with a `Link` header pointing at `/repositories/{id}/...` as GitHub's does.
The lists reconciliation reads (a repo's issues, issue comments, pull requests) are served from
the same state; every GET answer carries an ETag (a hash of its body) and is a 304, not counted
against the rate limit, when the client sends that ETag back in `If-None-Match`.

    fake = await FakeGitHub.start()           # or the `github_server` fixture
    fake.accept_token("ghp_...")              # a personal token, acting as `bountybot`
    fake.add_repo("octo/widgets", 1296269)
    fake.set_permission("octo/widgets", "alice", "maintain")
    fake.label_issue("octo/widgets", 7, "bounty"); fake.add_comment(...)  # no webhook sent
    fake.add_pull("octo/widgets", 9, "Fixes #7", login="dave"); fake.merge_pull(...)
    fake.fail_next("POST", r"/comments$", 502)
    ... point GitHubClient at fake.url ...
    fake.requests, fake.writes(), fake.comments("octo/widgets", 7)
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jwt
import pytest
from aiohttp import web

from fakes.recording import JSON_BODY, FakeIssue, FakePull, RecordingServer, Refused

RECORDED = Path(__file__).resolve().parent.parent / "fixtures/github/api/paginate-issues.json"
DOCS = "https://docs.github.com/rest"
ROLES = ("read", "triage", "write", "maintain", "admin")
# The `permission` field predates roles: maintain reads as write, triage as read.
LEGACY_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read",
                     "read": "read"}
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
# Headers that belong to one response, not to the template every response starts from.
_PER_RESPONSE = {"content-length", "content-type", "date", "etag", "link", "connection",
                 "x-github-request-id"}
RATE_LIMIT = 5000


@dataclass(frozen=True)
class _Identity:
    login: str
    user_type: str
    expires_at: datetime | None = None


# What the middleware learnt about a request, for its handler.
IDENTITY = web.RequestKey("identity", _Identity)


@dataclass
class FakeComment:
    id: int
    repo: str
    number: int
    body: str
    login: str
    user_type: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class FakeReaction:
    id: int
    comment_id: int
    content: str
    login: str
    user_type: str
    created_at: datetime


@dataclass(frozen=True)
class _Repo:
    full_path: str
    repo_id: int


@dataclass(frozen=True)
class _App:
    app_id: int
    public_key: str
    slug: str


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0:{kind}{number}".encode()).decode()


def _recorded_shapes() -> tuple[dict[str, str], dict[str, Any]]:
    """GitHub's standard response headers and user object, from the recorded exchange."""
    exchange = json.loads(RECORDED.read_text())[0]
    headers = {
        name: str(value) for name, value in exchange["headers"].items()
        if name not in _PER_RESPONSE and not name.startswith("x-ratelimit-")
    }
    return headers, exchange["response"][0]["user"]


class FakeGitHub(RecordingServer):
    """A GitHub API at `url`: repos, issue comments, reactions, collaborator permissions,
    personal and installation tokens, GitHub Apps verified by their RSA public key."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.minted: list[str] = []  # installation tokens handed out, oldest first
        self.token_lifetime = timedelta(hours=1)  # GitHub's installation tokens last an hour
        self._headers, self._user_template = _recorded_shapes()
        self._repos: dict[str, _Repo] = {}
        self._comments: dict[int, FakeComment] = {}
        self._issues: dict[tuple[str, int], FakeIssue] = {}
        self._pulls: dict[tuple[str, int], FakePull] = {}
        self._reactions: list[FakeReaction] = []
        self._roles: dict[tuple[str, str], str] = {}
        self._tokens: dict[str, _Identity] = {}
        self._apps: dict[int, _App] = {}
        self._installations: dict[int, int] = {}
        self._user_ids: dict[str, int] = {}
        # Logins with no account (GET /users/{login} answers 404); every other login exists.
        self.missing_users: set[str] = set()
        self._ids = itertools.count(1_000_001)
        self._rate_reset = int(time.time()) + 3600

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, *, clock: Callable[[], datetime] | None = None) -> FakeGitHub:
        """A fake listening on 127.0.0.1, on a port the system chose (see `url`)."""
        fake = cls(clock=clock)

        app = fake._app()
        repo = "/repos/{owner}/{name}"
        app.router.add_post("/app/installations/{installation}/access_tokens", fake._mint_token)
        app.router.add_post(repo + "/issues/{number:\\d+}/comments", fake._create_comment)
        app.router.add_get(repo + "/issues/{number:\\d+}/comments", fake._list_comments)
        app.router.add_get("/repositories/{repo_id:\\d+}/issues/{number:\\d+}/comments",
                           fake._list_comments)
        app.router.add_patch(repo + "/issues/comments/{comment:\\d+}", fake._edit_comment)
        app.router.add_get(repo + "/issues/comments/{comment:\\d+}", fake._get_comment)
        app.router.add_get("/users/{login}", fake._get_user)
        app.router.add_post(repo + "/issues/comments/{comment:\\d+}/reactions", fake._react)
        app.router.add_get(repo + "/collaborators/{login}/permission", fake._permission)
        app.router.add_get(repo + "/issues", fake._list_issues)
        app.router.add_get(repo + "/issues/comments", fake._list_repo_comments)
        app.router.add_get(repo + "/pulls", fake._list_pulls)
        await fake._listen(app)
        return fake

    # -- state ----------------------------------------------------------------------------

    def accept_token(self, token: str, *, login: str = "bountybot") -> None:
        """Accept a personal access token, acting as `login`."""
        self._tokens[token] = _Identity(login, "User")

    def add_app(self, app_id: int, public_key_pem: str, *, slug: str = "bountybot") -> None:
        """A GitHub App whose JWTs this RSA public key checks; it acts as `<slug>[bot]`."""
        self._apps[app_id] = _App(app_id, public_key_pem, slug)

    def add_installation(self, installation_id: int, app_id: int) -> None:
        self._installations[installation_id] = app_id

    def add_repo(self, full_path: str, repo_id: int) -> None:
        self._repos[full_path.lower()] = _Repo(full_path, repo_id)

    def set_permission(self, full_path: str, login: str, role: str) -> None:
        """Make `login` a collaborator with a role: admin, maintain, write, triage or read."""
        assert role in ROLES, role
        self._roles[(self._repo(full_path).full_path, login.lower())] = role

    def add_comment(self, full_path: str, number: int, body: str, *, login: str = "alice",
                    user_type: str = "User") -> int:
        """A comment someone else wrote, sending no webhook; returns its id."""
        now = self.clock()
        comment = FakeComment(next(self._ids), self._repo(full_path).full_path, number, body,
                              login, user_type, now, now)
        self._comments[comment.id] = comment
        issue = self._issues.get((comment.repo, number))
        if issue is not None:  # a comment updates its issue, as on GitHub
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

    def add_pull(self, full_path: str, number: int, body: str, *, login: str,
                 title: str = "A change") -> FakePull:
        """An open pull request, sending no webhook."""
        now = self.clock()
        path = self._repo(full_path).full_path
        pull = FakePull(next(self._ids), path, number, title, body, login, now, now)
        self._pulls[(path, number)] = pull
        return pull

    def edit_comment_text(self, comment_id: int, body: str) -> FakeComment:
        """Someone edits a comment, sending no webhook (GitHub moves its `updated_at`)."""
        comment = self._comments[comment_id]
        comment.body, comment.updated_at = body, self.clock()
        return comment

    def edit_pull(self, full_path: str, number: int, body: str) -> FakePull:
        """Someone edits a pull request's description, sending no webhook."""
        pull = self._pulls[(self._repo(full_path).full_path, number)]
        pull.body, pull.updated_at = body, self.clock()
        return pull

    def merge_pull(self, full_path: str, number: int) -> FakePull:
        """Merge a pull request, sending no webhook."""
        pull = self._pulls[(self._repo(full_path).full_path, number)]
        pull.state, pull.merged_at = "closed", self.clock()
        pull.updated_at = pull.merged_at
        return pull

    def comments(self, full_path: str, number: int) -> list[FakeComment]:
        path = self._repo(full_path).full_path
        return [c for c in self._comments.values() if c.repo == path and c.number == number]

    def reactions(self, comment_id: int) -> list[FakeReaction]:
        return [r for r in self._reactions if r.comment_id == comment_id]

    # -- failure injection ----------------------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, *, times: int = 1,
                  headers: dict[str, str] | None = None, body: Any = None) -> None:
        """Answer the next `times` matching requests with `status` (method `*`: any); `body`
        is JSON, or a str sent as it is (a proxy's HTML 502 page), default GitHub's shape."""
        if body is None:
            body = {"message": HTTPStatus(status).phrase, "documentation_url": DOCS}
        self._fail(method, path_regex, status, times, dict(headers or {}), body)

    # -- serving --------------------------------------------------------------------------

    async def _serve(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        parsed = await self._record(request)
        response: web.StreamResponse
        held = await self._hold(request)
        if held is not None:
            return held
        failure = self._failure(request)
        if failure is not None:
            response = self._answer(failure.body, failure.status)
            response.headers.update(failure.headers or {})
        else:
            try:
                if not parsed:
                    raise Refused(400, "Problems parsing JSON")
                if not request.path.startswith("/app/"):  # /app/ takes a JWT, checked there
                    request[IDENTITY] = self._authenticate(request)
                response = await handler(request)
            except Refused as e:
                response = self._answer({"message": e.message, "documentation_url": DOCS},
                                        e.status)
            except web.HTTPException as e:  # no such route, or method not allowed
                response = self._answer({"message": e.reason, "documentation_url": DOCS},
                                        e.status)
        response = self._conditional(request, response)
        for name, value in self._standard_headers().items():
            response.headers.setdefault(name, value)
        return response

    def _standard_headers(self) -> dict[str, str]:
        used = len(self.requests) - self.not_modified  # a 304 costs no rate limit
        return {
            **self._headers,
            "date": format_datetime(self.clock(), usegmt=True),
            "x-github-request-id": f"{secrets.token_hex(2).upper()}:{used:05X}",
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": str(max(RATE_LIMIT - used, 0)),
            "x-ratelimit-reset": str(self._rate_reset),
            "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core",
        }

    @staticmethod
    def _answer(body: Any, status: int = 200) -> web.Response:
        if isinstance(body, str):
            return web.Response(text=body, status=status, content_type="text/html")
        return web.Response(text=json.dumps(body), status=status,
                            content_type="application/json", charset="utf-8")

    def _authenticate(self, request: web.Request) -> _Identity:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        identity = self._tokens.get(credential) if scheme.lower() in ("token", "bearer") else None
        if identity is None or (identity.expires_at and self.clock() >= identity.expires_at):
            raise Refused(401, "Bad credentials")
        return identity

    def _repo(self, full_path: str) -> _Repo:
        try:
            return self._repos[full_path.lower()]
        except KeyError:
            raise Refused(404, "Not Found") from None

    def _request_repo(self, request: web.Request) -> _Repo:
        info = request.match_info
        if "repo_id" in info:
            for repo in self._repos.values():
                if repo.repo_id == int(info["repo_id"]):
                    return repo
            raise Refused(404, "Not Found")
        return self._repo(f"{info['owner']}/{info['name']}")

    def _comment(self, request: web.Request) -> FakeComment:
        repo = self._request_repo(request)
        comment = self._comments.get(int(request.match_info["comment"]))
        if comment is None or comment.repo != repo.full_path:
            raise Refused(404, "Not Found")
        return comment

    @staticmethod
    def _body_text(request: web.Request, key: str) -> str:
        payload = request[JSON_BODY]
        if not isinstance(payload, dict) or not isinstance(payload.get(key), str):
            raise Refused(422, f'Invalid request.\n\n"{key}" wasn\'t supplied.')
        return str(payload[key])

    # -- JSON shapes ----------------------------------------------------------------------

    def _user(self, login: str, user_type: str = "User") -> dict[str, Any]:
        """A user object with the recorded one's keys, its login, URLs and ids replaced."""
        template = copy.deepcopy(self._user_template)
        user_id = self._user_ids.setdefault(login.lower(), 5_000_001 + len(self._user_ids))
        user: dict[str, Any] = {}
        for key, value in template.items():
            if isinstance(value, str):
                value = (value.replace("https://api.github.com", self.url)
                         .replace(template["login"], quote(login))
                         .replace(f"/u/{template['id']}?", f"/u/{user_id}?"))
            user[key] = value
        user.update(login=login, id=user_id, node_id=_node_id(user_type, user_id),
                    type=user_type)
        if user_type == "Bot":  # an app's bot user links to the app's page
            user["html_url"] = f"https://github.com/apps/{login.removesuffix('[bot]')}"
        return user

    def _comment_json(self, c: FakeComment) -> dict[str, Any]:
        api = f"{self.url}/repos/{c.repo}/issues"
        kind = "pull" if (c.repo, c.number) in self._pulls else "issues"
        counts = {content: 0 for content in REACTIONS}
        for reaction in self.reactions(c.id):
            counts[reaction.content] += 1
        return {
            "url": f"{api}/comments/{c.id}",
            "html_url": f"https://github.com/{c.repo}/{kind}/{c.number}#issuecomment-{c.id}",
            "issue_url": f"{api}/{c.number}",
            "id": c.id,
            "node_id": _node_id("IssueComment", c.id),
            "user": self._user(c.login, c.user_type),
            "created_at": _iso(c.created_at),
            "updated_at": _iso(c.updated_at),
            "author_association": self._association(c.repo, c.login),
            "body": c.body,
            "reactions": {"url": f"{api}/comments/{c.id}/reactions",
                          "total_count": sum(counts.values()), **counts},
            "performed_via_github_app": None,
        }

    def _association(self, repo: str, login: str) -> str:
        if repo.split("/")[0].lower() == login.lower():
            return "OWNER"
        return "COLLABORATOR" if (repo, login.lower()) in self._roles else "NONE"

    # -- handlers -------------------------------------------------------------------------

    async def _mint_token(self, request: web.Request) -> web.Response:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            raise Refused(401, "A JSON web token could not be decoded")
        try:
            claimed = jwt.decode(credential, options={"verify_signature": False})
            app = self._apps[int(claimed["iss"])]
            claims = jwt.decode(credential, app.public_key, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"]})
        except jwt.ExpiredSignatureError:
            raise Refused(401, "'Expiration time' claim ('exp') must be a numeric value "
                                "representing the future time at which the assertion expires"
                           ) from None
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            raise Refused(401, "A JSON web token could not be decoded") from None
        if claims["exp"] - time.time() > 600 + 30:  # GitHub takes at most 10 minutes (+ skew)
            raise Refused(401, "'Expiration time' claim ('exp') is too far in the future")
        if self._installations.get(int(request.match_info["installation"])) != app.app_id:
            raise Refused(404, "Not Found")
        token = "ghs_" + secrets.token_urlsafe(27)[:36]
        expires_at = self.clock().replace(microsecond=0) + self.token_lifetime
        self._tokens[token] = _Identity(f"{app.slug}[bot]", "Bot", expires_at)
        self.minted.append(token)
        return self._answer({
            "token": token,
            "expires_at": _iso(expires_at),
            "permissions": {"issues": "write", "metadata": "read", "pull_requests": "read"},
            "repository_selection": "all",
        }, 201)

    async def _create_comment(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        body = self._body_text(request, "body")
        identity = request[IDENTITY]
        comment_id = self.add_comment(repo.full_path, int(request.match_info["number"]), body,
                                      login=identity.login, user_type=identity.user_type)
        created = self._comment_json(self._comments[comment_id])
        response = self._answer(created, 201)
        response.headers["location"] = created["url"]
        return response

    async def _list_comments(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        number = int(request.match_info["number"])
        try:
            per_page = min(max(int(request.query.get("per_page", 30)), 1), 100)
            page = max(int(request.query.get("page", 1)), 1)
        except ValueError:
            raise Refused(422, "Invalid request.") from None
        found = sorted(self.comments(repo.full_path, number), key=lambda c: c.id)
        last = max(1, math.ceil(len(found) / per_page))
        response = self._answer(
            [self._comment_json(c) for c in found[(page - 1) * per_page:page * per_page]]
        )
        base = f"{self.url}/repositories/{repo.repo_id}/issues/{number}/comments"
        rels = []
        if page > 1:
            rels += [("prev", page - 1)]
        if page < last:
            rels += [("next", page + 1), ("last", last)]
        if page > 1:
            rels += [("first", 1)]
        if rels:
            response.headers["link"] = ", ".join(
                f'<{base}?{urlencode({"per_page": per_page, "page": p})}>; rel="{rel}"'
                for rel, p in rels
            )
        return response

    async def _get_comment(self, request: web.Request) -> web.Response:
        return self._answer(self._comment_json(self._comment(request)))

    async def _get_user(self, request: web.Request) -> web.Response:
        login = request.match_info["login"]
        if login.lower() in {name.lower() for name in self.missing_users}:
            raise Refused(404, "Not Found")
        return self._answer(self._user(login))

    async def _edit_comment(self, request: web.Request) -> web.Response:
        comment = self._comment(request)
        identity = request[IDENTITY]
        role = self._roles.get((comment.repo, identity.login.lower()), "read")
        if comment.login.lower() != identity.login.lower() and ROLES.index(role) < 2:
            raise Refused(403, "Resource not accessible by integration")
        comment.body = self._body_text(request, "body")
        comment.updated_at = self.clock()
        return self._answer(self._comment_json(comment))

    async def _react(self, request: web.Request) -> web.Response:
        comment = self._comment(request)
        content = self._body_text(request, "content")
        if content not in REACTIONS:
            raise Refused(422, "Validation Failed")
        identity = request[IDENTITY]
        for reaction in self.reactions(comment.id):  # GitHub answers 200 with the one it has
            if reaction.login == identity.login and reaction.content == content:
                return self._answer(self._reaction_json(reaction), 200)
        reaction = FakeReaction(next(self._ids), comment.id, content, identity.login,
                                identity.user_type, self.clock())
        self._reactions.append(reaction)
        return self._answer(self._reaction_json(reaction), 201)

    def _reaction_json(self, r: FakeReaction) -> dict[str, Any]:
        return {"id": r.id, "node_id": _node_id("Reaction", r.id),
                "user": self._user(r.login, r.user_type), "content": r.content,
                "created_at": _iso(r.created_at)}

    async def _permission(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        login = request.match_info["login"]
        role = self._roles.get((repo.full_path, login.lower()))
        if role is None:
            raise Refused(404, "Not Found")
        rank = ROLES.index(role)
        user = self._user(login)
        user["permissions"] = {"admin": rank >= 4, "maintain": rank >= 3, "push": rank >= 2,
                               "triage": rank >= 1, "pull": True}
        user["role_name"] = role
        return self._answer({"permission": LEGACY_PERMISSION[role], "role_name": role,
                             "user": user})

    def _issue_json(self, issue: FakeIssue) -> dict[str, Any]:
        api = f"{self.url}/repos/{issue.repo}"
        return {
            "url": f"{api}/issues/{issue.number}", "repository_url": api,
            "html_url": f"https://github.com/{issue.repo}/issues/{issue.number}",
            "id": issue.id, "node_id": _node_id("Issue", issue.id), "number": issue.number,
            "title": issue.title, "user": self._user(issue.login),
            "labels": [{"id": 208045946 + i, "node_id": _node_id("Label", i),
                        "url": f"{api}/labels/{quote(name)}", "name": name, "color": "f29513",
                        "default": False, "description": None}
                       for i, name in enumerate(issue.labels)],
            "state": issue.state, "locked": False, "assignee": None, "assignees": [],
            "comments": len(self.comments(issue.repo, issue.number)),
            "created_at": _iso(issue.created_at), "updated_at": _iso(issue.updated_at),
            "closed_at": None, "author_association": self._association(issue.repo, issue.login),
            "body": "", "state_reason": None,
        }

    def _pull_json(self, pull: FakePull) -> dict[str, Any]:
        repo = self._repo(pull.repo)
        api = f"{self.url}/repos/{pull.repo}"
        owner = pull.repo.split("/")[0]
        repository = {"id": repo.repo_id, "node_id": _node_id("Repository", repo.repo_id),
                      "name": pull.repo.split("/")[1], "full_name": pull.repo, "private": False,
                      "owner": self._user(owner), "html_url": f"https://github.com/{pull.repo}",
                      "url": api}
        return {
            "url": f"{api}/pulls/{pull.number}", "id": pull.id,
            "node_id": _node_id("PullRequest", pull.id),
            "html_url": f"https://github.com/{pull.repo}/pull/{pull.number}",
            "number": pull.number, "state": pull.state, "locked": False, "title": pull.title,
            "user": self._user(pull.login), "body": pull.body, "labels": [],
            "created_at": _iso(pull.created_at), "updated_at": _iso(pull.updated_at),
            "closed_at": _iso(pull.updated_at) if pull.state == "closed" else None,
            "merged_at": _iso(pull.merged_at) if pull.merged_at else None,
            "merge_commit_sha": None, "draft": False,
            "head": {"label": f"{pull.login}:fix-{pull.number}", "ref": f"fix-{pull.number}",
                     "sha": "0" * 40, "user": self._user(pull.login), "repo": repository},
            "base": {"label": f"{owner}:main", "ref": "main", "sha": "1" * 40,
                     "user": self._user(owner), "repo": repository},
            "author_association": self._association(pull.repo, pull.login),
        }

    async def _list_issues(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        wanted = [name for name in request.query.get("labels", "").split(",") if name]
        state = request.query.get("state", "open")
        found = [self._issue_json(i) for i in self._issues.values()
                 if i.repo == repo.full_path and state in ("all", i.state)
                 and all(name.lower() in {n.lower() for n in i.labels} for name in wanted)]
        return _page(self, request, found)

    async def _list_repo_comments(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        found = [self._comment_json(c) for c in self._comments.values() if c.repo == repo.full_path]
        return _page(self, request, found)

    async def _list_pulls(self, request: web.Request) -> web.Response:
        repo = self._request_repo(request)
        state = request.query.get("state", "open")
        found = [self._pull_json(p) for p in self._pulls.values()
                 if p.repo == repo.full_path and state in ("all", p.state)]
        return _page(self, request, found)


def _page(fake: FakeGitHub, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """A list reconciliation reads, filtered by `since`, sorted and paginated as GitHub does
    (`sort`, `direction`, `per_page`, `page`; the `Link` repeats the query with the next page)."""
    sort = request.query.get("sort", "created")
    newest = request.query.get("direction", "desc" if sort == "created" else "asc") == "desc"
    key = "updated_at" if sort == "updated" else "created_at"
    since = request.query.get("since")
    if since:
        items = [item for item in items if item["updated_at"] >= stamp_of(since)]
    items = sorted(items, key=lambda item: (item[key], item["id"]), reverse=newest)
    try:
        per_page = min(max(int(request.query.get("per_page", 30)), 1), 100)
        page = max(int(request.query.get("page", 1)), 1)
    except ValueError:
        raise Refused(422, "Invalid request.") from None
    last = max(1, math.ceil(len(items) / per_page))
    response = fake._answer(items[(page - 1) * per_page:page * per_page])
    if page < last:
        query = {**request.query, "page": str(page + 1)}
        response.headers["link"] = (f'<{fake.url}{request.path}?{urlencode(query)}>; '
                                    f'rel="next", <{fake.url}{request.path}?'
                                    f'{urlencode({**query, "page": str(last)})}>; rel="last"')
    return response


def stamp_of(value: str) -> str:
    """An ISO 8601 time as GitHub writes them (`...Z`), so they compare as text."""
    return _iso(datetime.fromisoformat(value.replace("Z", "+00:00")))


@pytest.fixture
async def github_server() -> AsyncIterator[FakeGitHub]:
    """A started FakeGitHub, closed after the test."""
    fake = await FakeGitHub.start()
    try:
        yield fake
    finally:
        await fake.close()
