"""Logging for operators: one readable line per event, with configured secrets redacted.

A line reads `2026-11-23T10:00:00Z INFO pledge.recorded task=3 backer=alice amount=€20.00`:
UTC time, level, a dotted event name, then `key=value` fields. Log an event with
`event(log, "pledge.recorded", task=3, backer="alice")`; a plain `log.info("text %s", x)` works
too and prints as it reads.

The redacting filter sits on the handler, not on a logger, so it sees every record that
reaches the output, whichever library logged it. Code must not log secrets in the first place;
the filter is defence in depth for the day something does (an exception quoting a URL, say).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from bountybot.config import LOG_LEVEL_ENV, ConfigError, Settings

REDACTED = "***"
_FIELDS = "bountybot_fields"  # the LogRecord attribute that carries an event's key=values
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def event(
    logger: logging.Logger, name: str, level: int = logging.INFO, /, **fields: Any
) -> None:
    """Log the event `name` (`pledge.recorded`) with its fields, printed as `key=value`.

    Positional-only, so that a field may itself be called `name` or `level`."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields}, stacklevel=2)


def _format_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        # Quoted so that `title="Fix the parser"` still reads as one field.
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LineFormatter(logging.Formatter):
    """`<UTC time>Z <LEVEL> <message> key=value ...`, tracebacks on the following lines."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        line = f"{record.asctime} {record.levelname} {record.message}"
        fields = getattr(record, _FIELDS, None)
        if fields:
            line += " " + " ".join(f"{k}={_format_value(v)}" for k, v in fields.items())
        return line

    def usesTime(self) -> bool:  # noqa: N802
        return True


class RedactSecrets(logging.Filter):
    """Replaces every configured secret value in a record (message, fields, traceback)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        # Render now and drop the args, so that what the formatter prints is what we checked.
        record.msg = self.redact(record.getMessage())
        record.args = None
        fields = getattr(record, _FIELDS, None)
        if fields:
            setattr(record, _FIELDS, {k: self.redact(str(v)) for k, v in fields.items()})
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def log_level(environ: dict[str, str] | None = None) -> int:
    """The level named by `BOUNTYBOT_LOG_LEVEL` (default INFO)."""
    name = (os.environ if environ is None else environ).get(LOG_LEVEL_ENV, "").strip().upper()
    if not name:
        return logging.INFO
    if name == "WARN":
        name = "WARNING"
    if name not in _LEVELS:
        raise ConfigError(f"{LOG_LEVEL_ENV}: unknown level {name!r} (one of {', '.join(_LEVELS)})")
    return logging.getLevelNamesMapping()[name]


def setup_logging(
    settings: Settings | None = None,
    *,
    level: int | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send all logging to `stream` (stderr) as readable lines, redacting `settings`' secrets.

    Calling it again (once the settings are known, say) replaces the handler it installed.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_bountybot", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._bountybot = True  # type: ignore[attr-defined]
    handler.setFormatter(LineFormatter())
    if settings is not None:
        handler.addFilter(RedactSecrets(settings.secrets().values()))
    root.addHandler(handler)
    root.setLevel(log_level() if level is None else level)
    # Alembic narrates every migration step at INFO ("Context impl SQLiteImpl."); our own
    # commands say what they did in one line, so its story is for debugging only.
    logging.getLogger("alembic").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    )
    return handler
