"""What the commands share: the refusal (`CommandError`), the settings, the books'
database and its errors, and the quiet end when stdout's reader goes away (`SIGPIPE_EXIT`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from bountybot.config import Settings
from bountybot.logs import RedactSecrets

log = logging.getLogger("bountybot")


class CommandError(Exception):
    """A command failed for a reason worth one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings for a command: --config (or the default file), environment, overrides."""
    return Settings.load(args.config, **overrides)


def _one_line(error: BaseException, settings: Settings) -> str:
    """An exception as one line, with any secret (a URL's password, say) redacted."""
    first = (str(error).splitlines() or [""])[0].strip() or type(error).__name__
    return RedactSecrets(settings.secrets().values()).redact(first)


def _database_error(settings: Settings, doing: str, error: Exception) -> CommandError:
    log.debug("database error", exc_info=True)  # the whole story, for whoever turns DEBUG on
    return CommandError(
        f"cannot {doing} the database {settings.database.display_url()}: "
        f"{_one_line(error, settings)}"
    )


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
