"""What a delivery is about, read at the door: deliveries with one topic apply in the order
they were received, whichever replica takes them (`bountybot.inbox`).

A topic names one issue or one pull/merge request of one repo by the forge's stable ids:
`github:<repository id>:<number>` (GitHub numbers issues and pull requests in one sequence),
`gitlab:<project id>:issue:<iid>` or `gitlab:<project id>:mr:<iid>` (GitLab has two). A
payload that names no issue (a ping, an installation) has no topic: it waits for nothing.
Nothing here trusts the payload: what is not the expected shape gives no topic. Each forge's
events module reads its own payloads (`github_events.topic`, `gitlab_events.topic`) with the
helpers here.
"""

from __future__ import annotations

from typing import Any

MAX_TOPIC = 255


def as_id(value: Any) -> str | None:
    """A forge id or number as text: a whole number (int, or digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 2**63:
        return str(value)
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return value
    return None


def dig(payload: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


def issue_topic(forge: str, repo_id: str, number: int | str, kind: str | None = None) -> str:
    """The topic of issue `number` of a repo; `kind` (`issue`, `mr`) where a forge numbers its
    issues and its merge requests apart (GitLab), so that #3 and !3 are two topics."""
    if kind is not None:
        return f"{forge}:{repo_id}:{kind}:{number}"[:MAX_TOPIC]
    return f"{forge}:{repo_id}:{number}"[:MAX_TOPIC]
