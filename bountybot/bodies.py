"""Webhook bodies at the doors: read in chunks against a shared budget, then parsed strictly.

Anyone can POST to a door, so the bytes a door holds before it knows who sent them are what a
stranger can make the service spend. `BodyBudget` caps them across all doors
(`server.unverified_body_budget`): a body with a Content-Length reserves all of it before its
first byte is read (a request never holds part of the budget while waiting for the rest), one
without (chunked) reserves as it arrives. A request that finds no room within
`server.unverified_body_wait_seconds` is answered 503 with Retry-After; unread bytes stay in
the socket meanwhile (aiohttp stops reading a connection whose buffer is full). Bytes proven
to come from the sender (a signature checked, a token matched) leave the budget at once.

`parse_object` accepts what the forges and Stripe send, and nothing that parses only by
Python's leniency: one JSON object, in UTF-8 without a byte order mark, with finite numbers,
no lone surrogates, nested at most `MAX_DEPTH` levels. Anything else is a 400 whose sentence
says what is expected, so no delivery is stored that the worker could not read.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import re
from typing import Any, Self

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from bountybot.resources import SETTINGS

# Read size; also roughly what one waiting connection keeps buffered (aiohttp pauses at twice
# its own 64 KiB limit).
CHUNK = 64 * 1024
# Far deeper than any forge or Stripe payload (under 10 levels), far below the interpreter's
# recursion limit, which the worker's own parse must also stay under.
MAX_DEPTH = 64
# What a request refused for want of room is told: long enough for the bodies being read to be
# checked, short enough for a retrying sender.
RETRY_AFTER_SECONDS = 5
# A JSON string escape of a UTF-16 surrogate; only then can a string hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class Refusal(Exception):
    """A request the door will not take, with the answer it gets."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.close = close

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        answer = web.json_response({"error": self.message}, status=self.status,
                                   headers=headers)
        if self.close:
            # What is left of the body is not worth reading (too large, or stopped arriving).
            answer.force_close()
        return answer


class BodyBudget:
    """Bytes of request bodies held before their sender is proven, across every door.

    Waiters are not served in order: a small body may pass a large one that waits for more
    room. Each waits at most `wait` seconds, so nobody waits without end."""

    def __init__(self, total: int, wait: float) -> None:
        self.total = total
        self.wait = wait
        self.used = 0
        self.waiting = 0
        self._freed = asyncio.Event()

    async def _take(self, size: int) -> None:
        if size > self.total:
            raise Refusal(413, f"the body is larger than {self.total} bytes", close=True)
        if self.used + size > self.total:  # else taken at once, with no timer to set
            await self._wait_for_room(size)
        self.used += size

    async def _wait_for_room(self, size: int) -> None:
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait):
                while self.used + size > self.total:
                    freed = self._freed
                    await freed.wait()
        except TimeoutError:
            raise Refusal(503, "too many webhook bodies are being read at once; please"
                               " deliver this one again later",
                          retry_after=RETRY_AFTER_SECONDS) from None
        finally:
            self.waiting -= 1

    def _give(self, size: int) -> None:
        self.used -= size
        if self.waiting:
            # Every waiter looks again; those that still do not fit wait on a fresh event.
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()

    def holding(self, counted: bool = True) -> Hold:
        """A hold on the budget for one request's body, as `async with`, given back on leaving
        (or earlier, by `release`). `counted=False`: the sender is already proven; nothing is
        held."""
        return Hold(self if counted else None)


class Hold:
    """What one request holds of the budget. A class, not an `asynccontextmanager`: one
    request's hold then costs no generator (nor asyncio's bookkeeping of one)."""

    def __init__(self, budget: BodyBudget | None) -> None:
        self.budget = budget
        self.held = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.release()

    async def cover(self, size: int) -> None:
        """Hold at least `size` bytes, waiting for room if need be (503 when none comes)."""
        if self.budget is not None and size > self.held:
            await self.budget._take(size - self.held)
            self.held = size

    def release(self) -> None:
        """The sender is proven (or the request is over): its bytes no longer count."""
        if self.budget is not None and self.held:
            self.budget._give(self.held)
        self.held = 0
        self.budget = None


async def read_body(request: web.Request, *, limit: int, hold: Hold,
                    timeout: float) -> bytes | bytearray:
    """The whole body, read in chunks: at most `limit` bytes (413), within `timeout` seconds
    (408), each byte covered by `hold` before it is read. A bytearray filled in place, so a
    body is in memory once, not once in pieces and again joined; or, when the whole body of a
    declared length came in with the headers (most webhooks), those bytes as they are."""
    too_large = Refusal(413, f"the body is larger than {limit} bytes", close=True)
    # A compressed body's length says nothing of what it inflates to: counted as it arrives.
    declared = None if request.headers.get("Content-Encoding", "identity").lower() not in (
        "", "identity") else request.content_length
    if declared is not None:
        if declared > limit:
            raise too_large
        await hold.cover(declared)
        whole = _arrived(request.content, declared)
        if whole is not None:
            return whole
    body = bytearray(declared or 0)
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(CHUNK):
                end = size + len(chunk)
                if end > limit:
                    raise too_large
                if declared is None:
                    await hold.cover(end)
                    body += chunk
                elif end > declared:  # aiohttp stops a body at its length: never seen
                    raise HttpProcessingError(message="more bytes than Content-Length")
                else:
                    body[size:end] = chunk
                size = end
    except TimeoutError:
        raise Refusal(408, f"the body did not arrive within {timeout:g} seconds",
                      close=True) from None
    except (HttpProcessingError, web.RequestPayloadError, ConnectionError):
        # Cut short, badly chunked, or announced as compressed and not: aiohttp's parser
        # says so through the stream.
        raise Refusal(400, "the body could not be read (cut short, badly framed, or not"
                           " in its Content-Encoding)", close=True) from None
    del body[size:]
    return body


def _arrived(content: StreamReader, declared: int) -> bytes | None:
    """The body, if all `declared` bytes of it are already here and nothing went wrong."""
    if not content.is_eof() or content.exception() is not None:
        return None
    if content.total_bytes != declared:  # cut short, or more than declared: read as a stream
        return None
    whole: bytes = content.read_nowait()
    return whole


class _NotJson(ValueError):
    """A value Python's json reads but JSON has not (NaN, Infinity, a float beyond range)."""


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(text[:20])
    return value


EXPECTED = "send one JSON object in UTF-8"
# One decoder for every body (`json.loads` with hooks builds a new one at each call).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def parse_object(body: bytes | bytearray) -> tuple[dict[str, Any], str]:
    """The body as a JSON object, and as text (what the inbox stores); a 400 `Refusal` saying
    what is wrong and what is expected otherwise."""
    if body.startswith(codecs.BOM_UTF8):
        raise Refusal(400, f"the body starts with a byte order mark: {EXPECTED}, without one")
    if b"\x00" in body:  # never in UTF-8 JSON, always in UTF-16 or UTF-32 JSON
        raise Refusal(400, f"the body looks like UTF-16 or UTF-32: {EXPECTED}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, f"the body is not UTF-8: {EXPECTED}") from None
    try:
        payload = _DECODER.decode(text)
    except _NotJson as e:
        raise Refusal(400, f"the body holds {e}, which is not a JSON number: {EXPECTED},"
                           " with finite numbers") from None
    except RecursionError:
        raise Refusal(400, f"the body is nested too deeply: {EXPECTED}, nested at most"
                           f" {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        if text.startswith("payload="):
            # GitHub's other content type: the hook was set up as form-encoded.
            raise Refusal(400, "the body is form-encoded (payload=...): set the webhook's"
                               " content type to application/json") from None
        raise Refusal(400, f"the body is not JSON ({e.msg} at character {e.pos}):"
                           f" {EXPECTED}") from None
    except ValueError:  # an integer of more digits than Python converts
        raise Refusal(400, f"the body holds a number too long to read: {EXPECTED}") from None
    if not isinstance(payload, dict):
        raise Refusal(400, f"the body is not a JSON object: {EXPECTED}")
    problem = _shape_problem(payload, strings=_SURROGATE_ESCAPE.search(body) is not None)
    if problem:
        raise Refusal(400, f"{problem}: {EXPECTED}")
    return payload, text


def _shape_problem(payload: dict[str, Any], *, strings: bool) -> str | None:
    """Nesting deeper than MAX_DEPTH, or (`strings`) a string with a lone surrogate, which is
    no text: it could not be stored in PostgreSQL nor sent back to a forge."""
    if _too_deep(payload):
        return f"the body is nested deeper than {MAX_DEPTH} levels"
    if strings and not _text(payload):
        return "the body holds a string with a lone UTF-16 surrogate"
    return None


def _too_deep(payload: dict[str, Any]) -> bool:
    # Level by level, keeping only the containers: a payload is mostly strings and numbers,
    # which are looked at once and dropped, never pushed and popped with their depth. The
    # decoder builds no container but dict and list.
    level: list[Any] = [payload]
    for _ in range(MAX_DEPTH):
        level = [item for value in level
                 for item in (value.values() if type(value) is dict else value)
                 if type(item) is dict or type(item) is list]
        if not level:
            return False
    return True


def _text(payload: dict[str, Any]) -> bool:
    # Written back out whole (keys and values), in C; only a lone surrogate fails to encode.
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- wiring ----------------------------------------------------------------------------------

BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
# Routes whose name starts with this are doors: they read their own bodies (and the app's
# whole-body read, `app.read_body_in_time`, leaves them alone).
DOOR = "door:"


def setup_doors(app: web.Application) -> None:
    """The budget every door reads its body against; each door's setup calls this, once is
    enough."""
    if BODY_BUDGET not in app:
        server = app[SETTINGS].server
        app[BODY_BUDGET] = BodyBudget(server.unverified_body_budget,
                                      server.unverified_body_wait_seconds)


def json_error(status: int, message: str) -> web.Response:
    """A refusal as the doors and the API give it: `{"error": message}` with `status`."""
    return web.json_response({"error": message}, status=status)
