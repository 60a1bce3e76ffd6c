"""What the forge clients' tests ask of every failure: a `ForgeError` holding no secret."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from bountybot.forges.base import ForgeError


async def failing(call: Awaitable[object], *secrets: str) -> ForgeError:
    """The ForgeError `call` raises, checked to hold none of `secrets` (in its text, its repr
    or its arguments)."""
    with pytest.raises(ForgeError) as caught:
        await call
    err = caught.value
    for secret in secrets:
        assert secret not in str(err) and secret not in repr(err)
        assert all(secret not in str(arg) for arg in err.args)
    return err
