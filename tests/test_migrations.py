"""The migrations build exactly the tables of `tables.py`, and undo them, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, pool, text
from sqlalchemy.engine import Connection

from bountybot.storage import migrate
from bountybot.storage.engine import create_engine
from bountybot.storage.tables import metadata

# alembic cannot reflect expression indexes (`lower(backer)`), so it leaves them out of the
# comparison and says so; the migration that makes them is tested by running it.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:autogenerate skipping metadata-specified expression-based index"),
    pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index"),
]

TABLES = {
    "repo", "task", "pledge", "claim", "waiting", "link", "payout", "ledger_transaction",
    "ledger_entry", "delivery", "outbox", "audit_event", "handled_comment", "sync_cursor",
    "payment_op", "payout_account", "write_budget",
}


async def on_connection(url: str, work: Any) -> Any:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def table_names(url: str) -> set[str]:
    return set(asyncio.run(on_connection(url, lambda c: inspect(c).get_table_names())))


def ledger_functions(connection: Connection) -> list[str]:
    """The ledger check's function in the current schema (PostgreSQL); [] elsewhere."""
    if connection.dialect.name != "postgresql":
        return []
    return list(connection.execute(text(
        "SELECT proname FROM pg_proc WHERE proname = 'ledger_entry_check_balanced'"
        " AND pronamespace = current_schema()::regnamespace"
    )).scalars())


def differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def test_the_tables_are_the_ones_designed() -> None:
    assert set(metadata.tables) == TABLES


def test_migrations_are_one_straight_line() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1
    chain = [r.revision for r in script.walk_revisions()][::-1]  # oldest first
    assert chain == [f"{n:04d}" for n in range(1, len(chain) + 1)]
    assert migrate.head() == chain[-1]


def test_upgrade_creates_every_table(empty_db_url: str) -> None:
    assert migrate.is_empty(empty_db_url)
    assert migrate.current(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    assert table_names(empty_db_url) == TABLES | {"alembic_version"}
    assert migrate.current(empty_db_url) == migrate.head()
    assert not migrate.is_empty(empty_db_url)


def test_downgrade_removes_everything_and_upgrade_works_again(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    assert table_names(empty_db_url) == {"alembic_version"}
    assert migrate.current(empty_db_url) is None
    assert migrate.is_empty(empty_db_url)
    assert asyncio.run(on_connection(empty_db_url, ledger_functions)) == []

    migrate.upgrade(empty_db_url)
    assert table_names(empty_db_url) == TABLES | {"alembic_version"}
    backend = "postgresql" if "postgresql" in empty_db_url else "sqlite"
    expected = ["ledger_entry_check_balanced"] if backend == "postgresql" else []
    assert asyncio.run(on_connection(empty_db_url, ledger_functions)) == expected


def test_upgrading_twice_changes_nothing(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    migrate.upgrade(empty_db_url)
    assert migrate.current(empty_db_url) == migrate.head()


def test_models_match_the_migrations(empty_db_url: str) -> None:
    """A table edited without a migration shows up here."""
    migrate.upgrade(empty_db_url)
    assert asyncio.run(on_connection(empty_db_url, differences)) == []


def test_the_comparison_would_notice_a_missing_migration(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)

    def drop_an_index(connection: Connection) -> list[Any]:
        connection.execute(text("DROP INDEX ix_ledger_entry_account"))
        return differences(connection)

    found = asyncio.run(on_connection(empty_db_url, drop_an_index))
    assert [d[0] for d in found] == ["add_index"]


def test_upgrade_works_from_any_directory(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    migrate.upgrade(empty_db_url)
    assert migrate.current(empty_db_url) == migrate.head()
    assert list(elsewhere.iterdir()) == []


async def test_upgrade_from_a_running_event_loop(empty_db_url: str) -> None:
    await migrate.upgrade_async(empty_db_url)
    assert await migrate.current_async(empty_db_url) == migrate.head()
    # The sync functions also work here (in a helper thread): what a sync CLI helper does.
    migrate.downgrade(empty_db_url, "base")
    assert migrate.is_empty(empty_db_url)
    migrate.upgrade(empty_db_url)
    assert not await migrate.is_empty_async(empty_db_url)
