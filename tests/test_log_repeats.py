"""The repeat limit on log lines: a flood of one event costs a few lines and one count."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest

from bountybot.config import Settings
from bountybot.logs import RepeatLimit, event, setup_logging

from clocks import Ticks

TOKEN = "ghp_RepeatLimitToken4242"


Logged = tuple[logging.Logger, io.StringIO, Ticks, RepeatLimit]


@pytest.fixture
def logged() -> Iterator[Logged]:
    """A logger whose lines go to a string through a repeat limit of 3 per 10 s."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    clock = Ticks()
    limit = RepeatLimit(handler, burst=3, seconds=10, clock=clock)
    handler.addFilter(limit)
    logger = logging.getLogger("bountybot.test.repeats")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out, clock, limit
    logger.removeHandler(handler)
    logger.propagate = True


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_an_event_passes_a_burst_then_one_line_counts_the_rest(logged: Logged) -> None:
    logger, out, clock, _ = logged
    for n in range(1000):
        event(logger, "webhook.bad_signature", logging.WARNING, remote=f"10.0.0.{n % 250}")
    assert lines(out) == ["webhook.bad_signature"] * 3
    clock.now += 10  # the window is over: the next one brings the count first
    event(logger, "webhook.bad_signature", logging.WARNING, remote="10.0.0.1")
    assert lines(out)[3:] == ["log.suppressed", "webhook.bad_signature"]
    summary = out.getvalue()
    assert summary.count("log.suppressed") == 1


def test_the_count_says_how_many_and_which_event(logged: Logged) -> None:
    logger, out, clock, limit = logged
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    keep.addFilter(RepeatLimit(keep, burst=2, seconds=5, clock=clock))
    logger.addHandler(keep)
    try:
        for _ in range(7):
            logger.error("delivery %s failed", "x")
        clock.now += 5
        logger.info("something else")  # any later line writes the counts of quiet events
    finally:
        logger.removeHandler(keep)
    summaries = [r for r in records if r.msg == "log.suppressed"]
    assert len(summaries) == 1
    fields = summaries[0].bountybot_fields  # type: ignore[attr-defined]
    assert fields == {"event": "delivery %s failed", "count": 5, "seconds": "5"}
    assert summaries[0].levelno == logging.ERROR and summaries[0].name == logger.name
    assert [r.getMessage() for r in records] == [
        "delivery x failed", "delivery x failed", "log.suppressed", "something else"]


def test_events_are_told_apart_by_logger_template_and_level(logged: Logged) -> None:
    logger, out, _, _ = logged
    other = logging.getLogger("bountybot.test.repeats.other")
    for _ in range(5):
        event(logger, "a.thing", logging.INFO)
        event(logger, "a.thing", logging.WARNING)
        event(logger, "b.thing", logging.INFO)
        event(other, "a.thing", logging.INFO)  # propagates to the same handler
    assert len(lines(out)) == 4 * 3


def test_flush_writes_what_is_held_back(logged: Logged) -> None:
    logger, out, _, limit = logged
    for _ in range(10):
        logger.warning("same")
    limit.flush()
    assert lines(out) == ["same"] * 3 + ["log.suppressed"]
    limit.flush()
    assert len(lines(out)) == 4  # nothing twice


def test_threads_count_exactly(logged: Logged) -> None:
    logger, out, _, limit = logged

    def busy() -> None:
        for _ in range(500):
            logger.info("busy")

    threads = [threading.Thread(target=busy) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    limit.handler = Keep()
    limit.flush()
    assert lines(out) == ["busy"] * 3
    assert records[0].bountybot_fields["count"] == 2000 - 3  # type: ignore[attr-defined]


def test_setup_logging_limits_repeats_and_still_redacts() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        settings = Settings(config_file=None, github={"webhook_secret": "whsec-Repeat-99",
                                                      "token": TOKEN})
        setup_logging(settings, level=logging.INFO, stream=out)
        log = logging.getLogger("bountybot.test.flood")
        for _ in range(5000):
            log.warning("refused a token %s", TOKEN)
        text = out.getvalue()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert text.count("\n") == 20  # the default burst, then nothing for a minute
    assert TOKEN not in text and "refused a token ***" in text
