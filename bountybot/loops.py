"""What the background loops (delivery worker, outbox sender) share: waiting for a wake-up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


async def wait_any(events: Sequence[asyncio.Event], timeout: float) -> None:
    """Return when one of `events` is set, or after `timeout` seconds, whichever comes first."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
