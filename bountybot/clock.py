"""The time everything reads, and how long to wait before trying again.

`Clock` is injected into the worker, the sweeps, the outbox, the payment worker and the
reconciler, so tests move time instead of sleeping; `utc_now` is the real one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before try `attempt + 1`: `base` doubled at each try, at most `cap`; with `rng`,
    spread over half to one and a half times that (jitter), so retries of many messages that
    failed together do not all come back at once."""
    delay = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return delay * (0.5 + rng.random()) if rng is not None else delay
