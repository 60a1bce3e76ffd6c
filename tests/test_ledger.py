"""The ledger refuses unbalanced postings and names its accounts as DESIGN.md does."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bountybot.ledger import (
    ESCROW,
    EXTERNAL,
    FEES,
    Leg,
    Posting,
    UnbalancedTransaction,
    backer_account,
    check_balanced,
    developer_account,
    move,
)
from bountybot.money import Money


@dataclass
class Thing:
    id: int | None


def test_accounts_render_as_designed():
    assert ESCROW.render(3) == "escrow:task:3"
    assert backer_account("github", "alice").render(3) == "backer:github:alice"
    assert developer_account("gitlab", "bob").render(None) == "developer:gitlab:bob"
    assert EXTERNAL.render(None) == "external" and FEES.render(1) == "fees"
    with pytest.raises(ValueError):
        ESCROW.render(None)


def test_a_move_balances_and_renders_its_entries():
    p = move("pledge.held", Thing(12), Money(6000, "EUR"), backer_account("github", "alice"),
             ESCROW)
    assert p.key() == "pledge.held:12"
    assert p.entries(4) == [("backer:github:alice", -6000, "EUR"), ("escrow:task:4", 6000, "EUR")]


def test_an_unbalanced_posting_cannot_be_made():
    with pytest.raises(UnbalancedTransaction):
        Posting("x", Thing(1), (Leg(ESCROW, Money(-100, "EUR")), Leg(FEES, Money(99, "EUR"))))
    with pytest.raises(UnbalancedTransaction):
        Posting("x", Thing(1), (Leg(ESCROW, Money(0, "EUR")),))


def test_balance_is_per_currency():
    check_balanced([Money(5, "EUR"), Money(-5, "EUR"), Money(7, "USD"), Money(-7, "USD")])
    with pytest.raises(UnbalancedTransaction):
        check_balanced([Money(5, "EUR"), Money(-5, "USD")])


def test_a_posting_about_something_without_an_id_has_no_key_yet():
    p = move("pledge.held", Thing(None), Money(1, "EUR"), EXTERNAL, ESCROW)
    with pytest.raises(ValueError):
        p.key()
