"""`bountybot serve` (the HTTP service) and `bountybot db upgrade` (the migrations)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import sys

from bountybot import __version__
from bountybot.cli.common import CommandError, _database_error, _require_head, load_settings, log
from bountybot.config import Settings, env_name, unknown_environment
from bountybot.forges.registry import how_to_turn_on
from bountybot.logs import event, flush_suppressed, log_level, setup_logging


def cmd_serve(args: argparse.Namespace) -> int:
    # The database driver (aiosqlite) and the forge library (PyGithub, via to_thread) work in
    # threads; every result they hand back waits for the GIL, which a busy thread keeps for
    # up to the switch interval (5 ms by default). Shorter turns keep the event loop fed.
    sys.setswitchinterval(0.0005)
    server = {key: value for key in ("host", "port") if (value := getattr(args, key)) is not None}
    settings = load_settings(args, **({"server": server} if server else {}))
    settings.check_for_serve(demo=False)
    setup_logging(settings, level=log_level())
    for name in unknown_environment():
        event(log, "config.unknown_variable", logging.WARNING, name=name, hint="ignored, typo?")
    for warning in settings.forge_warnings():
        log.warning(warning)
    _prepare_database(settings)
    return asyncio.run(_run_server(settings, getattr(args, "role", None) or "all"))


async def _run_server(settings: Settings, role: str = "all") -> int:
    """Serve `role` (`bountybot.app.ROLES`); a `worker`'s port answers only /healthz and
    /metrics."""
    # Imported here: the service stack (SQLAlchemy engine, routes) is not needed by
    # `--help` or by a refused configuration.
    import gc

    from aiohttp import web

    from bountybot.app import AccessLogger, create_app, default_features
    from bountybot.connections import BACKLOG, fit_to_open_files, open_files_limit
    from bountybot.resources import CONNECTIONS

    # The handlers go in first, so that a signal during startup still means a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError):  # no loop signal handlers on Windows
            loop.add_signal_handler(sig, stop.set)
    server = settings.server
    app = create_app(settings, features=default_features(role))
    guard = app[CONNECTIONS]
    files = open_files_limit()
    guard.max_connections = fit_to_open_files(server.max_connections, files)
    if guard.max_connections < server.max_connections:
        event(log, "server.connections_capped", logging.WARNING,
              max_connections=guard.max_connections, open_files=files,
              hint="raise the open files limit (LimitNOFILE, ulimit -n)")
    runner = web.AppRunner(app, access_log_class=AccessLogger,
                           keepalive_timeout=server.keepalive_timeout_seconds)
    listener: asyncio.Server | None = None
    try:
        await runner.setup()
        assert runner.server is not None
        # What exists now (modules, the app) lives as long as the process: out of the garbage
        # collector's sight, a full collection under load only scans what requests made.
        gc.freeze()
        # Our own listener rather than a web.TCPSite: its connections go through the guard
        # (connection cap, request head deadline), which a site has no hook for.
        try:
            listener = await loop.create_server(guard.wrap(runner.server), server.host,
                                                server.port, backlog=BACKLOG)
        except OSError as e:
            raise CommandError(
                f"cannot listen on {server.host}:{server.port}: {e.strerror or e}"
                + _port_hint(e, server.port)
            ) from None
        log.info(start_line(settings, listener.sockets[0].getsockname()[1], role))
        await stop.wait()
        event(log, "server.stopping")
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
        if listener is not None:
            listener.close()  # accept no one new; the connections open are closed next
        await runner.cleanup()  # runs cleanup_ctx: the engine is disposed
        if listener is not None:
            await listener.wait_closed()
    event(log, "server.stopped")
    flush_suppressed()
    return 0


def _port_hint(error: OSError, port: int) -> str:
    """How to pick another port, when the port is the trouble (taken by another program, or
    below 1024 without the right to it); nothing for any other error (a wrong host, say)."""
    if error.errno not in (errno.EADDRINUSE, errno.EACCES):
        return ""
    other = port + 1 if 0 < port < 65535 else 8081
    return (f"; pick another port: `{env_name('server', 'port')}={other} make run`,"
            f" or `bountybot serve --port {other}`")


def start_line(settings: Settings, port: int, role: str = "all") -> str:
    """The one line that tells an operator what is running, with no secret in it."""
    host = settings.server.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    doing = {"web": f"(web: no workers) listening on {url}",
             "worker": f"(worker: deliveries, outbox, payments, scheduler) listening on {url}"
                       " for /healthz and /metrics only"}.get(role, f"listening on {url}")
    forges = ", ".join(settings.forges_enabled()) or f"none (set {how_to_turn_on()})"
    config = settings.config_file or "built-in defaults"
    return (
        f"bountybot {__version__} {doing} — database "
        f"{settings.database.display_url()}, forges: {forges}, "
        f"payments: {settings.payments.provider}, config: {config}"
    )


def _prepare_database(settings: Settings) -> None:
    """Serve only on a database at the schema this code expects.

    A new (empty) SQLite file is migrated here, so `serve` runs with no setup. Anything else
    behind is the operator's call (`bountybot db upgrade`): a shared PostgreSQL database must
    not be migrated by whichever replica happens to start first.
    """
    from bountybot.storage import migrate

    url = settings.database.url
    try:
        if settings.database.url.startswith("sqlite") and migrate.is_empty(url):
            migrate.upgrade(url)
            event(log, "database.created", database=settings.database.display_url(),
                  revision=migrate.head())
    except Exception as e:  # noqa: BLE001 - driver errors vary (SQLAlchemy, asyncpg, OSError)
        raise _database_error(settings, "open", e) from None
    _require_head(settings)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from bountybot.storage import migrate

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    url = settings.database.url
    try:
        before = migrate.current(url)
        migrate.upgrade(url)
        after = migrate.current(url)
    except Exception as e:  # noqa: BLE001 - driver errors vary: each becomes one line
        raise _database_error(settings, "upgrade", e) from None
    if before == after:
        print(f"database {settings.database.display_url()} is at revision {after} (head)")
    else:
        print(
            f"database {settings.database.display_url()} upgraded from revision "
            f"{before or 'none'} to {after} (head)"
        )
    return 0
