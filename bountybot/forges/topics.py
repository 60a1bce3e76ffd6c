"""What a delivery is about, read at the door: deliveries with one topic apply in the order
they were received, whichever replica takes them (`bountybot.inbox`).

A topic names one issue or one pull/merge request of one repo by the forge's stable ids:
`github:<repository id>:<number>` (GitHub numbers issues and pull requests in one sequence),
`gitlab:<project id>:issue:<iid>` or `gitlab:<project id>:mr:<iid>` (GitLab has two). A
payload that names no issue (a ping, an installation) has no topic: it waits for nothing.
Nothing here trusts the payload: what is not the expected shape gives no topic.
"""

from __future__ import annotations

from typing import Any

MAX_TOPIC = 255


def _id(value: Any) -> str | None:
    """A forge id or number as text: a whole number (int, or digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 2**63:
        return str(value)
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return value
    return None


def _get(payload: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


def issue_topic(forge: str, repo_id: str, number: int | str, kind: str = "issue") -> str:
    """The topic of issue (or, `kind="mr"` on GitLab, merge request) `number` of a repo."""
    if forge == "gitlab":
        return f"gitlab:{repo_id}:{kind}:{number}"[:MAX_TOPIC]
    return f"{forge}:{repo_id}:{number}"[:MAX_TOPIC]


def topic_of(forge: str, kind: str, payload: Any) -> str | None:
    """The topic of a webhook delivery of `kind` (the event header) from `forge`."""
    if forge == "github":
        repo = _id(_get(payload, "repository", "id"))
        number = _id(_get(payload, "issue", "number")) or _id(
            _get(payload, "pull_request", "number"))
        return issue_topic(forge, repo, number) if repo and number else None
    if forge == "gitlab":
        repo = _id(_get(payload, "project", "id"))
        if repo is None:
            return None
        object_kind = _get(payload, "object_kind")
        if object_kind in ("issue", "work_item"):
            number, which = _id(_get(payload, "object_attributes", "iid")), "issue"
        elif object_kind == "merge_request":
            number, which = _id(_get(payload, "object_attributes", "iid")), "mr"
        elif object_kind == "note":
            number, which = _id(_get(payload, "issue", "iid")), "issue"
            if number is None:
                number, which = _id(_get(payload, "merge_request", "iid")), "mr"
        else:
            return None
        return issue_topic(forge, repo, number, which) if number else None
    return None
