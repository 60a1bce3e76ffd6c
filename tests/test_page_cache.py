"""The public page cache (bountybot/web/cache.py) through the real app, on SQLite and PostgreSQL:
a page within its TTL reads nothing; a write of this process is seen at once; a stale page is
served once while it is computed again; a cold page is computed once however many ask; 0 turns
it off; a private repo's page is never kept. Time is a clock the tests move; "another replica"
is a cache that does not see this process's write counter (`generation=lambda: 0`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.storage import tables as t
from bountybot.storage.bounties import ensure_repo
from bountybot.storage.tables import id_of
from bountybot.storage.uow import UnitOfWork
from bountybot.web import feeds, pages
from bountybot.web.cache import PAGE_CACHE, Page, PageCache

from clocks import Ticks

REPO = "commons/garden"
BASE = f"/github/{REPO}"
Client = TestClient[web.Request, web.Application]
PATHS = (BASE, f"{BASE}/-/needs", "/", f"{BASE}/-/feed.atom")


async def add_tasks(sessionmaker: async_sessionmaker[AsyncSession], numbers: range,
                    title: str = "Task") -> None:
    """Open tasks with a goal of €100 on the repo (made public on first use)."""
    now = datetime.now(UTC)
    async with UnitOfWork(sessionmaker) as uow:
        repo = await ensure_repo(uow.session, "github", "4242", REPO)
        for n in numbers:
            uow.session.add(t.Task(repo_id=id_of(repo), number=n, title=f"{title} {n}",
                                   url=f"https://github.com/{REPO}/issues/{n}",
                                   goal_minor=10000, currency="EUR",
                                   created_at=now - timedelta(minutes=1000 - n),
                                   updated_at=now))


async def set_repo(sessionmaker: async_sessionmaker[AsyncSession], **values: Any) -> None:
    async with UnitOfWork(sessionmaker) as uow:
        await uow.session.exec(update(t.Repo).where(
            col(t.Repo.full_path) == REPO).values(**values))


class Site:
    """The pages and feeds on `engine`, with a statement counter and a clock of their own."""

    def __init__(self, engine: AsyncEngine, client: Client, cache: PageCache, clock: Ticks,
                 statements: list[str]) -> None:
        self.engine, self.client, self.cache = engine, client, cache
        self.clock, self.statements = clock, statements

    async def get(self, path: str, status: int = 200) -> tuple[str, int, str]:
        """The page's text, the SQL statements it cost, its ETag."""
        self.statements.clear()
        response = await self.client.get(path)
        body = await response.text()
        assert response.status == status, (path, response.status, body[:300])
        return body, len(self.statements), response.headers.get("ETag", "")


async def start(engine: AsyncEngine, seconds: float = 10,
                cache: PageCache | None = None
                ) -> tuple[Site, Client]:
    settings = Settings(config_file=None, server={"page_cache_seconds": seconds})
    app = create_app(settings, engine=engine, features=[feeds.setup, pages.setup])
    if cache is None:
        cache = PageCache(seconds, clock=Ticks())
    app[PAGE_CACHE] = cache
    clock = cache.clock
    assert isinstance(clock, Ticks)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2]))
    client = TestClient(TestServer(app))
    await client.start_server()
    return Site(engine, client, app[PAGE_CACHE], clock, statements), client


@pytest.fixture
async def site(engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
               ) -> AsyncIterator[Site]:
    await add_tasks(sessionmaker, range(1, 4))
    s, client = await start(engine)
    try:
        yield s
    finally:
        await client.close()


async def test_a_second_request_within_the_ttl_reads_nothing(site: Site) -> None:
    for path in PATHS:
        first, cost, etag = await site.get(path)
        assert cost > 0 and ("Task 3" in first or "nothing asked" in first), first
        site.clock.now += 9.9
        again, cost, etag_again = await site.get(path)
        assert cost == 0, site.statements
        assert again == first and etag_again == etag
    # The 304 still works from the cache, and the other language is a page of its own.
    _, _, etag = await site.get(BASE)
    response = await site.client.get(BASE, headers={"If-None-Match": etag})
    assert response.status == 304 and response.headers["Cache-Control"] == "public, max-age=60"
    french, cost, _ = await site.get(BASE + "?lang=fr")
    assert cost > 0 and "Tâches ouvertes" in french


async def test_a_write_through_the_unit_of_work_is_seen_at_once(
        site: Site, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    for path in PATHS[:3]:
        await site.get(path)
    await add_tasks(sessionmaker, range(4, 5), title="Fresh")
    for path in PATHS[:3]:
        page, cost, _ = await site.get(path)
        assert "Fresh 4" in page and cost > 0, path
    # A plain session's commit (the CLI's, the tests') counts too; a read-only one does not.
    await site.get(BASE)
    async with sessionmaker() as session:
        await session.exec(update(t.Task).where(
            col(t.Task.number) == 4).values(title="Renamed"))
        await session.commit()
    page, cost, _ = await site.get(BASE)
    assert "Renamed" in page and cost > 0
    async with sessionmaker() as session:
        await session.exec(update(t.Task).where(
            col(t.Task.number) == 999).values(title="Nothing"))
        await session.commit()
    _, cost, _ = await site.get(BASE)
    assert cost == 0


async def test_another_replicas_write_is_served_stale_once_then_fresh(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    await add_tasks(sessionmaker, range(1, 3))
    clock = Ticks()
    # A cache that never sees this process's writes: as if another replica made them.
    cache = PageCache(10, clock=clock, generation=lambda: 0)
    site, client = await start(engine, cache=cache)
    try:
        before, _, _ = await site.get(BASE)
        await add_tasks(sessionmaker, range(3, 4), title="Elsewhere")
        clock.now += 9
        page, cost, _ = await site.get(BASE)
        assert page == before and cost == 0  # fresh: within the TTL, not read
        clock.now += 2  # 11 s: stale
        computed = cache.computed
        page, _, _ = await site.get(BASE)
        assert page == before  # served at once, while one refresh runs
        assert cache.computed == computed + 1
        await cache.settled()
        page, cost, _ = await site.get(BASE)
        assert "Elsewhere 3" in page and cost == 0  # the refreshed page, kept
        # Past twice the TTL, nothing stale is served: the request waits for the page.
        await add_tasks(sessionmaker, range(4, 5), title="Much later")
        clock.now += 25
        page, cost, _ = await site.get(BASE)
        assert "Much later 4" in page and cost > 0
    finally:
        await client.close()


async def test_twenty_readers_of_a_cold_page_compute_it_once(site: Site) -> None:
    _, one, _ = await site.get(f"{BASE}/-/needs?lang=fr")  # what one computation costs
    assert one > 0
    site.statements.clear()
    computed = site.cache.computed
    answers = await asyncio.gather(*(site.client.get(f"{BASE}/-/needs") for _ in range(20)))
    bodies = {await a.text() for a in answers}
    assert [a.status for a in answers] == [200] * 20 and len(bodies) == 1
    assert site.cache.computed == computed + 1
    assert len(site.statements) == one


async def test_page_cache_seconds_0_turns_it_off(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    await add_tasks(sessionmaker, range(1, 3))
    site, client = await start(engine, seconds=0)
    try:
        assert not site.cache.on
        for path in PATHS:
            _, first, _ = await site.get(path)
            _, again, _ = await site.get(path)
            assert first > 0 and again == first, path
        assert len(site.cache) == 0
    finally:
        await client.close()
    # From the configuration: the app makes its cache from `server.page_cache_seconds`.
    app = create_app(Settings(config_file=None, server={"page_cache_seconds": 0}),
                     engine=engine, features=[pages.setup])
    assert app[PAGE_CACHE].seconds == 0
    assert create_app(Settings(config_file=None), engine=engine,
                      features=[pages.setup])[PAGE_CACHE].seconds == 10


async def test_a_private_repo_never_enters_the_cache(
        engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    await add_tasks(sessionmaker, range(1, 3))
    await set_repo(sessionmaker, private=True, published=False)
    clock = Ticks()
    cache = PageCache(10, clock=clock, generation=lambda: 0)  # as if another process wrote
    site, client = await start(engine, cache=cache)
    try:
        for path in PATHS[:2] + PATHS[3:]:
            await site.get(path, 404)
            await site.get(path + "?lang=fr", 404)
        index, _, _ = await site.get("/")
        assert BASE not in index and "Task 1" not in index
        assert len(cache) == 1 and ("index", "en") in cache  # the index only, without it
        # Published by its operator, it is shown and kept; unpublished from the CLI (another
        # process), it is gone within twice the TTL: the stale page once, then the 404.
        await set_repo(sessionmaker, published=True)
        cache.clear()
        page, _, _ = await site.get(BASE)
        assert "Task 1" in page and ("repo", "github", REPO, "en") in cache
        await set_repo(sessionmaker, published=False)
        clock.now += 11
        await site.get(BASE)  # stale, once, while the refresh finds no public repo
        await cache.settled()
        assert ("repo", "github", REPO, "en") not in cache
        await site.get(BASE, 404)
        assert ("repo", "github", REPO, "en") not in cache
    finally:
        await client.close()


# -- the cache alone ---------------------------------------------------------------------------


def page(body: bytes) -> Page:
    return Page(body, f'"{len(body)}"', "text/html")


async def test_the_cache_is_bounded_in_entries_and_bytes() -> None:
    clock = Ticks()
    cache = PageCache(10, clock=clock, generation=lambda: 0, max_entries=3, max_bytes=1000,
                      max_page_bytes=600)

    def making(body: bytes) -> Any:
        async def compute() -> Page:
            return page(body)
        return compute

    for key in "abcd":
        await cache.get(key, making(b"x" * 100))
    assert len(cache) == 3 and "a" not in cache and cache.size == 300  # least recent out
    await cache.get("b", making(b"unused"))  # a hit: b is now the most recent
    await cache.get("e", making(b"y" * 500))
    assert len(cache) == 3 and "c" not in cache and "b" in cache and cache.size == 700
    await cache.get("f", making(b"z" * 500))  # over the byte budget: the oldest go
    assert cache.size <= 1000 and "f" in cache and "e" in cache and len(cache) == 2
    big = await cache.get("g", making(b"w" * 700))  # too big to keep, still served
    assert big.body == b"w" * 700 and "g" not in cache


async def test_a_failed_computation_reaches_every_waiter_and_keeps_nothing() -> None:
    cache = PageCache(10, clock=Ticks(), generation=lambda: 0)
    gate = asyncio.Event()
    runs = 0

    async def failing() -> Page:
        nonlocal runs
        runs += 1
        await gate.wait()
        raise LookupError("gone")

    waiters = [asyncio.create_task(cache.get("k", failing)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert runs == 1 and all(isinstance(r, LookupError) for r in results)
    assert "k" not in cache
