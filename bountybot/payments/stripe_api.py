"""Stripe's REST API as the Stripe provider needs it: checkout, refunds, transfers, connected
accounts, what became of a payment (refunds, disputes) and webhook signatures, each one
blocking call whose failures become `PaymentError`.

Design:

- Every method makes one HTTP request through stripe-python (a list one per 100 items;
  `payment_status` a second for a disputed payment) and blocks: the provider runs them with
  `asyncio.to_thread` (no async wrappers here, so there is one way to call them).
  `timeout` bounds the connection and each wait for data (requests' timeouts), not the total.
- The library's own retries are off. Whoever calls decides whether to try again, from
  `PaymentError.retryable`, and always with the SAME idempotency key (`idempotency_key()`,
  built from our ids): Stripe then answers a repeat with the first answer instead of paying
  twice. Stripe may forget a key after 24 hours, so an outcome left unknown for longer is
  settled by asking Stripe (`find_transfers`, `retrieve_checkout_session`), never by paying
  again.
- `outcome_unknown` means the request may have reached Stripe and done its work (a timeout, a
  dropped connection, a 5xx, a conflicting request in progress): reconcile before anything
  else.
- Money is integer minor units and an ISO 4217 code; Stripe is sent the code in lower case.
- Error messages are scrubbed of API keys and webhook secrets, Stripe's masked ones included.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import stripe

if TYPE_CHECKING:
    from stripe.params import RefundCreateParams

API_BASE = "https://api.stripe.com"
KEY_PREFIX = "bountybot"
WEBHOOK_TOLERANCE = 300  # seconds, as stripe-python's default
_MAX_KEY_LENGTH = 255  # Stripe's limit for an idempotency key
_SECRETS = re.compile(r"\b(?:sk|rk)_(?:test|live)_[0-9A-Za-z*]*|\bwhsec_[0-9A-Za-z*]*")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")

R = TypeVar("R")


class PaymentError(Exception):
    """A Stripe call that failed. `retryable`: the same call with the same idempotency key may
    succeed later. `outcome_unknown`: Stripe may have done the work anyway. `code` is Stripe's
    error code when it gave one (e.g. `balance_insufficient`, `idempotency_key_in_use`)."""

    def __init__(self, message: str, retryable: bool, outcome_unknown: bool = False, *,
                 status: int | None = None, code: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.outcome_unknown = outcome_unknown
        self.status = status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        return self.message


class WebhookError(Exception):
    """A webhook delivery refused before it is stored."""


class WebhookSignatureError(WebhookError):
    """The `Stripe-Signature` header is missing, malformed, wrong, or too old or new."""


class WebhookPayloadError(WebhookError, ValueError):
    """A correctly signed body that is not a Stripe event in JSON."""


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """A hosted payment page for one pledge; `url` is where the backer pays."""

    id: str
    url: str | None
    status: str | None  # open, complete, expired
    payment_status: str | None  # unpaid, paid, no_payment_required
    payment_intent: str | None  # set once the backer has paid
    amount_total: int | None = None
    currency: str | None = None  # lower case, as Stripe writes it
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundResult:
    id: str
    status: str  # pending, succeeded, failed, requires_action, canceled
    amount_minor: int
    currency: str | None = None
    payment_intent: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeResult:
    """A chargeback on a payment; `status` as Stripe says it (needs_response, under_review,
    won, lost, warning_..., prevented)."""

    id: str
    status: str
    amount_minor: int
    currency: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentStatus:
    """What became of a payment after it was made: how much of it was refunded, by anyone (the
    bot or Stripe's dashboard), and the disputes on it (asked for only when it is disputed)."""

    id: str
    amount_received: int
    amount_refunded: int
    currency: str | None = None
    disputed: bool = False
    disputes: tuple[DisputeResult, ...] = ()


@dataclass(frozen=True, slots=True)
class TransferResult:
    """Money moved from our Stripe balance to a developer's connected account."""

    id: str
    amount_minor: int
    destination: str
    currency: str | None = None
    transfer_group: str | None = None


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """Where a developer's connected account stands: transfers need `transfers_active`."""

    id: str
    payouts_enabled: bool
    transfers_active: bool
    details_submitted: bool


def idempotency_key(kind: str, *ids: str | int) -> str:
    """A key that names one operation on our objects, the same on every try:
    `idempotency_key("transfer", "payout", 42)` is `bountybot:transfer:payout:42`."""
    if any(isinstance(part, bool) for part in ids):
        raise TypeError("an id is a str or an int, not a bool")
    parts = [kind, *(str(part) for part in ids)]
    if not all(parts) or any(":" in part for part in parts):
        raise ValueError(f"idempotency key parts must be non-empty and free of ':': {parts!r}")
    key = ":".join([KEY_PREFIX, *parts])
    if len(key) > _MAX_KEY_LENGTH:
        raise ValueError(f"idempotency key longer than {_MAX_KEY_LENGTH} characters")
    return key


def scrub(text: str, *secrets: str) -> str:
    """`text` without API keys or webhook secrets: the given ones and any that look like one."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SECRETS.sub("[redacted]", text)


def verify_webhook(payload: bytes, signature_header: str | None, secret: str, *,
                   tolerance: int = WEBHOOK_TOLERANCE,
                   clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """The event a signed webhook body carries, as plain JSON values.

    stripe-python checks the HMAC; the age is checked here against `clock`, both ways, because
    the library ignores timestamps from the future and reads the system clock itself."""
    if not secret:
        raise WebhookSignatureError("no webhook secret is configured")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookSignatureError(
            "the body is not UTF-8, so its signature cannot match"
        ) from None
    try:
        stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance=None)
    except stripe.SignatureVerificationError as e:
        raise WebhookSignatureError(scrub(e.user_message or "bad signature", secret)) from None
    signed_at = _signed_at(signature_header or "")
    if abs(clock() - signed_at) > tolerance:
        raise WebhookSignatureError(
            f"signed at {signed_at}, more than {tolerance} seconds from now: a replay?"
        )
    try:
        event = json.loads(text)
    except ValueError as e:
        raise WebhookPayloadError(f"the body is not JSON: {e}") from None
    if (not isinstance(event, dict) or event.get("object") != "event"
            or not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict)):
        raise WebhookPayloadError("the body is not a Stripe event")
    return event


def _signed_at(header: str) -> int:
    for item in header.split(","):
        name, _, value = item.partition("=")
        if name.strip() == "t":
            return int(value)
    raise WebhookSignatureError("no timestamp in the signature header")  # verify_header checked


class StripeGateway:
    """Blocking calls to Stripe's API with one key, base address and timeout.

    Thread-safe for `asyncio.to_thread`: stripe-python keeps one HTTP session per thread."""

    def __init__(self, api_key: str, *, api_base: str = API_BASE, timeout: float = 20.0,
                 webhook_tolerance: int = WEBHOOK_TOLERANCE,
                 clock: Callable[[], float] = time.time) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is needed")
        self._api_key = api_key
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.webhook_tolerance = webhook_tolerance
        self._clock = clock
        self._http = stripe.RequestsClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": self.api_base},
            max_network_retries=0,  # our callers retry, with the same idempotency key
            http_client=self._http,
        )

    def __repr__(self) -> str:
        mode = "live" if "_live_" in self._api_key else "test"
        return f"StripeGateway(api_base={self.api_base!r}, mode={mode}, timeout={self.timeout})"

    def close(self) -> None:
        """Close the calling thread's HTTP session; other threads' go with their threads."""
        self._http.close()  # type: ignore[no-untyped-call]  # stripe's client has no types

    # -- checkout -------------------------------------------------------------------------

    def create_checkout_session(self, *, amount_minor: int, currency: str, description: str,
                                success_url: str, cancel_url: str, metadata: Mapping[str, str],
                                idempotency_key: str) -> CheckoutSession:
        """A hosted payment page for one item of `amount_minor`; `metadata` (our ids) goes on
        both the session and the payment it creates."""
        _check_amount(amount_minor)
        if not description:
            raise ValueError("a checkout line needs a name")
        meta = _metadata(metadata)
        return self._call(
            "checkout session",
            lambda: self._client.v1.checkout.sessions.create(
                {
                    "mode": "payment",
                    "line_items": [{
                        "quantity": 1,
                        "price_data": {
                            "currency": _currency(currency),
                            "unit_amount": amount_minor,
                            "product_data": {"name": description},
                        },
                    }],
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": meta,
                    "payment_intent_data": {"description": description, "metadata": meta},
                },
                {"idempotency_key": _key(idempotency_key)},
            ),
            _checkout_session,
        )

    def retrieve_checkout_session(self, session_id: str) -> CheckoutSession:
        return self._call("checkout session lookup",
                          lambda: self._client.v1.checkout.sessions.retrieve(session_id),
                          _checkout_session)

    # -- refunds and transfers ------------------------------------------------------------

    def refund(self, *, payment_intent: str, amount_minor: int | None, idempotency_key: str,
               metadata: Mapping[str, str]) -> RefundResult:
        """Give back `amount_minor` of a payment (all that is left of it when None), to the
        card or account it came from."""
        params: RefundCreateParams = {"payment_intent": payment_intent,
                                      "metadata": _metadata(metadata)}
        if amount_minor is not None:
            _check_amount(amount_minor)
            params["amount"] = amount_minor
        return self._call(
            "refund",
            lambda: self._client.v1.refunds.create(params,
                                                   {"idempotency_key": _key(idempotency_key)}),
            _refund,
        )

    def retrieve_refund(self, refund_id: str) -> RefundResult:
        return self._call("refund lookup", lambda: self._client.v1.refunds.retrieve(refund_id),
                          _refund)

    def payment_status(self, payment_intent: str) -> PaymentStatus:
        """Refunds and disputes on a payment: the payment with its latest charge (one request),
        and the payment's disputes only when that charge is disputed (a second)."""
        status = self._call(
            "payment lookup",
            lambda: self._client.v1.payment_intents.retrieve(payment_intent,
                                                             {"expand": ["latest_charge"]}),
            _payment_status,
        )
        if not status.disputed:
            return status
        disputes = self._call(
            "dispute lookup",
            lambda: list(self._client.v1.disputes.list(
                {"payment_intent": payment_intent, "limit": 100}
            ).auto_paging_iter()),
            lambda found: tuple(_dispute(d.to_dict()) for d in found),
        )
        return replace(status, disputes=disputes)

    def create_transfer(self, *, amount_minor: int, currency: str, destination: str,
                        transfer_group: str, metadata: Mapping[str, str],
                        idempotency_key: str) -> TransferResult:
        """Move money from our balance to a connected account. `transfer_group` names the
        payout, so `find_transfers` can tell later whether it happened."""
        _check_amount(amount_minor)
        return self._call(
            "transfer",
            lambda: self._client.v1.transfers.create(
                {
                    "amount": amount_minor,
                    "currency": _currency(currency),
                    "destination": destination,
                    "transfer_group": transfer_group,
                    "metadata": _metadata(metadata),
                },
                {"idempotency_key": _key(idempotency_key)},
            ),
            _transfer,
        )

    def find_transfers(self, transfer_group: str) -> list[TransferResult]:
        """Every transfer of a group, newest first: how a payout whose answer was lost is
        settled."""
        if not transfer_group:
            raise ValueError("a transfer group is needed")  # Stripe would list every transfer
        return self._call(
            "transfer lookup",
            lambda: list(self._client.v1.transfers.list(
                {"transfer_group": transfer_group, "limit": 100}
            ).auto_paging_iter()),
            lambda transfers: [_transfer(t.to_dict()) for t in transfers],
        )

    # -- connected accounts ---------------------------------------------------------------

    def create_express_account(self, *, login: str, forge: str, idempotency_key: str) -> str:
        """An Express account for a developer, asking for transfers; returns its id."""
        return self._call(
            "account",
            lambda: self._client.v1.accounts.create(
                {
                    "type": "express",
                    "capabilities": {"transfers": {"requested": True}},
                    "metadata": _metadata({"forge": forge, "login": login}),
                },
                {"idempotency_key": _key(idempotency_key)},
            ),
            lambda obj: str(obj["id"]),
        )

    def retrieve_account(self, account_id: str) -> AccountStatus:
        def status(obj: dict[str, Any]) -> AccountStatus:
            capabilities = obj.get("capabilities") or {}
            return AccountStatus(obj["id"], bool(obj.get("payouts_enabled")),
                                 capabilities.get("transfers") == "active",
                                 bool(obj.get("details_submitted")))

        return self._call("account lookup",
                          lambda: self._client.v1.accounts.retrieve(account_id), status)

    def create_account_link(self, account: str, *, refresh_url: str, return_url: str) -> str:
        """A one-time onboarding URL for the account's owner (it expires within minutes)."""
        return self._call(
            "account link",
            lambda: self._client.v1.account_links.create({
                "account": account,
                "type": "account_onboarding",
                "refresh_url": refresh_url,
                "return_url": return_url,
            }),
            lambda obj: str(obj["url"]),
        )

    # -- webhooks -------------------------------------------------------------------------

    def verify_webhook(self, payload: bytes, signature_header: str | None,
                       secret: str) -> dict[str, Any]:
        """See the module's `verify_webhook`; the tolerance and clock are this gateway's."""
        return verify_webhook(payload, signature_header, secret,
                              tolerance=self.webhook_tolerance, clock=self._clock)

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, what: str, request: Callable[[], Any], parse: Callable[[Any], R]) -> R:
        """Make the request, then read its answer (a Stripe object as plain JSON values)."""
        try:
            answer = request()
        except stripe.StripeError as e:
            raise self._error(what, e) from None
        try:
            return parse(answer.to_dict() if isinstance(answer, stripe.StripeObject) else answer)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # Stripe said yes but the answer is not what we asked for: done, or not?
            raise PaymentError(f"Stripe {what}: unexpected answer ({type(e).__name__}: {e})",
                               retryable=False, outcome_unknown=True) from None

    def _error(self, what: str, e: stripe.StripeError) -> PaymentError:
        retryable, unknown = _judge(e)
        status = e.http_status
        code = e.code or _error_code(e.json_body)
        detail = " ".join((e.user_message or "no message").split())
        where = ", ".join(p for p in (f"HTTP {status}" if status else "", code or "") if p)
        message = f"Stripe {what} failed: {type(e).__name__}" + (f" ({where})" if where else "")
        message += f": {detail}" + (f" [{e.request_id}]" if e.request_id else "")
        return PaymentError(scrub(message, self._api_key), retryable, unknown, status=status,
                            code=code, request_id=e.request_id)


def _judge(e: stripe.StripeError) -> tuple[bool, bool]:
    """(retryable, outcome_unknown) for a library error."""
    if isinstance(e, stripe.APIConnectionError):
        # Timeouts and dropped connections: the request may have been done. The library says
        # whether trying again can help (not after a TLS certificate error, say).
        retryable, unknown = e.should_retry, True
    elif isinstance(e, stripe.RateLimitError):
        retryable, unknown = True, False  # refused before anything was done
    elif isinstance(e, (stripe.IdempotencyError, stripe.InvalidRequestError,
                        stripe.AuthenticationError, stripe.PermissionError, stripe.CardError)):
        # Our request is wrong (or reuses a key for another request), our key is, or the
        # card was declined: the same request gets the same answer.
        retryable, unknown = False, False
    else:
        # 5xx, 409 (another request with this key is still in progress), or an answer that is
        # not Stripe's: the work may be done or under way. Stripe replays a saved 5xx to a
        # retry with the same key; it says so with `Stripe-Should-Retry: false`.
        retryable, unknown = True, True
    advice = {name.lower(): value for name, value in (e.headers or {}).items()}.get(
        "stripe-should-retry"
    )
    if advice in ("true", "false"):
        retryable = advice == "true"
    return retryable, unknown


def _error_code(body: object) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _check_amount(amount_minor: int) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValueError(f"an amount is a positive int of minor units, not {amount_minor!r}")


def _currency(code: str) -> str:
    if not _CURRENCY.match(code):
        raise ValueError(f"not an ISO 4217 currency code: {code!r}")
    return code.lower()


def _key(key: str) -> str:
    if not key or len(key) > _MAX_KEY_LENGTH:
        raise ValueError("an idempotency key is 1 to 255 characters (see idempotency_key())")
    return key


def _metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Stripe's metadata: at most 50 str keys of 40 characters, str values of 500."""
    meta = {str(k): str(v) for k, v in metadata.items()}
    if len(meta) > 50 or any(len(k) > 40 or len(v) > 500 for k, v in meta.items()):
        raise ValueError("Stripe metadata is at most 50 keys of 40 and values of 500 characters")
    return meta


def _id(value: Any) -> str | None:
    """An expandable field: an id, or the object itself when expanded."""
    if value is None or isinstance(value, str):
        return value
    return str(value["id"])


def _checkout_session(obj: dict[str, Any]) -> CheckoutSession:
    return CheckoutSession(
        id=obj["id"], url=obj.get("url"), status=obj.get("status"),
        payment_status=obj.get("payment_status"), payment_intent=_id(obj.get("payment_intent")),
        amount_total=obj.get("amount_total"), currency=obj.get("currency"),
        metadata=dict(obj.get("metadata") or {}),
    )


def _refund(obj: dict[str, Any]) -> RefundResult:
    return RefundResult(obj["id"], obj["status"], int(obj["amount"]), obj.get("currency"),
                        _id(obj.get("payment_intent")))


def _payment_status(obj: dict[str, Any]) -> PaymentStatus:
    charge = obj.get("latest_charge") or {}  # expanded; None before any attempt to pay
    if isinstance(charge, str):
        raise ValueError("the latest charge was not expanded")
    return PaymentStatus(obj["id"], int(obj.get("amount_received") or 0),
                         int(charge.get("amount_refunded") or 0), obj.get("currency"),
                         bool(charge.get("disputed")))


def _dispute(obj: dict[str, Any]) -> DisputeResult:
    return DisputeResult(obj["id"], str(obj["status"]), int(obj["amount"]), obj.get("currency"),
                         obj.get("reason"))


def _transfer(obj: dict[str, Any]) -> TransferResult:
    return TransferResult(obj["id"], int(obj["amount"]), str(_id(obj["destination"])),
                          obj.get("currency"), obj.get("transfer_group"))
