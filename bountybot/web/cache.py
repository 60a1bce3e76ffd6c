"""A cache of rendered public pages in front of the figures, stale-while-revalidate.

What is cached: the bytes (and ETag) of the public GET pages that read the books: the index, a
repo's page, its monthly appeal (`/-/needs[/{YYYY-MM}]`) and the Atom feeds. Never the API
(`/api/`), the webhooks, the badges (they are `no-cache` by design and promise never to be
stale; the bot's comment links them with `?v=<state>`), a task's page, nor any answer but a 200:
a 404 (an unknown or private repo) or a 503 never enters the cache. Keys are (route, path,
locale, what else the bytes depend on: the feed's base address), never a query string as sent.

How long: an entry is fresh for `server.page_cache_seconds` (default 10 s; 0 turns the cache
off). Older than that, it is still served, at once, while one background task computes it
again; older than twice that, a request waits for the new page. A computation that fails (the
repo became private, the read gate is full) drops the entry. So a page another process changed
(another replica's webhook, `bountybot repos unpublish` run from the CLI) is seen within at most
twice `page_cache_seconds` (20 s by default), less than the `Cache-Control: max-age=60` the
pages already send to browsers and proxies.

What this process writes is seen at once: every commit of this process that wrote a row bumps
`bountybot.storage.uow.WRITES`; an entry is kept only for the generation it was computed in, so
the next request after a write computes the page again (and waits for it). Privacy settings are
part of the process's settings, fixed while it runs.

Single flight: one computation per key at a time; requests on a cold key wait for that one
(20 concurrent readers of a cold page cost one computation, not 20). A computation runs as a
task of its own, so a reader who hangs up does not cancel it for the others.

Bounded: at most `max_entries` pages (least recently used first out) and `max_bytes` of them
in all; a page bigger than `max_page_bytes` is served but not kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass

from aiohttp import hdrs, web

from bountybot.resources import SETTINGS
from bountybot.storage.uow import WRITES

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class Page:
    """A rendered answer: its bytes, their ETag and the headers sent with them."""

    body: bytes
    etag: str
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 200
    charset: str = "utf-8"


def answer(request: web.Request, page: Page) -> web.Response:
    """`page` as a response; a 304 when the client already has its ETag (a 200 only)."""
    headers = dict(page.headers)
    if page.status == 200:
        headers[hdrs.ETAG] = page.etag
        tags = [tag.strip().removeprefix("W/")
                for tag in request.headers.get(hdrs.IF_NONE_MATCH, "").split(",")]
        if page.etag in tags or "*" in tags:
            return web.Response(status=304, headers=headers)
    return web.Response(body=page.body, status=page.status, content_type=page.content_type,
                        charset=page.charset, headers=headers)


@dataclass
class _Entry:
    page: Page
    generation: int
    made_at: float  # the clock when its computation began (its snapshot is no older)


@dataclass
class _Flight:
    task: asyncio.Task[Page]
    generation: int


Compute = Callable[[], Awaitable[Page]]


class PageCache:
    """Rendered pages by key; see the module's docstring. `clock` (seconds, monotonic) and
    `generation` (the process's write counter) are injected for the tests."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 generation: Callable[[], int] = lambda: WRITES.value,
                 max_entries: int = 512, max_bytes: int = 64 * MB,
                 max_page_bytes: int = 4 * MB) -> None:
        self.seconds = seconds
        self.clock = clock
        self.generation = generation
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_page_bytes = max_page_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._flights: dict[Hashable, _Flight] = {}
        self.computed = 0  # computations started, for the tests and the bench

    @property
    def on(self) -> bool:
        return self.seconds > 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def size(self) -> int:
        """The bytes of the pages kept."""
        return self._bytes

    async def get(self, key: Hashable, compute: Compute) -> Page:
        """The page under `key`: kept if fresh; kept and refreshed in the background if stale;
        else computed (once, however many ask at the same time)."""
        if not self.on:
            return await compute()
        generation = self.generation()
        entry = self._entries.get(key)
        if entry is not None and entry.generation == generation:
            age = self.clock() - entry.made_at
            if age < self.seconds:
                self._entries.move_to_end(key)
                return entry.page
            if age < 2 * self.seconds:
                self._entries.move_to_end(key)
                self._flight(key, compute, generation)  # refresh, unless already under way
                return entry.page
        flight = self._flight(key, compute, generation)
        return await asyncio.shield(flight.task)

    def _flight(self, key: Hashable, compute: Compute, generation: int) -> _Flight:
        flight = self._flights.get(key)
        # One begun before a write of this process would bring back the books before it.
        if flight is not None and flight.generation == generation:
            return flight
        task = asyncio.create_task(self._compute(key, compute, generation),
                                   name=f"page_cache:{key!r}")
        flight = self._flights[key] = _Flight(task, generation)
        task.add_done_callback(lambda done: self._landed(key, done))
        return flight

    async def _compute(self, key: Hashable, compute: Compute, generation: int) -> Page:
        self.computed += 1
        began = self.clock()
        try:
            page = await compute()
        except BaseException:
            self._drop(key)  # the page is gone (a repo made private) or could not be read
            raise
        if (page.status == 200 and len(page.body) <= self.max_page_bytes
                and generation == self.generation()):
            self._keep(key, _Entry(page, generation, began))
        elif page.status != 200:
            self._drop(key)
        return page

    def _landed(self, key: Hashable, task: asyncio.Task[Page]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        if not task.cancelled() and task.exception() is not None:
            # Whoever waited got it; a background refresh's failure is only logged.
            error = task.exception()
            if not isinstance(error, web.HTTPException):
                log.debug("page_cache.compute_failed", extra={"key": repr(key),
                                                             "error": repr(error)})

    def _keep(self, key: Hashable, entry: _Entry) -> None:
        self._drop(key)
        self._entries[key] = entry
        self._bytes += len(entry.page.body)
        while self._entries and (len(self._entries) > self.max_entries
                                 or self._bytes > self.max_bytes):
            _, old = self._entries.popitem(last=False)
            self._bytes -= len(old.page.body)

    def _drop(self, key: Hashable) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.page.body)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    async def settled(self) -> None:
        """Wait for the computations under way (the tests' way to let a refresh land)."""
        while self._flights:
            await asyncio.gather(*(f.task for f in list(self._flights.values())),
                                 return_exceptions=True)

    async def close(self) -> None:
        """Cancel the computations under way (at the app's cleanup)."""
        tasks = [f.task for f in self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flights.clear()


PAGE_CACHE = web.AppKey("page_cache", PageCache)


def install(app: web.Application) -> None:
    """Give `app` its page cache (once, whichever feature asks first), closed at cleanup. A test
    may replace `app[PAGE_CACHE]` before the app starts (e.g. with a clock of its own)."""
    if PAGE_CACHE in app:
        return
    app[PAGE_CACHE] = PageCache(app[SETTINGS].server.page_cache_seconds)

    async def closing(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[PAGE_CACHE].close()

    app.cleanup_ctx.append(closing)


async def cached(request: web.Request, key: Hashable, compute: Compute) -> web.Response:
    """The response for `key`, from the app's cache (computed by `compute` when needed)."""
    cache = request.app.get(PAGE_CACHE)
    page = await compute() if cache is None else await cache.get(key, compute)
    return answer(request, page)


__all__ = ["PAGE_CACHE", "Page", "PageCache", "answer", "cached", "install"]
