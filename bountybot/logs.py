"""Logging for operators: one readable line per event, with configured secrets redacted.

A line reads `2026-11-23T10:00:00Z INFO pledge.recorded task=3 backer=alice amount=€20.00`:
UTC time, level, a dotted event name, then `key=value` fields. Log an event with
`event(log, "pledge.recorded", task=3, backer="alice")`; a plain `log.info("text %s", x)` works
too and prints as it reads.

The redacting filter sits on the handler, not on a logger, so it sees every record that
reaches the output, whichever library logged it. Code must not log secrets in the first place;
the filter is defence in depth for the day something does (an exception quoting a URL, say).
So does the repeat limit: the same event (logger, message template, level) is written at most
`REPEAT_BURST` times per `REPEAT_SECONDS`, then one `log.suppressed` line says how many were
left out, so that a flood of refused requests costs a few lines instead of the disk.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from bountybot.config import LOG_LEVEL_ENV, ConfigError, Settings

REDACTED = "***"
_FIELDS = "bountybot_fields"  # the LogRecord attribute that carries an event's key=values
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SUMMARY = "bountybot_summary"  # marks the `log.suppressed` records the repeat limit writes
# A burst of 20 lets a real incident tell its story; past that, a line a minute per event.
REPEAT_BURST = 20
REPEAT_SECONDS = 60.0


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

    # logging.Formatter's signature: the format is fixed, `datefmt` is not read.
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802, ARG002
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


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


EventKey = tuple[str, str, int]


class RepeatLimit(logging.Filter):
    """Lets the same event (logger name, message template, level) through at most `burst` times
    per `seconds`; the rest are dropped and counted. The first record of an event after its
    window (or any record once a window has passed, for events that went quiet) brings one
    `log.suppressed event=<template> count=<n> seconds=<window>` line first, at the event's
    level, so the log says a flood happened and how big it was.

    The key is the template (`record.msg`), not the rendered line: a flood of
    `webhook.bad_signature` from a thousand addresses is one event. It must sit before
    `RedactSecrets`, which renders the message into `msg`. Thread-safe: the database driver and
    the forge library log from their threads.
    """

    def __init__(self, handler: logging.Handler, *, burst: int = REPEAT_BURST,
                 seconds: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic,
                 max_events: int = 10_000) -> None:
        super().__init__()
        self.handler = handler
        self.burst = burst
        self.seconds = seconds
        self.clock = clock
        # Bounds the memory a stream of always-different messages (f-strings) could take:
        # past it, new events pass unlimited until the next sweep frees expired windows.
        self.max_events = max_events
        self._windows: dict[EventKey, _Window] = {}
        self._lock = threading.Lock()
        self._swept = clock()

    @staticmethod
    def key(record: logging.LogRecord) -> EventKey:
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        return record.name, template, record.levelno

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        key = self.key(record)
        now = self.clock()
        summaries: list[tuple[EventKey, _Window]] = []
        with self._lock:
            if now - self._swept >= self.seconds:
                self._swept = now
                for old_key, old in list(self._windows.items()):
                    if now - old.start >= self.seconds:
                        del self._windows[old_key]
                        if old.suppressed:
                            summaries.append((old_key, old))
            window = self._windows.get(key)
            if window is not None and now - window.start >= self.seconds:
                del self._windows[key]
                if window.suppressed:
                    summaries.append((key, window))
                window = None
            if window is None and len(self._windows) < self.max_events:
                window = self._windows[key] = _Window(now)
            allowed = window is None or window.passed < self.burst
            if window is not None:
                if allowed:
                    window.passed += 1
                else:
                    window.suppressed += 1
        # Written outside the lock: the handler's own filters run again on these records.
        for (name, template, level), old in summaries:
            self.handler.handle(self._summary(name, template, level, old.suppressed))
        return allowed

    def flush(self) -> None:
        """Write the pending `log.suppressed` lines now (at shutdown)."""
        with self._lock:
            pending = [(k, w) for k, w in self._windows.items() if w.suppressed]
            self._windows.clear()
        for (name, template, level), window in pending:
            self.handler.handle(self._summary(name, template, level, window.suppressed))

    def _summary(self, name: str, template: str, level: int, count: int) -> logging.LogRecord:
        return logging.getLogger(name).makeRecord(
            name, level, __file__, 0, "log.suppressed", (), None,
            extra={_FIELDS: {"event": template, "count": count,
                             "seconds": f"{self.seconds:g}"}, _SUMMARY: True})


def flush_suppressed() -> None:
    """Write what the repeat limits of our handlers still hold back (at shutdown), so that a
    flood's last `log.suppressed` line is not lost with the process."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_bountybot", False):
            for f in handler.filters:
                if isinstance(f, RepeatLimit):
                    f.flush()


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
        for f in old.filters:
            if isinstance(f, RepeatLimit):
                f.flush()
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._bountybot = True  # type: ignore[attr-defined]
    handler.setFormatter(LineFormatter())
    # First: it keys on the message template, which the redaction renders away.
    handler.addFilter(RepeatLimit(handler))
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
