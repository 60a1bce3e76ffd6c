"""`bountybot demo`: a few bounties played through the real service, then its public pages.

Nothing to set up: a fresh SQLite file (in a new temporary directory, or the path given, which
must not hold anything yet: real books are never touched), made-up secrets, no network. The
story goes the way production goes: signed GitHub webhooks are posted over loopback to the real
app, stored in the inbox, applied by the worker through the rules, and the bot's answers leave
through the outbox, to `StandInForge`, which keeps them instead of writing to a forge. The
worker's clock is moved so the story spans three months; a payout is marked paid with a
reference through the same rule as `bountybot payouts mark-paid`. Then the pages are served
until Ctrl-C.

    async with DemoSite.start(path, port=0) as site:
        await play_story(site)
        print(site.url("/"))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlmodel import col, select

from bountybot.app import create_app
from bountybot.clock import utc_now
from bountybot.config import Settings
from bountybot.forges.events import Changes
from bountybot.forges.github_events import signature as github_signature
from bountybot.operator.deliveries import work_waiting
from bountybot.refs import RepoRef
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.storage import tables as t
from bountybot.storage.engine import create_engine

# Made up, and only ever checked by this process: the demo ships with them.
SECRET = "demo-webhook-secret-not-a-real-one"
TOKEN = "demo-token-not-a-real-one"
OWNER = "demo-commons"
MAINTAINER = "maya"
REPOS = {"garden": 424201, "lantern": 424202}


class DemoError(Exception):
    """Why the demo cannot start, in one sentence."""


@dataclass
class Written:
    """One thing the bot would have written on the forge."""

    what: str  # "comment", "edit", "react"
    repo: str
    number: int
    body: str = ""
    comment_id: str = ""


class StandInForge:
    """A forge client (`ForgeClient`) that writes nothing anywhere: it keeps what the bot
    would have written (`written`), and answers from what the story told it."""

    def __init__(self, maintainers: dict[str, set[str]] | None = None,
                 bot_login: str = "bountybot") -> None:
        self.maintainers = maintainers or {}
        self.bot_login = bot_login
        self.written: list[Written] = []
        # comment id -> (repo path, issue number, author, body)
        self.comments: dict[str, tuple[str, int, str, str]] = {}
        self._ids = itertools.count(7_000_001)

    def add_comment(self, repo: str, number: int, login: str, body: str) -> str:
        """A comment someone wrote on the forge (the story's own): returns its id."""
        cid = str(next(self._ids))
        self.comments[cid] = (repo, number, login, body)
        return cid

    async def is_maintainer(self, repo: RepoRef, login: str) -> bool:
        return login.lower() in self.maintainers.get(repo.full_path, set())

    async def create_comment(self, repo: RepoRef, number: int, body: str) -> str:
        cid = self.add_comment(repo.full_path, number, self.bot_login, body)
        self.written.append(Written("comment", repo.full_path, number, body, cid))
        return cid

    async def edit_comment(self, repo: RepoRef, number: int, comment_id: str, body: str) -> None:
        self.comments[comment_id] = (repo.full_path, number, self.bot_login, body)
        self.written.append(Written("edit", repo.full_path, number, body, comment_id))

    async def find_comment(self, repo: RepoRef, number: int, marker: str) -> str | None:
        for cid, (path, n, login, body) in self.comments.items():
            if (path, n, login) == (repo.full_path, number, self.bot_login) and marker in body:
                return cid
        return None

    async def react(self, repo: RepoRef, number: int, comment_id: str) -> None:
        self.written.append(Written("react", repo.full_path, number, "+1", comment_id))

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def username(self, repo: RepoRef, user_id: int) -> str:  # noqa: ARG002
        return f"user{user_id}"

    async def comment(self, repo: RepoRef, number: int, comment_id: str
                      ) -> tuple[str, str] | None:
        found = self.comments.get(comment_id)
        if found is None or found[:2] != (repo.full_path, number):
            return None
        return found[2], found[3]

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def user_login(self, repo: RepoRef, login: str) -> str | None:  # noqa: ARG002
        return login

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def changes(self, repo: RepoRef, *, label: str, since: datetime | None,  # noqa: ARG002
                      etags: dict[str, str]) -> Changes:
        return Changes(etags=dict(etags))


@dataclass
class DemoClock:
    """The worker's clock: a moment of the story while it is played, else the real time."""

    now: datetime | None = None

    def __call__(self) -> datetime:
        return self.now or utc_now()


def demo_settings(database: Path, port: int) -> Settings:
    """The demo's settings: no file, made-up secrets, the manual provider, GitHub only."""
    return Settings(
        config_file=None,
        server={"host": "127.0.0.1", "port": port},
        database={"url": f"sqlite+aiosqlite:///{database}"},
        github={"token": TOKEN, "webhook_secret": SECRET, "app_id": None,
                "private_key_file": None},
        gitlab={"token": None, "webhook_secret": None},
        payments={"provider": "manual", "manual_confirm": False},
        stripe={"api_key": None, "webhook_secret": None},
    )


def fresh_database(path: str | Path | None) -> Path:
    """The file the demo writes: a new one in a new temporary directory, or `path`, which must
    be missing or empty."""
    if path is None:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="bountybot-demo-")) / "demo.db"
    chosen = Path(path).expanduser().resolve()
    if chosen.exists() and (not chosen.is_file() or chosen.stat().st_size > 0):
        raise DemoError(f"{chosen} is not empty: the demo writes only to a new database"
                        " (give a path that does not exist yet, or none)")
    if not chosen.parent.is_dir():
        raise DemoError(f"{chosen.parent} is not a directory")
    return chosen


def _port_taken(port: int, error: OSError) -> str:
    other = port + 1 if 0 < port < 65535 else 8081
    return (f"cannot listen on 127.0.0.1:{port}: {error.strerror or error}; pick another port:"
            f" `bountybot demo --port {other}` (or `PORT={other} make demo`)")


@dataclass
class DemoSite:
    """The real app with the stand-in forge, listening on 127.0.0.1."""

    app: web.Application
    runner: web.AppRunner
    port: int
    forge: StandInForge
    clock: DemoClock
    database: Path
    engine: Any
    http: aiohttp.ClientSession | None = None
    deliveries: list[str] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, database: Path, port: int = 0) -> AsyncIterator[DemoSite]:
        from bountybot import service
        from bountybot.app import default_features
        from bountybot.inbox import WorkerOptions
        from bountybot.outbox import SenderOptions
        from bountybot.storage import migrate

        settings = demo_settings(database, port)
        if port:  # a port taken is said before anything is written
            import socket

            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as e:
                    raise DemoError(_port_taken(port, e)) from None
        await migrate.upgrade_async(settings.database.url)
        forge = StandInForge({f"{OWNER}/{name}": {MAINTAINER} for name in REPOS},
                             bot_login=settings.bot.login)
        clock = DemoClock()

        def with_stand_in(app: web.Application) -> None:
            # The scheduler stays off: no sweep expires the story's claims while it is shown.
            service.setup(app, clients={"github": forge}, clock=clock, scheduler=False,
                          worker_options=WorkerOptions(summary_delay=0.0),
                          sender_options=SenderOptions(base_delay=0.05, max_delay=0.2))

        features = [with_stand_in if f is service.setup else f for f in default_features()]
        engine = create_engine(settings.database.url)
        app = create_app(settings, engine=engine, features=features)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", port)
            try:
                await site.start()
            except OSError as e:
                raise DemoError(_port_taken(port, e)) from None
            bound = runner.addresses[0][1]
            async with aiohttp.ClientSession() as http:
                yield cls(app, runner, bound, forge, clock, database, engine, http)
        finally:
            await runner.cleanup()
            await engine.dispose()

    # -- deliveries ---------------------------------------------------------------------

    def _repository(self, name: str) -> dict[str, Any]:
        return {"id": REPOS[name], "full_name": f"{OWNER}/{name}", "name": name,
                "private": False, "html_url": f"https://github.com/{OWNER}/{name}",
                "owner": {"login": OWNER, "type": "Organization"}}

    def _issue(self, repo: str, number: int, title: str) -> dict[str, Any]:
        return {"id": REPOS[repo] * 1000 + number, "number": number, "title": title,
                "state": "open", "labels": [{"name": "bounty"}],
                "user": {"login": MAINTAINER, "type": "User"},
                "html_url": f"https://github.com/{OWNER}/{repo}/issues/{number}"}

    async def post(self, event: str, data: dict[str, Any]) -> None:
        """One signed delivery, over loopback, as GitHub sends it."""
        assert self.http is not None
        body = json.dumps(data).encode()
        delivery = str(uuid.uuid4())
        async with self.http.post(self.url("/webhooks/github"), data=body, headers={
                "Content-Type": "application/json", "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": github_signature(SECRET, body),
                "User-Agent": "GitHub-Hookshot/bountybot-demo"}) as response:
            if response.status not in (200, 202):
                raise DemoError(f"the service refused a {event} delivery:"
                                f" {response.status} {await response.text()}")
        self.deliveries.append(delivery)

    async def label(self, repo: str, number: int, title: str) -> None:
        await self.post("issues", {
            "action": "labeled", "label": {"name": "bounty"},
            "issue": self._issue(repo, number, title), "repository": self._repository(repo),
            "sender": {"login": MAINTAINER, "type": "User"}})

    async def comment(self, repo: str, number: int, title: str, login: str, body: str) -> None:
        cid = self.forge.add_comment(f"{OWNER}/{repo}", number, login, body)
        user = {"login": login, "type": "User"}
        await self.post("issue_comment", {
            "action": "created", "issue": self._issue(repo, number, title),
            "comment": {"id": int(cid), "body": body, "user": user},
            "repository": self._repository(repo), "sender": user})

    async def pull_request(self, repo: str, pr: int, author: str, closes: int, *,
                           merged: bool = False) -> None:
        user = {"login": author, "type": "User"}
        await self.post("pull_request", {
            "action": "closed" if merged else "opened", "number": pr,
            "pull_request": {"number": pr, "title": f"Fix #{closes}", "body": f"Closes #{closes}",
                             "user": user, "state": "closed" if merged else "open",
                             "merged": merged,
                             "html_url": f"https://github.com/{OWNER}/{repo}/pull/{pr}"},
            "repository": self._repository(repo), "sender": user})

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until every delivery is applied and every forge write sent."""
        from bountybot.service import RUNTIME

        runtime = self.app[RUNTIME]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            waiting, sending = await work_waiting(self.app[SESSIONMAKER])
            if not waiting and not sending:
                return
            if loop.time() > deadline:
                raise DemoError(f"the story did not settle in {timeout:.0f} s: {waiting}"
                                f" deliveries and {sending} forge writes waiting")
            runtime.wake_worker.set()
            runtime.wake_outbox.set()
            await asyncio.sleep(0.05)

    async def mark_paid(self, reference: str) -> None:
        """The latest payout, marked paid as `bountybot payouts mark-paid` does."""
        from bountybot.operator.payouts import mark_paid

        async with self.app[SESSIONMAKER]() as session:
            payout = (await session.exec(select(t.Payout).order_by(
                col(t.Payout.id).desc()))).first()
        if payout is None or payout.id is None:
            raise DemoError("the merge made no payout")
        await mark_paid(self.app[SESSIONMAKER], self.app[SETTINGS], payout.id, reference,
                        who=MAINTAINER, now=self.clock())


def story_months(today: date) -> tuple[date, date, date]:
    """The first days of the month before last, last month and this month."""
    this = today.replace(day=1)
    last = (this - timedelta(days=1)).replace(day=1)
    return (last - timedelta(days=1)).replace(day=1), last, this


async def play_story(site: DemoSite, today: date | None = None) -> None:
    """Two repos, three months, through webhooks:

    - garden #1 "Offline mode" (goal €300): funded two months ago, claimed, merged, paid
      (reference SEPA-DEMO-0001);
    - garden #2 "Dark theme" (goal €200): got €80 last month, cancelled, refunded;
    - lantern #1 "Faster search index" (goal €150): funded last month, claimed;
    - garden #3 "Export to CSV" (goal €250): funded this month;
    - lantern #2 "Plugin API" (goal €500): €120 of €500 this month.
    """
    now = utc_now()
    first, last, this = story_months(today or now.date())
    clock = site.clock

    def on(month: date, day: int, hour: int = 12) -> None:
        moment = datetime(month.year, month.month, day, hour, tzinfo=UTC)
        clock.now = min(moment, now)

    async def say(repo: str, number: int, title: str, *lines: tuple[str, str]) -> None:
        for login, body in lines:
            await site.comment(repo, number, title, login, body)

    try:
        offline = "Offline mode"
        on(first, 3)
        await site.label("garden", 1, offline)
        await say("garden", 1, offline, (MAINTAINER, "/goal 300"), ("ana", "/pledge 120"),
                  ("ben", "/pledge 100"), ("chloe", "/pledge 80"))
        await site.settle()
        on(first, 6)
        await say("garden", 1, offline, ("carol", "/claim"))
        await site.settle()
        on(first, 19)
        await site.pull_request("garden", 11, "carol", 1)
        await site.pull_request("garden", 11, "carol", 1, merged=True)
        await site.settle()
        on(first, 24)
        await site.mark_paid("SEPA-DEMO-0001")

        dark, search = "Dark theme", "Faster search index"
        on(last, 4)
        await site.label("garden", 2, dark)
        await say("garden", 2, dark, (MAINTAINER, "/goal 200"), ("dora", "/pledge 50"),
                  ("ben", "/pledge 30"))
        await site.settle()
        on(last, 9)
        await site.label("lantern", 1, search)
        await say("lantern", 1, search, (MAINTAINER, "/goal 150"), ("erin", "/pledge 100"),
                  ("ana", "/pledge 50"))
        await site.settle()
        on(last, 20)
        await say("garden", 2, dark, (MAINTAINER, "/cancel"))
        await site.settle()
        on(last, 22)
        await say("lantern", 1, search, ("felix", "/claim"))
        await site.settle()

        csv = "Export to CSV"
        on(this, 1, 9)
        await site.label("garden", 3, csv)
        await say("garden", 3, csv, (MAINTAINER, "/goal 250"), ("gina", "/pledge 150"),
                  ("ana", "/pledge 100"))
        await site.settle()

        plugins = "Plugin API"
        on(this, 1, 15)
        await site.label("lantern", 2, plugins)
        await say("lantern", 2, plugins, (MAINTAINER, "/goal 500"), ("hugo", "/pledge 70"),
                  ("chloe", "/pledge 50"))
        await site.settle()
    finally:
        clock.now = None


def page_urls(site: DemoSite, month: date | None = None) -> dict[str, str]:
    """The pages worth opening first."""
    garden = f"/github/{OWNER}/garden"
    return {
        "index": site.url("/"),
        "repo": site.url(garden),
        "task (paid)": site.url(f"{garden}/-/issues/1"),
        "monthly appeal": site.url(f"/github/{OWNER}/lantern/-/needs"),
        "appeal with a payout": site.url(
            f"{garden}/-/needs/{story_months(month or utc_now().date())[0]:%Y-%m}"),
    }


async def run(database: str | Path | None, port: int,
              say: Callable[[str], None] = print) -> int:
    """The whole demo: play the story, print the addresses, serve until cancelled."""
    path = fresh_database(database)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with DemoSite.start(path, port) as site:
        await play_story(site)
        took = loop.time() - started
        writes = sum(1 for w in site.forge.written if w.what in ("comment", "edit"))
        say(f"bountybot demo: 5 bounties in 2 repos over 3 months, played through"
            f" {len(site.deliveries)} signed webhooks in {took:.1f} s; the stand-in forge"
            f" kept the bot's {writes} comments and edits")
        say(f"database: {path} (yours to delete)")
        for name, url in page_urls(site).items():
            say(f"  {name + ':':<22}{url}")
        say("serving until Ctrl-C")
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return 0
