"""`bountybot sync`: apply what the webhooks missed, read from the forges."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bountybot.cli.common import CommandError, _with_books, load_settings
from bountybot.config import Settings
from bountybot.forges.registry import how_to_turn_on
from bountybot.logs import RedactSecrets, log_level, setup_logging


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
