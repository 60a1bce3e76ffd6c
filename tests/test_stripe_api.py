"""The Stripe gateway against a local Stripe API, through the real stripe-python over loopback:
what it sends, what it reads back, how failures are judged, and webhook signatures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import stripe

from bountybot.payments.stripe_api import (
    CheckoutSession,
    PaymentError,
    StripeGateway,
    TransferResult,
    WebhookPayloadError,
    WebhookSignatureError,
    idempotency_key,
    verify_webhook,
)

from fakes.stripe import FakeStripe, StripeRefused, decode_form, stripe_server  # noqa: F401

T = TypeVar("T")
SECRET = "whsec_test_0123456789abcdef"
TRANSFERS = r"^/v1/transfers$"


async def run(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking gateway call, off the loop that serves the fake (as the provider will)."""
    return await asyncio.to_thread(call, *args, **kwargs)


@pytest.fixture
async def gateway(stripe_server: FakeStripe) -> AsyncIterator[StripeGateway]:  # noqa: F811
    gateway = StripeGateway(stripe_server.api_key, api_base=stripe_server.url, timeout=2)
    yield gateway
    gateway.close()


async def checkout(gateway: StripeGateway, pledge_id: int = 12, minor: int = 6000,
                   currency: str = "EUR") -> CheckoutSession:
    return await run(
        gateway.create_checkout_session, amount_minor=minor, currency=currency,
        description="Bounty for octo/widgets#7", success_url="https://bot.example/thanks",
        cancel_url="https://bot.example/cancelled",
        metadata={"pledge_id": str(pledge_id), "task_id": "3"},
        idempotency_key=idempotency_key("checkout", "pledge", pledge_id),
    )


async def developer(fake: FakeStripe, gateway: StripeGateway, *, onboarded: bool = True,
                    funds: int = 10_000) -> str:
    """A developer's connected account, onboarded, and funds to pay them from."""
    account = await run(gateway.create_express_account, login="carol", forge="github",
                        idempotency_key=idempotency_key("account", "github", "carol"))
    if onboarded:
        fake.complete_onboarding(account)
    fake.add_funds("eur", funds)
    return account


async def transfer(gateway: StripeGateway, account: str, payout_id: int = 42,
                   minor: int = 5000) -> TransferResult:
    return await run(
        gateway.create_transfer, amount_minor=minor, currency="EUR", destination=account,
        transfer_group=f"payout-{payout_id}", metadata={"payout_id": str(payout_id)},
        idempotency_key=idempotency_key("transfer", "payout", payout_id),
    )


# -- keys -----------------------------------------------------------------------------------


def test_idempotency_keys_are_built_from_our_ids_alone() -> None:
    assert idempotency_key("transfer", "payout", 42) == "bountybot:transfer:payout:42"
    assert idempotency_key("refund", 7) == idempotency_key("refund", "7")
    assert idempotency_key("refund", 7) != idempotency_key("refund", 8)
    for bad in (("",), ("transfer", "a:b"), ("transfer", "")):
        with pytest.raises(ValueError):
            idempotency_key(*bad)
    with pytest.raises(TypeError):
        idempotency_key("transfer", True)
    with pytest.raises(ValueError):
        idempotency_key("transfer", "x" * 300)


def test_the_fake_reads_stripes_form_encoding() -> None:
    assert decode_form([
        ("mode", "payment"), ("line_items[0][quantity]", "1"),
        ("line_items[0][price_data][unit_amount]", "600"), ("line_items[1][quantity]", "2"),
        ("metadata[pledge_id]", "12"), ("expand[]", "a"), ("expand[]", "b"), ("note", ""),
    ]) == {"mode": "payment",
           "line_items": [{"quantity": "1", "price_data": {"unit_amount": "600"}},
                          {"quantity": "2"}],
           "metadata": {"pledge_id": "12"}, "expand": ["a", "b"], "note": ""}
    with pytest.raises(StripeRefused):
        decode_form([("amount", "1"), ("amount[x]", "2")])


# -- checkout -------------------------------------------------------------------------------


async def test_a_checkout_session_carries_the_amount_currency_and_our_ids(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    session = await checkout(gateway)

    assert session.id.startswith("cs_test_")
    assert session.url == f"{stripe_server.url}/pay/{session.id}"
    assert (session.status, session.payment_status, session.payment_intent) == (
        "open", "unpaid", None)
    assert (session.amount_total, session.currency) == (6000, "eur")
    assert session.metadata == {"pledge_id": "12", "task_id": "3"}
    [sent] = stripe_server.recorded("POST", "/v1/checkout/sessions")
    assert sent.headers["idempotency-key"] == "bountybot:checkout:pledge:12"
    assert sent.headers["authorization"] == f"Bearer {stripe_server.api_key}"
    assert sent.json["mode"] == "payment"
    assert sent.json["line_items"] == [{"quantity": "1", "price_data": {
        "currency": "eur", "unit_amount": "6000",
        "product_data": {"name": "Bounty for octo/widgets#7"}}}]
    assert sent.json["metadata"] == {"pledge_id": "12", "task_id": "3"}
    assert sent.json["payment_intent_data"]["metadata"] == {"pledge_id": "12", "task_id": "3"}


async def test_a_paid_session_reads_paid_and_names_its_payment(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    session = await checkout(gateway)
    event = stripe_server.pay(session.id)

    paid = await run(gateway.retrieve_checkout_session, session.id)
    assert (paid.status, paid.payment_status) == ("complete", "paid")
    intent = stripe_server.payment_intents[paid.payment_intent or ""]
    assert intent["metadata"] == {"pledge_id": "12", "task_id": "3"}
    assert intent["amount_received"] == 6000
    assert event["type"] == "checkout.session.completed"
    assert event["object"] == "event" and event["id"].startswith("evt_")
    assert event["data"]["object"]["payment_intent"] == paid.payment_intent
    assert event["data"]["object"]["metadata"]["pledge_id"] == "12"


async def test_the_same_key_twice_makes_one_session_and_another_request_is_refused(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    first = await checkout(gateway)
    again = await checkout(gateway)
    assert again == first
    assert len(stripe_server.sessions) == 1

    with pytest.raises(PaymentError) as refused:  # same key, another amount: a bug of ours
        await checkout(gateway, minor=7000)
    assert not refused.value.retryable and not refused.value.outcome_unknown
    assert "same parameters" in str(refused.value)
    assert len(stripe_server.sessions) == 1


async def test_a_missing_session_is_a_final_error(gateway: StripeGateway) -> None:
    with pytest.raises(PaymentError) as missing:
        await run(gateway.retrieve_checkout_session, "cs_test_nope")
    assert (missing.value.status, missing.value.code) == (404, "resource_missing")
    assert not missing.value.retryable


async def test_amounts_and_currencies_are_checked_before_calling(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    for minor, currency in ((0, "EUR"), (12.5, "EUR"), (True, "EUR"), (100, "euro")):
        with pytest.raises(ValueError):
            await checkout(gateway, minor=minor, currency=currency)  # type: ignore[arg-type]
    assert stripe_server.requests == []


# -- refunds ----------------------------------------------------------------------------------


async def test_refunds_go_back_to_the_payment_in_part_or_in_full(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    session = await checkout(gateway)
    stripe_server.pay(session.id)
    paid = await run(gateway.retrieve_checkout_session, session.id)
    intent = paid.payment_intent or ""

    part = await run(gateway.refund, payment_intent=intent, amount_minor=1000,
                     idempotency_key=idempotency_key("refund", "pledge", 12, 1),
                     metadata={"pledge_id": "12"})
    rest = await run(gateway.refund, payment_intent=intent, amount_minor=None,
                     idempotency_key=idempotency_key("refund", "pledge", 12, 2),
                     metadata={"pledge_id": "12"})

    assert (part.status, part.amount_minor, part.currency) == ("succeeded", 1000, "eur")
    assert rest.amount_minor == 5000
    first, second = stripe_server.recorded("POST", "/v1/refunds")
    assert first.json == {"payment_intent": intent, "amount": "1000",
                          "metadata": {"pledge_id": "12"}}
    assert "amount" not in second.json
    with pytest.raises(PaymentError) as again:
        await run(gateway.refund, payment_intent=intent, amount_minor=None,
                  idempotency_key=idempotency_key("refund", "pledge", 12, 3), metadata={})
    assert again.value.code == "charge_already_refunded" and not again.value.retryable


# -- transfers ------------------------------------------------------------------------------


async def test_a_transfer_pays_the_connected_account_and_can_be_found(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    account = await developer(stripe_server, gateway)

    paid = await transfer(gateway, account)

    assert paid.id.startswith("tr_")
    assert (paid.amount_minor, paid.currency, paid.destination) == (5000, "eur", account)
    assert paid.transfer_group == "payout-42"
    assert stripe_server.balance(account) == {"eur": 5000}
    [sent] = stripe_server.recorded("POST", "/v1/transfers")
    assert sent.json == {"amount": "5000", "currency": "eur", "destination": account,
                         "transfer_group": "payout-42", "metadata": {"payout_id": "42"}}
    assert sent.headers["idempotency-key"] == "bountybot:transfer:payout:42"
    assert await run(gateway.find_transfers, "payout-42") == [paid]
    assert await run(gateway.find_transfers, "payout-43") == []


async def test_a_timed_out_transfer_retried_with_its_key_pays_once(
        stripe_server: FakeStripe) -> None:  # noqa: F811
    gateway = StripeGateway(stripe_server.api_key, api_base=stripe_server.url, timeout=0.3)
    account = await developer(stripe_server, gateway)
    stripe_server.delay_next("POST", TRANSFERS, 3.0)  # Stripe does it; the answer is lost

    with pytest.raises(PaymentError) as lost:
        await transfer(gateway, account)
    assert lost.value.retryable and lost.value.outcome_unknown
    assert lost.value.status is None and "timed out" in str(lost.value).lower()

    [found] = await run(gateway.find_transfers, "payout-42")  # asking Stripe settles it
    retried = await transfer(gateway, account)
    assert retried == found
    assert len(stripe_server.transfers) == 1
    assert stripe_server.balance(account) == {"eur": 5000}
    first, second = stripe_server.recorded("POST", "/v1/transfers")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    gateway.close()


async def test_a_server_error_then_success_pays_once(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    account = await developer(stripe_server, gateway)
    stripe_server.fail_next("POST", TRANSFERS, 500)

    with pytest.raises(PaymentError) as failed:
        await transfer(gateway, account)
    assert failed.value.retryable and failed.value.outcome_unknown
    assert failed.value.status == 500 and failed.value.request_id
    assert stripe_server.transfers == {}

    paid = await transfer(gateway, account)
    assert stripe_server.balance(account) == {"eur": 5000}
    assert list(stripe_server.transfers) == [paid.id]


@pytest.mark.parametrize(("status", "headers", "body", "retryable", "unknown"), [
    (500, {"Stripe-Should-Retry": "false"}, None, False, True),  # Stripe would replay the 500
    (409, {}, {"error": {"code": "idempotency_key_in_use", "type": "invalid_request_error",
                         "message": "There is currently another in-progress request using "
                                    "this Idempotent Key"}}, True, True),
    (429, {}, None, True, False),
    (502, {}, "<html><body>502 Bad Gateway</body></html>", True, True),
    (400, {}, None, False, False),
])
async def test_failures_are_judged_retryable_or_final(
        stripe_server: FakeStripe, gateway: StripeGateway, status: int,  # noqa: F811
        headers: dict[str, str], body: Any, retryable: bool, unknown: bool) -> None:
    account = await developer(stripe_server, gateway)
    stripe_server.fail_next("POST", TRANSFERS, status, headers=headers, body=body)

    with pytest.raises(PaymentError) as failed:
        await transfer(gateway, account)

    assert (failed.value.retryable, failed.value.outcome_unknown) == (retryable, unknown)
    assert failed.value.status == status
    assert len(stripe_server.recorded("POST", "/v1/transfers")) == 1  # the library did not retry


async def test_transfers_stripe_refuses_are_final(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    waiting = await developer(stripe_server, gateway, onboarded=False)
    with pytest.raises(PaymentError) as not_onboarded:
        await transfer(gateway, waiting)
    assert not_onboarded.value.status == 400
    assert not_onboarded.value.code == "insufficient_capabilities_for_transfer"
    assert not not_onboarded.value.retryable and not not_onboarded.value.outcome_unknown

    stripe_server.complete_onboarding(waiting)
    with pytest.raises(PaymentError) as too_much:
        await transfer(gateway, waiting, minor=1_000_000)
    assert too_much.value.code == "balance_insufficient"
    assert stripe_server.transfers == {}


async def test_an_unreachable_stripe_is_retryable_and_unknown(
        stripe_server: FakeStripe) -> None:  # noqa: F811
    url = stripe_server.url
    await stripe_server.close()
    gateway = StripeGateway(stripe_server.api_key, api_base=url, timeout=1)
    with pytest.raises(PaymentError) as down:
        await run(gateway.find_transfers, "payout-1")
    assert down.value.retryable and down.value.outcome_unknown


async def test_find_transfers_keeps_to_its_group(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    account = await developer(stripe_server, gateway, funds=0)
    for n in range(105):  # put straight into the books: a hundred calls would be slow
        stripe_server.transfers[f"tr_{n:03d}"] = {
            "id": f"tr_{n:03d}", "object": "transfer", "amount": n + 1, "currency": "eur",
            "destination": account, "transfer_group": "payout-7" if n % 2 else "payout-8",
            "metadata": {}}
    found = await run(gateway.find_transfers, "payout-7")
    assert [t.id for t in found] == [f"tr_{n:03d}" for n in range(103, 0, -2)]
    assert len(stripe_server.recorded("GET", "/v1/transfers")) == 1  # 52 fit on a page
    found = await run(gateway.find_transfers, "payout-8")
    assert len(found) == 53


async def test_find_transfers_follows_pages(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    account = await developer(stripe_server, gateway, funds=0)
    for n in range(130):
        stripe_server.transfers[f"tr_{n:03d}"] = {
            "id": f"tr_{n:03d}", "object": "transfer", "amount": 1, "currency": "eur",
            "destination": account, "transfer_group": "payout-9", "metadata": {}}
    found = await run(gateway.find_transfers, "payout-9")
    assert [t.id for t in found] == [f"tr_{n:03d}" for n in range(129, -1, -1)]
    first, second = stripe_server.recorded("GET", "/v1/transfers")
    assert second.query["starting_after"] == "tr_030"


# -- keys in messages -------------------------------------------------------------------------


async def test_a_wrong_api_key_fails_without_showing_the_key(
        stripe_server: FakeStripe) -> None:  # noqa: F811
    key = "sk_test_51WrongKeyThatMustNotLeakAnywhere9876"
    gateway = StripeGateway(key, api_base=stripe_server.url, timeout=2)
    with pytest.raises(PaymentError) as refused:
        await checkout(gateway)
    error = refused.value
    assert (error.status, error.retryable, error.outcome_unknown) == (401, False, False)
    assert "Invalid API Key" in str(error)
    for text in (str(error), repr(error), repr(error.args), repr(gateway)):
        assert key not in text and key[-4:] not in text
    assert error.__cause__ is None and error.__suppress_context__


async def test_keys_quoted_back_by_stripe_or_a_proxy_are_scrubbed(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    key = stripe_server.api_key
    with pytest.raises(PaymentError) as stranger:  # Stripe quotes the key, masked
        await run(gateway.retrieve_account, "acct_someone_else")
    assert stranger.value.status == 403 and not stranger.value.retryable
    assert key[-4:] not in str(stranger.value) and "[redacted]" in str(stranger.value)

    stripe_server.fail_next("GET", r"^/v1/accounts/", 502, body={"error": {
        "type": "api_error", "message": f"upstream said Bearer {key} and whsec_abc123"}})
    with pytest.raises(PaymentError) as echoed:
        await run(gateway.retrieve_account, "acct_x")
    assert key not in str(echoed.value) and "whsec_abc123" not in str(echoed.value)


# -- connected accounts -----------------------------------------------------------------------


async def test_a_developer_account_is_created_linked_and_onboarded(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    account = await run(gateway.create_express_account, login="carol", forge="github",
                        idempotency_key=idempotency_key("account", "github", "carol"))
    [sent] = stripe_server.recorded("POST", "/v1/accounts")
    assert sent.json == {"type": "express", "capabilities": {"transfers": {"requested": "true"}},
                         "metadata": {"forge": "github", "login": "carol"}}
    assert sent.headers["idempotency-key"] == "bountybot:account:github:carol"

    before = await run(gateway.retrieve_account, account)
    assert (before.id, before.payouts_enabled, before.transfers_active,
            before.details_submitted) == (account, False, False, False)

    url = await run(gateway.create_account_link, account,
                    refresh_url="https://bot.example/stripe/refresh",
                    return_url="https://bot.example/stripe/done")
    assert url.startswith(f"{stripe_server.url}/setup/e/{account}/")
    [link] = stripe_server.recorded("POST", "/v1/account_links")
    assert link.json["type"] == "account_onboarding" and link.json["account"] == account

    event = stripe_server.complete_onboarding(account)
    after = await run(gateway.retrieve_account, account)
    assert (after.payouts_enabled, after.transfers_active, after.details_submitted) == (
        True, True, True)
    assert event["type"] == "account.updated"
    assert event["data"]["object"]["capabilities"]["transfers"] == "active"


# -- webhooks -------------------------------------------------------------------------------


def signed(fake: FakeStripe, event: dict[str, Any], **sign: Any) -> tuple[bytes, str]:
    body = json.dumps(event).encode()
    return body, fake.sign(body, sign.pop("secret", SECRET), **sign)


async def test_a_signed_event_is_read_back_as_plain_json(
        stripe_server: FakeStripe, gateway: StripeGateway) -> None:  # noqa: F811
    session = await checkout(gateway)
    event = stripe_server.pay(session.id)
    body, header = signed(stripe_server, event)

    assert gateway.verify_webhook(body, header, SECRET) == event
    # the fake signs as Stripe does: the library's own signer agrees
    timestamp = int(header.split(",")[0][2:])
    assert header == stripe.WebhookSignature.generate_signature_header(
        body.decode(), SECRET, timestamp)


@pytest.mark.parametrize("case", ["tampered", "wrong secret", "old", "future", "missing",
                                  "garbled", "no v1", "not utf-8", "no secret"])
def test_bad_signatures_are_refused(case: str) -> None:
    fake, now = FakeStripe(), 1_750_000_000
    event = fake.event("checkout.session.completed", {"id": "cs_test_1", "object": "x"})
    body, header = signed(fake, event, timestamp=now)
    secret: str = SECRET
    header_sent: str | None = header
    if case == "tampered":
        body = body.replace(b"cs_test_1", b"cs_test_2")
    elif case == "wrong secret":
        secret = "whsec_another"
    elif case == "old":
        body, header_sent = signed(fake, event, timestamp=now - 301)
    elif case == "future":
        body, header_sent = signed(fake, event, timestamp=now + 301)
    elif case == "missing":
        header_sent = None
    elif case == "garbled":
        header_sent = "t=soon,v1=abc"
    elif case == "no v1":
        header_sent = header.split(",")[0] + ",v0=" + header.split("v1=")[1]
    elif case == "not utf-8":
        body = b"\xff" + body
    elif case == "no secret":
        secret = ""
    gateway = StripeGateway("sk_test_x", clock=lambda: now)

    with pytest.raises(WebhookSignatureError) as refused:
        gateway.verify_webhook(body, header_sent, secret)
    assert SECRET not in str(refused.value)
    # within the tolerance, the same event passes
    assert verify_webhook(*signed(fake, event, timestamp=now - 299), SECRET,
                          clock=lambda: now) == event


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"object": "charge"}'])
def test_a_signed_body_that_is_no_event_is_a_payload_error(body: bytes) -> None:
    fake = FakeStripe()
    with pytest.raises(WebhookPayloadError):
        verify_webhook(body, fake.sign(body, SECRET), SECRET)
    assert issubclass(WebhookPayloadError, ValueError)
