"""The forges this service speaks to, one `Forge` description each (`forges/forge.py`).

Everything that differs between forges is read from here: the webhook doors
(`bountybot.webhooks`), the payloads (`bountybot.inbox_reading`), the clients
(`bountybot.service`), comment sizes (`bountybot.messages`), the public pages' and the API's
routes, the command line's choices. A new forge is one line below, after its adapter and its
events module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bountybot.forges import forgejo, github, gitlab
from bountybot.forges.forge import Forge

if TYPE_CHECKING:
    from bountybot.config import Settings

FORGES: dict[str, Forge] = {}


def register(forge: Forge) -> None:
    if forge.name in FORGES:
        raise ValueError(f"forge {forge.name!r} is registered twice")
    FORGES[forge.name] = forge


register(github.FORGE)
register(gitlab.FORGE)
register(forgejo.FORGE)


def names() -> tuple[str, ...]:
    """The forges' names, in the order they were registered."""
    return tuple(FORGES)


def route_pattern() -> str:
    """The forges' names as a regular expression's alternatives, for routes (`github|gitlab`)."""
    return "|".join(FORGES)


def how_to_turn_on() -> str:
    """What an operator sets to turn a forge on, for each forge: `A, or B`."""
    return ", or ".join(forge.edge.turn_on for forge in FORGES.values())


def enabled(settings: Settings) -> list[str]:
    """The forges whose webhook secret and credentials are set, e.g. `["github"]`."""
    return [name for name in FORGES if getattr(settings, name).enabled()]


__all__ = ["FORGES", "Forge", "enabled", "how_to_turn_on", "names", "register", "route_pattern"]
