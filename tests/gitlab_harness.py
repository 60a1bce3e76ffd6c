"""A bountybot talking to a local fake GitLab, fed GitLab's published payloads with the real
token header; the same shape as `github_harness` (see there)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from bountybot.api.routes import setup as api_setup
from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.resources import SESSIONMAKER
from bountybot.rules import Bounty
from bountybot.service import setup
from bountybot.storage import tables as t
from bountybot.storage.bounties import load_bounty
from bountybot.storage.engine import create_engine

from fakes.gitlab import FakeGitLab
from fixtures import payload
from github_harness import QUICK_SENDER, QUICK_WORKER, GitHubBot

GL_SECRET = "gl-hook-token-7f3a9c2e"
GL_TOKEN = "glpat-test0123456789abcdef"
PROJECT = "commons/sub/garden"
PROJECT_ID = 4242
USERS = {"maya": 10, "alice": 11, "bob": 12, "carol": 13, "dave": 14, "erin": 15, "frank": 16,
         "mallory": 17, "bountybot": 99}
LABEL = {"id": 7, "title": "bounty", "color": "#428BCA", "project_id": PROJECT_ID,
         "type": "ProjectLabel", "group_id": None, "template": False, "description": None}


def prepare(fake: FakeGitLab) -> None:
    fake.accept_token(GL_TOKEN, login="bountybot")
    for name, user_id in USERS.items():
        fake.add_user(name, user_id)
    fake.add_project(PROJECT, PROJECT_ID)
    fake.set_access(PROJECT_ID, "maya", 40)


def gitlab_settings(fake: FakeGitLab) -> dict[str, Any]:
    return {"url": fake.url, "token": GL_TOKEN, "webhook_secret": GL_SECRET}


class GitLabBot(GitHubBot):
    """Reuses the GitHub harness's app handling (settle, rows); talks GitLab."""

    gitlab: FakeGitLab
    notes_ids: Iterator[int]

    @classmethod
    async def start_gitlab(cls, db_url: str, fake: FakeGitLab, *,
                           max_body: int = 25 * 1024 * 1024, github: Any = None,
                           features: list[Any] | None = None,
                           sections: dict[str, Any] | None = None, **bot: Any) -> GitLabBot:
        prepare(fake)
        data: dict[str, Any] = {
            "database": {"url": db_url}, "server": {"max_body_bytes": max_body},
            "gitlab": gitlab_settings(fake), "bot": bot, **(sections or {}),
        }
        if github is not None:
            from github_harness import REPO, REPO_ID, SECRET, TOKEN

            github.accept_token(TOKEN)
            github.add_repo(REPO, REPO_ID)
            github.set_permission(REPO, "maya", "maintain")
            data["github"] = {"api_url": github.url, "token": TOKEN, "webhook_secret": SECRET}
        settings = Settings.model_validate(data)
        engine = create_engine(db_url)
        app = create_app(settings, engine=engine, features=[api_setup, *(features or [])])
        setup(app, scheduler=False, sender_options=QUICK_SENDER, worker_options=QUICK_WORKER)
        client = TestClient(TestServer(app))
        await client.start_server()
        harness = cls(client, github, engine)  # type: ignore[arg-type]
        harness.gitlab = fake
        harness.notes_ids = itertools.count(70_001)
        return harness

    async def post_gitlab(self, event: str, data: dict[str, Any] | bytes, *,
                          key: str | None = None, token: str | None = GL_SECRET,
                          uuid_only: bool = False) -> Any:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        headers = {"Content-Type": "application/json", "X-Gitlab-Event": event,
                   "X-Gitlab-Event-UUID": str(uuid.uuid4()), "User-Agent": "GitLab/17.6.0"}
        if not uuid_only:
            headers["Idempotency-Key"] = key or str(uuid.uuid4())
        if token is not None:
            headers["X-Gitlab-Token"] = token
        return await self.client.post("/webhooks/gitlab", data=body, headers=headers)

    def _project(self, data: dict[str, Any]) -> None:
        data["project"].update(id=PROJECT_ID, path_with_namespace=PROJECT,
                               web_url=f"{self.gitlab.url}/{PROJECT}")
        if "project_id" in data:
            data["project_id"] = PROJECT_ID

    def _user(self, data: dict[str, Any], login: str) -> None:
        data["user"].update(id=USERS[login], username=login, name=login.title())

    async def label(self, number: int = 1, name: str = "bounty",  # type: ignore[override]
                    action: str = "labeled") -> Any:
        data = payload("gitlab", "issue_hook.open")
        self._project(data)
        self._user(data, "maya")
        ours = dict(LABEL, title=name)
        added = action == "labeled"
        data["object_attributes"].update(iid=number, action="update", state="opened",
                                         url=f"{self.gitlab.url}/{PROJECT}/-/issues/{number}")
        data["labels"] = [ours] if added else []
        data["changes"] = {"labels": {"previous": [] if added else [ours],
                                      "current": [ours] if added else []}}
        return await self.post_gitlab("Issue Hook", data)

    async def comment(self, login: str, body: str, number: int = 1, *,  # type: ignore[override]
                      # GitHubBot's signature; GitLab's note payload has no user type.
                      user_type: str = "User", delivery: str | None = None,  # noqa: ARG002
                      no_action: bool = False) -> Any:
        data = payload("gitlab", "note_hook.issue.create")
        self._project(data)
        self._user(data, login)
        note_id = self.gitlab.add_note(PROJECT_ID, number, body, username=login)
        data["object_attributes"].update(id=note_id, note=body, author_id=USERS[login])
        if no_action:
            data["object_attributes"].pop("action", None)
        data["issue"].update(iid=number, title="Add a seed library",
                             url=f"{self.gitlab.url}/{PROJECT}/-/issues/{number}")
        return await self.post_gitlab("Note Hook", data, key=delivery)

    async def close_issue(self, number: int = 1,  # type: ignore[override]
                          reason: str = "completed") -> Any:  # noqa: ARG002 - GitHubBot's signature
        data = payload("gitlab", "issue_hook.open")
        self._project(data)
        self._user(data, "maya")
        data["object_attributes"].update(iid=number, action="close", state="closed")
        data["labels"] = [LABEL]
        data["changes"] = {}
        return await self.post_gitlab("Issue Hook", data)

    async def pull_request(self, action: str, author: str, pr: int,  # type: ignore[override]
                           body: str, *, merged: bool = False) -> Any:
        data = payload("gitlab", "merge_request_hook.open")
        self._project(data)
        self._user(data, "maya")  # the user who acted (e.g. merged), not the author
        gl_action = {"opened": "open", "closed": "merge" if merged else "close"}.get(action,
                                                                                   action)
        state = {"merge": "merged", "close": "closed"}.get(gl_action, "opened")
        data["object_attributes"].update(
            iid=pr, action=gl_action, state=state, author_id=USERS[author],
            title="Seed library", description=body,
            url=f"{self.gitlab.url}/{PROJECT}/-/merge_requests/{pr}")
        data["changes"] = {}
        return await self.post_gitlab("Merge Request Hook", data)

    async def task(self, number: int = 1) -> Bounty | None:  # type: ignore[override]
        async with self.app[SESSIONMAKER]() as session:
            repo = (await session.exec(select(t.Repo).where(
                t.Repo.forge == "gitlab", t.Repo.forge_repo_id == str(PROJECT_ID)))).first()
            if repo is None:
                return None
            return await load_bounty(session, repo, number)

    def bot_comments(self, number: int = 1) -> list[Any]:  # type: ignore[override]
        return [n for n in self.gitlab.notes(PROJECT_ID, number) if n.username == "bountybot"]
