"""`python -m bountybot serve` as a real process: starts with no config, answers, stops cleanly."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SECRET = "whsec-Recognisable-9876"
TOKEN = "ghp_RecognisableToken5432"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    database: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNTYBOT_")}
    env["BOUNTYBOT_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'serve.db'}"
    env.update(extra)
    return env


def start(tmp_path: Path, *args: str, **env: str) -> Service:
    """Run `serve` from an empty working directory (so no config file is near), output to a file
    (a pipe nobody reads could fill up and block the service)."""
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bountybot", "serve", "--port", str(port), *args],
            cwd=workdir, env=environment(tmp_path, **env), stdout=out, stderr=subprocess.STDOUT,
        )
    return Service(process, port, tmp_path / "data" / "serve.db", log)


def get_health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_healthy(service: Service) -> dict[str, object]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"serve exited with {service.process.returncode}:\n{service.output()}")
        try:
            status, body = get_health(service.port)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
            continue
        if status == 200 and body.get("database") == "ok":
            return body
        time.sleep(0.1)
    pytest.fail(f"serve not healthy after {START_TIMEOUT}s:\n{service.output()}")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = start(
        tmp_path, BOUNTYBOT_GITHUB_WEBHOOK_SECRET=SECRET, BOUNTYBOT_GITHUB_TOKEN=TOKEN
    )
    yield svc
    if svc.process.poll() is None:  # a failed test must not leave a server behind
        svc.process.kill()
        svc.process.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_starts_answers_and_stops_cleanly(service: Service, sig: signal.Signals) -> None:
    body = wait_healthy(service)
    assert body["forges"] == ["github"]

    # The database was created and migrated by serve itself.
    with sqlite3.connect(service.database) as db:
        revisions = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert len(revisions) == 1

    service.process.send_signal(sig)
    assert service.process.wait(timeout=STOP_TIMEOUT) == 0

    output = service.output()
    start_lines = [line for line in output.splitlines() if "listening on" in line]
    assert len(start_lines) == 1, output
    line = start_lines[0]
    assert f"http://127.0.0.1:{service.port}" in line
    assert "forges: github" in line and "payments: manual" in line
    assert "config: built-in defaults" in line or "config/bountybot.toml" in line
    assert SECRET not in output and TOKEN not in output
    assert "Traceback" not in output


def test_placeholder_secret_refused(tmp_path: Path) -> None:
    svc = start(tmp_path, BOUNTYBOT_GITHUB_WEBHOOK_SECRET="changeme")
    assert svc.process.wait(timeout=START_TIMEOUT) == 2
    lines = svc.output().strip().splitlines()
    assert len(lines) == 1
    assert "github.webhook_secret is a placeholder" in lines[0]
    assert not svc.database.exists()  # refused before touching anything


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = environment(tmp_path)
        (tmp_path / "data").mkdir()
        done = subprocess.run(
            [sys.executable, "-m", "bountybot", "serve", "--port", str(port)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=START_TIMEOUT,
        )
    assert done.returncode == 1
    assert f"bountybot: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    # The line says how to pick another port, both ways (make run, and serve itself).
    (line,) = [li for li in done.stderr.splitlines() if "cannot listen" in li]
    assert f"pick another port: `BOUNTYBOT_SERVER_PORT={port + 1} make run`" in line
    assert f"`bountybot serve --port {port + 1}`" in line


# the other commands, in process --------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A clean BOUNTYBOT_* environment with a tmp database; the root logger restored after."""
    import logging

    for name in list(os.environ):
        if name.startswith("BOUNTYBOT_"):
            monkeypatch.delenv(name)
    db = tmp_path / "cli.db"
    monkeypatch.setenv("BOUNTYBOT_DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield db
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("cli_env")
def test_db_upgrade_then_audit(capsys: pytest.CaptureFixture[str]) -> None:
    from bountybot.cli import main

    assert main(["audit"]) == 2  # not migrated yet: says what to run
    assert "run `bountybot db upgrade`" in capsys.readouterr().err
    assert main(["db", "upgrade"]) == 0
    assert "upgraded from revision none to" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert "(head)" in capsys.readouterr().out
    assert main(["audit"]) == 0
    assert "all invariants hold" in capsys.readouterr().out


@pytest.mark.usefixtures("cli_env")
def test_sync_with_no_forge_on_says_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    from bountybot.cli import main

    assert main(["sync"]) == 2
    err = capsys.readouterr().err
    assert "no forge is on" in err and "BOUNTYBOT_GITHUB_TOKEN" in err and err.count("\n") == 1


def test_help_lists_each_command_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`bountybot --help` in an 80-column terminal: every command with a
    description on its own line; each command's own --help starts with a description too."""
    from bountybot.cli import main

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNTYBOT_")},
           "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "bountybot", "--help"], env=env,
                          capture_output=True, text=True, timeout=START_TIMEOUT)
    assert done.returncode == 0 and done.stderr == ""
    listing = done.stdout.split("COMMAND\n", 1)[1].split("\n\n")[0].splitlines()
    listed = {}
    for line in listing:
        name, _, summary = line.strip().partition(" ")
        assert summary.strip(), f"{name!r} has no description on its line: {listing}"
        listed[name] = summary.strip()
    assert all(len(line) <= 78 for line in done.stdout.splitlines())
    commands = ["serve", "db", "audit", "export", "import", "payouts", "pledges", "statement",
                "outbox", "deliveries", "payments", "sync", "repos", "demo"]
    assert list(listed) == commands
    for name in commands:
        assert main([name, "--help"]) == 0
        usage, description = capsys.readouterr().out.split("\n\n")[:2]
        assert usage.startswith(f"usage: bountybot {name}")
        assert description[:1].isupper() and description.endswith("."), (name, description)


STRIPE_KEY = "sk_test_Recognisable0123456789"
STRIPE_WHSEC = "whsec_Recognisable0123456789"


def post_stripe(port: int, body: bytes, signature: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/stripe", data=body, method="POST",
        headers={"Content-Type": "application/json", "Stripe-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_takes_the_stripe_provider(tmp_path: Path) -> None:
    stripe = {"BOUNTYBOT_PAYMENTS_PROVIDER": "stripe", "BOUNTYBOT_STRIPE_API_KEY": STRIPE_KEY,
              "BOUNTYBOT_STRIPE_WEBHOOK_SECRET": STRIPE_WHSEC}
    refused = start(tmp_path, **stripe)
    assert refused.process.wait(timeout=START_TIMEOUT) == 2
    assert "server.public_url is not set" in refused.output()

    svc = start(tmp_path, BOUNTYBOT_SERVER_PUBLIC_URL="https://bounties.example.org", **stripe)
    try:
        wait_healthy(svc)
        body = json.dumps({"id": "evt_serve_1", "object": "event", "type": "account.updated",
                           "data": {"object": {"id": "acct_someone", "object": "account"}}}
                          ).encode()
        t = int(time.time())
        digest = hmac.new(STRIPE_WHSEC.encode(), f"{t}.".encode() + body, hashlib.sha256)
        assert post_stripe(svc.port, body, f"t={t},v1={digest.hexdigest()}") == (
            200, {"status": "handled", "delivery": "evt_serve_1"})
        assert post_stripe(svc.port, body, f"t={t},v1={'0' * 64}")[0] == 401
        svc.process.send_signal(signal.SIGTERM)
        assert svc.process.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if svc.process.poll() is None:
            svc.process.kill()
            svc.process.wait()
    output = svc.output()
    assert "payments: stripe" in output
    assert STRIPE_KEY not in output and STRIPE_WHSEC not in output
    assert "Traceback" not in output
