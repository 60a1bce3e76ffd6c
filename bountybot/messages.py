"""What a message the bot writes on a forge carries besides its text: cut to the forge's comment
size (`fit_comment`), and the hidden markers that find a reply, a notice (`message_marker`) or a
task's summary (`summary_marker`) on the forge again, so the outbox sender never posts one twice.
"""

from __future__ import annotations

from bountybot.forges.registry import FORGES
from bountybot.rules.summary import SUMMARY_MARKER

# The longest comment each forge takes, in characters (GitHub answers 422 above 65,536; GitLab
# refuses notes above 1,000,000). Every body is cut to fit before it is sent.
DEFAULT_COMMENT_LIMIT = 65_536  # for a forge that is not registered (its repo is gone)
_CUT = "\n\n…"


def fit_comment(text: str, marker: str, forge: str) -> str:
    """`text` with `marker` after it, cut (at a line, with an ellipsis) to fit the forge's
    comment size: a reply that the forge would refuse is never sent."""
    known = FORGES.get(forge)
    limit = (known.comment_limit if known else DEFAULT_COMMENT_LIMIT) - len(marker) - len(_CUT)
    if len(text) <= limit:
        return text + marker
    cut = text[:limit]
    line = cut.rfind("\n")
    return (cut[:line] if line > limit // 2 else cut) + _CUT + marker


def message_marker(outbox_id: int) -> str:
    """The hidden line in a reply or notice that finds it again after a crash."""
    return f"<!-- bountybot:msg:{outbox_id} -->"


def summary_marker(task_id: int) -> str:
    """What the summary comment of task `task_id`, and only it, holds."""
    return f"{SUMMARY_MARKER}<!-- task:{task_id} -->"
