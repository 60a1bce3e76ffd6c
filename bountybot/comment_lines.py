"""A comment's command lines, as the delivery worker applies them: a GitLab note's lines kept
only where the API shows them too (`confirmed_note`), and each line applied once, whichever
webhook, edit, redelivery or reconciliation brings it first (`fresh_lines`, recorded in
`handled_comment`; at most `MAX_COMMANDS` per comment over all its edits).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import replace
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.forges.base import ForgeClient
from bountybot.forges.events import Happening
from bountybot.logs import event
from bountybot.rules import Bounty, Comment
from bountybot.rules.decide import is_bot, read_commands
from bountybot.rules.policy import Policy
from bountybot.storage import tables as t
from bountybot.storage.dialect import insert_rows

log = logging.getLogger(__name__)


def _lines(body: str, policy: Policy) -> list[str]:
    """The command lines of a comment (read or refused), as written."""
    return [item.raw.strip() for item in read_commands(body, policy)]


async def confirmed_note(client: ForgeClient, h: Happening, what: Comment,
                          policy: Policy) -> Comment:
    """A GitLab note as the API has it: the instance's webhook token is one secret for every
    project, so whoever holds it could send a note "by" anyone. The note must exist on that
    issue, by that author; only the command lines that both the hook and the API show are
    applied. An unconfirmed note applies nothing (the log says why)."""
    assert h.repo is not None
    found = await client.comment(h.repo, h.number, what.id)
    if found is None or found[0].lower() != what.author.login.lower():
        event(log, "note.unconfirmed", logging.WARNING, forge=h.repo.forge,
              repo=h.repo.full_path, note=what.id,
              why="no such note" if found is None else "another author")
        return replace(what, body="", verified=True)
    there = Counter(_lines(found[1], policy))
    kept = []
    for line in _lines(what.body, policy):
        if there[line] > 0:
            there[line] -= 1
            kept.append(line)
    return replace(what, body="\n".join(kept), verified=True)


# A `handled_comment.revision` that names one command line of a comment (see `fresh_lines`);
# rows written before lines were recorded name a whole comment ("") or one edit of it.
LINE = "line:"
MAX_COMMANDS = 10  # per comment, over all its edits (DESIGN.md: at most 10 read per comment)


def _line_keys(lines: list[str]) -> list[tuple[str, str]]:
    """(key, line) for each command line: the line's text without case, and which occurrence
    of that text it is, so `/pledge 5` written twice is two commands, and the same two lines
    read again (a redelivery, an edit, a sync) are the same two keys."""
    seen: Counter[str] = Counter()
    keys = []
    for line in lines:
        digest = hashlib.sha256(line.casefold().encode()).hexdigest()[:40]
        keys.append((f"{LINE}{digest}:{seen[digest]}", line))
        seen[digest] += 1
    return keys


def lines_to_apply(forge: str, comment: Comment, policy: Policy, done: list[str]
                   ) -> tuple[list[str], list[tuple[str, str]]] | None:
    """The command lines of `comment` (as written) and, of those, the ones to apply now as
    (key, line), given the `handled_comment` revisions recorded for it (`done`); None when it
    has none left to apply. A bot's comment, or one without command lines, has none to record
    (`([], [])`): the rules read it as it is."""
    if is_bot(comment.author, policy):
        return [], []
    lines = _lines(comment.body, policy)
    if not lines:
        return [], []
    whole = [rev for rev in done if not rev.startswith(LINE)]
    if whole and comment.previous is None:
        return None  # applied whole, before lines were recorded
    skip: set[str] = set()
    if whole and comment.previous is not None:  # its text before the edit was applied then
        skip = {key for key, _ in _line_keys(_lines(comment.previous, policy))}
    wanted = [(key, line) for key, line in _line_keys(lines)
              if key not in skip and key not in done]
    # Ten commands and the one refusal that says no more are read, over all of its edits.
    room = MAX_COMMANDS + 1 - (len(done) - len(whole))
    if len(wanted) > room:
        event(log, "comment.too_many", logging.WARNING, forge=forge, comment=comment.id,
              dropped=len(wanted) - max(room, 0))
        wanted = wanted[:max(room, 0)]
    return (lines, wanted) if wanted else None


def with_lines(comment: Comment, lines: list[str], fresh: list[tuple[str, str]],
               done: list[str]) -> Comment:
    """`comment` with only its `fresh` lines (`lines_to_apply`), under a revision of its own
    when it was applied in part before, so its reply is a reply of its own."""
    revision = comment.revision
    if done or len(fresh) < len(lines):
        revision = f"{comment.revision or ''}+{fresh[0][0][len(LINE):len(LINE) + 12]}"
    body = "\n".join(line for _, line in fresh)
    return replace(comment, body=body, revision=revision)


async def recorded(session: AsyncSession, forge: str, comment_ids: list[str]
                   ) -> dict[str, list[str]]:
    """The `handled_comment` revisions recorded for each of these comments (one query)."""
    table = t.HandledComment
    found: dict[str, list[str]] = {}
    if not comment_ids:
        return found
    rows = await session.exec(select(table.comment_id, table.revision).where(
        table.forge == forge, col(table.comment_id).in_(
            sorted({c[:t.FORGE_ID] for c in comment_ids}))))
    for comment_id, revision in rows.all():
        found.setdefault(comment_id, []).append(revision)
    return found


async def fresh_lines(session: AsyncSession, forge: str, comment: Comment, policy: Policy,
                       bounty: Bounty | None, now: datetime
                       ) -> tuple[Comment, list[int]] | None:
    """The comment with only the command lines never applied before, and the ids of the rows
    that now record them; None when there are none. A comment's commands are applied once,
    whichever of its webhook, an edit's webhook, a redelivery or reconciliation brings them
    first, in any order: each command line is recorded (`handled_comment`, one row per line)
    in the deciding transaction, and a second worker applying the same line at once waits on
    the unique key, then finds it taken."""
    if is_bot(comment.author, policy) or not _lines(comment.body, policy):
        return comment, []
    done = (await recorded(session, forge, [comment.id])).get(comment.id[:t.FORGE_ID], [])
    planned = lines_to_apply(forge, comment, policy, done)
    if planned is None:
        return None
    lines, wanted = planned
    written = await insert_rows(
        session, t.HandledComment,
        [dict(forge=forge, comment_id=comment.id[:t.FORGE_ID], revision=key,
              task_id=bounty.id if bounty is not None else None, handled_at=now)
         for key, _ in wanted],
        skip_conflicts=True, returning=(t.HandledComment.id, t.HandledComment.revision))
    taken = {revision: row_id for row_id, revision in written}
    fresh = [(key, line) for key, line in wanted if key in taken]
    if not fresh:
        return None
    return with_lines(comment, lines, fresh, done), list(taken.values())
