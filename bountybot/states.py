"""The states of tasks, pledges, claims and payouts, and the moves allowed between them.

The tables below are the state diagram of DESIGN.md as data: the rules refuse any move not
listed here (`check_move`), and the tests walk the same tables, so code, tests and diagram
cannot drift apart. Moves added to DESIGN.md's arrows are marked "implied" with the reason.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    OPEN = "open"
    FUNDED = "funded"
    CLAIMED = "claimed"
    IN_REVIEW = "in_review"
    DONE = "done"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class PledgeState(StrEnum):
    PENDING = "pending"
    HELD = "held"
    PAID_OUT = "paid_out"
    REFUNDED = "refunded"
    WITHDRAWN = "withdrawn"


class ClaimState(StrEnum):
    ACTIVE = "active"
    IN_REVIEW = "in_review"
    DONE = "done"
    RELEASED = "released"
    EXPIRED = "expired"
    REVOKED = "revoked"


class PayoutState(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    # implied: a payout held by a dispute, taken back by a maintainer's /award or /cancel.
    CANCELLED = "cancelled"


class LinkState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    MERGED = "merged"


T = TaskState
TASK_MOVES: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        (T.OPEN, T.FUNDED),
        (T.FUNDED, T.CLAIMED),
        (T.CLAIMED, T.IN_REVIEW),
        (T.IN_REVIEW, T.DONE),
        (T.OPEN, T.CANCELLED),
        (T.FUNDED, T.CANCELLED),
        (T.OPEN, T.EXPIRED),
        (T.FUNDED, T.EXPIRED),
        # implied: a withdrawal or a raised goal can drop a funded task below its goal.
        (T.FUNDED, T.OPEN),
        # implied: the claim ends (/unclaim, expiry, revoke) and nobody waits.
        (T.CLAIMED, T.FUNDED),
        # implied: the claim is released or revoked while in review, and nobody waits.
        (T.IN_REVIEW, T.FUNDED),
        # implied: the claimant's only link is closed unmerged, so the claim is active again.
        (T.IN_REVIEW, T.CLAIMED),
        # implied: a maintainer /awards merged work that was not linked by a claimant.
        (T.FUNDED, T.DONE),
        (T.CLAIMED, T.DONE),
            # implied: a dispute decided by /cancel before the payouts were released.
        (T.DONE, T.CANCELLED),
    }
)

P = PledgeState
PLEDGE_MOVES: frozenset[tuple[PledgeState, PledgeState]] = frozenset(
    {
        (P.PENDING, P.HELD),
        (P.HELD, P.PAID_OUT),
        (P.HELD, P.REFUNDED),
        (P.PENDING, P.WITHDRAWN),
        (P.HELD, P.WITHDRAWN),
        # implied: a dispute decided by /cancel after the merge gives paid-out money back.
        (P.PAID_OUT, P.REFUNDED),
        # implied: a pending pledge on a cancelled or expired task is simply dropped; no money
        # moved, so "refunded" would be a lie. Recorded as withdrawn.
    }
)

C = ClaimState
CLAIM_MOVES: frozenset[tuple[ClaimState, ClaimState]] = frozenset(
    {
        (C.ACTIVE, C.IN_REVIEW),
        (C.IN_REVIEW, C.DONE),
        (C.ACTIVE, C.RELEASED),
        (C.ACTIVE, C.EXPIRED),
        (C.ACTIVE, C.REVOKED),
        (C.IN_REVIEW, C.ACTIVE),
        # implied: the claimant's work is merged straight from active (no open link was seen,
        # e.g. the pull request was opened and merged between two webhooks).
        (C.ACTIVE, C.DONE),
        # implied: a claimant may still /unclaim, or a maintainer revoke, while in review.
        (C.IN_REVIEW, C.RELEASED),
        (C.IN_REVIEW, C.REVOKED),
    }
)

PAYOUT_MOVES: frozenset[tuple[PayoutState, PayoutState]] = frozenset(
    {
        (PayoutState.PENDING, PayoutState.PAID),
        (PayoutState.PENDING, PayoutState.FAILED),
        # failed payouts are retried
        (PayoutState.FAILED, PayoutState.PENDING),
        (PayoutState.FAILED, PayoutState.PAID),
        # implied: a disputed payout is taken back when a maintainer decides (before release).
        (PayoutState.PENDING, PayoutState.CANCELLED),
    }
)

FINAL_TASK_STATES = frozenset({T.DONE, T.CANCELLED, T.EXPIRED})
LIVE_CLAIM_STATES = frozenset({C.ACTIVE, C.IN_REVIEW})

_TABLES: dict[type, frozenset[tuple[StrEnum, StrEnum]]] = {
    TaskState: TASK_MOVES,
    PledgeState: PLEDGE_MOVES,
    ClaimState: CLAIM_MOVES,
    PayoutState: PAYOUT_MOVES,
}


class IllegalMove(RuntimeError):
    """A bug: the rules tried a move the state diagram does not have."""


def allowed(old: StrEnum, new: StrEnum) -> bool:
    """Whether `old -> new` is an arrow of the diagram (staying put always is)."""
    return old == new or (old, new) in _TABLES[type(old)]


def check_move(old: StrEnum, new: StrEnum) -> None:
    if not allowed(old, new):
        raise IllegalMove(f"{type(old).__name__}: {old} -> {new} is not an allowed move")
