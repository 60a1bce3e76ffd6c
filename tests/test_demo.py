"""`bountybot demo`: the story through the real service on a fresh SQLite file, then the process
as a newcomer runs it (prints the addresses, serves them, stops on a signal)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from bountybot.demo import DemoError, DemoSite, fresh_database, page_urls, play_story
from bountybot.resources import SESSIONMAKER
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_story_leaves_every_state_and_clean_books(tmp_path: Path) -> None:
    async with DemoSite.start(tmp_path / "demo.db") as site:
        await play_story(site)
        async with site.app[SESSIONMAKER]() as session:
            repos = {r.id: r.full_path for r in (await session.exec(select(t.Repo))).all()}
            tasks = {(repos[task.repo_id], task.number): task
                     for task in (await session.exec(select(t.Task))).all()}
            payouts = (await session.exec(select(t.Payout))).all()
            pledges = (await session.exec(select(t.Pledge))).all()
        states = {key: str(task.state) for key, task in tasks.items()}
        assert states == {
            ("demo-commons/garden", 1): "done", ("demo-commons/garden", 2): "cancelled",
            ("demo-commons/garden", 3): "funded", ("demo-commons/lantern", 1): "claimed",
            ("demo-commons/lantern", 2): "open"}
        assert [(p.developer, p.amount_minor, str(p.state), p.reference) for p in payouts] == [
            ("carol", 30000, "paid", "SEPA-DEMO-0001")]
        refunded = [p for p in pledges if p.task_id == tasks["demo-commons/garden", 2].id]
        assert {(p.backer, str(p.state)) for p in refunded} == {("dora", "refunded"),
                                                                  ("ben", "refunded")}
        # Three months: the story began two months before this one.
        months = {(task.created_at.year, task.created_at.month) for task in tasks.values()}
        assert len(months) == 3
        report = await run_audit(site.app[SESSIONMAKER])
        assert report.ok, report.render()
        # The bot answered on the stand-in forge, and wrote nowhere else.
        assert any(w.what == "comment" and w.repo == "demo-commons/garden"
                   for w in site.forge.written)

        assert site.http is not None
        async with site.http.get(site.url("/")) as response:
            assert response.status == 200
            index = await response.text()
        for title in ("Export to CSV", "Faster search index", "Plugin API"):
            assert title in index
        async with site.http.get(site.url("/github/demo-commons/lantern/-/needs")) as response:
            assert response.status == 200
            needs = re.sub(r"\s+", " ", await response.text())
        assert "Faster search index" in needs and "Plugin API" in needs
        assert "€650.00 asked across 2 tasks, €270.00 funded" in needs
        first = page_urls(site)["appeal with a payout"]
        async with site.http.get(first) as response:
            paid = await response.text()
        assert response.status == 200 and "SEPA-DEMO-0001" in paid and "carol" in paid


def test_refuses_a_database_that_holds_anything(tmp_path: Path) -> None:
    books = tmp_path / "books.db"
    books.write_bytes(b"SQLite format 3\0")
    with pytest.raises(DemoError, match="not empty"):
        fresh_database(books)
    assert fresh_database(tmp_path / "new.db") == tmp_path / "new.db"
    assert fresh_database(None).name == "demo.db"


def test_demo_command_prints_its_pages_and_serves_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNTYBOT_")}
    port = free_port()
    out = tmp_path / "out.txt"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bountybot", "demo", "--port", str(port),
             "--database", str(tmp_path / "demo.db")],
            cwd=workdir, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "serving until Ctrl-C" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        text = out.read_text()
        urls = re.findall(r"http://127\.0\.0\.1:\d+\S*", text)
        assert len(urls) == 5 and all(f":{port}/" in url for url in urls), text
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200, url
        this_month = f"{datetime.now(UTC):%B %Y}"
        with urllib.request.urlopen(urls[0], timeout=5) as response:
            assert this_month in response.read().decode()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_port_taken_is_said_before_anything_is_written(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DemoError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            async with DemoSite.start(tmp_path / "demo.db", port):
                pass
    assert not (tmp_path / "demo.db").exists()
