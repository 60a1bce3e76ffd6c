"""A bountybot talking to a local fake Forgejo, fed Forgejo's (and Gitea's) published payloads,
signed for real with the HMAC-SHA256 of the raw body; the same shape as `github_harness`.

    bot = await ForgejoBot.start_forgejo(db_url, fake)
    await bot.label(1); await bot.comment("alice", "/pledge 20"); await bot.settle()

Payloads are the recorded ones in tests/fixtures/forgejo/webhooks/, their repo, issue, users and
text replaced in code; the body is sent as Forgejo sends it (`json.MarshalIndent`, two-space
indent) under both header names (`X-Forgejo-*` and `X-Gitea-*`). Every comment a delivery
carries is also put on the fake first, as Forgejo has it before it sends the hook: the bot
confirms comments through the API (`FORGE.confirms_comments`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from gitlab_harness import GitLabBot, gitlab_settings
from gitlab_harness import prepare as prepare_gitlab
from sqlmodel import select

from bountybot.api.routes import setup as api_setup
from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.forges.forgejo_events import signature as forgejo_signature
from bountybot.resources import SESSIONMAKER
from bountybot.rules import Bounty
from bountybot.service import setup
from bountybot.storage import tables as t
from bountybot.storage.bounties import load_bounty
from bountybot.storage.engine import create_engine

from fakes.forgejo import FakeForgejo
from fixtures import payload
from github_harness import QUICK_SENDER, QUICK_WORKER

FJ_SECRET = "fj-hook-secret-5d2e8a1c"
FJ_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"  # a Forgejo access token's shape (40 hex)
FJ_REPO = "commons/seed-library"
FJ_REPO_ID = 31337
FJ_MAINTAINER = "maya"
FJ_LABEL = {"id": 12, "name": "bounty", "color": "e11d21",
            "description": "Crowdfunded on bountybot", "url": ""}


def fj_sign(body: bytes, secret: str = FJ_SECRET) -> str:
    """`X-Forgejo-Signature`: hex HMAC-SHA256 of the raw body, no prefix."""
    return forgejo_signature(secret, body)


def prepare(fake: FakeForgejo, repo: str = FJ_REPO, repo_id: int = FJ_REPO_ID) -> None:
    fake.accept_token(FJ_TOKEN, login="bountybot")
    fake.add_repo(repo, repo_id)
    fake.set_permission(repo, FJ_MAINTAINER, "write")
    fake.set_permission(repo, "mallory", "read")


def user_id(login: str) -> int:
    """A stable positive id per login (Forgejo's pseudo-users have negative ones)."""
    return 1000 + sum(login.encode())


class ForgejoBot(GitLabBot):
    """Reuses the GitLab harness (and so the GitHub one): one app can be driven on all three
    forges (`GitHubBot.label(bot, ...)`, `GitLabBot.label(bot, ...)`); talks Forgejo."""

    forgejo: FakeForgejo

    @classmethod
    async def start_forgejo(cls, db_url: str, fake: FakeForgejo, *,
                            max_body: int = 25 * 1024 * 1024, github: Any = None,
                            gitlab: Any = None, repo_secrets: dict[str, str] | None = None,
                            **bot: Any) -> ForgejoBot:
        """`github`, `gitlab`: their fakes, to serve those forges from the same app too."""
        prepare(fake)
        data: dict[str, Any] = {
            "database": {"url": db_url}, "server": {"max_body_bytes": max_body}, "bot": bot,
            "forgejo": {"url": fake.url, "token": FJ_TOKEN, "webhook_secret": FJ_SECRET,
                        "repo_secrets": repo_secrets or {}},
        }
        if github is not None:
            from github_harness import REPO, REPO_ID, SECRET, TOKEN

            github.accept_token(TOKEN)
            github.add_repo(REPO, REPO_ID)
            github.set_permission(REPO, "maya", "maintain")
            data["github"] = {"api_url": github.url, "token": TOKEN, "webhook_secret": SECRET}
        if gitlab is not None:
            prepare_gitlab(gitlab)
            data["gitlab"] = gitlab_settings(gitlab)
        settings = Settings.model_validate(data)
        engine = create_engine(db_url)
        app = create_app(settings, engine=engine, features=[api_setup])
        setup(app, scheduler=False, sender_options=QUICK_SENDER, worker_options=QUICK_WORKER)
        client = TestClient(TestServer(app))
        await client.start_server()
        harness = cls(client, github, engine)
        harness.gitlab = gitlab
        harness.forgejo = fake
        return harness

    # -- deliveries ---------------------------------------------------------------------

    async def post_forgejo(self, event: str, data: dict[str, Any] | bytes, *,
                           event_type: str | None = None, delivery: str | None = None,
                           secret: str = FJ_SECRET, signature: str | None = None,
                           brands: tuple[str, ...] = ("Forgejo", "Gitea")) -> Any:
        """One delivery as Forgejo sends it: both header names (Gitea sends only its own),
        signed with `secret` (or the `signature` given, "" for none)."""
        body = data if isinstance(data, bytes) else json.dumps(data, indent=2).encode()
        signed = fj_sign(body, secret) if signature is None else signature
        delivery = delivery or str(uuid.uuid4())
        headers = {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1"}
        for brand in brands:
            headers.update({f"X-{brand}-Event": event,
                            f"X-{brand}-Event-Type": event_type or event,
                            f"X-{brand}-Delivery": delivery})
            if signed:
                headers[f"X-{brand}-Signature"] = signed
        return await self.client.post("/webhooks/forgejo", data=body, headers=headers)

    def _fj_repository(self, data: dict[str, Any], path: str, repo_id: int) -> None:
        owner, name = path.split("/")
        repository = data["repository"]
        repository.update(id=repo_id, name=name, full_name=path, private=False,
                          html_url=f"{self.forgejo.url}/{path}")
        repository["owner"].update(id=user_id(owner), login=owner, username=owner)
        if isinstance(data.get("issue"), dict):
            data["issue"]["repository"] = {"id": repo_id, "name": name, "owner": owner,
                                           "full_name": path}

    @staticmethod
    def _fj_user(user: dict[str, Any], login: str) -> None:
        user.update(id=user_id(login), login=login, username=login,
                    email=f"{login}@noreply.localhost")

    def _fj_issue(self, data: dict[str, Any], number: int, path: str, repo_id: int,
               labels: list[str] | None = None) -> None:
        self._fj_repository(data, path, repo_id)
        issue = data["issue"]
        issue.update(number=number, title="Add a seed library", state="open",
                     html_url=f"{self.forgejo.url}/{path}/issues/{number}",
                     url=f"{self.forgejo.url}/api/v1/repos/{path}/issues/{number}")
        if labels is not None:
            issue["labels"] = [dict(FJ_LABEL, id=i + 1, name=name)
                               for i, name in enumerate(labels)]
        if "number" in data:
            data["number"] = number

    async def labels(self, number: int, names: list[str], *, action: str = "label_updated",
                     path: str = FJ_REPO, repo_id: int = FJ_REPO_ID,
                     secret: str = FJ_SECRET) -> Any:
        """An `issue_label` delivery: Forgejo sends the issue's whole label list, never the
        label that changed."""
        data = payload("forgejo", "issue_label.label_updated")
        data["action"] = action
        self._fj_issue(data, number, path, repo_id, names)
        self._fj_user(data["sender"], FJ_MAINTAINER)
        self.forgejo.set_labels(path, number, names)  # as reconciliation will read them
        return await self.post_forgejo("issues", data, event_type="issue_label", secret=secret)

    async def label(self, number: int = 1, name: str = "bounty",  # type: ignore[override]
                    action: str = "labeled") -> Any:
        """GitHubBot's `label`: `labeled` is a list holding `name`, `unlabeled` an empty one."""
        return await self.labels(number, [name] if action == "labeled" else [])

    async def opened(self, number: int, labels: list[str]) -> Any:
        """`issues` `opened`, the issue already carrying `labels`."""
        data = payload("forgejo", "issues.opened")
        self._fj_issue(data, number, FJ_REPO, FJ_REPO_ID, labels)
        self._fj_user(data["issue"]["user"], FJ_MAINTAINER)
        self._fj_user(data["sender"], FJ_MAINTAINER)
        self.forgejo.set_labels(FJ_REPO, number, labels)
        return await self.post_forgejo("issues", data)

    async def comment(self, login: str, body: str, number: int = 1, *,  # type: ignore[override]
                      delivery: str | None = None, on_pull: bool = False,
                      pull_marked: bool = True, api_body: str | None = None,
                      api_login: str | None = None, author_id: int | None = None,
                      path: str = FJ_REPO, repo_id: int = FJ_REPO_ID,
                      secret: str = FJ_SECRET) -> Any:
        """An `issue_comment` `created` (`on_pull`: on pull request `number`, `is_pull: true`,
        and `issue.pull_request` set unless not `pull_marked`, as in Forgejo's own test
        payloads), written on the fake first as `api_body` by `api_login` (by default the
        same); `author_id`: the author's id (Forgejo's pseudo-users have negative ones)."""
        data = payload("forgejo", "pull_request_comment.created" if on_pull
                       else "issue_comment.created")
        self._fj_issue(data, number, path, repo_id)
        if on_pull and not pull_marked:
            data["issue"]["pull_request"] = None
        cid = self.forgejo.add_comment(path, number, body if api_body is None else api_body,
                                       login=api_login or login)
        web = f"{self.forgejo.url}/{path}/{'pulls' if on_pull else 'issues'}/{number}"
        data["comment"].update(id=cid, body=body, html_url=f"{web}#issuecomment-{cid}",
                               issue_url="" if on_pull else web,
                               pull_request_url=web if on_pull else "")
        self._fj_user(data["comment"]["user"], login)
        self._fj_user(data["sender"], login)
        if author_id is not None:
            data["comment"]["user"]["id"] = data["sender"]["id"] = author_id
        return await self.post_forgejo("issue_comment", data, delivery=delivery,
                                       event_type="pull_request_comment" if on_pull
                                       else "issue_comment", secret=secret)

    async def close_issue(self, number: int = 1,  # type: ignore[override]
                          reason: str = "completed") -> Any:  # noqa: ARG002 - GitHubBot's signature
        """`issues` `closed`, as Forgejo sends it after a merge closed the issue (Forgejo has no
        "not planned"): the captured `opened` delivery with its action and state changed."""
        data = payload("forgejo", "issues.opened")
        data["action"] = "closed"
        self._fj_issue(data, number, FJ_REPO, FJ_REPO_ID, ["bounty"])
        data["issue"]["state"] = "closed"
        self._fj_user(data["sender"], FJ_MAINTAINER)
        return await self.post_forgejo("issues", data)

    async def pull_request(self, action: str, author: str, pr: int,  # type: ignore[override]
                           body: str, *, merged: bool = False) -> Any:
        """`opened` (Gitea's capture) or `closed`, merged or not (gitea.com's captures)."""
        name = {"opened": "pull_request.opened"}.get(
            action, "pull_request.closed.merged" if merged else "pull_request.closed")
        data = payload("forgejo", name)
        self._fj_repository(data, FJ_REPO, FJ_REPO_ID)
        data["number"] = pr
        html = f"{self.forgejo.url}/{FJ_REPO}/pulls/{pr}"
        data["pull_request"].update(number=pr, title="Seed library", body=body, html_url=html,
                                    url=html, merged=merged,
                                    state="closed" if action == "closed" else "open")
        self._fj_user(data["pull_request"]["user"], author)
        self._fj_user(data["sender"], FJ_MAINTAINER if action == "closed" else author)
        return await self.post_forgejo("pull_request", data)

    # -- looking --------------------------------------------------------------------------

    async def task(self, number: int = 1) -> Bounty | None:  # type: ignore[override]
        async with self.app[SESSIONMAKER]() as session:
            repo = (await session.exec(select(t.Repo).where(
                t.Repo.forge == "forgejo", t.Repo.forge_repo_id == str(FJ_REPO_ID)))).first()
            if repo is None:
                return None
            return await load_bounty(session, repo, number)

    def bot_comments(self, number: int = 1) -> list[Any]:  # type: ignore[override]
        return [c for c in self.forgejo.comments(FJ_REPO, number) if c.login == "bountybot"]
