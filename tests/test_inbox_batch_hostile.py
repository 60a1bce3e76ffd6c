"""Hostile batches: what the worker decides in memory and writes once per batch
(`storage/batch.py`) must end in the same rows as deliveries applied one at a time, whatever
backers, claimants, maintainers and a flaky database do within one batch: the same comment
brought again and again, pledges withdrawn and made again, claims passed down the waiting list,
a merge among pledges, a task cancelled where it was created, a delivery failing half way, a
repo renamed or new in the middle."""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from test_inbox import NOW, Maintainers, comment, label
from test_inbox_isolation import pledges, row, states, store
from test_replicas import waiting_for_a_lock

from bountybot import inbox
from bountybot.config import Settings
from bountybot.forges.events import SYNC_EVENT, Happening, happenings_to_json
from bountybot.inbox import DeliveryWorker
from bountybot.refs import RepoRef
from bountybot.rules import Comment, LabelAdded, decide_comment
from bountybot.rules.model import Actor
from bountybot.states import ClaimState, PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import UnitOfWork

from clocks import Clock
from fixtures import payload
from github_harness import REPO, REPO_ID


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """PostgreSQL only: what two replicas do at once (SQLite's writers take turns)."""
    engine = create_engine(pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def pg_sessionmaker(pg_engine: AsyncEngine) -> Any:
    return create_sessionmaker(pg_engine)


def renamed(data: dict[str, Any], path: str = "Codertocat/Renamed") -> dict[str, Any]:
    """The payload as the forge sends it once the repo has a new name (same id)."""
    data["repository"]["full_name"] = path
    data["repository"]["name"] = path.split("/")[1]
    return data


def edited(number: int, cid: int, login: str, body: str, before: str) -> dict[str, Any]:
    """An edit of comment `cid` by its author: `before` was its text."""
    data = comment(number, cid, login, body)
    data["action"] = "edited"
    data["changes"] = {"body": {"from": before}}
    data["sender"]["login"] = login
    return data


def pull(action: str, author: str, number: int, body: str, *,
         merged: bool = False) -> dict[str, Any]:
    data = payload("github", "pull_request.opened")
    data["action"] = action
    data["number"] = number
    data["pull_request"].update(
        number=number, body=body, merged=merged, state="closed" if merged else "open",
        html_url=f"https://github.com/{REPO}/pull/{number}")
    data["pull_request"]["user"]["login"] = author
    return data


def synced(*said: tuple[int, int, str, str]) -> str:
    """A reconciliation delivery holding comments (issue, id, author, body) read on the forge."""
    ref = RepoRef("github", str(REPO_ID), REPO)
    return happenings_to_json(Happening(REPO, ref, number, Comment(
        str(cid), Actor(login), body, verified=True)) for number, cid, login, body in said)


def worker(sessionmaker: Any, clock: Clock | None = None,
           settings: dict[str, Any] | None = None) -> DeliveryWorker:
    """A worker to whom maya maintains the repo."""
    clients: dict[str, Any] = {"github": Maintainers({"maya"})}
    return DeliveryWorker(sessionmaker, Settings.model_validate(settings or {}), clients,
                          clock=clock or Clock(NOW))


async def run(sessionmaker: Any, items: list[tuple[str, dict[str, Any] | str]], *,
              first: int = 0, w: DeliveryWorker | None = None) -> int:
    """Store the deliveries (named d<first>..., sync:github:d<n> for reconciliation's), then
    handle them in one batch."""
    await store(sessionmaker, [
        row(("sync:github:" if kind == SYNC_EVENT else "") + f"d{first + i:02d}", kind,
            data if isinstance(data, str) else copy.deepcopy(data))
        for i, (kind, data) in enumerate(items)])
    return await (w or worker(sessionmaker)).run_once()


async def table(sessionmaker: Any, *columns: Any) -> list[tuple[Any, ...]]:
    """The rows of these columns (of one table), in id order."""
    model = columns[0].class_
    async with sessionmaker() as session:
        found = (await session.exec(select(*columns).order_by(col(model.id)))).all()
    return [tuple(r) if len(columns) > 1 else (r,) for r in found]


async def test_the_same_comment_brought_five_ways_in_one_batch_and_the_next_applies_once(
        sessionmaker: Any) -> None:
    """Webhook, replay, edit adding a line, reconciliation sync, and again next batch: each
    command line is applied once, recorded once, with its task (created by that comment)."""
    assert await run(sessionmaker, [
        ("issues", label(1)),
        ("issue_comment", comment(1, 11, "alice", "/pledge 10")),
        ("issue_comment", comment(1, 11, "alice", "/pledge 10")),
        (SYNC_EVENT, synced((1, 11, "alice", "/pledge 10"))),
        ("issue_comment", edited(1, 11, "alice", "/pledge 10\n/pledge 10", "/pledge 10")),
        (SYNC_EVENT, synced((1, 11, "alice", "/pledge 10\n/pledge 10"))),
        ("issue_comment", comment(1, 12, "bob", "/pledge 5\n/withdraw\n/pledge 6")),
    ]) == 7
    assert await run(sessionmaker, [
        ("issue_comment", edited(1, 11, "alice", "/pledge 10\n/pledge 10", "/pledge 10")),
        (SYNC_EVENT, synced((1, 12, "bob", "/pledge 5\n/withdraw\n/pledge 6"))),
        ("issue_comment", comment(1, 12, "bob", "/pledge 5\n/withdraw\n/pledge 6")),
    ], first=7) == 3
    assert set((await states(sessionmaker)).values()) == {("handled", 0)}
    assert await pledges(sessionmaker, 1) == [
        ("alice", PledgeState.HELD, 1000), ("alice", PledgeState.HELD, 1000),
        ("bob", PledgeState.WITHDRAWN, 500), ("bob", PledgeState.HELD, 600)]
    (task,) = await table(sessionmaker, t.Task.id)
    handled = await table(sessionmaker, t.HandledComment.comment_id, t.HandledComment.task_id)
    assert handled == [("11", task[0])] * 2 + [("12", task[0])] * 3
    keys = [k for (k,) in await table(sessionmaker, t.LedgerTransaction.key)]
    assert len(keys) == len(set(keys)) == 5  # four pledges held, one withdrawn
    assert (await run_audit(sessionmaker)).ok


async def test_pledge_withdraw_pledge_and_the_waiting_list_in_one_batch(
        sessionmaker: Any) -> None:
    """Pledge ids follow the order of the decisions; claims pass down the waiting list and the
    list is written as the last decision left it."""
    assert await run(sessionmaker, [
        ("issues", label(1)),
        ("issue_comment", comment(1, 10, "alice", "/pledge 10")),
        ("issue_comment", comment(1, 11, "alice", "/withdraw")),
        ("issue_comment", comment(1, 12, "alice", "/pledge 20")),
        ("issue_comment", comment(1, 13, "dave", "/claim")),
        ("issue_comment", comment(1, 14, "erin", "/claim")),
        ("issue_comment", comment(1, 15, "frank", "/claim")),
        ("issue_comment", comment(1, 16, "dave", "/unclaim")),
        ("issue_comment", comment(1, 17, "frank", "/unclaim")),
        ("issue_comment", comment(1, 18, "gina", "/claim")),
        ("issue_comment", comment(1, 19, "erin", "/unclaim")),
        ("issue_comment", comment(1, 20, "dave", "/claim")),
        ("issue_comment", comment(1, 21, "bob", "/pledge 5")),
    ]) == 13
    assert await pledges(sessionmaker, 1) == [
        ("alice", PledgeState.WITHDRAWN, 1000), ("alice", PledgeState.HELD, 2000),
        ("bob", PledgeState.HELD, 500)]
    claims = await table(sessionmaker, t.Claim.developer, t.Claim.state)
    assert claims == [("dave", ClaimState.RELEASED), ("erin", ClaimState.RELEASED),
                      ("gina", ClaimState.ACTIVE)]
    assert await table(sessionmaker, t.Waiting.login, t.Waiting.position) == [("dave", 0)]
    assert (await run_audit(sessionmaker)).ok


async def test_a_merge_among_pledges_and_a_task_cancelled_where_it_was_created(
        sessionmaker: Any) -> None:
    assert await run(sessionmaker, [
        ("issues", label(1)),
        ("issue_comment", comment(1, 10, "alice", "/pledge 10")),
        ("issue_comment", comment(1, 11, "dave", "/claim")),
        ("pull_request", pull("opened", "dave", 5, "Fixes #1")),
        ("issue_comment", comment(1, 12, "bob", "/pledge 5")),
        ("pull_request", pull("closed", "dave", 5, "Fixes #1", merged=True)),
        ("issue_comment", comment(1, 13, "carol", "/pledge 3")),  # too late: paid out
        ("issue_comment", comment(1, 14, "alice", "/withdraw")),
        ("issues", label(2)),
        ("issue_comment", comment(2, 20, "alice", "/pledge 7")),
        ("issue_comment", comment(2, 21, "maya", "/goal 50")),
        ("issue_comment", comment(2, 22, "maya", "/cancel")),
        ("issue_comment", comment(2, 23, "bob", "/pledge 5")),  # refused: cancelled
    ]) == 13
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.PAID_OUT, 1000),
                                              ("bob", PledgeState.PAID_OUT, 500)]
    assert await pledges(sessionmaker, 2) == [("alice", PledgeState.REFUNDED, 700)]
    assert await table(sessionmaker, t.Task.number, t.Task.state, t.Task.goal_minor) == [
        (1, TaskState.DONE, None), (2, TaskState.CANCELLED, 5000)]
    assert await table(sessionmaker, t.Payout.developer, t.Payout.amount_minor) == [
        ("dave", 1500)]
    assert await table(sessionmaker, t.Link.number, t.Link.author) == [(5, "dave")]
    assert (await run_audit(sessionmaker)).ok


async def test_stripe_operations_name_the_pledges_the_batch_created(sessionmaker: Any) -> None:
    stripe = dict(payments={"provider": "stripe"}, stripe={
        "api_key": "sk_test_x", "webhook_secret": "whsec_x",
        "connect_webhook_secret": "whsec_y"}, server={"public_url": "https://bot.example"})
    w = worker(sessionmaker, settings=stripe)
    assert await run(sessionmaker, [
        ("issues", label(1)),
        ("issue_comment", comment(1, 10, "alice", "/pledge 10")),
        ("issue_comment", comment(1, 11, "alice", "/withdraw")),
        ("issue_comment", comment(1, 12, "alice", "/pledge 20")),
        ("issue_comment", comment(1, 12, "alice", "/pledge 20")),  # replayed
        ("issue_comment", comment(1, 13, "bob", "/pledge 5")),
    ], w=w) == 6
    ids = [i for (i,) in await table(sessionmaker, t.Pledge.id)]
    ops = await table(sessionmaker, t.PaymentOp.kind, t.PaymentOp.pledge_id,
                      t.PaymentOp.idempotency_key, t.PaymentOp.amount_minor)
    assert ops == [("checkout", i, f"bountybot:checkout:pledge:{i}", amount)
                   for i, amount in zip(ids, (1000, 2000, 500), strict=True)]
    assert (await run_audit(sessionmaker)).ok


async def test_a_delivery_failing_half_way_leaks_nothing_and_holds_back_its_issue(
        sessionmaker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync delivery's first comment is decided, its second fails: neither is kept (its first
    comment is then applied by its webhook), later deliveries about the failed issue wait."""
    real = decide_comment

    def failing(*args: Any, **kwargs: Any) -> Any:
        if args[2].id == "22" or args[2].id == "31":
            raise RuntimeError("the rules broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(inbox, "decide_comment", failing)
    clock = Clock(NOW)
    w = worker(sessionmaker, clock)
    assert await run(sessionmaker, [("issues", label(1)), ("issues", label(2))], w=w) == 2
    assert await run(sessionmaker, [
        (SYNC_EVENT, synced((1, 21, "alice", "/pledge 10"), (2, 22, "bob", "/pledge 5"))),
        ("issue_comment", comment(1, 21, "alice", "/pledge 10")),
        ("issue_comment", comment(2, 31, "carol", "/pledge 7")),  # fails: #2 held back
        ("issue_comment", comment(2, 32, "dave", "/pledge 3")),
        ("issue_comment", comment(1, 33, "erin", "/pledge 4")),
    ], first=2, w=w) == 2  # the two failures are tried again later
    seen = await states(sessionmaker)
    assert (seen["sync:github:d02"], seen["d04"], seen["d05"]) == (("pending", 1), ("pending", 1),
                                                       ("pending", 0))
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.HELD, 1000),
                                              ("erin", PledgeState.HELD, 400)]
    assert await pledges(sessionmaker, 2) == []
    handled = await table(sessionmaker, t.HandledComment.comment_id)
    assert handled == [("21",), ("33",)]
    monkeypatch.setattr(inbox, "decide_comment", real)
    clock.move(hours=2)
    assert await w.run_once() == 3
    assert set((await states(sessionmaker)).values()) == {("handled", 0), ("handled", 1)}
    assert await pledges(sessionmaker, 1) == [("alice", PledgeState.HELD, 1000),
                                              ("erin", PledgeState.HELD, 400)]
    assert await pledges(sessionmaker, 2) == [("carol", PledgeState.HELD, 700),
                                              ("dave", PledgeState.HELD, 300),
                                              ("bob", PledgeState.HELD, 500)]
    assert (await run_audit(sessionmaker)).ok


async def test_a_new_repo_and_renames_mid_batch_then_more_commands_on_the_same_tasks(
        sessionmaker: Any) -> None:
    other = {"id": 999, "full_name": "other/repo", "name": "repo"}

    def there(data: dict[str, Any]) -> dict[str, Any]:
        data["repository"].update(other)
        return data

    assert await run(sessionmaker, [("issues", label(1)),
                                    ("issue_comment", comment(1, 10, "alice", "/pledge 10"))]) == 2
    assert await run(sessionmaker, [
        ("issue_comment", comment(1, 11, "bob", "/pledge 5")),
        ("issues", there(label(1))),  # a new repo: written at once
        ("issue_comment", there(comment(1, 12, "carol", "/pledge 7"))),
        ("issue_comment", comment(1, 13, "alice", "/withdraw")),
        ("issue_comment", renamed(comment(1, 14, "dave", "/claim"))),
        ("issue_comment", renamed(comment(1, 15, "erin", "/claim"))),
        ("issue_comment", renamed(comment(1, 16, "dave", "/unclaim"), "x/Third")),
        ("issue_comment", renamed(comment(1, 17, "frank", "/pledge 2"), "x/Fourth")),
        ("issue_comment", there(comment(1, 18, "carol", "/withdraw"))),
        ("issue_comment", renamed(comment(1, 19, "gina", "/pledge 1"), "x/Fourth")),
    ], first=2) == 10
    assert set((await states(sessionmaker)).values()) == {("handled", 0)}
    pledged = await table(sessionmaker, t.Pledge.task_id, t.Pledge.backer, t.Pledge.state)
    (one, two) = [i for (i,) in await table(sessionmaker, t.Task.id)]
    assert pledged == [(one, "alice", PledgeState.WITHDRAWN), (one, "bob", PledgeState.HELD),
                       (two, "carol", PledgeState.WITHDRAWN), (one, "frank", PledgeState.HELD),
                       (one, "gina", PledgeState.HELD)]
    assert await table(sessionmaker, t.Claim.developer, t.Claim.state) == [
        ("dave", ClaimState.RELEASED), ("erin", ClaimState.ACTIVE)]
    assert await table(sessionmaker, t.Repo.full_path) == [("x/Fourth",), ("other/repo",)]
    assert (await run_audit(sessionmaker)).ok


async def test_a_row_loaded_by_a_rename_can_be_changed_by_a_later_rename(
        sessionmaker: Any) -> None:
    """A rename (`_at_once`) reads the task through the ORM, which keeps its rows; the batch
    then decides on the task in memory and, before the next rename, writes what it decided and
    lets go of those rows (`_forget_bounty_rows`). The next rename changes one of them: it is
    read again, not found stale (or expired, which an async session cannot load), and Alice's
    /withdraw is applied."""
    assert await run(sessionmaker, [("issues", label(1)),
                                    ("issue_comment", comment(1, 11, "alice", "/pledge 10"))]) == 2
    assert await run(sessionmaker, [
        ("issue_comment", renamed(comment(1, 12, "bob", "/pledge 5"))),
        ("issue_comment", renamed(comment(1, 13, "carol", "/pledge 7"))),
        ("issue_comment", renamed(comment(1, 14, "alice", "/withdraw"), "a/Third")),
        ("issue_comment", renamed(comment(1, 15, "dave", "/pledge 1"), "a/Third")),
    ], first=2) == 4
    assert set((await states(sessionmaker)).values()) == {("handled", 0)}
    assert await pledges(sessionmaker, 1) == [
        ("alice", PledgeState.WITHDRAWN, 1000), ("bob", PledgeState.HELD, 500),
        ("carol", PledgeState.HELD, 700), ("dave", PledgeState.HELD, 100)]
    assert (await run_audit(sessionmaker)).ok


async def test_an_issue_transferred_mid_batch_takes_its_money_along(sessionmaker: Any) -> None:
    """The transfer is written at once, after what the batch decided on the old issue; later
    commands on the new issue find the task there, and none is left on the old one."""
    octo = {"id": 17273051, "full_name": "octo-org/octo-repo", "name": "octo-repo"}

    def old(data: dict[str, Any]) -> dict[str, Any]:
        data["repository"].update(octo)
        return data

    assert await run(sessionmaker, [
        ("issues", old(label(1))),
        ("issue_comment", old(comment(1, 10, "alice", "/pledge 10"))),
        ("issues", payload("github", "issues.transferred")),  # to Codertocat/Hello-World#1
        ("issue_comment", comment(1, 11, "bob", "/pledge 5")),
        ("issue_comment", comment(1, 12, "alice", "/withdraw")),
        ("issue_comment", old(comment(1, 13, "carol", "/pledge 7"))),  # no task there now
    ]) == 6
    tasks = await table(sessionmaker, t.Task.id, t.Task.repo_id, t.Task.number)
    repos = dict((path, i) for i, path in await table(sessionmaker, t.Repo.id, t.Repo.full_path))
    assert [(r, n) for _, r, n in tasks] == [(repos[REPO], 1)]
    assert await table(sessionmaker, t.Pledge.task_id, t.Pledge.backer, t.Pledge.state) == [
        (tasks[0][0], "alice", PledgeState.WITHDRAWN), (tasks[0][0], "bob", PledgeState.HELD)]
    assert (await run_audit(sessionmaker)).ok


async def test_a_comment_line_another_replica_records_meanwhile_is_no_failure(
        pg_engine: AsyncEngine, pg_sessionmaker: Any) -> None:
    """Another replica applies the same comment at once (its reconciliation sync: no topic,
    and no task yet to lock) and records its line first. The batch meets the unique key as it
    writes: a clash (`is_conflict`), not a failure. The batch is tried again at once, finds the
    line recorded, and applies nothing twice."""
    engine, sessionmaker = pg_engine, pg_sessionmaker
    line = hashlib.sha256(b"/pledge 10").hexdigest()[:40]
    assert await run(sessionmaker, [("issues", label(1))]) == 1  # the repo is known
    await store(sessionmaker, [row("d01", "issue_comment", comment(5, 21, "alice", "/pledge 10"))])
    other = UnitOfWork(sessionmaker)  # the other replica, in the middle of its batch
    await other.__aenter__()
    other.session.add(t.HandledComment(forge="github", comment_id="21", revision=f"line:{line}:0",
                                       handled_at=NOW))
    await other.session.flush()
    holder = (await other.session.exec(text("SELECT pg_backend_pid()"))  # type: ignore[call-overload]
              ).one()[0]
    applying = worker(sessionmaker)
    handling = asyncio.create_task(applying.run_once())
    await waiting_for_a_lock(engine, holder)
    await other.__aexit__(None, None, None)
    assert await handling == 0 and applying.clashed  # no attempt counted: again at once
    assert await states(sessionmaker) == {"d00": ("handled", 0), "d01": ("pending", 0)}
    assert await applying.run_once() == 1
    assert await states(sessionmaker) == {"d00": ("handled", 0), "d01": ("handled", 0)}
    assert len(await table(sessionmaker, t.HandledComment.id)) == 1
    assert await table(sessionmaker, t.Pledge.id) == []  # the line was the other's to apply


async def test_pledges_of_a_task_another_replica_created_meanwhile_keep_their_order(
        pg_sessionmaker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch takes pledge ids from the sequence early, with spares (`NewIds.take`).
    Meanwhile another replica creates issue 9's task and carol's pledge from a reconciliation
    sync (no topic: nothing orders it after this batch), taking later ids, and commits. This
    batch then decides alice's pledge on that task: not with a spare id smaller than carol's
    (`NewIds.name`), so the task's pledges read back in id order are in decision order."""
    sessionmaker = pg_sessionmaker
    assert await run(sessionmaker, [("issues", label(1))]) == 1
    ref = RepoRef("github", str(REPO_ID), REPO)
    other = happenings_to_json([
        Happening(REPO, ref, 9, LabelAdded()),
        Happening(REPO, ref, 9, Comment("90", Actor("carol"), "/pledge 7", verified=True))])
    real = DeliveryWorker._delivery

    async def meanwhile(self: DeliveryWorker, session: Any, cache: Any, kept: Any, item: Any,
                        now: Any, *, spare: int) -> Any:
        if item.name == "d02":  # the other replica's batch, while this one is half way
            await store(sessionmaker, [row("sync:github:label-9", SYNC_EVENT, other)])
            assert await worker(sessionmaker).run_once() == 1
        return await real(self, session, cache, kept, item, now, spare=spare)

    monkeypatch.setattr(DeliveryWorker, "_delivery", meanwhile)
    assert await run(sessionmaker, [
        ("issue_comment", comment(1, 10, "bob", "/pledge 5")),  # takes pledge ids, and spares
        ("issue_comment", comment(9, 11, "alice", "/pledge 10")),
    ], first=1) == 2
    assert await pledges(sessionmaker, 9) == [("carol", PledgeState.HELD, 700),
                                              ("alice", PledgeState.HELD, 1000)]
    assert (await run_audit(sessionmaker)).ok
