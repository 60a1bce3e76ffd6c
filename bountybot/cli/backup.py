"""Backup and restore through a file: `bountybot export --full` writes the dump, `bountybot import`
loads it into an empty database and audits the result (`bountybot.storage.dump`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from bountybot.cli.books import cmd_export
from bountybot.cli.common import CommandError, _with_books, load_settings
from bountybot.logs import log_level, setup_logging


def _say(line: str) -> None:
    """Progress, on stderr: stdout may be the dump itself."""
    print(f"  {line}", file=sys.stderr, flush=True)


def cmd_export_or_dump(args: argparse.Namespace) -> int:
    """`bountybot export`: the public-shaped export, or with `--full` the dump for a restore."""
    if not args.full:
        return cmd_export(args)
    if args.format != "json":
        raise CommandError("export --full writes JSON only: leave out --format csv", code=2)
    from bountybot.storage.dump import DumpError, dump

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    # A file is written beside its name and renamed at the end: a dump that failed halfway
    # never sits under the name of a good one.
    target = Path(args.output) if args.output else None
    partial = target.with_name(target.name + ".partial") if target else None
    out: BinaryIO = open(partial, "wb") if partial else sys.stdout.buffer  # noqa: SIM115

    async def write(chunk: bytes) -> None:
        out.write(chunk)

    async def work(sessionmaker: Any) -> dict[str, int]:
        return await dump(sessionmaker.kw["bind"], write, progress=_say)

    print("dumping the books:", file=sys.stderr)
    try:
        counts = _with_books(settings, "dump", work)
        out.flush()
    except BaseException as e:
        if partial:
            out.close()
            partial.unlink(missing_ok=True)
        if isinstance(e, DumpError):
            raise CommandError(f"export --full: {e}") from None
        raise
    if target and partial:
        out.close()
        os.replace(partial, target)
    print(f"dumped {sum(counts.values())} row(s) of {len(counts)} tables"
          f"{f' to {target}' if target else ''}; `bountybot import` restores them",
          file=sys.stderr)
    return 0


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as e:
        raise CommandError(f"import: cannot read {name}: {e.strerror or e}", code=2) from None


def cmd_import(args: argparse.Namespace) -> int:
    """`bountybot import FILE`: the dump into this (empty, migrated) database, then the audit."""
    from bountybot.storage.books import run_audit
    from bountybot.storage.dump import DumpError, import_dump, read_dump

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    try:
        loaded = read_dump(_read(args.file))
    except DumpError as e:
        raise CommandError(f"import {args.file}: {e}; nothing was imported") from None
    print(f"importing {args.file} (written {loaded.generated_at}, schema {loaded.schema}) into"
          f" {settings.database.display_url()}:", file=sys.stderr)

    async def work(sessionmaker: Any) -> Any:
        await import_dump(sessionmaker.kw["bind"], loaded, progress=_say)
        return await run_audit(sessionmaker)

    try:
        report = _with_books(settings, "import into", work)
    except DumpError as e:
        raise CommandError(f"import {args.file}: {e}; nothing was imported") from None
    counts = loaded.counts()
    print(f"imported {sum(counts.values())} row(s) of {len(counts)} tables from {args.file}")
    print(report.render())
    return 0 if report.ok else 1
