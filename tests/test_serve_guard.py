"""`bountybot serve` as a real process under attack: idle and slow sockets, more of them than it
has open files; a flood of refused webhooks; forty exports at once while webhooks arrive.

Run with `pytest tests/test_serve_guard.py -s` to see the figures measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import aiohttp
import pytest
from conftest import execute, run_sync
from test_serve import (
    SECRET,
    STOP_TIMEOUT,
    TOKEN,
    Service,
    environment,
    free_port,
    get_health,
    wait_healthy,
)

HEADER_TIMEOUT = 1.0
KEEPALIVE = 2.0


def start(tmp_path: Path, *, open_files: int | None = None, **env: str) -> Service:
    """`serve` from an empty directory, GitHub on, its log in a file; `open_files` is the limit
    on its open files (soft and hard, so it cannot raise it)."""
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    port = free_port()
    log = tmp_path / "serve.log"

    def limit() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bountybot", "serve", "--port", str(port)],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit,
            env=environment(tmp_path, BOUNTYBOT_GITHUB_WEBHOOK_SECRET=SECRET,
                            BOUNTYBOT_GITHUB_TOKEN=TOKEN,
                            BOUNTYBOT_GITHUB_API_URL="http://127.0.0.1:9",
                            BOUNTYBOT_SCHEDULER_SYNC_MINUTES="0", **env))
    return Service(process, port, tmp_path / "data" / "serve.db", log)


def stop(service: Service) -> str:
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=STOP_TIMEOUT + 10) == 0
    return service.output()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for svc in started:  # a failed test must not leave a server behind
        if svc.process.poll() is None:
            svc.process.kill()
            svc.process.wait()


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed this socket (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.settimeout(5)


def test_idle_and_slow_sockets_are_closed_and_the_service_still_answers(
        tmp_path: Path, services: list[Service]) -> None:
    from bountybot.connections import RESERVED_FILES

    svc = start(tmp_path, open_files=1024,
                BOUNTYBOT_SERVER_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
                BOUNTYBOT_SERVER_KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE))
    services.append(svc)
    wait_healthy(svc)

    # 1,100 sockets that connect and say nothing: more than its 1,024 open files.
    flood_started = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", svc.port), timeout=5) for _ in range(1100)]
    opened = time.monotonic()
    # A slowloris: a request head, a header every 0.2 s, never finished.
    slow = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: bountybot\r\n")
    # A client that made a request and keeps its connection open.
    kept = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=5)
    kept.request("GET", "/healthz")
    assert kept.getresponse().read()
    kept_idle_since = time.monotonic()

    # It answers now, in the middle of the flood: room is made by closing the longest idle.
    status, body = get_health(svc.port)
    assert status == 200 and body["database"] == "ok"
    at_once = sum(closed(s) for s in idle)
    assert at_once >= 1100 - (1024 - RESERVED_FILES)

    slow_closed = kept_closed = None
    idle_left = [s for s in idle if s.fileno() != -1]
    gone: set[int] = set()
    deadline = time.monotonic() + HEADER_TIMEOUT + KEEPALIVE + 3
    while time.monotonic() < deadline and (slow_closed is None or kept_closed is None
                                           or len(gone) < len(idle_left)):
        for s in idle_left:
            if id(s) not in gone and closed(s):
                gone.add(id(s))
        if slow_closed is None:
            try:
                slow.sendall(b"X-Trickle: 1\r\n")
                if closed(slow):
                    slow_closed = time.monotonic() - opened
            except (BrokenPipeError, ConnectionResetError):
                slow_closed = time.monotonic() - opened
        if kept_closed is None and kept.sock is not None and closed(kept.sock):
            kept_closed = time.monotonic() - kept_idle_since
        time.sleep(0.2)
    all_idle_closed = time.monotonic() - opened
    assert slow_closed is not None and kept_closed is not None
    print(f"\n1,100 idle sockets (open files 1,024): opened in {opened - flood_started:.2f} s,"
          f" {at_once} closed at once, all closed {all_idle_closed:.1f} s after;"
          f" slowloris closed after {slow_closed:.1f} s; idle keep-alive closed after"
          f" {kept_closed:.1f} s")
    assert len(gone) == len(idle)  # every idle socket, none left open
    assert slow_closed < HEADER_TIMEOUT + 1.5
    # An idle kept-alive connection outlives the head deadline: its own timeout is longer.
    assert KEEPALIVE - 0.5 < kept_closed < KEEPALIVE + 2
    assert get_health(svc.port)[0] == 200
    for s in idle + [slow]:
        s.close()

    output = stop(svc)
    assert (f"server.connections_capped max_connections={1024 - RESERVED_FILES}"
            " open_files=1024") in output
    assert "Traceback" not in output and "Too many open files" not in output
    assert len(output.splitlines()) < 200  # the evictions are counted, not told one by one


def test_a_flood_of_refused_webhooks_writes_a_few_lines(tmp_path: Path,
                                                          services: list[Service]) -> None:
    svc = start(tmp_path)
    services.append(svc)
    wait_healthy(svc)
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=5)
    body = b'{"zen": "flood"}'
    for n in range(400):
        conn.request("POST", "/webhooks/github", body=body, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": f"flood-{n}", "X-Hub-Signature-256": "sha256=" + "0" * 64})
        response = conn.getresponse()
        response.read()
        assert response.status == 401
    conn.close()
    lines = stop(svc).splitlines()
    refused = [line for line in lines if "webhook.bad_signature" in line]
    print(f"\n400 refused webhooks: {len(lines)} log lines in all")
    # 20 told, then one line with the count (written at the latest when the service stops).
    assert len(refused) == 21
    assert "log.suppressed event=webhook.bad_signature count=380 seconds=60" in refused[-1]
    assert len(lines) < 80


# Forty exports at once (PostgreSQL) ----------------------------------------------------------

TASKS = 600  # with 3 pledges each: 1,800 ledger transactions, 3,600 entries (1.3 MB of JSON)
EXPORTS = 40
WEBHOOKS = 20


def seed(url: str) -> None:
    run_sync(lambda: execute(
        url,
        "INSERT INTO repo (forge, forge_repo_id, full_path, private, published, created_at)"
        " VALUES ('github', '4040', 'load/books', false, false, now())",
        "INSERT INTO task (repo_id, number, title, url, state, currency, created_at, updated_at)"
        " SELECT (SELECT id FROM repo WHERE forge_repo_id = '4040'), g, 'Load task ' || g,"
        " 'https://github.com/load/books/issues/' || g, 'open', 'EUR', now(), now()"
        f" FROM generate_series(1, {TASKS}) g",
        # Amounts that hardly repeat, as in real books: each is formatted for its display.
        "INSERT INTO pledge (task_id, backer, amount_minor, currency, state, created_at,"
        " updated_at) SELECT task.id, 'backer' || b, 100 + (task.id * 7919 + b * 104729) % 99000,"
        " 'EUR', 'held', now(), now() FROM task, generate_series(1, 3) b",
        "INSERT INTO ledger_transaction (key, kind, task_id, created_at)"
        " SELECT 'pledge.held:' || id, 'pledge.held', task_id, now() FROM pledge",
        "INSERT INTO ledger_entry (transaction_id, account, amount_minor, currency)"
        " SELECT id, 'escrow:task:' || task_id, 100 + id * 7919 % 99000, 'EUR'"
        " FROM ledger_transaction UNION ALL SELECT id, 'backer:github:backer',"
        " -(100 + id * 7919 % 99000), 'EUR' FROM ledger_transaction",
    ))


def signed_ping() -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"zen": "Design for failure.", "hook_id": 7}).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-GitHub-Event": "ping",
                  "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": f"sha256={digest}"}


async def storm(port: int) -> dict[str, list[float]]:
    """EXPORTS downloads of export.json at once; meanwhile WEBHOOKS signed webhooks, one every
    0.1 s, and the health check. Seconds each, by outcome."""
    base = f"http://127.0.0.1:{port}"
    seen: dict[str, list[float]] = {"export_200": [], "export_503": [], "webhook": [],
                                    "healthz": []}

    async def export(session: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        async with session.get(f"{base}/api/v1/export.json") as response:
            data = await response.read()
            if response.status == 200:
                assert json.loads(data)["counts"]["tasks"] == TASKS
                seen["export_200"].append(time.monotonic() - started)
            else:
                assert response.status == 503 and response.headers["Retry-After"]
                seen["export_503"].append(time.monotonic() - started)

    async def webhooks(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(0.2)  # the exports are under way
        for _ in range(WEBHOOKS):
            body, headers = signed_ping()
            started = time.monotonic()
            async with session.post(f"{base}/webhooks/github", data=body,
                                    headers=headers) as response:
                assert response.status == 202, await response.text()
            seen["webhook"].append(time.monotonic() - started)
            started = time.monotonic()
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200, await response.text()
            seen["healthz"].append(time.monotonic() - started)
            await asyncio.sleep(0.1)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as readers, \
            aiohttp.ClientSession(timeout=timeout) as forge:
        downloads = asyncio.gather(*(export(readers) for _ in range(EXPORTS)))
        await webhooks(forge)
        await downloads
    return seen


def test_webhooks_are_stored_at_once_while_forty_exports_run(
        pg_url: str, tmp_path: Path, services: list[Service]) -> None:
    seed(pg_url)
    svc = start(tmp_path, BOUNTYBOT_DATABASE_URL=pg_url)
    services.append(svc)
    wait_healthy(svc)
    started = time.monotonic()
    seen = asyncio.run(storm(svc.port))
    took = time.monotonic() - started
    hooks, exported, refused = seen["webhook"], seen["export_200"], seen["export_503"]
    print(f"\n{EXPORTS} exports of {TASKS} tasks at once, {took:.1f} s in all:"
          f" {len(exported)} answered 200 (median {median(exported):.2f} s, slowest"
          f" {max(exported):.2f} s), {len(refused)} answered 503 + Retry-After"
          f" (after {min(refused, default=0):.2f}-{max(refused, default=0):.2f} s)."
          f" Meanwhile {len(hooks)} webhooks: 202 in median {median(hooks) * 1000:.0f} ms,"
          f" slowest {max(hooks) * 1000:.0f} ms; /healthz 200 in median"
          f" {median(seen['healthz']) * 1000:.0f} ms, slowest"
          f" {max(seen['healthz']) * 1000:.0f} ms")
    assert len(hooks) == WEBHOOKS and max(hooks) < 1.0
    assert max(seen["healthz"]) < 1.0
    assert len(exported) + len(refused) == EXPORTS
    assert len(exported) >= 4  # the turns were used, not refused wholesale
    output = stop(svc)
    assert "Traceback" not in output
