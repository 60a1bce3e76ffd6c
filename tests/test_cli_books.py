"""`bountybot payouts`, `payouts mark-paid` and `export` on a database the rules filled."""

from __future__ import annotations

import asyncio
import csv
import io
import json

from sqlmodel import select
from test_books_db import DbStory

from bountybot.cli import main
from bountybot.rules import LabelAdded, LinkClosed
from bountybot.states import PayoutState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def paid_story(sessionmaker) -> DbStory:
    db = DbStory(sessionmaker)
    await db.event(LabelAdded())
    await db.say("alice", "/pledge 60")
    await db.say("bob", "/pledge 40")
    await db.say("carol", "/claim")
    await db.event(LinkClosed(9, "carol", merged=True))
    return db


async def test_payouts_are_listed_and_marked_paid_once(db_url, sessionmaker, monkeypatch,
                                                       capsys):
    db = await paid_story(sessionmaker)
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
    payout = (await db.bounty()).payouts[0]
    assert await cli("payouts") == 0
    listing = capsys.readouterr().out
    assert "@carol" in listing and "€100.00" in listing and "commons/garden#7" in listing
    assert await cli("payouts", "mark-paid", str(payout.id), "--reference", "SEPA 2026-42") == 0
    assert "marked paid" in capsys.readouterr().out
    stored = (await db.bounty()).payouts[0]
    assert stored.state == PayoutState.PAID and stored.reference == "SEPA 2026-42"
    async with sessionmaker() as session:
        who = (await session.exec(select(t.AuditEvent.actor).where(
            t.AuditEvent.action == "payout.paid"))).all()
    assert who == ["operator"]
    assert await cli("payouts", "mark-paid", str(payout.id), "--reference", "again") == 1
    assert "paid" in capsys.readouterr().err
    assert await cli("payouts", "mark-paid", "999", "--reference", "x") == 1
    assert await cli("payouts") == 0
    assert "no payout is due" in capsys.readouterr().out
    report = await run_audit(sessionmaker)
    assert report.ok and report.transactions == 4, report.render()


async def test_export_writes_the_whole_books(db_url, sessionmaker, monkeypatch, capsys,
                                             tmp_path):
    await paid_story(sessionmaker)
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", db_url)
    target = tmp_path / "books.json"
    assert await cli("export", "--output", str(target)) == 0
    books = json.loads(target.read_text())
    assert len(books["tasks"]) == 1 and len(books["ledger"]) == 3
    assert sum(e["amount"]["amount"] for txn in books["ledger"] for e in txn["entries"]) == 0
    capsys.readouterr()
    assert await cli("export", "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out.lstrip("\ufeff"))))
    assert len(rows) == sum(len(txn["entries"]) for txn in books["ledger"])
    assert sum(int(r["amount_minor"]) for r in rows) == 0
