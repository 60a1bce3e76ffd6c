"""The manual provider end to end, through GitHub's published webhooks and the command line:
promises wait for a maintainer's confirmation (`payments.manual_confirm`), then the escrow, the
merge, the payout due and marked paid, the audit, and the statements. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlmodel import select

from bountybot.cli import main
from bountybot.config import Settings
from bountybot.resources import SESSIONMAKER
from bountybot.states import PayoutState, PledgeState, TaskState
from bountybot.storage import tables as t

from github_harness import GitHubBot


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture(autouse=True)
def cli_logging():
    """The command line logs to the stderr pytest captures for one test: unhook it after."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_bountybot", False)]:
        root.removeHandler(handler)


@pytest.fixture
async def bot(db_url, github_server, monkeypatch):
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)  # the command line's books
    bot = await GitHubBot.start(db_url, github_server, payments={"manual_confirm": True})
    try:
        yield bot
    finally:
        await bot.close()


def refusal(capsys) -> str:
    """The command's one line on stderr (the log, on stderr too, may come before it)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def summary(bot: GitHubBot) -> str:
    (comment,) = [c for c in bot.bot_comments(1) if "bountybot:summary" in c.body]
    return comment.body


def pledge_ids(task) -> dict[str, int]:
    return {p.backer: p.id for p in task.pledges}


async def test_promise_confirm_merge_due_paid_audit_and_statements(bot: GitHubBot, capsys):
    await bot.label(1)
    await bot.comment("maya", "/goal 100")
    for login, amount in (("alice", "60"), ("bob", "30"), ("carol", "10"), ("erin", "5")):
        await bot.comment(login, f"/pledge {amount}")
    await bot.comment("erin", "/withdraw")  # a promise dropped before any money moved
    await bot.settle()

    # Promises only: nothing is held, nothing is in the books, and the summary says who waits.
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.OPEN and task.held().minor == 0
    assert [p.state for p in task.pledges] == [PledgeState.PENDING] * 3 + [PledgeState.WITHDRAWN]
    assert await bot.rows(t.LedgerTransaction) == []
    text = summary(bot)
    assert ("€100.00 more pledged, not counted until the payment is confirmed:"
            " @alice €60.00, @bob €30.00, @carol €10.00.") in text
    assert "| @alice | €60.00 (€60.00 pending) |" in text
    ids = pledge_ids(task)

    capsys.readouterr()
    assert await cli("pledges") == 0
    listed = capsys.readouterr().out
    for login in ("alice", "bob", "carol"):
        assert f"@{login}" in listed
    assert "@erin" not in listed and "3 pending" in listed

    # Alice's bank transfer arrived: confirmed by id, by a named maintainer, with a reference.
    assert await cli("pledges", "confirm", str(ids["alice"]), "--by", "maya",
                     "--reference", "SEPA 2026-001") == 0
    assert "confirmed: held in escrow" in capsys.readouterr().out
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.held().minor == 6000 and task.state == TaskState.OPEN
    text = summary(bot)
    assert "€60.00 pledged of €100.00" in text
    assert "not counted until the payment is confirmed: @bob €30.00, @carol €10.00." in text

    # Refusals: confirming twice, an unknown pledge, nothing to confirm; one line, exit 1.
    assert await cli("pledges", "confirm", str(ids["alice"])) == 1
    assert refusal(capsys) == (f"bountybot: pledges confirm: Pledge {ids['alice']} is held: only a"
                           " pending pledge can be confirmed.")
    assert await cli("pledges", "confirm", "999999") == 1
    assert refusal(capsys) == "bountybot: pledges confirm: there is no pledge 999999"
    # All or nothing: one bad id in the list confirms none of them.
    assert await cli("pledges", "confirm", str(ids["bob"]), "999999") == 1
    assert (await bot.existing_task(1)).held().minor == 6000
    assert await cli("pledges", "confirm") == 2
    capsys.readouterr()

    # The rest of the task at once.
    assert task.id is not None
    assert await cli("pledges", "confirm", "--task", str(task.id), "--by", "maya") == 0
    assert capsys.readouterr().out.count("confirmed: held in escrow") == 2
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.FUNDED and task.held().minor == 10000
    assert "not counted" not in summary(bot) and "funded" in summary(bot)
    assert await cli("pledges", "confirm", "--task", str(task.id)) == 1
    assert refusal(capsys) == f"bountybot: pledges confirm: task {task.id} has no pending pledge"
    assert await cli("pledges") == 0
    assert "no pledge waits for confirmation" in capsys.readouterr().out

    # Who confirmed, and the reference, are on the audit trail.
    async with bot.app[SESSIONMAKER]() as session:
        confirmed = (await session.exec(select(t.AuditEvent).where(
            t.AuditEvent.action == "pledge.confirmed"))).all()
    assert sorted((e.actor, e.detail["backer"], e.detail["reference"]) for e in confirmed) == [
        ("maya", "alice", "SEPA 2026-001"), ("maya", "bob", None), ("maya", "carol", None)]

    # The work: claim, pull request, merge; the payout is due.
    await bot.comment("dave", "/claim")
    await bot.pull_request("opened", "dave", 77, "Fixes #1")
    await bot.pull_request("closed", "dave", 77, "Fixes #1", merged=True)
    await bot.settle()
    task = await bot.task(1)
    assert task is not None
    assert task.state == TaskState.DONE
    (payout,) = task.payouts
    assert (payout.developer, payout.amount.minor, payout.state) == (
        "dave", 10000, PayoutState.PENDING)
    assert await cli("payouts") == 0
    due = capsys.readouterr().out
    assert "@dave" in due and "€100.00" in due and "Codertocat/Hello-World#1" in due

    assert await cli("payouts", "mark-paid", str(payout.id), "--reference", "SEPA 2026-077") == 0
    assert await cli("payouts") == 0
    assert "no payout is due" in capsys.readouterr().out
    await bot.settle()
    assert "(paid)" in summary(bot)
    assert await cli("audit") == 0
    assert "all invariants hold" in capsys.readouterr().out

    # Statements, on the command line and in the API, from the books.
    assert await cli("statement", "backer", "alice") == 0
    out = capsys.readouterr().out
    for what in ("pledged", "held", "paid out"):
        assert f" {what} " in out
    assert "put in and not given back (ledger)" in out
    api = await bot.client.get("/api/v1/statements/github/backers/Alice")  # any case
    assert api.status == 200
    alice = await api.json()
    assert alice["login"] == "alice" and alice["role"] == "backer"
    assert [(m["what"], m["amount"]["amount"]) for m in alice["movements"]] == [
        ("pledged", 6000), ("held", 6000), ("paid out", 6000)]
    (totals,) = alice["totals"]
    assert {k: v["amount"] for k, v in totals.items() if k != "currency"} == {
        "pledged": 6000, "pending": 0, "held": 0, "paid_out": 6000, "returned": 0,
        "balance": 6000}
    assert totals["paid_out"]["display"] == "€60.00"

    erin = await (await bot.client.get("/api/v1/statements/github/backers/erin")).json()
    assert [(m["what"], m["note"]) for m in erin["movements"]] == [
        ("pledged", None), ("withdrawn", "never received")]
    assert erin["totals"][0]["balance"]["amount"] == 0

    assert await cli("statement", "developer", "dave") == 0
    out = capsys.readouterr().out
    assert "payout created" in out and "reference SEPA 2026-077" in out
    dave = await (await bot.client.get("/api/v1/statements/github/developers/dave")).json()
    assert [(m["what"], m["amount"]["amount"], m["reference"]) for m in dave["movements"]] == [
        ("payout created", 10000, None), ("payout released", 10000, None),
        ("paid", 10000, "SEPA 2026-077")]
    assert {k: v["amount"] for k, v in dave["totals"][0].items() if k != "currency"} == {
        "earned": 10000, "paid": 10000, "owed": 0}

    # Nobody by that name: 404 and exit 1; an unknown forge is 404 too.
    missing = await bot.client.get("/api/v1/statements/github/developers/alice")
    assert missing.status == 404 and "no payout" in (await missing.json())["error"]
    assert (await bot.client.get("/api/v1/statements/bitbucket/backers/alice")).status == 404
    assert await cli("statement", "backer", "nobody") == 1
    assert refusal(capsys) == "bountybot: statement: @nobody has no pledge on github"


def test_serve_accepts_manual_confirm():
    Settings.model_validate({"payments": {"manual_confirm": True}}).check_for_serve()


async def test_a_cancel_refunds_in_the_books_and_the_statement_says_so(db_url, github_server,
                                                                      monkeypatch, capsys):
    # Without manual_confirm a promise is held at once; a cancel gives it back in the books
    # (the people settle it outside the bot), and nothing is paid out.
    bot = await GitHubBot.start(db_url, github_server)
    try:
        await bot.label(1)
        await bot.comment("alice", "/pledge 25")
        await bot.comment("alice", "/pledge 5")
        await bot.comment("maya", "/cancel")
        await bot.settle()
        assert (await bot.existing_task(1)).state == TaskState.CANCELLED
        alice = await (await bot.client.get("/api/v1/statements/github/backers/alice")).json()
        moves = [(m["what"], m["amount"]["amount"]) for m in alice["movements"]]
        # In time order; each pledge's own story in the order its money moved.
        for minor in (2500, 500):
            assert [what for what, n in moves if n == minor] == ["pledged", "held", "refunded"]
        ats = [m["at"] for m in alice["movements"]]
        assert ats == sorted(ats)
        (totals,) = alice["totals"]
        assert {k: v["amount"] for k, v in totals.items() if k != "currency"} == {
            "pledged": 3000, "pending": 0, "held": 0, "paid_out": 0, "returned": 3000,
            "balance": 0}
        monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
        assert await cli("pledges") == 0
        assert "no pledge waits for confirmation" in capsys.readouterr().out
        assert await cli("audit") == 0
    finally:
        await bot.close()
