"""`bountybot deliveries`: the webhook deliveries waiting or failed; `retry`, `fail`."""

from __future__ import annotations

import argparse
import sys

from bountybot.cli.common import CommandError, _with_books, load_settings
from bountybot.logs import RedactSecrets, log_level, setup_logging


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def cmd_deliveries(args: argparse.Namespace) -> int:
    from bountybot.clock import utc_now
    from bountybot.operator.deliveries import fail_pending, list_deliveries, retry_failed
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
