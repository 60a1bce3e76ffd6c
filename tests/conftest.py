"""Database fixtures: SQLite files and PostgreSQL schemas, migrated to head, clean for each test.

- `sqlite_url`: a SQLite file in the test's tmp_path, at head (a copy of one migrated once).
- `pg_url`: this test session's own PostgreSQL schema (`bb_test_<random>`, chosen through
  `?search_path=`, dropped at the end), migrated once and emptied of rows for each test.
  PostgreSQL is `BOUNTYBOT_TEST_PG_URL` (default: postgres@127.0.0.1:5432/test). If it cannot be
  reached the PostgreSQL tests are skipped, unless `CI` is set: then they fail.
- `db_url`: both of the above in turn (ids `sqlite`, `postgresql`).
- `empty_db_url`: both, with no tables at all (for the migration tests).
- `engine`, `sessionmaker`: an AsyncEngine and a session factory on `db_url`.

Why not one rolled-back transaction per test: the unit of work commits for real, PostgreSQL's
ledger check only runs at a real COMMIT, and `SKIP LOCKED` needs several connections. Deleting
the rows of a dozen small tables before each test is quick (a few milliseconds).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import pool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.rules.decide import _read_commands
from bountybot.storage import migrate
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.tables import metadata

# The local forges, as fixtures for every test module (github_server, gitlab_server,
# forgejo_server).
from fakes.forgejo import forgejo_server  # noqa: F401
from fakes.github import github_server  # noqa: F401
from fakes.gitlab import gitlab_server  # noqa: F401

PG_DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine from a sync fixture, on a loop of its own in a helper thread.

    The thread keeps it off the main thread, whose event loop is pytest-asyncio's business.
    """
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(lambda: asyncio.run(make())).result()


async def execute(url: str, *statements: str) -> None:
    """Run SQL statements in one transaction on a throwaway connection."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


def with_schema(url: str, schema: str) -> str:
    return make_url(url).update_query_dict({"search_path": schema}).render_as_string(
        hide_password=False
    )


def new_schema_name() -> str:
    return f"bb_test_{secrets.token_hex(4)}"


# -- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL server to test on, once it has answered (skip, or fail under CI)."""
    url = os.environ.get("BOUNTYBOT_TEST_PG_URL", PG_DEFAULT_URL)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        run_sync(lambda: asyncio.wait_for(execute(url, "SELECT 1"), timeout=10))
    except Exception as error:  # noqa: BLE001 - any failure to connect: "no PostgreSQL here"
        message = f"PostgreSQL at {shown} is unreachable: {error!r}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def pg_session_url(pg_server_url: str) -> Iterator[str]:
    """This test session's schema, migrated to head once; dropped at the end."""
    schema = new_schema_name()
    run_sync(lambda: execute(pg_server_url, f'CREATE SCHEMA "{schema}"'))
    url = with_schema(pg_server_url, schema)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        run_sync(lambda: execute(pg_server_url, f'DROP SCHEMA "{schema}" CASCADE'))


DELETE_ALL = [f'DELETE FROM "{table.name}"' for table in reversed(metadata.sorted_tables)]


@pytest.fixture
def pg_url(pg_session_url: str) -> str:
    """The session's PostgreSQL schema at head, with every table emptied for this test."""
    run_sync(lambda: execute(pg_session_url, *DELETE_ALL))
    return pg_session_url


@pytest.fixture
def empty_pg_url(pg_server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL schema for one test; dropped afterwards."""
    schema = new_schema_name()
    run_sync(lambda: execute(pg_server_url, f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_schema(pg_server_url, schema)
    finally:
        run_sync(lambda: execute(pg_server_url, f'DROP SCHEMA "{schema}" CASCADE'))


# -- SQLite ------------------------------------------------------------------------------


def sqlite_file_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "bountybot.db"
    migrate.upgrade(sqlite_file_url(path))
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A SQLite file of this test's own, at head, with no rows."""
    path = tmp_path / "bountybot.db"
    shutil.copyfile(sqlite_template, path)
    return sqlite_file_url(path)


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """A SQLite file that does not exist yet (no tables)."""
    return sqlite_file_url(tmp_path / "empty.db")


# -- either ------------------------------------------------------------------------------

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A database at head with no rows: SQLite, then PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """A database with no tables: SQLite, then PostgreSQL."""
    name = "empty_sqlite_url" if request.param == "sqlite" else "empty_pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on `db_url`, disposed after the test."""
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine`, for `UnitOfWork(sessionmaker)`."""
    return create_sessionmaker(engine)


# -- the environment ---------------------------------------------------------------------------


@pytest.fixture
def no_bountybot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BOUNTYBOT_* variable of the machine running the tests reaches the settings."""
    for name in list(os.environ):
        if name.startswith("BOUNTYBOT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def cli_env(no_bountybot_env: None) -> Iterator[None]:  # noqa: ARG001 - it clears the env
    """As `no_bountybot_env`; and the root logger, which the command line sets up, put back."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _commands_read_afresh() -> None:
    """Each test reads comments' commands itself: `read_commands` keeps what it read, which
    would hide a change of the parser from a test whose comment an earlier one read (mutation
    testing changes the parser between tests)."""
    _read_commands.cache_clear()
