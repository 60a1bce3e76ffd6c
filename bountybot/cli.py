"""The `bountybot` command line: serve, db upgrade, audit, export and the books' other commands.

Every command returns an exit code: 0 done, 1 failed (the audit found problems, the database
is unreachable), 2 refused (bad usage, bad configuration), 141 when the reader of stdout went
away (`bountybot export | head`; see `SIGPIPE_EXIT`). A refusal is one
line on stderr that says what to do; no traceback for a mistake an operator can fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from bountybot import __version__
from bountybot.config import ConfigError, Settings, env_name, unknown_environment
from bountybot.forges.registry import how_to_turn_on
from bountybot.forges.registry import names as forge_names
from bountybot.logs import RedactSecrets, event, flush_suppressed, log_level, setup_logging

log = logging.getLogger("bountybot")

# What `bountybot demo --help` says.
DEMO = (
    "Play a few bounties (funded, claimed, paid on a merge, refunded) through the real service"
    " on a fresh SQLite file, with a built-in stand-in forge and nothing to set up, then serve"
    " the public pages and print their addresses, until Ctrl-C. No account, no configuration"
    " file, no network."
)


class CommandError(Exception):
    """A command failed for a reason worth one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Listing(argparse.HelpFormatter):
    """`bountybot --help`: each command and its description on one line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=18)
        # argparse measures the commands two columns short of where it prints them, so the
        # longest ("deliveries") would go on a line of its own: make room for it.
        self._action_max_length = 16


def _command(group: Any, name: str, summary: str, description: str | None = None,
             **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand: `summary` is its line in the listing of `--help` (one line: keep it under
    60 characters), `description` what its own `--help` says (the summary, by default)."""
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=summary, description=description or summary[:1].upper() + summary[1:] + ".",
        formatter_class=_Listing, **kwargs)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bountybot",
        description="Crowdfund work on GitHub and GitLab issues, with public books.",
        epilog="`bountybot COMMAND --help` says more about each command.",
        formatter_class=_Listing,
    )
    parser.add_argument("--version", action="version", version=f"bountybot {__version__}")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config", metavar="PATH",
        help="TOML configuration file (default: $BOUNTYBOT_CONFIG, else config/bountybot.toml "
        "if present, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = _command(commands, "serve", "run the service: webhooks, workers, API, pages",
                     "Run the HTTP service: the webhook endpoints, the delivery and outbox"
                     " workers, the scheduler, the JSON API and the public pages.",
                     parents=[config])
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (server.port)")
    serve.set_defaults(run=cmd_serve)

    db = _command(commands, "db", "database maintenance (`db upgrade`)",
                  "Database maintenance.")
    db.set_defaults(run=lambda _args: _usage(db))
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    upgrade = _command(db_commands, "upgrade", "apply the database migrations",
                       parents=[config])
    upgrade.set_defaults(run=cmd_db_upgrade)

    audit = _command(commands, "audit", "check every invariant of the books",
                     "Check every invariant of the books (exit 1 if one fails).",
                     parents=[config])
    audit.add_argument("--provider", action="store_true",
                       help="also compare the books with the payment provider's records (Stripe)")
    audit.set_defaults(run=cmd_audit)

    export = _command(commands, "export", "write all the books out, as JSON or CSV",
                      "Export everything: repos, tasks, ledger, audit trail (JSON), or the"
                      " ledger (CSV), to stdout or a file.", parents=[config])
    export.add_argument("--format", choices=["json", "csv"], default="json")
    export.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    export.set_defaults(run=cmd_export)

    payouts = _command(commands, "payouts", "list the payouts due; mark one paid",
                       parents=[config])
    payouts.set_defaults(run=cmd_payouts, payouts_command=None)
    payout_commands = payouts.add_subparsers(dest="payouts_command", metavar="PAYOUTS_COMMAND")
    # `--config` may come before or after `mark-paid`; here it must not reset the first.
    config_again = argparse.ArgumentParser(add_help=False)
    config_again.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                              help="TOML configuration file")
    paid = _command(payout_commands, "mark-paid",
                    "record that a payout was paid outside the bot", parents=[config_again])
    paid.add_argument("id", type=int, help="the payout's id (from `bountybot payouts`)")
    paid.add_argument("--reference", required=True,
                      help="what identifies the payment (transfer id, receipt...)")
    paid.set_defaults(run=cmd_payouts)

    pledges = _command(commands, "pledges", "list pending pledges; confirm their money came",
                       "List the pledges waiting for confirmation; confirm that their money"
                       " arrived.", parents=[config])
    pledges.set_defaults(run=cmd_pledges, pledges_command=None)
    pledge_commands = pledges.add_subparsers(dest="pledges_command", metavar="PLEDGES_COMMAND")
    confirm = _command(pledge_commands, "confirm", "confirm that pending pledges' money arrived",
                       "Confirm pending pledges (payments.manual_confirm): their money is in"
                       " escrow.", parents=[config_again])
    confirm.add_argument("ids", type=int, nargs="*", metavar="ID",
                         help="pledge ids (from `bountybot pledges`)")
    confirm.add_argument("--task", type=int, metavar="TASK_ID",
                         help="every pending pledge of this task instead")
    confirm.add_argument("--by", default="operator", metavar="NAME",
                         help="who saw the money arrive, for the audit trail (default: operator)")
    confirm.add_argument("--reference", help="what identifies the payment (transfer id, receipt"
                         "...), kept in the audit trail")
    confirm.set_defaults(run=cmd_pledges)

    statement = _command(commands, "statement", "one person's money movements, with totals",
                         "Every movement of one backer's or developer's money, with totals.",
                         parents=[config])
    statement.add_argument("role", choices=["backer", "developer"])
    statement.add_argument("login", help="the person's login on the forge")
    statement.add_argument("--forge", choices=forge_names(), default=forge_names()[0])
    statement.set_defaults(run=cmd_statement)

    outbox = _command(commands, "outbox", "list forge writes waiting or dead; retry them",
                      "List the forge writes waiting or parked as dead; retry dead ones.",
                      parents=[config])
    outbox.add_argument("--state", choices=["pending", "sent", "dead", "skipped", "all"],
                        default=None, help="which messages to list (default: pending and dead)")
    outbox.set_defaults(run=cmd_outbox, outbox_command=None)
    outbox_commands = outbox.add_subparsers(dest="outbox_command", metavar="OUTBOX_COMMAND")
    retry = _command(outbox_commands, "retry", "send dead messages again (all, or the ids given)",
                     parents=[config_again])
    retry.add_argument("ids", type=int, nargs="*", metavar="ID",
                       help="ids from `bountybot outbox` (default: every dead message)")
    retry.set_defaults(run=cmd_outbox)

    deliveries = _command(commands, "deliveries", "list webhook deliveries waiting or failed",
                          "List the webhook deliveries waiting or failed; apply failed ones"
                          " again, or give up on pending ones.", parents=[config])
    deliveries.add_argument("--state", choices=["pending", "failed", "handled", "all"],
                            default=None,
                            help="which deliveries to list (default: pending and failed)")
    deliveries.set_defaults(run=cmd_deliveries, deliveries_command=None)
    delivery_commands = deliveries.add_subparsers(dest="deliveries_command",
                                                  metavar="DELIVERIES_COMMAND")
    again = _command(delivery_commands, "retry", "apply failed deliveries again",
                     "Apply failed deliveries again, their tries reset (the ids given, or"
                     " --failed).", parents=[config_again])
    again.add_argument("ids", type=int, nargs="*", metavar="ID",
                       help="ids from `bountybot deliveries`")
    again.add_argument("--failed", action="store_true", help="every failed delivery")
    again.set_defaults(run=cmd_deliveries)
    give_up = _command(delivery_commands, "fail", "give up on pending deliveries",
                       "Give up on pending deliveries: they are marked failed and never"
                       " applied.", parents=[config_again])
    give_up.add_argument("ids", type=int, nargs="+", metavar="ID",
                         help="ids from `bountybot deliveries`")
    give_up.add_argument("--why", metavar="TEXT", help="the reason, kept on the delivery")
    give_up.set_defaults(run=cmd_deliveries)

    payments = _command(commands, "payments", "list Stripe calls not done; retry dead ones",
                        "List the calls to the payment provider (Stripe) not done; retry dead"
                        " ones.", parents=[config])
    payments.add_argument("--state", choices=["pending", "waiting", "unknown", "done", "failed",
                                                    "dead", "all"],
                          default=None, help="which operations to list (default: all but done)")
    payments.set_defaults(run=cmd_payments, payments_command=None)
    payments_commands = payments.add_subparsers(dest="payments_command",
                                                metavar="PAYMENTS_COMMAND")
    revive = _command(payments_commands, "retry", "give dead operations another round",
                      "Give dead operations another round, same idempotency key (all, or the"
                      " ids given).", parents=[config_again])
    revive.add_argument("ids", type=int, nargs="*", metavar="ID",
                        help="ids from `bountybot payments` (default: every dead operation)")
    revive.set_defaults(run=cmd_payments)

    sync = _command(commands, "sync", "apply what the webhooks missed, read from forges",
                    "Read what changed on the forges and apply what the webhooks missed.",
                    parents=[config])
    sync.add_argument("--repo", metavar="PATH",
                      help="only this repo (owner/name, or a GitLab project's full path)")
    sync.set_defaults(run=cmd_sync)

    repos = _command(commands, "repos", "list the repos known; publish a private one's data",
                     "List the repos known, and whether their data is public; publish a"
                     " private one's.", parents=[config])
    repos.set_defaults(run=cmd_repos, repos_command=None)
    repo_commands = repos.add_subparsers(dest="repos_command", metavar="REPOS_COMMAND")
    for verb, says, more in (
            ("publish", "show a private repo's data on the public pages and API",
             "Show a private repo's tasks, people and amounts on the public pages, badges,"
             " feeds and API, for its maintainers."),
            ("unpublish", "keep a private repo's data off the public pages and API",
             "Keep a private repo's data off the public pages, badges, feeds and API again.")):
        sub = _command(repo_commands, verb, says, more, parents=[config_again])
        sub.add_argument("forge", choices=forge_names())
        sub.add_argument("path", metavar="PATH",
                         help="the repo's full path (owner/name), or its id from `bountybot repos`")
        sub.set_defaults(run=cmd_repos)

    demo = _command(commands, "demo", "play a few bounties on a stand-in forge; show the pages",
                    DEMO)
    demo.add_argument("--port", type=int, default=8080,
                      help="port to serve the pages on, on 127.0.0.1 (default: 8080)")
    demo.add_argument("--database", metavar="PATH",
                      help="a new SQLite file to write (default: one in a new temporary"
                      " directory); a file that holds anything is refused")
    demo.set_defaults(run=cmd_demo)
    parser.set_defaults(run=lambda _args: _usage(parser))
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
        # What print() left in the buffer goes now, so a closed pipe shows up here.
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed()
    except ConfigError as e:
        print(f"bountybot: {e}", file=sys.stderr)
        return 2
    except CommandError as e:
        print(f"bountybot: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:  # Ctrl-C before serve's own handlers are in place
        return 130
    return code


# `bountybot export | head`: the reader took what it wanted and closed the pipe. That is no
# failure of ours, and Unix tools end quietly there: killed by SIGPIPE, which the shell reports
# as 141 (128 + 13). Python ignores SIGPIPE and raises BrokenPipeError instead; we end with
# that same 141 rather than 0, so a script under `set -o pipefail` still learns that the
# export (or listing) was cut short, as it would from `cat` or `yes`. No traceback, no message.
SIGPIPE_EXIT = 128 + int(signal.SIGPIPE) if hasattr(signal, "SIGPIPE") else 1


def _stdout_closed() -> int:
    """End quietly after the reader of stdout went away (see `SIGPIPE_EXIT`)."""
    # What is still buffered for stdout cannot be written: point the descriptor at /dev/null,
    # or the interpreter's last flush at exit prints "Exception ignored ... BrokenPipeError".
    with contextlib.suppress(OSError, ValueError):  # a stdout with no descriptor (tests)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return SIGPIPE_EXIT


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
    import gc

    from aiohttp import web

    from bountybot.app import AccessLogger, create_app
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
    app = create_app(settings)
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
        log.info(start_line(settings, listener.sockets[0].getsockname()[1]))
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


def start_line(settings: Settings, port: int) -> str:
    """The one line that tells an operator what is running, with no secret in it."""
    host = settings.server.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    forges = ", ".join(settings.forges_enabled()) or f"none (set {how_to_turn_on()})"
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
    except Exception as e:  # noqa: BLE001 - driver errors vary (SQLAlchemy, asyncpg, OSError)
        raise _database_error(settings, "open", e) from None
    _require_head(settings)


def _require_head(settings: Settings) -> None:
    """Refuse (exit 2) a database whose schema is not the one this code was written for."""
    from bountybot.storage import migrate

    try:
        current, head = migrate.current(settings.database.url), migrate.head()
    except Exception as e:  # noqa: BLE001 - driver errors vary: each becomes one line
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


# audit ---------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    from bountybot.storage.books import run_audit

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    report = _with_books(settings, "audit", run_audit)
    print(report.render())
    if not args.provider:
        return 0 if report.ok else 1
    if settings.payments.provider != "stripe" or settings.stripe.api_key is None:
        raise CommandError("audit --provider: the payment provider is not Stripe (set"
                           " payments.provider = stripe and stripe.api_key)", code=2)
    from bountybot.payments.provider_audit import audit_provider
    from bountybot.service import gateway_from_settings

    gateway = gateway_from_settings(settings)
    try:
        against = _with_books(settings, "audit", lambda sm: audit_provider(sm, gateway))
    finally:
        gateway.close()
    print(against.render())
    return 0 if report.ok and against.ok else 1


# commands on the books ------------------------------------------------------------------------


def _with_books(settings: Settings, doing: str, work: Any) -> Any:
    """Run `work(sessionmaker)` on the configured database, at the current schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from bountybot.storage.engine import create_engine, create_sessionmaker

    _require_head(settings)

    async def run() -> Any:
        engine = create_engine(settings.database.url)
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except BrokenPipeError:
        raise  # stdout's reader went away (`export | head`): not the database's fault (main)
    except (SQLAlchemyError, OSError) as e:
        raise _database_error(settings, doing, e) from None


def cmd_export(args: argparse.Namespace) -> int:
    from bountybot.export import export_csv, export_json

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115

    async def write(chunk: bytes) -> None:
        out.write(chunk)

    async def work(sessionmaker: Any) -> None:
        export = export_json if args.format == "json" else export_csv
        # The operator's own books, whole: private repos included.
        await export(sessionmaker, write, locale=settings.bot.locale, public=False)

    try:
        _with_books(settings, "export", work)
    finally:
        out.flush()
        if args.output:
            out.close()
    if args.output:
        print(f"exported the books to {args.output} ({args.format})", file=sys.stderr)
    return 0


def cmd_payouts(args: argparse.Namespace) -> int:
    from bountybot.payouts import PayoutError, due_payouts, mark_paid

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    if args.payouts_command == "mark-paid":
        try:
            amount = _with_books(settings, "mark a payout paid", lambda sm: mark_paid(
                sm, settings, args.id, args.reference))
        except PayoutError as e:
            raise CommandError(f"payouts mark-paid: {e}", code=1) from None
        from bountybot.money import format_money

        print(f"payout {args.id} of {format_money(amount, settings.bot.locale)} marked paid"
              f" (reference {args.reference})")
        return 0
    due = _with_books(settings, "list payouts", due_payouts)
    waiting = _with_books(settings, "list payouts", lambda sm: due_payouts(sm, waiting=True))
    if not due:
        print("no payout is due")
    else:
        print(f"{'id':>6}  {'amount':>14}  {'developer':<21}  task  state")
        for payout in due:
            print(payout.line(settings.bot.locale))
    if waiting:
        print(f"\nnot due yet ({len(waiting)}): released after the merge's waiting period,"
              " unless disputed")
        for payout in waiting:
            print(payout.line(settings.bot.locale))
    return 0


def cmd_pledges(args: argparse.Namespace) -> int:
    from bountybot.money import format_money
    from bountybot.pledges import PledgeError, confirm_pledges, pending_pledges

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    locale = settings.bot.locale
    if args.pledges_command == "confirm":
        if settings.payments.provider != "manual":
            raise CommandError(f"pledges confirm: the {settings.payments.provider} provider"
                               " confirms payments itself; this is for the manual one", code=2)
        if bool(args.ids) == (args.task is not None):
            raise CommandError("pledges confirm: give pledge ids or --task TASK_ID (one of"
                               " the two)", code=2)
        try:
            done = _with_books(settings, "confirm pledges", lambda sm: confirm_pledges(
                sm, settings, args.ids or None, task_id=args.task, who=args.by,
                reference=args.reference))
        except PledgeError as e:
            raise CommandError(f"pledges confirm: {e}", code=1) from None
        for p in done:
            print(f"pledge {p.id} of {format_money(p.amount, locale)} by @{p.backer} on"
                  f" {p.repo}#{p.number} confirmed: held in escrow")
        return 0
    pending = _with_books(settings, "list pledges", pending_pledges)
    if not pending:
        print("no pledge waits for confirmation")
        return 0
    print(f"{'id':>6}  {'amount':>14}  {'backer':<21}  {'since (UTC)':<16}  task")
    for p in pending:
        print(p.line(locale))
    print(f"\n{len(pending)} pending: `bountybot pledges confirm ID` once the money arrived")
    return 0


def cmd_statement(args: argparse.Namespace) -> int:
    from bountybot.statements import UnknownPerson, render, statement

    settings = load_settings(args)
    setup_logging(settings, level=log_level())

    async def work(sessionmaker: Any) -> Any:
        async with sessionmaker() as session:
            return await statement(session, args.forge, args.role, args.login, public=False)

    try:
        result = _with_books(settings, "read a statement", work)
    except UnknownPerson as e:
        raise CommandError(f"statement: {e}", code=1) from None
    print(render(result, settings.bot.locale))
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from bountybot.outbox import list_messages, retry_dead

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    if args.outbox_command == "retry":
        count = _with_books(settings, "retry outbox messages",
                            lambda sm: retry_dead(sm, args.ids or None))
        if args.ids and count < len(args.ids):
            print(f"{len(args.ids) - count} of the ids given are not dead messages",
                  file=sys.stderr)
        print(f"{count} dead message(s) queued again; a running service sends them now")
        return 0 if count or not args.ids else 1
    state = None if args.state in (None, "all") else args.state
    rows = _with_books(settings, "list the outbox", lambda sm: list_messages(sm, state))
    if args.state is None:
        rows = [r for r in rows if r.state in ("pending", "dead")]
    if not rows:
        print("the outbox is empty" if args.state is None else f"no {args.state} message")
        return 0
    print(f"{'id':>6}  {'state':<8} {'kind':<9} {'tries':>5}  {'next try (UTC)':<16}"
          "  where / last error")
    for row in rows:
        where = f"task {row.task_id}" if row.task_id else row.lane
        error = (row.last_error or "").replace("\n", " ")[:80]
        print(f"{row.id:>6}  {row.state:<8} {row.kind:<9} {row.attempts:>5}"
              f"  {row.next_attempt_at:%Y-%m-%d %H:%M}  {where}  {error}")
    dead = sum(1 for r in rows if r.state == "dead")
    if dead:
        print(f"\n{dead} dead: `bountybot outbox retry` sends them again")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def cmd_deliveries(args: argparse.Namespace) -> int:
    from bountybot.clock import utc_now
    from bountybot.deliveries import fail_pending, list_deliveries, retry_failed
    from bountybot.storage.tables import DeliveryState

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    if args.deliveries_command == "retry":
        if bool(args.ids) == args.failed:
            raise CommandError("deliveries retry: give delivery ids or --failed (one of the two)",
                               code=2)
        revived = _with_books(settings, "retry deliveries",
                              lambda sm: retry_failed(sm, args.ids or None))
        if args.ids and len(revived) < len(args.ids):
            print(f"{len(args.ids) - len(revived)} of the ids given are not failed deliveries",
                  file=sys.stderr)
        print(f"{len(revived)} failed delivery(ies) queued again; a running service applies"
              " them within seconds, in order with the others about the same issue")
        return 0 if revived or not args.ids else 1
    if args.deliveries_command == "fail":
        failed = _with_books(settings, "fail deliveries",
                             lambda sm: fail_pending(sm, args.ids, args.why))
        if len(failed) < len(args.ids):
            print(f"{len(args.ids) - len(failed)} of the ids given are not pending deliveries",
                  file=sys.stderr)
        print(f"{len(failed)} pending delivery(ies) marked failed; they will not be applied"
              " (`bountybot deliveries retry ID` to change that)")
        return 0 if failed else 1
    states = (frozenset(DeliveryState) if args.state == "all"
              else {DeliveryState(args.state)} if args.state
              else {DeliveryState.PENDING, DeliveryState.FAILED})
    rows = _with_books(settings, "list deliveries", lambda sm: list_deliveries(sm, states))
    if not rows:
        print("no delivery waits or failed" if args.state is None
              else f"no {args.state} delivery")
        return 0
    redact = RedactSecrets(settings.secrets().values()).redact
    now = utc_now()
    print(f"{'id':>8}  {'state':<8} {'forge':<7} {'kind':<16} {'tries':>5} {'age':>5}"
          "  topic / last error")
    for row in rows:
        age = _age((now - row.received_at).total_seconds())
        error = redact(row.error_line)
        print(f"{row.id:>8}  {row.state:<8} {row.forge:<7} {row.kind:<16} {row.attempts:>5}"
              f" {age:>5}  {row.topic or '-'}" + (f"  {error}" if error else ""))
    failed_count = sum(1 for r in rows if r.state == DeliveryState.FAILED)
    if failed_count:
        print(f"\n{failed_count} failed: `bountybot deliveries retry --failed` applies them"
              " again")
    return 0


def cmd_payments(args: argparse.Namespace) -> int:
    from bountybot.payments.backlog import (
        RetryRefused,
        error_line,
        list_ops,
        provider_ids,
        retry_dead,
        target,
    )
    from bountybot.storage.tables import PaymentOpState

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    if args.payments_command == "retry":
        try:
            retried = _with_books(settings, "retry payment operations",
                                  lambda sm: retry_dead(sm, args.ids or None))
        except RetryRefused as e:
            for problem in e.problems:
                print(f"bountybot: payments retry: {problem}", file=sys.stderr)
            print("nothing was retried", file=sys.stderr)
            return 1
        for problem in retried.refused:
            print(f"not retried: {problem}", file=sys.stderr)
        for op in retried.revived:
            print(f"payment operation {op.id} ({op.kind}, {target(op)}) queued again under"
                  f" {op.idempotency_key}")
        print(f"{len(retried.revived)} dead operation(s) queued again; the worker first asks"
              " Stripe what their earlier tries did, then sends only what was not done")
        return 0
    if args.state == "all":
        states = None
    elif args.state is not None:
        states = frozenset({PaymentOpState(args.state)})
    else:
        states = frozenset(PaymentOpState) - {PaymentOpState.DONE}
    rows = _with_books(settings, "list payment operations", lambda sm: list_ops(sm, states))
    if not rows:
        print("no payment operation" if args.state in (None, "all")
              else f"no {args.state} payment operation")
        return 0
    secrets = tuple(settings.secrets().values())
    print(f"{'id':>6}  {'state':<8} {'kind':<9} {'tries':>5}  {'next try (UTC)':<16}"
          "  for / provider ids / last error")
    for op in rows:
        settled = op.state in (PaymentOpState.DONE, PaymentOpState.FAILED, PaymentOpState.DEAD)
        when = "-" if settled else f"{op.next_attempt_at:%Y-%m-%d %H:%M}"
        ids = " ".join(provider_ids(op))
        error = error_line(op, secrets)
        print(f"{op.id:>6}  {op.state:<8} {op.kind:<9} {op.attempts:>5}  {when:<16}"
              f"  {target(op)}" + (f"  {ids}" if ids else "") + (f"  {error}" if error else ""))
    dead = sum(1 for op in rows if op.state == PaymentOpState.DEAD)
    if dead:
        print(f"\n{dead} dead: `bountybot payments retry` gives them another round")
    return 0


# repos ---------------------------------------------------------------------------------------


def cmd_repos(args: argparse.Namespace) -> int:
    from bountybot.repos import HEADER, RepoError, list_repos, set_published

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    if args.repos_command in ("publish", "unpublish"):
        publish = args.repos_command == "publish"
        try:
            repo, changed = _with_books(settings, f"{args.repos_command} a repo",
                                        lambda sm: set_published(sm, args.forge, args.path,
                                                                 publish))
        except RepoError as e:
            raise CommandError(f"repos {args.repos_command}: {e}") from None
        name = f"{repo.forge} {repo.path}"
        if publish:
            print(f"{name}: its tasks, people and amounts are public now"
                  if changed else f"{name} is published already")
        elif not repo.private:
            print(f"{name} is a public repo: its data stays public")
        else:
            print(f"{name}: its data is off the public pages, badges, feeds and API now"
                  if changed else f"{name} is not published")
        return 0
    rows = _with_books(settings, "list repos", list_repos)
    if not rows:
        print("no repo is known yet")
        return 0
    print(HEADER)
    for row in rows:
        print(row.line())
    hidden = sum(1 for row in rows if not row.public)
    if hidden:
        print(f"\n{hidden} private repo(s) hidden from the public pages, badges, feeds and API:"
              " `bountybot repos publish FORGE PATH` shows one's data")
    return 0


# sync ----------------------------------------------------------------------------------------


def cmd_sync(args: argparse.Namespace) -> int:
    """Reconcile now: each repo's changes are queued in the inbox, then handled here."""
    from bountybot.reconcile import UnknownRepo

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    if not settings.forges_enabled():
        raise CommandError(f"sync: no forge is on: set {how_to_turn_on()}", code=2)
    redact = RedactSecrets(settings.secrets().values()).redact
    try:
        report, handled = _with_books(settings, "sync", lambda sm: _sync(sm, settings, args.repo,
                                                                          redact))
    except UnknownRepo as e:
        raise CommandError(f"sync: {e}") from None
    print(redact(f"synced {report.total()}; {handled} deliveries handled"
                 " (the service sends the forge writes they queued)"))
    return 1 if report.failed else 0


async def _sync(sessionmaker: Any, settings: Settings, repo: str | None,
                redact: Any) -> tuple[Any, int]:
    from bountybot.inbox import DeliveryWorker
    from bountybot.reconcile import Reconciler, RepoSync
    from bountybot.service import forge_clients

    def progress(result: RepoSync) -> None:
        print(redact(result.line()), file=sys.stderr if result.error else sys.stdout,
              flush=True)

    clients = forge_clients(settings)
    try:
        report = await Reconciler(sessionmaker, settings, clients).run_once(repo,
                                                                            progress=progress)
        # What was queued is handled here, in order with anything else waiting; a running
        # service's workers may take part of it (the inbox hands each delivery to one).
        worker = DeliveryWorker(sessionmaker, settings, clients)
        handled = 0
        while done := await worker.run_once():
            handled += done
    finally:
        for client in clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                await close()
    return report, handled


# demo ----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from bountybot.demo import DemoError, run

    if not 0 <= args.port <= 65535:
        raise CommandError(f"demo: --port {args.port} is not a port (0 to 65535)", code=2)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(args.database, args.port, say=lambda line: print(line,
                                                                                flush=True)))
    except DemoError as e:
        raise CommandError(f"demo: {e}", code=2) from None
