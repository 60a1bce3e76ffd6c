"""Commands that write to stdout, read through a pipe its reader closes early
(`bountybot export | head`): real processes, a real shell pipeline, a SQLite database made by
`bountybot db upgrade`. They end as Unix tools do: no traceback, no error line, status 141."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 60.0
REPOS = 6000  # about half a megabyte of output: far more than a pipe holds (64 KiB on Linux)


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BOUNTYBOT_")}


def bountybot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bountybot", *args], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config file naming a database made by `bountybot db upgrade`, with many repos in it."""
    where = tmp_path_factory.mktemp("pipe")
    config = where / "bountybot.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{where / "books.db"}"\n')
    made = bountybot("db", "upgrade", "--config", str(config), cwd=where)
    assert made.returncode == 0, made.stderr
    with sqlite3.connect(where / "books.db") as db:
        db.executemany(
            "INSERT INTO repo (forge, forge_repo_id, full_path, created_at, private, published)"
            " VALUES ('github', ?, ?, '2026-11-23 09:00:00.000000', 0, 0)",
            [(str(1000 + i), f"commons/garden-{i:05d}") for i in range(REPOS)])
    return config


def piped(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`bountybot ARGS --config CONFIG | head -c 100` in bash, with pipefail so that the status
    is bountybot's own (head's is 0)."""
    script = 'set -o pipefail; "$0" -m bountybot "$@" | head -c 100'
    return subprocess.run(["bash", "-c", script, sys.executable, *args, "--config", str(config)],
                          cwd=config.parent, env=environment(), capture_output=True,
                          timeout=TIMEOUT)


@pytest.mark.parametrize("args", [("export",), ("repos",)], ids=["export", "repos"])
def test_a_closed_pipe_ends_the_command_quietly(books: Path, args: tuple[str, ...]) -> None:
    whole = bountybot(*args, "--config", str(books), cwd=books.parent)
    assert whole.returncode == 0, whole.stderr
    assert len(whole.stdout.encode()) > 4 * 65536  # the reader leaves long before the end

    done = piped(books, *args)
    assert len(done.stdout) == 100
    # The first line of each (an export's starts with the time it was made, which moves on).
    assert done.stdout[:11] == whole.stdout.encode()[:11]
    # 141 = 128 + SIGPIPE: what the shell reports for `yes | head` (see cli.common.SIGPIPE_EXIT).
    assert done.returncode == 141, done.stderr
    assert done.stderr == b""  # no traceback, no "cannot export the database", no "ignored"


def test_a_pipe_read_to_the_end_is_a_success(books: Path) -> None:
    script = 'set -o pipefail; "$0" -m bountybot export --config "$1" | wc -c'
    done = subprocess.run(["bash", "-c", script, sys.executable, str(books)], cwd=books.parent,
                          env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and done.stderr == ""
    assert int(done.stdout) > 4 * 65536
