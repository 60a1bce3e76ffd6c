"""`bountybot demo`: the command line's side of it; the demo itself is `bountybot.demo`."""

from __future__ import annotations

import argparse
import asyncio
import logging

from bountybot.cli.common import CommandError

# What `bountybot demo --help` says.
DEMO = (
    "Play a few bounties (funded, claimed, paid on a merge, refunded) through the real service"
    " on a fresh SQLite file, with a built-in stand-in forge and nothing to set up, then serve"
    " the public pages and print their addresses, until Ctrl-C. No account, no configuration"
    " file, no network."
)


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
