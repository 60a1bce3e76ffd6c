"""`bountybot payments` and `payments retry`: the calls to Stripe an operator can see, and dead
ones given another round under the same idempotency key, never paying twice; and the export
that carries them. Through the real app, the local fake GitHub and the local fake Stripe, the
command line run as an operator would, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from test_stripe_flow import TRANSFERS, Stripy, due_payout, start

from bountybot import cli
from bountybot.states import PayoutState
from bountybot.storage import tables as t

from fakes.stripe import FakeStripe, stripe_server  # noqa: F401

Dead = t.PaymentOpState.DEAD


@pytest.fixture
async def paying(db_url, github_server, stripe_server, monkeypatch  # noqa: F811
                 ) -> AsyncIterator[Stripy]:
    """A bot on Stripe (four tries per call), its clock at the real now (the command line
    revives operations for the real now), and the command line's environment on its books."""
    bot = await start(db_url, github_server, stripe_server)
    bot.clock.now = datetime.now(UTC)
    for name, value in (("DATABASE_URL", db_url), ("PAYMENTS_PROVIDER", "stripe"),
                        ("STRIPE_API_KEY", stripe_server.api_key),
                        ("STRIPE_API_BASE", stripe_server.url)):
        monkeypatch.setenv(f"BOUNTYBOT_{name}", value)
    try:
        yield bot
    finally:
        await bot.bot.close()
        bot.gateway.close()


async def run(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def dead_transfer(p: Stripy) -> tuple[str, int, t.PaymentOp]:
    """Dave's payout is due and its transfer dies (how Stripe fails is set up before):
    (his account, the payout id, the dead operation)."""
    account, payout_id = await due_payout(p)
    for _ in range(6):
        p.move(minutes=5)
        await p.settle()
    (op,) = await p.ops("transfer")
    assert op.state == Dead and op.attempts == 4, (op.state, op.attempts, op.last_error)
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.FAILED
    return account, payout_id, op


async def test_a_dead_transfer_is_listed_retried_by_hand_and_paid_once(paying: Stripy, capsys):
    p, stripe = paying, paying.stripe
    stripe.fail_next("POST", TRANSFERS, 500, times=4)  # every try of the first round
    account, payout_id, op = await dead_transfer(p)
    assert not stripe.transfers
    key = f"bountybot:transfer:payout:{payout_id}"
    assert {r.headers["idempotency-key"] for r in stripe.recorded("POST", "/v1/transfers")} == {
        key}

    # Listed by default (not done), with what it is for and why it died; never a secret.
    capsys.readouterr()
    assert await run("payments") == 0
    listed = capsys.readouterr().out
    (line,) = [row for row in listed.splitlines() if row.split()[:1] == [str(op.id)]]
    assert line.split()[1:4] == ["dead", "transfer", "4"]
    assert f"payout {payout_id}, task" in line and "500" in line
    assert "payments retry" in listed
    assert stripe.api_key not in listed
    # The checkout that was paid is done: listed only when asked.
    (checkout,) = await p.ops("checkout")
    assert f"\n{checkout.id:>6}  " not in listed
    assert await run("payments", "--state", "done") == 0
    done = capsys.readouterr().out
    assert checkout.session_id in done and checkout.payment_intent in done
    assert (checkout.url or "?") not in done  # the page's address is not an id
    assert await run("payments", "--state", "waiting") == 0
    assert capsys.readouterr().out.strip() == "no waiting payment operation"

    # What is not dead is refused, all or nothing: the dead one is left dead.
    assert await run("payments", "retry", str(op.id), str(checkout.id), "999999") == 1
    refused = capsys.readouterr().err
    assert f"payment operation {checkout.id} is done, not dead" in refused
    assert "payment operation 999999 does not exist" in refused
    assert "nothing was retried" in refused
    assert (await p.ops("transfer"))[0].state == Dead

    # Retried: due now, under the same key, asked about before it is sent again.
    assert await run("payments", "retry", str(op.id)) == 0
    said = capsys.readouterr().out
    assert key in said and "1 dead operation(s) queued again" in said
    (revived,) = await p.ops("transfer")
    assert (revived.state, revived.attempts) == (t.PaymentOpState.UNKNOWN, 0)
    await p.settle()
    (transfer,) = stripe.transfers.values()
    sent = stripe.recorded("POST", "/v1/transfers")
    assert len(sent) == 5 and {r.headers["idempotency-key"] for r in sent} == {key}
    assert len({json.dumps(r.json, sort_keys=True) for r in sent}) == 1  # the same request
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PAID and payout.reference == transfer["id"]
    assert stripe.balance(account) == {"eur": 5000}
    (op,) = await p.ops("transfer")
    assert op.state == t.PaymentOpState.DONE and op.transfer_id == transfer["id"]
    await p.settle()
    assert len(stripe.transfers) == 1
    # The summary says it is paid, although the first round's said it had failed.
    (summary,) = [c.body for c in p.bot.bot_comments(1) if "bountybot:summary" in c.body]
    assert "failed" not in summary.lower(), summary

    assert await run("payments", "retry") == 0  # nothing dead is left
    assert "0 dead operation(s)" in capsys.readouterr().out
    assert await run("audit", "--provider") == 0

    # The export carries every operation, with the provider's ids and none of its links.
    response = await p.bot.client.get("/api/v1/export.json")
    assert response.status == 200
    text = await response.text()
    books = json.loads(text)
    ops = {item["kind"]: item for item in books["payment_ops"]}
    assert books["counts"]["payment_ops"] == len(books["payment_ops"]) == len(await p.ops())
    assert set(ops) == {"checkout", "transfer", "account"}
    assert {k: ops["transfer"][k] for k in ("id", "state", "idempotency_key", "payout_id",
                                             "transfer_id", "account_id", "attempts")} == {
        "id": op.id, "state": "done", "idempotency_key": key, "payout_id": payout_id,
        "transfer_id": transfer["id"], "account_id": account, "attempts": 1}
    assert ops["transfer"]["amount"] == {"amount": 5000, "currency": "EUR",
                                         "display": "€50.00"}
    assert ops["checkout"]["session_id"] == checkout.session_id
    assert all("url" not in item and "last_error" not in item for item in ops.values())
    for link in [op.url for op in await p.ops() if op.url] + list(stripe.sessions):
        assert link not in text or link.startswith("cs_"), link  # session ids, not pages
    assert stripe.api_key not in text


async def test_a_dead_transfer_that_reached_stripe_is_revived_and_not_paid_twice(
        paying: Stripy, capsys):
    p, stripe = paying, paying.stripe
    # The first try is done at Stripe but answered after the gateway gave up (unknown); then
    # every look for it fails, until the operation is dead and the books say the payout failed.
    stripe.delay_next("POST", TRANSFERS, 2.0)
    stripe.fail_next("GET", TRANSFERS, 500, times=3)
    account, payout_id, op = await dead_transfer(p)
    (made,) = stripe.transfers.values()
    assert len(stripe.recorded("GET", "/v1/transfers")) == 3
    # Days later: Stripe has forgotten the key, so only asking first can keep it from paying
    # again.
    stripe.forget_keys()

    assert await run("payments", "retry") == 0
    assert f"payment operation {op.id} (transfer, payout {payout_id}" in capsys.readouterr().out
    await p.settle()
    assert list(stripe.transfers.values()) == [made]
    assert len(stripe.recorded("POST", "/v1/transfers")) == 1  # never sent again
    (asked,) = stripe.recorded("GET", "/v1/transfers")[3:]
    assert asked.query["transfer_group"] == f"payout-{payout_id}"
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PAID and payout.reference == made["id"]
    assert stripe.balance(account) == {"eur": 5000}
    await p.audit()
    assert await run("audit", "--provider") == 0


async def test_a_dead_transfer_paid_by_hand_since_is_not_retried(paying: Stripy, capsys):
    p, stripe = paying, paying.stripe
    stripe.fail_next("POST", TRANSFERS, 503, times=4)
    _account, payout_id, op = await dead_transfer(p)
    assert await run("payouts", "mark-paid", str(payout_id), "--reference", "SEPA-7") == 0
    capsys.readouterr()
    assert await run("payments", "retry", str(op.id)) == 1
    err = capsys.readouterr().err
    assert f"payout {payout_id} is paid (reference SEPA-7)" in err and "pay twice" in err
    assert await run("payments", "retry") == 0  # all dead ones: this one is said and left
    out, err = capsys.readouterr()
    assert "0 dead operation(s)" in out and f"not retried: payment operation {op.id}" in err
    (op,) = await p.ops("transfer")
    assert op.state == Dead
    await p.settle()
    assert not stripe.transfers


@pytest.mark.usefixtures("capsys")
async def test_a_revived_transfer_is_not_sent_once_its_payout_is_paid_by_hand(paying: Stripy):
    """Revived, then marked paid before the worker gets to it: it is not sent."""
    p, stripe = paying, paying.stripe
    stripe.fail_next("POST", TRANSFERS, 503, times=4)
    _account, payout_id, op = await dead_transfer(p)
    assert await run("payments", "retry", str(op.id)) == 0
    assert await run("payouts", "mark-paid", str(payout_id), "--reference", "SEPA-8") == 0
    await p.settle()
    assert not stripe.transfers
    (op,) = await p.ops("transfer")
    assert (op.state, op.status) == (t.PaymentOpState.DONE, "not_needed")
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.PAID and payout.reference == "SEPA-8"


async def test_a_revived_transfer_that_dies_again_leaves_the_payout_failed(paying: Stripy,
                                                                           capsys):
    p, stripe = paying, paying.stripe
    stripe.fail_next("POST", TRANSFERS, 503, times=8)
    _account, payout_id, op = await dead_transfer(p)
    assert await run("payments", "retry") == 0
    for _ in range(6):
        p.move(minutes=5)
        await p.settle()
    (op,) = await p.ops("transfer")
    assert op.state == Dead and op.attempts == 4
    (payout,) = (await p.bot.existing_task(1)).payouts
    assert payout.state == PayoutState.FAILED
    assert not stripe.transfers
    assert await run("payments", "--state", "dead") == 0
    assert f"payout {payout_id}" in capsys.readouterr().out
