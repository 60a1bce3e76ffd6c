"""`bountybot deliveries`: the inbox an operator sees (never a payload), failed deliveries
applied again, pending ones given up on; run as an operator would, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import select
from test_inbox import comment, label
from test_inbox_isolation import row, states, store

from bountybot import cli
from bountybot.config import Settings
from bountybot.forges.topics import issue_topic
from bountybot.inbox import DeliveryWorker
from bountybot.states import PledgeState
from bountybot.storage import tables as t
from bountybot.storage.bounties import load_bounty

from github_harness import REPO_ID

NOW = datetime.now(UTC)  # the command line reads the real time for the ages it shows


async def run(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


@pytest.fixture
def operator(db_url, monkeypatch) -> str:
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
    return db_url


@pytest.mark.usefixtures("operator")
async def test_list_retry_and_fail_deliveries(sessionmaker, capsys):
    topic = issue_topic("github", str(REPO_ID), 1)
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        row("d01", "issue_comment", "not json: SECRET-LOOKING PAYLOAD", topic=topic),
        row("d02", "issue_comment", comment(1, 11, "alice", "/pledge 10")),
        row("d03", "issues", label(2)),
    ])
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=lambda: NOW, max_attempts=1)
    assert await worker.run_once() == 4  # d01 fails for good at once, the others are applied
    async with sessionmaker() as session:  # one more, received three hours ago, not applied
        await session.exec(update(t.Delivery).where(  # type: ignore[call-overload]
            t.Delivery.delivery_id == "d03").values(
                state=t.DeliveryState.PENDING, received_at=NOW - timedelta(hours=3)))
        await session.commit()
    async with sessionmaker() as session:
        numbered = dict((await session.exec(select(t.Delivery.delivery_id,
                                                   t.Delivery.id))).all())

    assert await run("deliveries") == 0
    out = capsys.readouterr().out
    table, _, footer = out.partition("\n\n")
    lines = table.splitlines()
    (failed,) = [line for line in lines if line.lstrip().startswith(f"{numbered['d01']} ")]
    assert failed.split()[:5] == [str(numbered["d01"]), "failed", "github", "issue_comment",
                                  "1"]
    assert topic in failed and "JSONDecodeError: Expecting value" in failed
    (waiting,) = [line for line in lines if line.lstrip().startswith(f"{numbered['d03']} ")]
    assert waiting.split()[:6] == [str(numbered["d03"]), "pending", "github", "issues", "0",
                                   "3h"]
    assert "SECRET-LOOKING" not in out  # no payload, ever
    assert len(lines) == 3  # the header, d01 and d03: handled ones are not listed
    assert footer.strip() == "1 failed: `bountybot deliveries retry --failed` applies them again"
    assert await run("deliveries", "--state", "handled") == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]} == {
        str(numbered["d00"]), str(numbered["d02"])}

    # Given up on by hand: the pending one is failed, with the reason; a handled one is not.
    assert await run("deliveries", "fail", str(numbered["d03"]), str(numbered["d00"]),
                     "--why", "a test run") == 0
    captured = capsys.readouterr()
    assert "1 pending delivery(ies) marked failed" in captured.out
    assert "1 of the ids given are not pending deliveries" in captured.err
    assert await run("deliveries", "fail", str(numbered["d00"])) == 1
    capsys.readouterr()
    async with sessionmaker() as session:
        given_up = (await session.exec(select(t.Delivery).where(
            t.Delivery.delivery_id == "d03"))).one()
    assert given_up.state == t.DeliveryState.FAILED
    assert given_up.error == "failed by hand: a test run"

    # Retried: refused without ids or --failed; an id that is not failed is exit 1.
    assert await run("deliveries", "retry") == 2
    assert "give delivery ids or --failed" in capsys.readouterr().err
    assert await run("deliveries", "retry", "999999") == 1
    assert "1 of the ids given are not failed deliveries" in capsys.readouterr().err
    assert await run("deliveries", "retry", "--failed") == 0
    assert "2 failed delivery(ies) queued again" in capsys.readouterr().out
    seen = await states(sessionmaker)
    assert seen["d01"] == ("pending", 0) and seen["d03"] == ("pending", 0)

    # And the worker applies them: d03 at once, d01 fails again (its payload is no better).
    worker.max_attempts = 2
    assert await worker.run_once() == 1
    assert (await states(sessionmaker))["d03"] == ("handled", 0)
    assert (await states(sessionmaker))["d01"] == ("pending", 1)
    async with sessionmaker() as session:
        repo = (await session.exec(select(t.Repo))).one()
        task = await load_bounty(session, repo, 2)
        first = await load_bounty(session, repo, 1)
    assert task is not None
    assert [(p.backer, p.state) for p in first.pledges] == [("alice", PledgeState.HELD)]
    assert await run("deliveries", "--state", "failed") == 0
    assert capsys.readouterr().out.strip() == "no failed delivery"
