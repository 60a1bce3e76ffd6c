"""The `bountybot` command line: serve, db upgrade, audit, and the commands still to come.

Every command returns an exit code: 0 done, 1 failed (the audit found problems, the database
is unreachable), 2 refused (bad usage, bad configuration, not available yet). A refusal is one
line on stderr that says what to do; no traceback for a mistake an operator can fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from bountybot import __version__
from bountybot.config import ConfigError, Settings, env_name, unknown_environment
from bountybot.logs import RedactSecrets, event, log_level, setup_logging

log = logging.getLogger("bountybot")

# What each command still waits for, said plainly instead of pretending it works.
COMING = {
    "export": "the public API and export issue (GET /api/v1/export.json and .csv)",
    "sync": "the GitHub and GitLab forge issues (reconciliation with the forges)",
    "payouts": "the payments issue (listing and marking payouts paid)",
    "demo": "the demo issue (a local forge, made-up secrets, a scripted story)",
}


class CommandError(Exception):
    """A command failed for a reason worth one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bountybot",
        description="Crowdfund work on GitHub and GitLab issues, with public books.",
    )
    parser.add_argument("--version", action="version", version=f"bountybot {__version__}")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config", metavar="PATH",
        help="TOML configuration file (default: $BOUNTYBOT_CONFIG, else config/bountybot.toml "
        "if present, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[config], help="run the HTTP service")
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (server.port)")
    serve.set_defaults(run=cmd_serve)

    db = commands.add_parser("db", help="database maintenance")
    db.set_defaults(run=lambda args: _usage(db))
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    upgrade = db_commands.add_parser(
        "upgrade", parents=[config], help="apply the database migrations"
    )
    upgrade.set_defaults(run=cmd_db_upgrade)

    audit = commands.add_parser(
        "audit", parents=[config], help="check every invariant of the books (exit 1 if one fails)"
    )
    audit.set_defaults(run=cmd_audit)

    for name, summary in (
        ("export", "export everything (tasks, pledges, ledger)"),
        ("sync", "reconcile tasks with the forges"),
        ("payouts", "list pending payouts and mark them paid"),
        ("demo", "run a local demonstration"),
    ):
        sub = commands.add_parser(name, parents=[config], help=f"{summary} (not available yet)")
        sub.set_defaults(run=cmd_coming)
    parser.set_defaults(run=lambda args: _usage(parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        code: int = args.run(args)
    except ConfigError as e:
        print(f"bountybot: {e}", file=sys.stderr)
        return 2
    except CommandError as e:
        print(f"bountybot: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:  # Ctrl-C before serve's own handlers are in place
        return 130
    return code


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings for a command: --config (or the default file), environment, overrides."""
    return Settings.load(args.config, **overrides)


def _one_line(error: BaseException, settings: Settings) -> str:
    """An exception as one line, with any secret (a URL's password, say) redacted."""
    first = (str(error).splitlines() or [""])[0].strip() or type(error).__name__
    return RedactSecrets(settings.secrets().values()).redact(first)


# serve ---------------------------------------------------------------------------------------


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
    return asyncio.run(_run_server(settings))


async def _run_server(settings: Settings) -> int:
    # Imported here: the service stack (SQLAlchemy engine, routes) is not needed by
    # `--help` or by a refused configuration.
    from aiohttp import web

    from bountybot.app import AccessLogger, create_app

    # The handlers go in first, so that a signal during startup still means a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError):  # no loop signal handlers on Windows
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(settings), access_log_class=AccessLogger)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        try:
            await site.start()
        except OSError as e:
            raise CommandError(
                f"cannot listen on {settings.server.host}:{settings.server.port}: "
                f"{e.strerror or e}"
            ) from None
        log.info(start_line(settings, runner.addresses[0][1]))
        await stop.wait()
        event(log, "server.stopping")
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()  # runs cleanup_ctx: the engine is disposed
    event(log, "server.stopped")
    return 0


def start_line(settings: Settings, port: int) -> str:
    """The one line that tells an operator what is running, with no secret in it."""
    host = settings.server.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    forges = ", ".join(settings.forges_enabled()) or (
        f"none (set {env_name('github', 'webhook_secret')} and {env_name('github', 'token')}, "
        f"or {env_name('gitlab', 'webhook_secret')} and {env_name('gitlab', 'token')})"
    )
    config = settings.config_file or "built-in defaults"
    return (
        f"bountybot {__version__} listening on {url} — database "
        f"{settings.database.display_url()}, forges: {forges}, "
        f"payments: {settings.payments.provider}, config: {config}"
    )


# database ------------------------------------------------------------------------------------


def _database_error(settings: Settings, doing: str, error: Exception) -> CommandError:
    log.debug("database error", exc_info=True)  # the whole story, for whoever turns DEBUG on
    return CommandError(
        f"cannot {doing} the database {settings.database.display_url()}: "
        f"{_one_line(error, settings)}"
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
    except Exception as e:  # driver errors vary (SQLAlchemy, asyncpg, OSError): one line each
        raise _database_error(settings, "open", e) from None
    _require_head(settings)


def _require_head(settings: Settings) -> None:
    """Refuse (exit 2) a database whose schema is not the one this code was written for."""
    from bountybot.storage import migrate

    try:
        current, head = migrate.current(settings.database.url), migrate.head()
    except Exception as e:
        raise _database_error(settings, "open", e) from None
    if current != head:
        raise CommandError(
            f"the database {settings.database.display_url()} is at revision "
            f"{current or 'none'}, this bountybot needs {head}: run `bountybot db upgrade`",
            code=2,
        )


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from bountybot.storage import migrate

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    url = settings.database.url
    try:
        before = migrate.current(url)
        migrate.upgrade(url)
        after = migrate.current(url)
    except Exception as e:
        raise _database_error(settings, "upgrade", e) from None
    if before == after:
        print(f"database {settings.database.display_url()} is at revision {after} (head)")
    else:
        print(
            f"database {settings.database.display_url()} upgraded from revision "
            f"{before or 'none'} to {after} (head)"
        )
    return 0


# audit ---------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    from sqlalchemy.exc import SQLAlchemyError

    from bountybot.ledger.audit import AuditReport, run_audit
    from bountybot.storage.engine import create_engine, create_sessionmaker

    _require_head(settings)

    async def audit() -> AuditReport:
        engine = create_engine(settings.database.url)
        try:
            return await run_audit(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(audit())
    except (SQLAlchemyError, OSError) as e:
        raise _database_error(settings, "audit", e) from None
    print(report.render())
    return 0 if report.ok else 1


# not yet -------------------------------------------------------------------------------------


def cmd_coming(args: argparse.Namespace) -> int:
    print(
        f"bountybot {args.command}: not available yet: arrives with {COMING[args.command]}",
        file=sys.stderr,
    )
    return 2
