"""The `bountybot` command line: serve, db upgrade, audit, export and the books' other commands.

Every command returns an exit code: 0 done, 1 failed (the audit found problems, the database
is unreachable), 2 refused (bad usage, bad configuration), 141 when the reader of stdout went
away (`bountybot export | head`; see `common.SIGPIPE_EXIT`). A refusal is one
line on stderr that says what to do; no traceback for a mistake an operator can fix.

Here: the parser and `main()`. Each command group's code is a module beside this one (`serve`,
`books`, `backup`, `payments`, `deliveries`, `repos`, `sync`, `demo`), what they share is
`common`, and the work on the books they print is `bountybot.operator`'s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bountybot import __version__
from bountybot.cli.backup import cmd_export_or_dump, cmd_import
from bountybot.cli.books import cmd_audit, cmd_statement
from bountybot.cli.common import CommandError, _stdout_closed
from bountybot.cli.deliveries import cmd_deliveries
from bountybot.cli.demo import DEMO, cmd_demo
from bountybot.cli.payments import cmd_outbox, cmd_payments, cmd_payouts, cmd_pledges
from bountybot.cli.repos import cmd_repos
from bountybot.cli.serve import cmd_db_upgrade, cmd_serve
from bountybot.cli.sync import cmd_sync
from bountybot.config import ConfigError
from bountybot.forges.registry import names as forge_names


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
    serve.add_argument("--role", choices=("all", "web", "worker"), default="all",
                       help="all (default): everything in one process; web: the webhooks,"
                            " pages and API only; worker: the delivery worker, outbox, payments"
                            " and scheduler only, its port for /healthz and /metrics (several"
                            " of each may share one PostgreSQL)")
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
    export.add_argument("--full", action="store_true",
                        help="every row a restore needs, for `bountybot import` (JSON)")
    export.set_defaults(run=cmd_export_or_dump)

    load = _command(commands, "import", "load an `export --full` into an empty database",
                    "Load a full dump (`bountybot export --full`) into an empty, migrated"
                    " database, in one transaction, then audit it.", parents=[config])
    load.add_argument("file", metavar="FILE", help="the dump to load (`-`: stdin)")
    load.set_defaults(run=cmd_import)

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


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
