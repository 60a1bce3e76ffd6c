"""Reading a stored delivery: its payload turned into normalized happenings by the forge's
adapter (`normalize`), less whatever no forge could have sent (`checked`), so that nothing out of
range, no foreign repo and no malformed id or login ever reaches a query. Used by the delivery
worker (`bountybot.inbox`), before any transaction.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from bountybot.config import Settings
from bountybot.forges.events import (
    SYNC_EVENT,
    Happening,
    Normalized,
    happenings_from_payload,
    valid_number,
)
from bountybot.forges.registry import FORGES
from bountybot.refs import RepoRef
from bountybot.rules import Comment, LinkClosed, LinkOpened


def normalize(forge: str, kind: str, payload: dict[str, Any], settings: Settings,
              name: str | None = None) -> Normalized:
    """What a stored delivery `name` means, with every happening checked against what the forge
    could have sent (see `checked`)."""
    if kind == SYNC_EVENT:
        # Stored by reconciliation, already normalized, read from the API: trusted only under
        # the delivery ids reconciliation gives (the doors refuse both the kind and the ids).
        if name is not None and not name.startswith(f"sync:{forge}:"):
            return Normalized(ignored=f"{SYNC_EVENT} is internal; not from {name[:40]!r}")
        happenings = [replace(h, what=replace(h.what, verified=True))
                      if isinstance(h.what, Comment) else h
                      for h in happenings_from_payload(payload)]
        return checked(forge, Normalized(happenings=happenings))
    known = FORGES.get(forge)
    if known is None:
        return Normalized(ignored=f"no adapter for {forge}")
    return checked(forge, known.normalize(kind, payload, label=settings.bot.label,
                                          bot_login=settings.bot.login))


_FORGE_ID = re.compile(r"[0-9]{1,20}")
_LOGIN = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def _valid_repo(forge: str, ref: RepoRef) -> bool:
    return (ref.forge == forge and bool(_FORGE_ID.fullmatch(ref.forge_repo_id))
            and 0 < len(ref.full_path) <= 512 and "\x00" not in ref.full_path
            and (ref.installation_id is None or bool(_FORGE_ID.fullmatch(ref.installation_id))))


def _valid(forge: str, h: Happening) -> bool:
    """Whether a happening holds only what its forge could have said: issue and pull request
    numbers in the forges' range (and the INTEGER columns'), ids as digits, logins of a sane
    length, a repo of the delivery's own forge. Anything else never reaches a query."""
    if not valid_number(h.number) or (h.repo is not None and not _valid_repo(forge, h.repo)):
        return False
    if h.repo is None and not (0 < len(h.repo_path) <= 512 and "\x00" not in h.repo_path):
        return False
    what = h.what
    if isinstance(what, Comment):
        return bool(_FORGE_ID.fullmatch(what.id)) and bool(_LOGIN.fullmatch(what.author.login))
    if isinstance(what, LinkOpened | LinkClosed):
        return valid_number(what.number) and len(what.author) <= 255 and len(what.repo) <= 512
    return True


def checked(forge: str, normalized: Normalized) -> Normalized:
    """`normalized` less what no forge could have sent; the delivery's record says so."""
    kept = [h for h in normalized.happenings if _valid(forge, h)]
    repos = [ref for ref in normalized.repos if _valid_repo(forge, ref)]
    transfer = normalized.transfer
    if transfer is not None and not (
            _valid_repo(forge, transfer.old) and _valid_repo(forge, transfer.new)
            and valid_number(transfer.old_number) and valid_number(transfer.new_number)):
        transfer = None
    dropped = (len(normalized.happenings) - len(kept) + len(normalized.repos) - len(repos)
               + (transfer is None and normalized.transfer is not None))
    if not dropped:
        return normalized
    note = f"{dropped} part(s) refused: numbers, ids or repos no {forge} payload holds"
    return Normalized(repos=repos, happenings=kept, transfer=transfer,
                      ignored=f"{normalized.ignored}; {note}" if normalized.ignored else note)
