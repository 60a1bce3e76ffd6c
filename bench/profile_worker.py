"""The delivery worker alone, in this process, under cProfile: N `/pledge` deliveries stored
through the real door (no worker running), then applied by `run_once` until none is left;
prints the rate, the SQL statements per delivery and the hottest functions.

    .venv/bin/python bench/profile_worker.py [--pledges 600] [--database URL] [--top 40]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, func
from sqlmodel import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bountybot.app import create_app  # noqa: E402
from bountybot.config import Settings  # noqa: E402
from bountybot.service import RUNTIME, setup  # noqa: E402
from bountybot.storage import migrate  # noqa: E402
from bountybot.storage import tables as t  # noqa: E402
from bountybot.storage.books import run_audit  # noqa: E402
from bountybot.storage.engine import create_engine  # noqa: E402

from fakes.github import FakeGitHub  # noqa: E402
from fixtures import payload  # noqa: E402
from github_harness import MAINTAINER, REPO, REPO_ID, SECRET, TOKEN, sign  # noqa: E402


async def main(pledges: int, url: str, top: int) -> None:
    migrate.upgrade(url)
    fake = await FakeGitHub.start()
    fake.accept_token(TOKEN)
    fake.add_repo(REPO, REPO_ID)
    fake.set_permission(REPO, MAINTAINER, "maintain")
    settings = Settings.model_validate({"database": {"url": url}, "github": {
        "api_url": fake.url, "token": TOKEN, "webhook_secret": SECRET}})
    engine = create_engine(url)
    app = create_app(settings, engine=engine, features=[])
    setup(app, background=False, scheduler=False, payment_loop=False)
    client = TestClient(TestServer(app))
    await client.start_server()
    worker = app[RUNTIME].worker
    assert worker is not None

    async def post(kind: str, data: dict[str, object]) -> None:
        body = json.dumps(data).encode()
        answer = await client.post("/webhooks/github", data=body, headers={
            "X-GitHub-Event": kind, "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body), "Content-Type": "application/json"})
        assert answer.status == 202, answer.status

    for number in range(1, 11):
        data = payload("github", "issues.labeled")
        data["label"]["name"] = "bounty"
        data["issue"]["number"] = number
        await post("issues", data)
    while await worker.run_once():
        pass
    for i in range(pledges):
        data = payload("github", "issue_comment.created")
        data["issue"]["number"] = 1 + i % 10
        data["comment"].update(id=10**6 + i, body="/pledge 5")
        data["comment"]["user"]["login"] = f"backer{i % 97}"
        await post("issue_comment", data)

    statements = 0

    def counted(*_args: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine.sync_engine, "before_cursor_execute", counted)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    done = 0
    while applied := await worker.run_once():
        done += applied
    profile.disable()
    seconds = time.perf_counter() - start
    print(f"{done} deliveries in {seconds:.2f} s: {done / seconds:.0f}/s;"
          f" {statements / max(done, 1):.1f} SQL statements each")
    # What was applied, not only handled: every pledge written, and books that hold.
    async with worker.sessionmaker() as session:
        written = (await session.exec(select(func.count()).select_from(t.Pledge))).one()
    report = await run_audit(worker.sessionmaker)
    print(f"pledges applied: {written} of {pledges}; audit: {report.render()}")
    pstats.Stats(profile).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(top)
    if written != pledges or not report.ok:
        raise SystemExit("the worker did not apply every pledge, or the books do not hold")
    await client.close()
    await engine.dispose()
    await fake.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pledges", type=int, default=600)
    parser.add_argument("--database", help="an SQLAlchemy URL (default: a new SQLite file)")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.database or f"sqlite+aiosqlite:///{Path(tmp) / 'profile.db'}"
        asyncio.run(main(args.pledges, db, args.top))
