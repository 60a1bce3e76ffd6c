"""A small local Stripe API on loopback: checkout sessions, payments and their charges, refunds,
disputes, transfers and Express accounts, from the form-encoded requests stripe-python sends,
recorded, with idempotency keys honoured and failures or late answers on demand.

Objects, errors (`{"error": {"type", "code", "message", "param"}}`) and their messages follow
Stripe's API reference (docs.stripe.com/api), trimmed to the fields the bot reads; events and
their `Stripe-Signature` are made the way Stripe documents them (docs.stripe.com/webhooks).

    fake = await FakeStripe.start()           # or the `stripe_server` fixture
    gateway = StripeGateway(fake.api_key, api_base=fake.url)
    event = fake.pay(session_id)              # checkout.session.completed, as Stripe sends it
    body = json.dumps(event).encode(); header = fake.sign(body, "whsec_...")
    fake.complete_onboarding(account_id)
    fake.refund_in_dashboard(intent_id, 1000)  # an operator's refund: charge.refunded
    fake.dispute(intent_id); fake.close_dispute(dispute_id, "lost")   # the backer's bank
    fake.fail_next("POST", r"^/v1/transfers$", 500)
    fake.delay_next("POST", r"^/v1/transfers$", 2.0)   # done at once, answered 2 s later
    fake.forget_keys()                        # a day later: same key, new work
    fake.requests, fake.writes(), fake.balance(account_id)

Idempotency as Stripe's: a POST's `Idempotency-Key` saves the answer once the work is done; the
same key again returns it (`Idempotent-Replayed: true`) without doing anything; the same key
on another path or with other parameters is a 400 `idempotency_error`. Refused parameters are
not saved, nor are injected failures (they stand for trouble before Stripe's API), so a retry
after them does the work. A GET's `expand[]` expands the fields that name another object
(`latest_charge`, `charge`, `payment_intent`), one level deep. A delayed request is done and
saved at once, and only its answer is late: a client that times out has paid all the same.
Paid money is available at once (as with Stripe's 4000000000000077 test card); transfers beyond
it are refused (`balance_insufficient`); a dispute takes its amount until it is won.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from fakes.recording import Recorded, RecordingServer, Refused

API_KEY = "sk_test_bountybot0000000000000000"
API_VERSION = "2026-10-28.endive"  # what the installed stripe-python asks for
DOCS = "https://stripe.com/docs/error-codes/"
_BRACKETS = re.compile(r"\[([^\]]*)\]")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PARAMS = web.RequestKey("stripe_params", dict)


class StripeRefused(Refused):
    """A refusal in Stripe's error shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, error_type: str = "invalid_request_error") -> None:
        super().__init__(status, message)
        self.code, self.param, self.error_type = code, param, error_type

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.error_type}
        if self.code:
            error.update(code=self.code, doc_url=DOCS + self.code.replace("_", "-"))
        if self.param:
            error["param"] = self.param
        return {"error": error}


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding as nested values: `a[b][c]=x` is a dict, `a[0][b]=x` a list."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, bracket, rest = key.partition("[")
        path = [head, *_BRACKETS.findall(bracket + rest)]
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StripeRefused(400, f"Invalid hash: {key}", param=head)
        node[path[-1] or str(len(node))] = value  # `a[]=x` appends
    return _as_lists(root)


def _as_lists(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    items = {k: _as_lists(v) for k, v in value.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


class FakeStripe(RecordingServer):
    """A Stripe API at `url`. Its objects are kept as Stripe's JSON, by id, in `sessions`,
    `payment_intents`, `charges`, `refunds`, `disputes`, `transfers`, `accounts`; `events` lists
    the events made."""

    def __init__(self, *, api_key: str = API_KEY, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.api_key = api_key
        self.clock = clock
        self.sessions: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.transfers: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.account_links: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.available: dict[str, int] = {}  # the platform's balance, by currency
        self._keys = {api_key}
        self._saved: dict[tuple[str, str], tuple[str, dict[str, Any], int, dict[str, Any]]] = {}
        self._intent_data: dict[str, dict[str, Any]] = {}  # session id -> payment_intent_data
        self._serial = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, *, api_key: str = API_KEY,
                    clock: Callable[[], float] = time.time) -> FakeStripe:
        """A fake listening on 127.0.0.1, on a port the system chose (see `url`)."""
        fake = cls(api_key=api_key, clock=clock)

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await fake._serve(request, handler)

        app = web.Application(middlewares=[middleware])
        for path, store, kind in (
            ("/v1/checkout/sessions/{id}", fake.sessions, "checkout.session"),
            ("/v1/payment_intents/{id}", fake.payment_intents, "payment_intent"),
            ("/v1/charges/{id}", fake.charges, "charge"),
            ("/v1/refunds/{id}", fake.refunds, "refund"),
            ("/v1/disputes/{id}", fake.disputes, "dispute"),
            ("/v1/transfers/{id}", fake.transfers, "transfer"),
        ):
            app.router.add_get(path, fake._getter(store, kind))
        app.router.add_post("/v1/checkout/sessions", fake._create_session)
        app.router.add_post("/v1/refunds", fake._create_refund)
        app.router.add_post("/v1/transfers", fake._create_transfer)
        app.router.add_get("/v1/transfers", fake._lister(fake.transfers, "transfer",
                                                         "transfer_group", "destination"))
        app.router.add_get("/v1/disputes", fake._lister(fake.disputes, "dispute", "charge",
                                                        "payment_intent"))
        app.router.add_post("/v1/accounts", fake._create_account)
        app.router.add_get("/v1/accounts/{id}", fake._retrieve_account)
        app.router.add_post("/v1/account_links", fake._create_account_link)
        await fake._listen(app)
        return fake

    # -- what tests do in Stripe's place ----------------------------------------------------

    def accept_key(self, api_key: str) -> None:
        self._keys.add(api_key)

    def add_funds(self, currency: str, minor: int) -> None:
        """Money on the platform's balance that no payment here brought."""
        self.available[currency.lower()] = self.available.get(currency.lower(), 0) + minor

    def pay(self, session_id: str) -> dict[str, Any]:
        """The backer pays an open session: a succeeded payment intent, the session complete
        and paid, the money available. Returns the `checkout.session.completed` event."""
        session = self.sessions[session_id]
        assert session["status"] == "open", session["status"]
        intent_data = self._intent_data.get(session_id, {})
        now, amount, currency = self._now(), session["amount_total"], session["currency"]
        intent = {
            "id": self._id("pi"), "object": "payment_intent",
            "amount": amount, "amount_received": amount,
            "currency": currency, "created": now,
            "description": intent_data.get("description"), "latest_charge": self._id("ch"),
            "livemode": False, "metadata": dict(intent_data.get("metadata") or {}),
            "status": "succeeded", "transfer_group": intent_data.get("transfer_group"),
        }
        self.payment_intents[intent["id"]] = intent
        self.charges[intent["latest_charge"]] = {
            "id": intent["latest_charge"], "object": "charge", "amount": amount,
            "amount_captured": amount, "amount_refunded": 0, "captured": True,
            "created": now, "currency": currency, "disputed": False, "livemode": False,
            "metadata": dict(intent["metadata"]), "paid": True, "payment_intent": intent["id"],
            "refunded": False, "status": "succeeded",
        }
        session.update(status="complete", payment_status="paid", payment_intent=intent["id"])
        self.add_funds(session["currency"], session["amount_total"])
        return self.event("checkout.session.completed", session)

    def expire(self, session_id: str) -> dict[str, Any]:
        """An open session times out unpaid; returns the `checkout.session.expired` event."""
        session = self.sessions[session_id]
        assert session["status"] == "open", session["status"]
        session.update(status="expired", url=None)
        return self.event("checkout.session.expired", session)

    def refund_in_dashboard(self, payment_intent: str, amount: int | None = None
                            ) -> dict[str, Any]:
        """Someone refunds a payment in Stripe's dashboard, the bot unasked: all that is left
        of it, or `amount`. Returns the `charge.refunded` event."""
        refund = self._refund(self.payment_intents[payment_intent], amount, {},
                              "requested_by_customer")
        return self.event("charge.refunded", self.charges[refund["charge"]])

    def dispute(self, payment_intent: str, *, reason: str = "fraudulent") -> dict[str, Any]:
        """The backer's bank disputes the whole payment: Stripe takes the amount from the
        balance until the bank decides. Returns the `charge.dispute.created` event."""
        intent = self.payment_intents[payment_intent]
        charge = self.charges[intent["latest_charge"]]
        dispute = {
            "id": self._id("dp"), "object": "dispute", "amount": charge["amount"],
            "charge": charge["id"], "created": self._now(), "currency": charge["currency"],
            "is_charge_refundable": False, "livemode": False, "metadata": {},
            "payment_intent": payment_intent, "reason": reason, "status": "needs_response",
        }
        self.disputes[dispute["id"]] = dispute
        charge["disputed"] = True
        self.add_funds(charge["currency"], -charge["amount"])
        return self.event("charge.dispute.created", dispute)

    def close_dispute(self, dispute_id: str, status: str) -> dict[str, Any]:
        """The bank decides (`won`: the money comes back, `lost`: it stays with the backer).
        Returns the `charge.dispute.closed` event."""
        assert status in ("won", "lost"), status
        dispute = self.disputes[dispute_id]
        dispute["status"] = status
        if status == "won":
            self.add_funds(dispute["currency"], dispute["amount"])
        return self.event("charge.dispute.closed", dispute)

    def complete_onboarding(self, account_id: str) -> dict[str, Any]:
        """The developer finishes Stripe's onboarding: details in, transfers and payouts on.
        Returns the `account.updated` event."""
        account = self.accounts[account_id]
        account.update(details_submitted=True, charges_enabled=True, payouts_enabled=True)
        account["capabilities"] = {name: "active" for name in account["capabilities"]}
        account["requirements"] = {"currently_due": [], "disabled_reason": None}
        return self.event("account.updated", account)

    def event(self, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        """An event carrying a copy of `obj`, shaped as Stripe sends it to a webhook."""
        event = {
            "id": self._id("evt"), "object": "event", "api_version": API_VERSION,
            "created": self._now(), "data": {"object": copy.deepcopy(obj)}, "livemode": False,
            "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.events.append(event)
        return event

    def sign(self, payload: bytes, secret: str, timestamp: int | None = None) -> str:
        """A `Stripe-Signature` header for `payload`: `t=<unix time>,v1=<hex HMAC-SHA256 of
        "<t>.<payload>" keyed by the endpoint's secret>`."""
        t = int(self.clock()) if timestamp is None else timestamp
        digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256)
        return f"t={t},v1={digest.hexdigest()}"

    def balance(self, destination: str) -> dict[str, int]:
        """What transfers have sent to a connected account, by currency."""
        sent: dict[str, int] = {}
        for transfer in self.transfers.values():
            if transfer["destination"] == destination:
                sent[transfer["currency"]] = sent.get(transfer["currency"], 0) + transfer["amount"]
        return sent

    def fail_next(self, method: str, path_regex: str, status: int, *, times: int = 1,
                  headers: dict[str, str] | None = None, body: Any = None) -> None:
        """Answer the next `times` matching requests with `status`, before any work; `body` is
        JSON, or a str sent as it is (a proxy's HTML page), default Stripe's error shape."""
        if body is None:
            if status == 429:
                body = StripeRefused(429, "Request rate limit exceeded. Learn more about rate "
                                     "limits here https://stripe.com/docs/rate-limits.",
                                     code="rate_limit").body()
            elif status >= 500:
                body = StripeRefused(status, "An unknown error occurred",
                                     error_type="api_error").body()
            else:
                body = StripeRefused(status, HTTPStatus(status).phrase).body()
        self._fail(method, path_regex, status, times, dict(headers or {}), body)

    def forget_keys(self) -> None:
        """A day has passed: Stripe has forgotten every idempotency key, and a key sent again
        does the work again."""
        self._saved.clear()

    def recorded(self, method: str, path: str) -> list[Recorded]:
        """The requests to one path; `json` holds their decoded form parameters."""
        return [r for r in self.requests if r.method == method and r.path == path]

    # -- serving --------------------------------------------------------------------------

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        params, unreadable = await self._record_form(request)
        failure = self._failure(request)
        response: web.StreamResponse
        if failure is not None:
            response = self._answer(failure.body, failure.status)
            response.headers.update(failure.headers or {})
        else:
            try:
                self._authenticate(request)
                if unreadable is not None:
                    raise unreadable
                request[PARAMS] = params
                response = await self._once(request, params, handler)
            except StripeRefused as e:
                response = self._answer(e.body(), e.status)
            except web.HTTPException:  # no such route, or method not allowed
                response = self._answer(StripeRefused(
                    404, f"Unrecognized request URL ({request.method}: {request.path}). Please "
                    "see https://stripe.com/docs or we can help at https://support.stripe.com/."
                ).body(), 404)
        held = await self._hold(request)
        if held is not None:
            return held
        response.headers.setdefault("request-id", "req_" + secrets.token_hex(7))
        response.headers["stripe-version"] = request.headers.get("Stripe-Version", API_VERSION)
        if "Idempotency-Key" in request.headers:
            response.headers["idempotency-key"] = request.headers["Idempotency-Key"]
        return response

    async def _record_form(self, request: web.Request
                           ) -> tuple[dict[str, Any], StripeRefused | None]:
        """Record the request with its form parameters (query or body) decoded, in `json`;
        with them, the refusal its body earns when it is not Stripe's form encoding."""
        raw = await request.read()
        params: dict[str, Any] = {}
        unreadable = None
        if request.method == "POST" and raw and request.content_type not in (
                "application/x-www-form-urlencoded", ""):
            unreadable = StripeRefused(400, "Invalid request: the body must be form-encoded "
                                       "(application/x-www-form-urlencoded).")
        else:
            text = raw.decode(errors="replace") if request.method == "POST" else \
                request.query_string
            try:
                params = decode_form(parse_qsl(text, keep_blank_values=True))
            except StripeRefused as e:
                unreadable = e
        self.requests.append(Recorded(
            request.method, request.path, dict(request.query), params,
            {name.lower(): value for name, value in request.headers.items()}, time.monotonic(),
        ))
        return params, unreadable

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise StripeRefused(401, "You did not provide an API key. You need to provide your "
                                "API key in the Authorization header, using Bearer auth (e.g. "
                                "'Authorization: Bearer YOUR_SECRET_KEY').")
        if key not in self._keys:
            raise StripeRefused(401, f"Invalid API Key provided: {_masked(key)}")

    async def _once(self, request: web.Request, params: dict[str, Any],
                    handler: Handler) -> web.StreamResponse:
        """Run the handler, or replay the answer saved under the request's idempotency key."""
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key:
            return await handler(request)
        scope = (request.headers["Authorization"], key)
        saved = self._saved.get(scope)
        if saved is not None:
            path, first_params, status, body = saved
            if path != request.path:
                raise StripeRefused(400, "Keys for idempotent requests can only be used for the "
                                    f"same endpoint they were first used for ('{path}' vs "
                                    f"'{request.path}'). Try using a key other than '{key}' if "
                                    "you meant to execute a different request.",
                                    error_type="idempotency_error")
            if first_params != params:
                raise StripeRefused(400, "Keys for idempotent requests can only be used with the "
                                    "same parameters they were first used with. Try using a key "
                                    f"other than '{key}' if you meant to execute a different "
                                    "request.", error_type="idempotency_error")
            response: web.StreamResponse = self._answer(body, status)
            response.headers["idempotent-replayed"] = "true"
            return response
        response = await handler(request)
        if isinstance(response, web.Response) and response.status < 400 and response.text:
            self._saved[scope] = (request.path, params, response.status,
                                  json.loads(response.text))
        return response

    @staticmethod
    def _answer(body: Any, status: int = 200) -> web.Response:
        if isinstance(body, str):
            return web.Response(text=body, status=status, content_type="text/html")
        return web.Response(text=json.dumps(body), status=status,
                            content_type="application/json", charset="utf-8")

    # -- parameters -----------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock())

    def _id(self, prefix: str) -> str:
        mode = "test_" if prefix == "cs" else ""  # checkout session ids name their mode
        return f"{prefix}_{mode}1Fk{next(self._serial):06d}{secrets.token_hex(6)}"

    @staticmethod
    def _only(params: dict[str, Any], allowed: set[str]) -> None:
        for name in params:
            if name not in allowed:
                raise StripeRefused(400, f"Received unknown parameter: {name}",
                                    code="parameter_unknown", param=name)

    @staticmethod
    def _required(params: dict[str, Any], name: str) -> Any:
        value: Any = params
        for part in name.replace("]", "").split("["):
            if isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, dict) and value.get(part) not in (None, ""):
                value = value[part]
            else:
                raise StripeRefused(400, f"Missing required param: {name}.",
                                    code="parameter_missing", param=name)
        return value

    @classmethod
    def _amount(cls, params: dict[str, Any], name: str) -> int:
        text = cls._required(params, name)
        if not isinstance(text, str) or not text.isdigit() or int(text) <= 0:
            raise StripeRefused(400, f"Invalid positive integer: {text}",
                                code="parameter_invalid_integer", param=name)
        return int(text)

    @classmethod
    def _currency(cls, params: dict[str, Any], name: str) -> str:
        code = cls._required(params, name)
        if not isinstance(code, str) or not re.fullmatch(r"[A-Za-z]{3}", code):
            raise StripeRefused(400, f"Invalid currency: {code}.", param=name)
        return code.lower()

    @staticmethod
    def _metadata(params: dict[str, Any], name: str = "metadata") -> dict[str, str]:
        metadata = params.get(name) or {}
        if not isinstance(metadata, dict) or len(metadata) > 50 or any(
                len(k) > 40 or not isinstance(v, str) or len(v) > 500
                for k, v in metadata.items()):
            raise StripeRefused(400, "Invalid metadata: at most 50 keys of up to 40 characters "
                                "and values of up to 500", param=name)
        return dict(metadata)

    def _getter(self, store: dict[str, dict[str, Any]], kind: str) -> Handler:
        """A handler answering `GET .../{id}` from one kind of object."""

        async def get(request: web.Request) -> web.Response:
            self._only(request[PARAMS], {"expand"})
            obj = store.get(request.match_info["id"])
            if obj is None:
                raise StripeRefused(404, f"No such {kind}: '{request.match_info['id']}'",
                                    code="resource_missing", param="id")
            return self._answer(self._expand(obj, request[PARAMS].get("expand") or []))

        return get

    def _expand(self, obj: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        """`obj` with the fields named in `expand[]` as the objects they name."""
        stores = {"latest_charge": self.charges, "charge": self.charges,
                  "payment_intent": self.payment_intents}
        obj = dict(obj)
        for name in fields:
            if name not in stores or name not in obj:
                raise StripeRefused(400, f"This property cannot be expanded ({name}).",
                                    param="expand")
            if obj[name] is not None:
                obj[name] = stores[name][obj[name]]
        return obj

    def _lister(self, store: dict[str, dict[str, Any]], kind: str, *filters: str) -> Handler:
        """A handler answering `GET /v1/<kind>s`: the objects whose `filters` fields equal the
        query's, a page of them, newest first as Stripe's (`limit`, `starting_after`)."""
        url = f"/v1/{kind}s"

        async def list_(request: web.Request) -> web.Response:
            params = request[PARAMS]
            self._only(params, {*filters, "limit", "starting_after", "ending_before",
                                "created", "expand"})
            limit = self._amount(params, "limit") if "limit" in params else 10
            if limit > 100:
                raise StripeRefused(400, "This value must be less than or equal to 100.",
                                    param="limit")
            found = [obj for obj in reversed(store.values())
                     if all(obj[name] == params[name] for name in filters if name in params)]
            if "starting_after" in params:
                ids = [obj["id"] for obj in found]
                if params["starting_after"] not in ids:
                    raise StripeRefused(400, f"No such {kind}: '{params['starting_after']}'",
                                        code="resource_missing", param="starting_after")
                found = found[ids.index(params["starting_after"]) + 1:]
            return self._answer({"object": "list", "data": found[:limit],
                                 "has_more": len(found) > limit, "url": url})

        return list_

    # -- handlers -------------------------------------------------------------------------

    async def _create_session(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        self._only(params, {"mode", "line_items", "success_url", "cancel_url", "metadata",
                            "payment_intent_data", "client_reference_id", "customer_email",
                            "locale", "expand"})
        if self._required(params, "mode") != "payment":
            raise StripeRefused(400, "This fake knows mode=payment only.", param="mode")
        lines = self._required(params, "line_items")
        if not isinstance(lines, list):
            raise StripeRefused(400, "Invalid array", param="line_items")
        total, currencies = 0, set()
        for i, line in enumerate(lines):
            name = f"line_items[{i}]"
            if "price_data" not in line:
                raise StripeRefused(400, "This fake knows line items with price_data only.",
                                    param=f"{name}[price_data]")
            self._required(params, f"{name}[price_data][product_data][name]")
            quantity = self._amount(params, f"{name}[quantity]")
            total += quantity * self._amount(params, f"{name}[price_data][unit_amount]")
            currencies.add(self._currency(params, f"{name}[price_data][currency]"))
        if len(currencies) != 1:
            raise StripeRefused(400, "All line items must share one currency.",
                                param="line_items")
        intent_data = params.get("payment_intent_data") or {}
        self._only(intent_data, {"metadata", "description", "transfer_group"})
        self._metadata(intent_data)
        now, session_id = self._now(), self._id("cs")
        self._intent_data[session_id] = intent_data
        self.sessions[session_id] = {
            "id": session_id, "object": "checkout.session", "amount_subtotal": total,
            "amount_total": total, "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"), "created": now,
            "currency": currencies.pop(), "customer": None,
            "customer_email": params.get("customer_email"), "expires_at": now + 24 * 3600,
            "livemode": False, "metadata": self._metadata(params), "mode": "payment",
            "payment_intent": None, "payment_status": "unpaid", "status": "open",
            "success_url": params.get("success_url"), "url": f"{self.url}/pay/{session_id}",
        }
        return self._answer(self.sessions[session_id])

    async def _create_refund(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        self._only(params, {"payment_intent", "amount", "metadata", "reason", "expand"})
        intent_id = self._required(params, "payment_intent")
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise StripeRefused(400, f"No such payment_intent: '{intent_id}'",
                                code="resource_missing", param="payment_intent")
        amount = self._amount(params, "amount") if "amount" in params else None
        return self._answer(self._refund(intent, amount, self._metadata(params),
                                         params.get("reason")))

    def _refund(self, intent: dict[str, Any], amount: int | None, metadata: dict[str, str],
                reason: str | None) -> dict[str, Any]:
        """Give back `amount` of a payment (all that is left when None), whoever asks."""
        charge = self.charges[intent["latest_charge"]]
        if charge["disputed"]:
            raise StripeRefused(400, f"Charge {charge['id']} has been charged back; cannot "
                                "issue a refund.", code="charge_disputed")
        left = charge["amount_captured"] - charge["amount_refunded"]
        if left <= 0:
            raise StripeRefused(400, f"Charge {charge['id']} has already been refunded.",
                                code="charge_already_refunded")
        amount = left if amount is None else amount
        if amount > left:
            raise StripeRefused(400, f"Refund amount ({amount}) is greater than unrefunded "
                                f"amount on charge ({left})", code="amount_too_large",
                                param="amount")
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
        self.add_funds(intent["currency"], -amount)
        refund = {
            "id": self._id("re"), "object": "refund", "amount": amount,
            "charge": charge["id"], "created": self._now(), "currency": intent["currency"],
            "metadata": metadata, "payment_intent": intent["id"], "reason": reason,
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        return refund

    async def _create_transfer(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        self._only(params, {"amount", "currency", "destination", "transfer_group", "metadata",
                            "description", "expand"})
        amount = self._amount(params, "amount")
        currency = self._currency(params, "currency")
        destination = self._required(params, "destination")
        account = self.accounts.get(destination)
        if account is None:
            raise StripeRefused(400, f"No such destination: '{destination}'",
                                code="resource_missing", param="destination")
        if account["capabilities"].get("transfers") != "active":
            raise StripeRefused(400, "Your destination account needs to have at least one of "
                                "the following capabilities enabled: transfers, "
                                "crypto_transfers, legacy_payments",
                                code="insufficient_capabilities_for_transfer",
                                param="destination")
        if self.available.get(currency, 0) < amount:
            raise StripeRefused(400, "You have insufficient available funds in your Stripe "
                                "account. Try adding funds directly to your available balance "
                                "by creating Charges using the 4000000000000077 test card.",
                                code="balance_insufficient")
        self.available[currency] -= amount
        transfer = {
            "id": self._id("tr"), "object": "transfer", "amount": amount,
            "amount_reversed": 0, "created": self._now(), "currency": currency,
            "description": params.get("description"), "destination": destination,
            "destination_payment": self._id("py"), "livemode": False,
            "metadata": self._metadata(params), "reversed": False,
            "transfer_group": params.get("transfer_group"),
        }
        self.transfers[transfer["id"]] = transfer
        return self._answer(transfer)

    async def _create_account(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        self._only(params, {"type", "country", "email", "capabilities", "metadata",
                            "business_type", "business_profile", "tos_acceptance", "expand"})
        if params.get("type") != "express":
            raise StripeRefused(400, "This fake knows type=express accounts only.",
                                param="type")
        capabilities = params.get("capabilities") or {}
        account = {
            "id": self._id("acct"), "object": "account", "type": "express",
            "business_type": params.get("business_type"),
            "capabilities": {name: "inactive" for name, asked in capabilities.items()
                             if isinstance(asked, dict) and asked.get("requested") == "true"},
            "charges_enabled": False, "country": params.get("country", "US"),
            "created": self._now(), "details_submitted": False, "email": params.get("email"),
            "metadata": self._metadata(params), "payouts_enabled": False,
            "requirements": {"currently_due": ["external_account", "tos_acceptance.date",
                                               "tos_acceptance.ip"],
                             "disabled_reason": "requirements.past_due"},
        }
        self.accounts[account["id"]] = account
        return self._answer(account)

    async def _retrieve_account(self, request: web.Request) -> web.Response:
        account = self.accounts.get(request.match_info["id"])
        if account is None:  # Stripe cannot tell a stranger's account from a missing one
            key = request.headers["Authorization"].partition(" ")[2]
            raise StripeRefused(403, f"The provided key '{_masked(key)}' does not have access "
                                f"to account '{request.match_info['id']}' (or that account "
                                "does not exist). Application access may have been revoked.",
                                code="account_invalid")
        return self._answer(account)

    async def _create_account_link(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        self._only(params, {"account", "type", "refresh_url", "return_url", "collect",
                            "collection_options", "expand"})
        account = self._required(params, "account")
        if account not in self.accounts:
            raise StripeRefused(400, f"No such account: '{account}'", code="resource_missing",
                                param="account")
        if self._required(params, "type") not in ("account_onboarding", "account_update"):
            raise StripeRefused(400, f"Invalid type: {params['type']}", param="type")
        for name in ("refresh_url", "return_url"):
            self._required(params, name)
        now = self._now()
        link = {"object": "account_link", "created": now, "expires_at": now + 300,
                "url": f"{self.url}/setup/e/{account}/{secrets.token_urlsafe(9)}"}
        self.account_links.append({**link, "account": account, "type": params["type"]})
        return self._answer(link)


def _masked(key: str) -> str:
    """An API key as Stripe quotes it back: its prefix and last four characters."""
    prefix = key[:8] if key.startswith(("sk_", "rk_")) else ""
    return prefix + "*" * max(len(key) - len(prefix) - 4, 0) + key[-4:]


@pytest.fixture
async def stripe_server() -> AsyncIterator[FakeStripe]:
    """A started FakeStripe, closed after the test."""
    fake = await FakeStripe.start()
    try:
        yield fake
    finally:
        await fake.close()
