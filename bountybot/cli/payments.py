"""The money's commands: `bountybot payouts` (`mark-paid`), `bountybot pledges`
(`confirm`), `bountybot payments` (`retry`), and the forge writes' `bountybot outbox` (`retry`).
"""

from __future__ import annotations

import argparse
import sys

from bountybot.cli.common import CommandError, _with_books, load_settings
from bountybot.logs import log_level, setup_logging


def cmd_payouts(args: argparse.Namespace) -> int:
    from bountybot.operator.payouts import PayoutError, due_payouts, mark_paid

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
    from bountybot.operator.pledges import PledgeError, confirm_pledges, pending_pledges

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


def cmd_outbox(args: argparse.Namespace) -> int:
    from bountybot.operator.outbox import list_messages, retry_dead

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
