"""The transition tables hold every arrow of DESIGN.md's diagrams, and refuse what is not there."""

from __future__ import annotations

import pytest

from bountybot.states import (
    CLAIM_MOVES,
    PAYOUT_MOVES,
    PLEDGE_MOVES,
    TASK_MOVES,
    ClaimState,
    IllegalMove,
    PayoutState,
    PledgeState,
    TaskState,
    allowed,
    check_move,
)

# DESIGN.md, "States", arrow by arrow.
DESIGN_TASK = {("open", "funded"), ("funded", "claimed"), ("claimed", "in_review"),
               ("in_review", "done"), ("open", "cancelled"), ("funded", "cancelled"),
               ("open", "expired"), ("funded", "expired")}
DESIGN_PLEDGE = {("pending", "held"), ("held", "paid_out"), ("held", "refunded"),
                 ("pending", "withdrawn"), ("held", "withdrawn")}
DESIGN_CLAIM = {("active", "in_review"), ("in_review", "done"), ("active", "released"),
                ("active", "expired"), ("active", "revoked"), ("in_review", "active")}
DESIGN_PAYOUT = {("pending", "paid"), ("pending", "failed")}


@pytest.mark.parametrize(
    ("design", "table"),
    [(DESIGN_TASK, TASK_MOVES), (DESIGN_PLEDGE, PLEDGE_MOVES), (DESIGN_CLAIM, CLAIM_MOVES),
     (DESIGN_PAYOUT, PAYOUT_MOVES)],
)
def test_every_design_arrow_is_in_the_table(design, table):
    assert design <= {(str(a), str(b)) for a, b in table}


def test_final_states_have_no_way_out():
    # The one way out of done: a dispute raised before the payouts were released and decided
    # by /cancel, which refunds the paid-out pledges.
    assert [m for m in TASK_MOVES if m[0] == TaskState.DONE] == [
        (TaskState.DONE, TaskState.CANCELLED)]
    assert [m for m in PLEDGE_MOVES if m[0] == PledgeState.PAID_OUT] == [
        (PledgeState.PAID_OUT, PledgeState.REFUNDED)]
    for final in (TaskState.CANCELLED, TaskState.EXPIRED):
        assert not [m for m in TASK_MOVES if m[0] == final]
    for final in (PledgeState.REFUNDED, PledgeState.WITHDRAWN):
        assert not [m for m in PLEDGE_MOVES if m[0] == final]
    for final in (PayoutState.PAID, PayoutState.CANCELLED):
        assert not [m for m in PAYOUT_MOVES if m[0] == final]
    for final in (ClaimState.DONE, ClaimState.RELEASED, ClaimState.EXPIRED, ClaimState.REVOKED):
        assert not [m for m in CLAIM_MOVES if m[0] == final]


def test_moves_off_the_diagram_are_refused():
    assert allowed(TaskState.OPEN, TaskState.OPEN)
    assert not allowed(TaskState.OPEN, TaskState.DONE)
    assert not allowed(PledgeState.REFUNDED, PledgeState.HELD)
    with pytest.raises(IllegalMove):
        check_move(TaskState.CANCELLED, TaskState.OPEN)
    with pytest.raises(IllegalMove):
        check_move(PayoutState.PAID, PayoutState.PENDING)
