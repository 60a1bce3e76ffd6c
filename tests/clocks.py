"""The tests' clocks: time that moves only when a test moves it (never a real sleep)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """A datetime clock, injected where the code reads `now()`: it starts at `start` (or the
    real time) and moves when the test says."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def move(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Shifted:
    """Real time plus a shift the test moves: for code that also reads real time elsewhere."""

    def __init__(self) -> None:
        self.shift = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift

    def move(self, seconds: float) -> None:
        self.shift += timedelta(seconds=seconds)


class Ticks:
    """Monotonic seconds, as `time.monotonic` gives them, moved by the test."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
