"""What bountybot knows of one forge, in one description: the registry (`forges/registry.py`)
holds one per forge, and the rest of the service iterates over it instead of naming forges.

A new forge is its adapter (a `ForgeClient` and a `FORGE = Forge(...)` at its end), its
events module (payloads to happenings, its webhook door as an `Edge`, its closing keywords),
its settings section in `bountybot.config`, and one line in `forges/registry.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bountybot.forges.base import ForgeClient
from bountybot.forges.door import Edge
from bountybot.forges.events import Normalized

if TYPE_CHECKING:
    from bountybot.config import Settings


class Normalizer(Protocol):
    """A webhook payload of a kind (the event header) as happenings."""

    def __call__(self, event: str, payload: dict[str, Any], *, label: str,
                 bot_login: str) -> Normalized: ...


@dataclass(frozen=True)
class Forge:
    # The name in the tables (`repo.forge`), in URLs (`/webhooks/<name>`, `/<name>/<path>`)
    # and in the settings (its section, `[<name>]`).
    name: str
    title: str  # as people write it: "GitHub"
    edge: Edge  # the webhook door
    normalize: Normalizer
    # The topic of a delivery (the issue it is about: `bountybot.forges.topics`), or None.
    topic: Callable[[str, Any], str | None]
    # The client the settings describe, or None when the forge is off.
    client: Callable[[Settings], ForgeClient | None]
    # The repo `path`'s page on the forge, for the public pages and funding.json.
    web_url: Callable[[Settings, str], str]
    # The longest comment the forge takes, in characters.
    comment_limit: int
    # Whether a comment's commands are confirmed through the API before they apply, because
    # the webhook's secret is shared by every repo of the instance (GitLab's instance token).
    confirms_comments: bool = False
