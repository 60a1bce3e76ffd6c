"""The application in process: health check, resources, features, body size limit."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bountybot import __version__
from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.resources import ENGINE, SESSIONMAKER, SETTINGS
from bountybot.storage.engine import create_engine

SECRET = "whsec-Recognisable-9876"
DB_PASSWORD = "pg-Pa55word-77"


# Each test starts from an environment without BOUNTYBOT_* variables.
pytestmark = pytest.mark.usefixtures("no_bountybot_env")


def settings_for(url: str, **sections: dict[str, object]) -> Settings:
    return Settings.load(None, database={"url": url}, **sections)


def closed_port() -> int:
    """A port nothing listens on (just released), so connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_healthz_ok(sqlite_url: str) -> None:
    settings = settings_for(
        sqlite_url,
        github={"webhook_secret": SECRET, "token": "ghp_token"},
    )
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        assert app[SETTINGS] is settings
        assert app[SESSIONMAKER] is not None
        response = await client.get("/healthz")
        assert response.status == 200
        body = await response.json()
        text = await response.text()
    assert body == {"status": "ok", "database": "ok", "forges": ["github"], "version": __version__,
                    "queue": {"pending": 0, "oldest_due_seconds": None}}
    assert SECRET not in text


async def test_healthz_unreachable_database(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql+asyncpg://bot:{DB_PASSWORD}@127.0.0.1:{closed_port()}/bounty"
    app = create_app(settings_for(url))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/healthz")
        assert response.status == 503
        body = await response.json()
        text = await response.text()
    assert body["database"] == "unreachable"
    assert body["status"] != "ok"
    assert body["forges"] == []
    assert DB_PASSWORD not in text and "127.0.0.1" not in text
    assert "health.database_unreachable" in caplog.text


async def test_given_engine_is_used_and_left_open(tmp_path: Path, sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)  # migrated: /healthz reads the delivery queue
    # The settings name another database: the engine passed in must win.
    app = create_app(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"), engine=engine)
    try:
        async with TestClient(TestServer(app)) as client:
            assert app[ENGINE] is engine
            assert (await client.get("/healthz")).status == 200
        # After the app's cleanup the caller's engine still works: the app did not own it.
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    finally:
        await engine.dispose()
    assert not (tmp_path / "other.db").exists()


async def test_features_add_routes_and_body_size_is_limited(tmp_path: Path) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    def setup(app: web.Application) -> None:
        app.router.add_post("/echo", echo)

    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'f.db'}", server={"max_body_bytes": 2048}
    )
    async with TestClient(TestServer(create_app(settings, features=[setup]))) as client:
        small = await client.post("/echo", data=b"x" * 2000)
        assert (small.status, await small.text()) == (200, "2000")
        big = await client.post("/echo", data=b"x" * 4096)
        assert big.status == 413
