"""A bountybot talking to a local fake GitHub, fed GitHub's published payloads, signed for real.

    bot = await GitHubBot.start(db_url, fake)
    await bot.label(1); await bot.comment("alice", "/pledge 20"); await bot.settle()

Every delivery goes through real HTTP to the real aiohttp app (signature, inbox, 202); the worker
and the outbox run in the background as in production; the bot's GitHub writes reach the fake
over loopback, which records them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Self

from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from bountybot.api.routes import setup as api_setup
from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.forges.github_events import signature as github_signature
from bountybot.governor import Governor
from bountybot.inbox import WorkerOptions
from bountybot.operator.deliveries import work_waiting
from bountybot.operator.payouts import mark_paid
from bountybot.outbox import SenderOptions
from bountybot.payments.stripe_api import StripeGateway
from bountybot.payments.worker import PaymentOptions
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.rules import Bounty
from bountybot.service import RUNTIME, setup
from bountybot.storage import tables as t
from bountybot.storage.bounties import load_bounty
from bountybot.storage.engine import create_engine

from fakes.github import FakeGitHub
from fixtures import payload

SECRET = "whsec-test-0a1b2c3d4e5f"
TOKEN = "ghp_test0123456789abcdef"
REPO = "Codertocat/Hello-World"
REPO_ID = 186853002
MAINTAINER = "maya"
# The outbox retries at once and summaries go out with no delay: the tests wait for nothing.
QUICK_SENDER = SenderOptions(base_delay=0.05, max_delay=0.2)
QUICK_WORKER = WorkerOptions(summary_delay=0.0)


def sign(body: bytes, secret: str = SECRET) -> str:
    return github_signature(secret, body)


class GitHubBot:
    def __init__(self, client: TestClient, fake: FakeGitHub, engine: Any) -> None:
        self.client = client
        self.fake = fake
        self.engine = engine
        self.app = client.app
        self.ids = itertools.count(900_000_001)

    @classmethod
    async def start(cls, db_url: str, fake: FakeGitHub, *, max_body: int = 25 * 1024 * 1024,
                    governor: Governor | None = None,
                    clock: Callable[[], datetime] | None = None,
                    sender_options: SenderOptions = QUICK_SENDER,
                    payments: dict[str, Any] | None = None,
                    sections: dict[str, Any] | None = None,
                    gateway: StripeGateway | None = None,
                    payment_options: PaymentOptions | None = None,
                    payment_loop: bool | None = None,
                    features: list[Any] | None = None, **bot: Any) -> Self:
        """`sections`: more settings (`{"stripe": {...}}`); `gateway`, `payment_options`,
        `payment_loop`: as for `bountybot.service.setup`; `features`: more features' `setup`s
        (the badges, the pages), after the API's."""
        fake.accept_token(TOKEN)
        fake.add_repo(REPO, REPO_ID)
        fake.set_permission(REPO, MAINTAINER, "maintain")
        settings = Settings.model_validate({
            "database": {"url": db_url},
            "server": {"max_body_bytes": max_body},
            "github": {"api_url": fake.url, "token": TOKEN, "webhook_secret": SECRET},
            "bot": bot,
            "payments": payments or {},
            **(sections or {}),
        })
        engine = create_engine(db_url)
        app = create_app(settings, engine=engine, features=[api_setup, *(features or [])])
        # The scheduler stays off: tests that need the sweeps run them with a moved clock.
        setup(app, governor=governor, sender_options=sender_options, worker_options=QUICK_WORKER,
              clock=clock, scheduler=False, gateway=gateway, payment_options=payment_options,
              payment_loop=payment_loop)
        client = TestClient(TestServer(app))
        await client.start_server()
        return cls(client, fake, engine)

    async def close(self) -> None:
        await self.client.close()
        await self.engine.dispose()

    # -- deliveries ---------------------------------------------------------------------

    async def post(self, event: str, data: dict[str, Any] | bytes, *,
                   delivery: str | None = None, signature: str | None = None) -> Any:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
                   "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                   "X-Hub-Signature-256": signature or sign(body),
                   "User-Agent": "GitHub-Hookshot/test"}
        return await self.client.post("/webhooks/github", data=body, headers=headers)

    def _issue(self, data: dict[str, Any], number: int) -> None:
        data["issue"]["number"] = number
        data["issue"]["html_url"] = f"https://github.com/{REPO}/issues/{number}"

    async def label(self, number: int = 1, name: str = "bounty", action: str = "labeled") -> Any:
        data = payload("github", f"issues.{action}")
        data["label"]["name"] = name
        self._issue(data, number)
        return await self.post("issues", data)

    async def comment(self, login: str, body: str, number: int = 1, *,
                      user_type: str = "User", delivery: str | None = None) -> Any:
        data = payload("github", "issue_comment.created")
        self._issue(data, number)
        cid = self.fake.add_comment(REPO, number, body, login=login, user_type=user_type)
        data["comment"].update(id=cid, body=body)
        data["comment"]["user"].update(login=login, type=user_type)
        data["sender"].update(login=login)
        return await self.post("issue_comment", data, delivery=delivery)

    async def close_issue(self, number: int = 1, reason: str = "completed") -> Any:
        data = payload("github", "issues.closed")
        data["repository"] = payload("github", "issues.labeled")["repository"]
        self._issue(data, number)
        data["issue"]["state_reason"] = reason
        return await self.post("issues", data)

    async def pull_request(self, action: str, author: str, pr: int, body: str, *,
                           merged: bool = False) -> Any:
        data = payload("github", "pull_request.opened")
        data["action"] = action
        data["number"] = pr
        data["pull_request"].update(number=pr, body=body, merged=merged,
                                    html_url=f"https://github.com/{REPO}/pull/{pr}")
        data["pull_request"]["user"]["login"] = author
        if action == "closed":
            data["pull_request"]["state"] = "closed"
        return await self.post("pull_request", data)

    async def paid_task(self, reference: str, number: int = 1) -> None:
        """The stories' finished bounty: #`number` (goal €100) funded by alice 60 and bob 40,
        claimed by carol, closed by her merged pull request 7, and marked paid with
        `reference`."""
        await self.label(number)
        await self.comment("maya", "/goal 100", number)
        await self.comment("alice", "/pledge 60", number)
        await self.comment("bob", "/pledge 40", number)
        await self.settle()
        await self.comment("carol", "/claim", number)
        await self.settle()
        await self.pull_request("opened", "carol", 7, f"Closes #{number}")
        await self.settle()
        await self.pull_request("closed", "carol", 7, f"Closes #{number}", merged=True)
        await self.settle()
        [payout] = [p for p in await self.rows(t.Payout) if p.state == "pending"]
        assert payout.id is not None
        await mark_paid(self.app[SESSIONMAKER], self.app[SETTINGS], payout.id, reference)

    # -- waiting and looking --------------------------------------------------------------

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until every delivery is handled and every message sent (or dead)."""
        runtime = self.app[RUNTIME]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting, sending = await work_waiting(self.app[SESSIONMAKER])
            if not waiting and not sending:
                return
            runtime.wake_worker.set()
            runtime.wake_outbox.set()
            await asyncio.sleep(0.02)
        raise AssertionError(f"not settled after {timeout}s: {waiting} deliveries, "
                             f"{sending} messages pending")

    async def task(self, number: int = 1) -> Bounty | None:
        async with self.app[SESSIONMAKER]() as session:
            repo = (await session.exec(select(t.Repo).where(
                t.Repo.forge_repo_id == str(REPO_ID)))).first()
            if repo is None:
                return None
            return await load_bounty(session, repo, number)

    async def existing_task(self, number: int = 1) -> Bounty:
        """The task of issue `number`, which the test has made."""
        task = await self.task(number)
        assert task is not None, f"issue #{number} has no task"
        return task

    async def rows(self, table: Any) -> list[Any]:
        async with self.app[SESSIONMAKER]() as session:
            return list((await session.exec(select(table))).all())

    def bot_comments(self, number: int = 1) -> list[Any]:
        return [c for c in self.fake.comments(REPO, number) if c.login == "bountybot"]
