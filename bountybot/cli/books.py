"""Reading the books: `bountybot audit`, `bountybot export` and `bountybot statement`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bountybot.cli.common import CommandError, _with_books, load_settings
from bountybot.logs import log_level, setup_logging


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
