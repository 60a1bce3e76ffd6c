"""A small local GitLab REST API v4 on loopback: the bot's paths, recorded, failures on demand.

Shapes follow GitLab's REST reference (docs.gitlab.com/api: notes, emoji reactions, members,
users, REST pagination) and the GitLab source: errors are `{"message": "404 Project Not Found"}`,
an unknown route `{"error": "404 Not Found"}`, a duplicate award emoji 404 "Award Emoji Name has
already been taken" (`lib/api/award_emoji.rb` turns the failed validation into `not_found!`), a
throttled request 429 `Retry later` with `Retry-After` and `RateLimit-*` (Rack::Attack). Lists
are offset-paginated with `X-Page`, `X-Per-Page`, `X-Next-Page`, `X-Prev-Page`, `X-Total`,
`X-Total-Pages` and a `Link` header whose URLs repeat the query, as GitLab's are. A project's
issues and merge requests are listed from the state the helpers above keep (none of them sends a
webhook); every GET answer carries an ETag (a hash of its body) and is a 304 when the client
sends that ETag back in `If-None-Match`.

    fake = await FakeGitLab.start()               # or the `gitlab_server` fixture
    fake.accept_token("glpat-...")                # PRIVATE-TOKEN, acting as `bountybot`
    fake.add_user("alice", 11)
    fake.add_project("group/sub/project", 1234)
    fake.set_access(1234, "alice", 40)            # direct; set_group_access() for inherited
    fake.label_issue(1234, 7, "bounty"); fake.add_note(1234, 7, "/pledge 5", username="alice")
    fake.add_merge_request(1234, 3, "Closes #7", username="dave"); fake.merge(1234, 3)
    fake.fail_next("POST", r"/notes$", 502)
    ... point GitLabClient at fake.url ...
    fake.requests, fake.writes(), fake.notes(1234, 7), fake.awards(note_id)
"""

from __future__ import annotations

import itertools
import json
import math
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote, urlencode

import pytest
from aiohttp import web

from fakes.recording import JSON_BODY, RecordingServer, Refused

ACCESS_LEVELS = (5, 10, 15, 20, 30, 40, 50)  # minimal, guest, planner, reporter, developer, ...
RATE_LIMIT = 600  # requests a minute, gitlab.com's documented authenticated API limit
_EMOJI_NAME = re.compile(r"^[a-z0-9_+-]+$")

LOGIN = web.RequestKey("login", str)


@dataclass
class FakeNote:
    id: int
    project_id: int
    iid: int
    body: str
    username: str
    created_at: datetime
    updated_at: datetime


@dataclass
class FakeIssue:
    id: int
    project_id: int
    iid: int
    title: str
    labels: list[str]
    username: str
    created_at: datetime
    updated_at: datetime
    state: str = "opened"


@dataclass
class FakeMergeRequest:
    id: int
    project_id: int
    iid: int
    title: str
    description: str
    username: str
    created_at: datetime
    updated_at: datetime
    state: str = "opened"
    merged_at: datetime | None = None


@dataclass(frozen=True)
class FakeAward:
    id: int
    note_id: int
    name: str
    username: str
    created_at: datetime


@dataclass(frozen=True)
class _Project:
    path: str
    project_id: int


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FakeGitLab(RecordingServer):
    """A GitLab at `url`: users, projects (in groups and subgroups), issue notes, award emoji
    on notes, direct and inherited members, personal access tokens."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.clock = clock or (lambda: datetime.now(UTC))
        # What a second identical award gets: 404 (GitLab's API) or 409.
        self.duplicate_award_status = 404
        self._tokens: dict[str, str] = {}
        self._user_ids: dict[str, int] = {}  # lower-case username -> id
        self._names: dict[int, str] = {}  # id -> username
        self._projects: dict[int, _Project] = {}
        # Memberships belong to accounts (ids), as on GitLab, not to names.
        self._access: dict[tuple[int, int], tuple[int, str]] = {}  # direct: (level, state)
        self._group_access: dict[tuple[str, int], int] = {}
        self._notes: dict[int, FakeNote] = {}
        self._issues: dict[tuple[int, int], FakeIssue] = {}
        self._merge_requests: dict[tuple[int, int], FakeMergeRequest] = {}
        self._awards: list[FakeAward] = []
        self._ids = itertools.count(1_500_001)
        self._new_user_ids = itertools.count(9_000_001)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, *, clock: Callable[[], datetime] | None = None) -> FakeGitLab:
        """A fake listening on 127.0.0.1, on a port the system chose (see `url`)."""
        fake = cls(clock=clock)

        app = fake._app()
        notes = "/api/v4/projects/{project}/issues/{iid:\\d+}/notes"
        note = notes + "/{note:\\d+}"
        app.router.add_get(notes, fake._list_notes)
        app.router.add_post(notes, fake._create_note)
        app.router.add_get(note, fake._get_note)
        app.router.add_put(note, fake._edit_note)
        app.router.add_post(note + "/award_emoji", fake._award)
        app.router.add_get(note + "/award_emoji", fake._list_awards)
        members = "/api/v4/projects/{project}/members"
        app.router.add_get(members + "/{user_id:\\d+}", fake._direct_member)
        app.router.add_get(members + "/all/{user_id:\\d+}", fake._any_member)
        app.router.add_get("/api/v4/users", fake._find_users)
        app.router.add_get("/api/v4/users/{user_id:\\d+}", fake._get_user)
        app.router.add_get("/api/v4/user", fake._current_user)
        app.router.add_get("/api/v4/projects/{project}/issues", fake._list_issues)
        app.router.add_get("/api/v4/projects/{project}/merge_requests", fake._list_merge_requests)
        await fake._listen(app)
        return fake

    # -- state ----------------------------------------------------------------------------

    def accept_token(self, token: str, login: str = "bountybot") -> None:
        """Accept a personal access token (`PRIVATE-TOKEN`, or `Authorization: Bearer`)."""
        self._tokens[token] = login

    def add_user(self, username: str, user_id: int) -> None:
        """An account; if another one had this username, that one is renamed (freed names
        can be taken on GitLab)."""
        old = self._user_ids.get(username.lower())
        if old is not None and old != user_id:
            self._names[old] = f"{self._names[old]}-renamed"
            self._user_ids[self._names[old].lower()] = old
        self._user_ids[username.lower()] = user_id
        self._names[user_id] = username

    def add_project(self, path_with_namespace: str, project_id: int) -> None:
        self._projects[project_id] = _Project(path_with_namespace, project_id)

    def set_access(self, project_id: int, username: str, level: int, *,
                   membership_state: str = "active") -> None:
        """Make `username` a direct member of the project (10 guest ... 50 owner);
        `membership_state="awaiting"`: over the namespace's user cap, no access yet."""
        assert level in ACCESS_LEVELS, level
        self._project(str(project_id))
        self._access[(project_id, self._user(username)[1])] = (level, membership_state)

    def set_group_access(self, group_path: str, username: str, level: int) -> None:
        """Make `username` a member of a group: every project below it inherits the level."""
        assert level in ACCESS_LEVELS, level
        self._group_access[(group_path.strip("/").lower(), self._user(username)[1])] = level

    def add_note(self, project_id: int, iid: int, body: str, *, username: str) -> int:
        """A note on issue `iid` written by `username`; returns its id."""
        self._project(str(project_id))
        name, _ = self._user(username)
        now = self.clock()
        note = FakeNote(next(self._ids), project_id, iid, body, name, now, now)
        self._notes[note.id] = note
        issue = self._issues.get((project_id, iid))
        if issue is not None:  # a note touches its issue, as GitLab's Note#touch_noteable does
            issue.updated_at = now
        return note.id

    def add_issue(self, project_id: int, iid: int, title: str = "An issue", *,
                  labels: tuple[str, ...] = (), username: str = "maya") -> FakeIssue:
        """An open issue, sending no webhook."""
        self._project(str(project_id))
        now = self.clock()
        issue = FakeIssue(next(self._ids), project_id, iid, title, list(labels),
                          self._user(username)[0], now, now)
        self._issues[(project_id, iid)] = issue
        return issue

    def label_issue(self, project_id: int, iid: int, label: str) -> FakeIssue:
        """Put a label on an issue (made if new), sending no webhook."""
        issue = self._issues.get((project_id, iid)) or self.add_issue(project_id, iid)
        if label not in issue.labels:
            issue.labels.append(label)
        issue.updated_at = self.clock()
        return issue

    def add_merge_request(self, project_id: int, iid: int, description: str, *, username: str,
                          title: str = "A change") -> FakeMergeRequest:
        """An open merge request, sending no webhook."""
        self._project(str(project_id))
        now = self.clock()
        mr = FakeMergeRequest(next(self._ids), project_id, iid, title, description,
                              self._user(username)[0], now, now)
        self._merge_requests[(project_id, iid)] = mr
        return mr

    def merge(self, project_id: int, iid: int) -> FakeMergeRequest:
        """Merge a merge request, sending no webhook."""
        mr = self._merge_requests[(project_id, iid)]
        mr.state, mr.merged_at = "merged", self.clock()
        mr.updated_at = mr.merged_at
        return mr

    def notes(self, project_id: int, iid: int) -> list[FakeNote]:
        return [n for n in self._notes.values() if (n.project_id, n.iid) == (project_id, iid)]

    def awards(self, note_id: int) -> list[FakeAward]:
        return [a for a in self._awards if a.note_id == note_id]

    # -- failure injection ----------------------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, *, times: int = 1,
                  headers: dict[str, str] | None = None, body: Any = None) -> None:
        """Answer the next `times` matching requests with `status` (method `*`: any). `body` is
        JSON, or a str sent as text (a proxy's HTML 502 page); by default GitLab's
        `{"message": "502 Bad Gateway"}`, or for 429 Rack::Attack's `Retry later` with its
        `Retry-After` and `RateLimit-*` headers (given `headers` replace those)."""
        if body is None:
            phrase = HTTPStatus(status).phrase
            body = "Retry later\n" if status == 429 else {"message": f"{status} {phrase}"}
        self._fail(method, path_regex, status, times,
                   None if headers is None else dict(headers), body)

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
            extra = failure.headers
            if extra is None:
                extra = self._throttled_headers() if failure.status == 429 else {}
            response.headers.update(extra)
        else:
            try:
                request[LOGIN] = self._authenticate(request)
                if not parsed:
                    raise Refused(400, "400 Bad request - JSON body is invalid")
                response = await handler(request)
            except Refused as e:
                response = self._answer({"message": e.message}, e.status)
            except web.HTTPException as e:  # no such route: Grape's catch-all answers this
                response = self._answer({"error": f"{e.status} {e.reason}"}, e.status)
        response = self._conditional(request, response)
        response.headers.setdefault("Cache-Control", "max-age=0, private, must-revalidate")
        response.headers.setdefault("Vary", "Origin, Accept-Encoding")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        request_id = secrets.token_hex(13).upper()
        response.headers.setdefault("X-Request-Id", request_id)
        response.headers.setdefault(
            "X-Gitlab-Meta", json.dumps({"correlation_id": request_id, "version": "1"}))
        response.headers.setdefault("X-Runtime", "0.012345")
        return response

    def _throttled_headers(self) -> dict[str, str]:
        reset = self.clock().replace(microsecond=0) + timedelta(seconds=60)
        return {
            "Retry-After": "60",
            "RateLimit-Name": "throttle_authenticated_api",
            "RateLimit-Limit": str(RATE_LIMIT),
            "RateLimit-Observed": str(RATE_LIMIT + 1),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(int(reset.timestamp())),
            "RateLimit-ResetTime": format_datetime(reset, usegmt=True),
        }

    @staticmethod
    def _answer(body: Any, status: int = 200) -> web.Response:
        if isinstance(body, str):
            kind = "text/plain" if status == 429 else "text/html"
            return web.Response(text=body, status=status, content_type=kind)
        return web.Response(text=json.dumps(body), status=status,
                            content_type="application/json")

    def _authenticate(self, request: web.Request) -> str:
        token = request.headers.get("PRIVATE-TOKEN")
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        if token is None and scheme.lower() == "bearer":
            token = bearer
        login = self._tokens.get(token or "")
        if login is None:
            raise Refused(401, "401 Unauthorized")
        return login

    def _user(self, username: str) -> tuple[str, int]:
        """(username, id), creating the user if it is new."""
        key = username.lower()
        if key not in self._user_ids:
            self.add_user(username, next(self._new_user_ids))
        user_id = self._user_ids[key]
        return self._names[user_id], user_id

    def _project(self, ref: str) -> _Project:
        """A project by numeric id or URL-encoded path, as GitLab's `:id` takes either."""
        if ref.isdigit() and int(ref) in self._projects:
            return self._projects[int(ref)]
        path = unquote(ref).lower()
        for project in self._projects.values():
            if project.path.lower() == path:
                return project
        raise Refused(404, "404 Project Not Found")

    def _note(self, request: web.Request) -> FakeNote:
        project = self._project(request.match_info["project"])
        note = self._notes.get(int(request.match_info["note"]))
        if note is None or (note.project_id, note.iid) != (
                project.project_id, int(request.match_info["iid"])):
            raise Refused(404, "404 Not found")
        return note

    def _level(self, project: _Project, user_id: int) -> tuple[int, str] | None:
        """The highest of the direct and inherited memberships, as `members/all` gives it."""
        levels = [level for (group, who), level in self._group_access.items()
                  if who == user_id and project.path.lower().startswith(group + "/")]
        direct = self._access.get((project.project_id, user_id))
        if direct is not None and (not levels or direct[0] >= max(levels)):
            return direct
        return (max(levels), "active") if levels else None

    @staticmethod
    def _text(request: web.Request, key: str) -> str:
        payload = request[JSON_BODY]
        if not isinstance(payload, dict) or not isinstance(payload.get(key), str):
            raise Refused(400, f"400 Bad request - {key} is missing")
        return str(payload[key])

    # -- JSON shapes ----------------------------------------------------------------------

    def _user_json(self, username: str) -> dict[str, Any]:
        return self._account_json(self._user(username)[1])

    def _account_json(self, user_id: int) -> dict[str, Any]:
        name = self._names[user_id]
        return {
            "id": user_id, "username": name, "name": name.title(), "state": "active",
            "locked": False,
            "avatar_url": f"https://www.gravatar.com/avatar/{user_id:032x}?s=80&d=identicon",
            "web_url": f"{self.url}/{quote(name)}",
        }

    def _note_json(self, note: FakeNote) -> dict[str, Any]:
        return {
            "id": note.id, "type": None, "body": note.body, "attachment": None,
            "author": self._user_json(note.username),
            "created_at": _iso(note.created_at), "updated_at": _iso(note.updated_at),
            "system": False, "noteable_id": note.project_id * 1000 + note.iid,
            "noteable_type": "Issue", "project_id": note.project_id,
            "resolvable": False, "confidential": False, "internal": False, "imported": False,
            "imported_from": "none", "noteable_iid": note.iid, "commands_changes": {},
        }

    def _award_json(self, award: FakeAward) -> dict[str, Any]:
        return {
            "id": award.id, "name": award.name, "user": self._user_json(award.username),
            "created_at": _iso(award.created_at), "updated_at": _iso(award.created_at),
            "awardable_id": award.note_id, "awardable_type": "Note", "url": None,
        }

    def _member_json(self, user_id: int, level: int, state: str) -> dict[str, Any]:
        return {**self._account_json(user_id), "access_level": level,
                "created_at": _iso(self.clock()), "expires_at": None,
                "membership_state": state}

    # -- handlers -------------------------------------------------------------------------

    async def _list_notes(self, request: web.Request) -> web.Response:
        project = self._project(request.match_info["project"])
        iid = int(request.match_info["iid"])
        key = "updated_at" if request.query.get("order_by") == "updated_at" else "created_at"
        found = sorted(self.notes(project.project_id, iid),
                       key=lambda n: (getattr(n, key), n.id),
                       reverse=request.query.get("sort", "desc") != "asc")
        return self._paged(request, [self._note_json(n) for n in found],
                           id=request.match_info["project"], noteable_id=str(iid))

    def _paged(self, request: web.Request, found: list[dict[str, Any]],
               **extra: str) -> web.Response:
        """One page of a list (`per_page`, `page`), with GitLab's pagination headers; `extra`
        goes in the links' query, as GitLab puts the route's own parameters there."""
        try:
            per_page = min(max(int(request.query.get("per_page", 20)), 1), 100)
            page = max(int(request.query.get("page", 1)), 1)
        except ValueError:
            raise Refused(400, "400 Bad request - page is invalid") from None
        pages = max(1, math.ceil(len(found) / per_page))
        response = self._answer(found[(page - 1) * per_page:page * per_page])
        query = {k: v for k, v in request.query.items() if k != "page"}
        query.update(extra, per_page=str(per_page))

        def link(to: int) -> str:
            params = urlencode(sorted({**query, "page": str(to)}.items()))
            return f"{self.url}{request.rel_url.raw_path}?{params}"

        rels = ([("prev", page - 1)] if page > 1 else []) \
            + ([("next", page + 1)] if page < pages else []) + [("first", 1), ("last", pages)]
        response.headers.update({
            "Link": ", ".join(f'<{link(p)}>; rel="{rel}"' for rel, p in rels),
            "X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(found)),
            "X-Total-Pages": str(pages),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
        })
        return response

    def _issue_json(self, issue: FakeIssue) -> dict[str, Any]:
        project = self._projects[issue.project_id]
        return {
            "id": issue.id, "iid": issue.iid, "project_id": issue.project_id,
            "title": issue.title, "description": "", "state": issue.state,
            "created_at": _iso(issue.created_at), "updated_at": _iso(issue.updated_at),
            "closed_at": None, "closed_by": None, "labels": list(issue.labels),
            "milestone": None, "assignees": [], "author": self._user_json(issue.username),
            "type": "ISSUE", "assignee": None,
            "user_notes_count": len(self.notes(issue.project_id, issue.iid)),
            "merge_requests_count": 0, "upvotes": 0, "downvotes": 0, "due_date": None,
            "confidential": False, "discussion_locked": None, "issue_type": "issue",
            "web_url": f"{self.url}/{project.path}/-/issues/{issue.iid}",
            "references": {"short": f"#{issue.iid}", "relative": f"#{issue.iid}",
                           "full": f"{project.path}#{issue.iid}"},
        }

    def _merge_request_json(self, mr: FakeMergeRequest) -> dict[str, Any]:
        project = self._projects[mr.project_id]
        return {
            "id": mr.id, "iid": mr.iid, "project_id": mr.project_id, "title": mr.title,
            "description": mr.description, "state": mr.state,
            "created_at": _iso(mr.created_at), "updated_at": _iso(mr.updated_at),
            "merged_by": None, "merge_user": None,
            "merged_at": _iso(mr.merged_at) if mr.merged_at else None,
            "closed_by": None, "closed_at": None, "target_branch": "main",
            "source_branch": f"fix-{mr.iid}", "author": self._user_json(mr.username),
            "source_project_id": mr.project_id, "target_project_id": mr.project_id,
            "labels": [], "draft": False, "merge_status": "can_be_merged",
            "web_url": f"{self.url}/{project.path}/-/merge_requests/{mr.iid}",
            "references": {"short": f"!{mr.iid}", "relative": f"!{mr.iid}",
                           "full": f"{project.path}!{mr.iid}"},
        }

    def _listed(self, request: web.Request, rows: Iterable[FakeIssue | FakeMergeRequest],
                to_json: Callable[[Any], dict[str, Any]]) -> web.Response:
        """A project's issues or merge requests as GitLab lists them: `state` (default all),
        `labels` (all of them), `updated_after`, `order_by` (created_at, updated_at), `sort`,
        paginated."""
        project = self._project(request.match_info["project"])
        state = request.query.get("state", "all")
        wanted = {name.lower() for name in request.query.get("labels", "").split(",") if name}
        after = request.query.get("updated_after")
        found = [to_json(row) for row in rows
                 if row.project_id == project.project_id and state in ("all", row.state)]
        found = [item for item in found
                 if wanted <= {str(name).lower() for name in item["labels"]}
                 and (after is None or item["updated_at"] >= _iso(
                     datetime.fromisoformat(after.replace("Z", "+00:00"))))]
        key = "updated_at" if request.query.get("order_by") == "updated_at" else "created_at"
        found.sort(key=lambda item: (item[key], item["id"]),
                   reverse=request.query.get("sort", "desc") != "asc")
        return self._paged(request, found)

    async def _list_issues(self, request: web.Request) -> web.Response:
        return self._listed(request, self._issues.values(), self._issue_json)

    async def _list_merge_requests(self, request: web.Request) -> web.Response:
        return self._listed(request, self._merge_requests.values(), self._merge_request_json)

    async def _create_note(self, request: web.Request) -> web.Response:
        project = self._project(request.match_info["project"])
        body = self._text(request, "body")
        note_id = self.add_note(project.project_id, int(request.match_info["iid"]), body,
                                username=request[LOGIN])
        return self._answer(self._note_json(self._notes[note_id]), 201)

    async def _get_note(self, request: web.Request) -> web.Response:
        return self._answer(self._note_json(self._note(request)))

    async def _edit_note(self, request: web.Request) -> web.Response:
        note = self._note(request)
        login = request[LOGIN]
        # Authors edit their notes; Maintainers and up may edit anyone's.
        level = self._level(self._projects[note.project_id], self._user(login)[1])
        if note.username.lower() != login.lower() and (level is None or level[0] < 40):
            raise Refused(403, "403 Forbidden")
        note.body = self._text(request, "body")
        note.updated_at = self.clock()
        return self._answer(self._note_json(note))

    async def _award(self, request: web.Request) -> web.Response:
        note = self._note(request)
        name = self._text(request, "name")
        if not _EMOJI_NAME.match(name):
            raise Refused(404, "404 Award Emoji Name is not a valid emoji name Not Found")
        login = request[LOGIN]
        for award in self.awards(note.id):
            if award.name == name and award.username.lower() == login.lower():
                if self.duplicate_award_status == 409:
                    raise Refused(409, "409 Award Emoji Name has already been taken")
                raise Refused(404, "404 Award Emoji Name has already been taken Not Found")
        award = FakeAward(next(self._ids), note.id, name, self._user(login)[0], self.clock())
        self._awards.append(award)
        return self._answer(self._award_json(award), 201)

    async def _list_awards(self, request: web.Request) -> web.Response:
        return self._answer([self._award_json(a) for a in self.awards(self._note(request).id)])

    def _member_of(self, request: web.Request, *, inherited: bool) -> web.Response:
        project = self._project(request.match_info["project"])
        user_id = int(request.match_info["user_id"])
        if inherited:
            found = self._level(project, user_id)
        else:
            found = self._access.get((project.project_id, user_id))
        if found is not None and user_id in self._names:
            return self._answer(self._member_json(user_id, *found))
        # members/all uses find_by!, the direct route not_found!('Member').
        raise Refused(404, "404 Not found" if inherited else "404 Member Not Found")

    async def _direct_member(self, request: web.Request) -> web.Response:
        return self._member_of(request, inherited=False)

    async def _any_member(self, request: web.Request) -> web.Response:
        return self._member_of(request, inherited=True)

    async def _find_users(self, request: web.Request) -> web.Response:
        wanted = request.query.get("username")
        ids = sorted(self._names) if wanted is None else \
            [uid for uid in [self._user_ids.get(wanted.lower())] if uid is not None]
        response = self._answer([self._account_json(uid) for uid in ids])
        response.headers.update({"X-Page": "1", "X-Per-Page": "20", "X-Next-Page": "",
                                 "X-Prev-Page": "", "X-Total": str(len(ids)),
                                 "X-Total-Pages": "1"})
        return response

    async def _get_user(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        if user_id not in self._names:
            raise Refused(404, "404 User Not Found")
        return self._answer(self._full_user_json(user_id))

    async def _current_user(self, request: web.Request) -> web.Response:
        return self._answer(self._full_user_json(self._user(request[LOGIN])[1]))

    def _full_user_json(self, user_id: int) -> dict[str, Any]:
        return {**self._account_json(user_id), "created_at": "2020-01-01T00:00:00.000Z",
                "bio": "", "location": "", "public_email": None, "linkedin": "",
                "twitter": "", "discord": "", "website_url": "", "organization": "",
                "job_title": "", "pronouns": None, "bot": False, "work_information": None,
                "followers": 0, "following": 0, "is_followed": False, "local_time": None}


@pytest.fixture
async def gitlab_server() -> AsyncIterator[FakeGitLab]:
    """A started FakeGitLab, closed after the test."""
    fake = await FakeGitLab.start()
    try:
        yield fake
    finally:
        await fake.close()
