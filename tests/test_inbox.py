"""The delivery worker: batches in order, one bad delivery never holds up the others."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from bountybot.config import Settings
from bountybot.forges.base import ForgeError
from bountybot.inbox import DeliveryWorker
from bountybot.inbox_writer import insert_new
from bountybot.refs import RepoRef
from bountybot.states import PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.bounties import load_bounty
from bountybot.storage.uow import UnitOfWork

from fixtures import payload

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def label(number: int) -> dict:
    data = payload("github", "issues.labeled")
    data["label"]["name"] = "bounty"
    data["issue"]["number"] = number
    return data


def comment(number: int, cid: int, login: str, body: str) -> dict:
    data = payload("github", "issue_comment.created")
    data["issue"]["number"] = number
    data["comment"].update(id=cid, body=body)
    data["comment"]["user"]["login"] = login
    return data


async def store(sessionmaker, items: list[tuple[str, dict | str]]) -> None:
    rows = [dict(forge="github", delivery_id=f"d{i}", event=kind,
                 payload=data if isinstance(data, str) else json.dumps(data),
                 state=t.DeliveryState.PENDING, attempts=0, received_at=NOW)
            for i, (kind, data) in enumerate(items)]
    async with UnitOfWork(sessionmaker) as uow:
        await insert_new(uow.session, rows)


class Maintainers:
    """A forge client that only answers who maintains the repo (or fails while `down`)."""

    def __init__(self, logins: set[str]) -> None:
        self.logins = logins
        self.down = False
        self.asked: list[str] = []

    # The ForgeClient protocol's signature: not every argument is needed here.
    async def is_maintainer(self, repo: RepoRef, login: str) -> bool:  # noqa: ARG002
        self.asked.append(login)
        if self.down:
            raise ForgeError("GitHub answered 502", status=502, retryable=True)
        return login in self.logins


async def states(sessionmaker) -> dict[str, tuple[str, int, str | None]]:
    async with sessionmaker() as session:
        rows = (await session.exec(select(t.Delivery))).all()
    return {r.delivery_id: (r.state, r.attempts, r.error) for r in rows}


async def test_a_batch_is_applied_in_order_and_a_bad_delivery_fails_alone(sessionmaker):
    settings = Settings()
    await store(sessionmaker, [
        ("issues", label(1)),
        ("issue_comment", comment(1, 1, "alice", "/pledge 10")),
        ("issue_comment", "{\"issue\": {}}"),  # parses as JSON, but is no comment
        ("issue_comment", comment(1, 2, "bob", "/pledge 5")),
        ("issue_comment", comment(1, 3, "alice", "/withdraw")),
    ])
    worker = DeliveryWorker(sessionmaker, settings, {}, clock=lambda: NOW, max_attempts=2)
    assert await worker.run_once() == 4
    seen = await states(sessionmaker)
    assert seen["d2"][0] == t.DeliveryState.PENDING and seen["d2"][1] == 1
    assert "KeyError" in seen["d2"][2]
    async with sessionmaker() as session:
        repo = (await session.exec(select(t.Repo))).one()
        bounty = await load_bounty(session, repo, 1)
    assert [(p.backer, p.state) for p in bounty.pledges] == [
        ("alice", PledgeState.WITHDRAWN), ("bob", PledgeState.HELD)]
    assert bounty.state == TaskState.FUNDED
    # The bad one is tried again once its backoff is over, then given up on.
    later = DeliveryWorker(sessionmaker, settings, {}, clock=lambda: NOW + timedelta(hours=2),
                           max_attempts=2)
    assert await later.run_once() == 1
    assert (await states(sessionmaker))["d2"][0] == t.DeliveryState.FAILED


async def test_a_forge_outage_postpones_a_maintainer_command_and_what_follows(sessionmaker):
    settings = Settings()
    forge = Maintainers({"maya"})
    await store(sessionmaker, [
        ("issues", label(1)),
        ("issue_comment", comment(1, 1, "maya", "/goal 50")),
        ("issue_comment", comment(1, 2, "alice", "/pledge 10")),
    ])
    forge.down = True
    worker = DeliveryWorker(sessionmaker, settings, {"github": forge}, clock=lambda: NOW)
    assert await worker.run_once() == 1  # the label; the goal waits for GitHub, and so does
    seen = await states(sessionmaker)    # the pledge behind it, to keep the order
    assert seen["d1"][:2] == (t.DeliveryState.PENDING, 1)
    assert seen["d2"][:2] == (t.DeliveryState.PENDING, 0)
    forge.down = False
    worker.clock = lambda: NOW + timedelta(minutes=5)
    assert await worker.run_once() == 2
    async with sessionmaker() as session:
        repo = (await session.exec(select(t.Repo))).one()
        bounty = await load_bounty(session, repo, 1)
    assert bounty.goal is not None and bounty.goal.minor == 5000
    assert [p.backer for p in bounty.pledges] == ["alice"]
    assert forge.asked == ["maya", "maya"]  # never asked about a plain /pledge
