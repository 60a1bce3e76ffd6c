"""What this machine's databases can do at best, measured in the benchmark's own run: one-row
commits a second through sqlite3 (WAL), aiosqlite and asyncpg. A command that bountybot applies
writes a few rows in one transaction, so these are the ceilings its rates are compared with."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiosqlite
import asyncpg

ROWS = 2000


def sqlite3_commits(path: Path, rows: int = ROWS) -> float:
    """One-row INSERT + COMMIT a second, sqlite3 in WAL mode (synchronous=NORMAL, as served)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(rows):
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            db.execute("COMMIT")
        return rows / (time.perf_counter() - start)
    finally:
        db.close()


async def aiosqlite_commits(path: Path, rows: int = ROWS) -> float:
    """The same through aiosqlite (a thread per connection), as the service uses SQLite."""
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(rows):
            await db.execute("BEGIN")
            await db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            await db.execute("COMMIT")
        return rows / (time.perf_counter() - start)


async def asyncpg_commits(dsn: str, schema: str, rows: int = ROWS) -> float:
    """One-row BEGIN / INSERT / COMMIT a second through asyncpg, in `schema`."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE IF NOT EXISTS ceiling (id serial PRIMARY KEY, v text)")
        insert = await conn.prepare("INSERT INTO ceiling (v) VALUES ($1)")
        start = time.perf_counter()
        for i in range(rows):
            async with conn.transaction():
                await insert.fetch(f"row {i}")
        return rows / (time.perf_counter() - start)
    finally:
        await conn.close()


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """asyncpg's DSN for an SQLAlchemy `postgresql+asyncpg://` URL (no query options)."""
    return sqlalchemy_url.split("?")[0].replace("postgresql+asyncpg://", "postgresql://", 1)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(f"sqlite3   {sqlite3_commits(Path(tmp) / 'a.db'):8.0f} commits/s")
        print(f"aiosqlite {asyncio.run(aiosqlite_commits(Path(tmp) / 'b.db')):8.0f} commits/s")
