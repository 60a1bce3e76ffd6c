"""What a webhook door checks before it stores a delivery, the same for every forge: who the
headers say sent it (`Sender`), how it names itself (its id and kind), and the rules for ids.

Each forge's events module describes its own door as an `Edge` of these pieces
(`github_events.EDGE`, `gitlab_events.EDGE`); `bountybot.webhooks` runs every door the same
way. Pure: headers and bytes in, answers out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_DELIVERY_ID = 255  # the column's size: an id is refused, never cut (two would become one)
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
# Reconciliation's own deliveries (`sync:<forge>:...`), the only ones the worker reads as
# already checked against the forge's API.
RESERVED_PREFIX = "sync:"


def header_bytes(value: str) -> bytes:
    """A header value as the bytes that came over the wire: aiohttp decodes them as UTF-8 with
    surrogateescape, so `str.encode()` alone would fail on what is not UTF-8."""
    return value.encode("utf-8", "surrogateescape")


def delivery_id_problem(header: str, value: str) -> str | None:
    """Why a delivery id cannot be stored as given, if it cannot."""
    if len(value) > MAX_DELIVERY_ID:
        return f"{header} is longer than {MAX_DELIVERY_ID} characters"
    if not _PRINTABLE.fullmatch(value):
        return f"{header} must be printable ASCII"
    if value[:len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX:
        return f"{header} may not start with {RESERVED_PREFIX} (kept for the service's own)"
    return None


@dataclass(frozen=True)
class Sender:
    """Who a delivery is from, as far as its headers tell before the body is read."""

    # The forge's own secret was shown (GitLab's instance token): the body is read as trusted.
    proven: bool = False
    # Paths of projects or groups whose own secret was shown: trusted once the payload is
    # about a project there.
    scopes: tuple[str, ...] = ()


# A sender known only once the body's signature is checked (GitHub's, Forgejo's deliveries).
UNPROVEN = Sender()
# A delivery signed with (or carrying) the forge's own secret: its body is trusted.
PROVEN = Sender(proven=True)


def within(path: str, scopes: tuple[str, ...]) -> bool:
    """Whether a repo path is one of `scopes` or under one (a group); without case, as GitLab
    compares paths. `group/x/../../other` is no path, and under no group."""
    path = path.lower()
    if any(part in ("", ".", "..") for part in path.split("/")):
        return False
    return any(path == scope or path.startswith(scope + "/") for scope in scopes)


def repo_named(payload: dict[str, Any], key: str, path_key: str) -> tuple[str, str] | None:
    """(id, path) of the repo a payload names under `key` (its numeric `id` and its path under
    `path_key`), when it names one properly; for `Edge.scoped_repo`."""
    repo = payload.get(key)
    if not isinstance(repo, dict):
        return None
    repo_id, path = repo.get("id"), repo.get(path_key)
    if (not isinstance(repo_id, int) or isinstance(repo_id, bool)
            or not 0 < repo_id < 2**63 or not isinstance(path, str)):
        return None
    return str(repo_id), path


@dataclass(frozen=True)
class Edge:
    """A forge's webhook door: how a delivery proves who sent it, and how it names itself (its
    id, for deduplication, and its kind)."""

    turn_on: str  # what to set when the forge is off
    # Who the headers say the delivery is from, before its body is read (given the forge's
    # settings section); None: nobody (401).
    sender: Callable[[Any, Mapping[str, str]], Sender | None]
    # Who signed the body, for a sender the headers could not prove (given the forge's
    # settings section, the body and the headers): the forge's own secret (`PROVEN`), some
    # repos' own secrets (their `scopes`), or nobody (None: 401).
    signer: Callable[[Any, bytes | bytearray, Mapping[str, str]], Sender | None]
    refused: str  # the 401 answer
    refused_event: str  # the warning logged then
    # (delivery id, kind), or the sentence of a 400 answer
    identify: Callable[[Mapping[str, str]], tuple[str, str] | str]
    # The (repo id, path) a payload is about, for a sender limited to some `scopes`; None
    # when it names none. Only forges with per-repo secrets need it.
    scoped_repo: Callable[[dict[str, Any]], tuple[str, str] | None] = lambda _payload: None
    # What a 403 says when a repo's secret comes with a delivery about another repo.
    out_of_scope: str = "this secret is another repo's"
