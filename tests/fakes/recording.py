"""What the local forges share: recording every request, failures and delays on demand, and
listening on a loopback port. Each fake adds its forge's routes, answers and error shapes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_BODY = web.RequestKey("json_body", object)


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it; header names are lower-case."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]
    at: float = 0.0  # time.monotonic() on arrival, for rate checks


@dataclass
class Rule:
    """A failure or a delay waiting for the next `times` matching requests."""

    method: str
    pattern: re.Pattern[str]
    times: int
    status: int = 0
    headers: dict[str, str] | None = None
    body: Any = None
    seconds: float = 0.0

    def matches(self, request: web.Request) -> bool:
        return self.method in ("*", request.method) and bool(self.pattern.search(request.path))


class Refused(Exception):
    """Raised by a handler to answer with an error in the forge's own shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# An issue and a pull request as GitHub's and Forgejo's fakes keep them (their APIs' shapes are
# built from these by each fake).
@dataclass
class FakeIssue:
    id: int
    repo: str
    number: int
    title: str
    labels: list[str]
    login: str
    created_at: datetime
    updated_at: datetime
    state: str = "open"


@dataclass
class FakePull:
    id: int
    repo: str
    number: int
    title: str
    body: str
    login: str
    created_at: datetime
    updated_at: datetime
    state: str = "open"
    merged_at: datetime | None = None


class RecordingServer:
    """The shared half of a fake forge."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self.not_modified = 0  # GETs answered 304
        self._failures: list[Rule] = []
        self._delays: list[Rule] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        """An application whose every request goes through the fake's own `_serve`."""

        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            return await self._serve(request, handler)

        return web.Application(middlewares=[middleware])

    async def _serve(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record the request, apply the failures asked for, then answer (each fake's own)."""
        raise NotImplementedError

    async def _listen(self, app: web.Application) -> None:
        """Serve `app` on 127.0.0.1, on a port the system chose (see `url`)."""
        # A delayed request is abandoned at close, so shutting down never waits long.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method in WRITE_METHODS]

    def _fail(self, method: str, path_regex: str, status: int, times: int,
              headers: dict[str, str] | None, body: Any) -> None:
        self._failures.append(Rule(method.upper(), re.compile(path_regex), times, status,
                                   headers, body))

    def delay_next(self, method: str, path_regex: str, seconds: float, *,
                   times: int = 1) -> None:
        """Hold the next `times` matching requests for `seconds` before answering them."""
        self._delays.append(Rule(method.upper(), re.compile(path_regex), times, seconds=seconds))

    async def _record(self, request: web.Request) -> bool:
        """Read and record the request (its JSON body under `JSON_BODY`); False when the body
        is not JSON."""
        raw = await request.read()
        try:
            request[JSON_BODY] = json.loads(raw) if raw else None
            parsed = True
        except ValueError:
            request[JSON_BODY], parsed = None, False
        self.requests.append(Recorded(
            request.method, request.path, dict(request.query), request[JSON_BODY],
            {name.lower(): value for name, value in request.headers.items()}, time.monotonic(),
        ))
        return parsed

    def _conditional(self, request: web.Request,
                     response: web.StreamResponse) -> web.StreamResponse:
        """Give a successful GET its ETag, a hash of the body as both forges' are, and answer
        304 with no body when the client sends it back in `If-None-Match`."""
        if request.method != "GET" or response.status != 200 \
                or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        etag = f'W/"{hashlib.sha256(response.body).hexdigest()[:32]}"'
        held = [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]
        if etag in held:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        response.headers["ETag"] = etag
        return response

    async def _hold(self, request: web.Request) -> web.Response | None:
        """Wait out a delay set for this request; a 503 if the fake closes meanwhile."""
        delay = self._take(self._delays, request)
        if delay is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay.seconds)
            if self._closing.is_set():
                return web.Response(status=503)
        return None

    def _failure(self, request: web.Request) -> Rule | None:
        return self._take(self._failures, request)

    @staticmethod
    def _take(rules: list[Rule], request: web.Request) -> Rule | None:
        for rule in rules:
            if rule.matches(request):
                rule.times -= 1
                if rule.times <= 0:
                    rules.remove(rule)
                return rule
        return None
