"""The listening socket's guards: a cap on open connections, and a deadline for request heads.

aiohttp closes a connection idle between requests after its `keepalive_timeout`, but has no
deadline of its own for a request head (its keep-alive timer also covers the wait for a new
connection's first request, at the same length), and no cap on connections: 1,100 sockets that
connect and wait hold 1,100 file descriptors, and at the usual limit of 1,024 the service can no
longer accept anyone, nor open a database connection. `ConnectionGuard.wrap(factory)` wraps the
protocol factory the runner hands to `loop.create_server`, so that:

- at most `max_connections` are open: a new one past it closes the longest-idle connection (one
  waiting for a request, as a slowloris always is) to make room; when every open connection is
  busy with a request, the new one is closed at once;
- a request head (request line and headers) must be complete within `header_timeout`, counted
  from the connection's opening, or from the first byte of a later request on a kept-alive
  connection; else the connection is closed. Waiting with nothing sent between requests is the
  keep-alive timeout's business (aiohttp's own).

Whether a connection is busy is told by `guard.middleware`, the app's outermost: a request is
under way from the moment it reaches the app until its handler returns. A connection the guard
did not open (the test client's) passes through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from bountybot.logs import event

log = logging.getLogger(__name__)

# The listening socket's backlog. asyncio accepts up to this many connections in one go before
# any of them reaches the guard, so it also bounds how far past the cap the count of open files
# can briefly go.
BACKLOG = 128
# File descriptors kept for everything but client connections: the database pools, the forge
# and payment clients, the log, the loop's own, and a backlog's worth accepted at once.
RESERVED_FILES = 128 + BACKLOG


def open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (systemd's
    `LimitNOFILE` sets both) and return it; the usual soft limit of 1,024 is too few to serve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # not allowed here (a container, say): keep the soft one
            pass
    return soft


def fit_to_open_files(wanted: int, limit: int) -> int:
    """At most `wanted` connections, leaving `RESERVED_FILES` descriptors (half the limit when
    it is that small) for the rest of the service."""
    room = limit - RESERVED_FILES if limit > 2 * RESERVED_FILES else limit // 2
    return max(1, min(wanted, room))


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, with the guard's bookkeeping around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.accepted = False
        self.busy = False
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP server's always are
        self.transport = transport
        if not self.guard.admit(self):
            transport.abort()  # RST: the descriptor is free at once, nothing lingers
            return
        self.accepted = True
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.accepted:
            return
        if not self.busy and self.head_timer is None:
            self._arm()  # the first byte of a new request on a kept-alive connection
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.accepted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.forget(self)
        if self.accepted:
            self.accepted = False
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def started(self) -> None:
        self.busy = True
        self._disarm()
        self.guard.idle.pop(self, None)

    def finished(self) -> None:
        self.busy = False
        if self in self.guard.open:
            self.guard.idle[self] = None  # idle since now: the last to be evicted

    def close(self, why: str) -> None:
        self._disarm()
        self.guard.forget(self)
        if self.transport is not None and not self.transport.is_closing():
            peer = self.transport.get_extra_info("peername")
            event(log, why, logging.INFO, remote=peer[0] if peer else "-")
            self.transport.close()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.head_timer = loop.call_later(self.guard.header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        self.head_timer = None
        if not self.busy:
            self.close("http.header_timeout")


class ConnectionGuard:
    """Counts the open connections, keeps the idle ones in the order they went idle, and
    enforces `max_connections` and `header_timeout` (see the module's docstring)."""

    def __init__(self, *, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[asyncio.Protocol, _Guarded] = {}  # by aiohttp's protocol
        self.idle: OrderedDict[_Guarded, None] = OrderedDict()
        self.refused = 0
        self.evicted = 0

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server`: `factory`'s protocols, guarded."""
        return lambda: _Guarded(self, factory())

    def admit(self, conn: _Guarded) -> bool:
        if len(self.open) >= self.max_connections:
            if not self.idle:
                self.refused += 1
                event(log, "http.connection_refused", logging.WARNING,
                      open=len(self.open), max_connections=self.max_connections)
                return False
            victim = next(iter(self.idle))
            self.evicted += 1
            victim.close("http.idle_connection_evicted")
        self.open[conn.inner] = conn
        self.idle[conn] = None
        return True

    def forget(self, conn: _Guarded) -> None:
        if self.open.get(conn.inner) is conn:
            del self.open[conn.inner]
        self.idle.pop(conn, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self.open.get(request.protocol)
        if conn is None:
            return await handler(request)  # not a connection of ours (a test client's)
        conn.started()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            conn.finished()
