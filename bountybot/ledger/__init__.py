"""The double-entry ledger: accounts, legs and balanced postings.

Design overview (after django-hordak): every movement of money is one *posting* (a ledger
transaction) made of *legs* (entries). A leg adds a signed amount to one account; the legs of a
posting sum to zero in each currency, so money is only ever moved, never created or destroyed.
That is checked here, in code, before anything is written, and again by a deferred constraint
on PostgreSQL. Balances are never stored: they are always summed from the legs.

Sign convention: a positive leg is money arriving in an account, a negative one money leaving
it. Accounts (DESIGN.md):

- `external`: the world outside; it receives what is paid out to developers.
- `backer:<forge>:<login>`: where a backer's pledges come from; its balance is minus what
  the backer has put in and not had back.
- `escrow:task:<id>`: the money held for one task; equals the sum of its held pledges.
- `developer:<forge>:<login>`: what is owed to a developer and not yet paid.
- `fees`: the service fee, if one is configured.

A posting carries a key (`<kind>:<id of what it is about>`) that is unique in the database, so
the same pledge cannot be held twice nor the same payout paid twice, whatever is replayed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from bountybot.money import Money


class UnbalancedTransaction(ValueError):
    """A posting whose legs do not sum to zero in every currency; it is never written."""


@dataclass(frozen=True, slots=True)
class Account:
    """An account of the ledger; `escrow` without an owner means "the task being decided"."""

    kind: str
    forge: str | None = None
    login: str | None = None

    def render(self, task_id: int | None) -> str:
        if self.kind == "escrow":
            if task_id is None:
                raise ValueError("an escrow account needs the task's id")
            return f"escrow:task:{task_id}"
        if self.kind in ("backer", "developer"):
            return f"{self.kind}:{self.forge}:{self.login}"
        return self.kind


EXTERNAL = Account("external")
ESCROW = Account("escrow")
FEES = Account("fees")


def backer_account(forge: str, login: str) -> Account:
    return Account("backer", forge, login)


def developer_account(forge: str, login: str) -> Account:
    return Account("developer", forge, login)


@dataclass(frozen=True, slots=True)
class Leg:
    account: Account
    amount: Money


class HasId(Protocol):
    id: int | None


def check_balanced(amounts: Iterable[Money]) -> None:
    """Raise UnbalancedTransaction unless the amounts sum to zero in each currency."""
    totals: dict[str, int] = defaultdict(int)
    count = 0
    for amount in amounts:
        totals[amount.currency] += amount.minor
        count += 1
    if count < 2:
        raise UnbalancedTransaction("a transaction needs at least two entries")
    off = {currency: total for currency, total in totals.items() if total != 0}
    if off:
        raise UnbalancedTransaction(f"entries do not sum to zero: {off}")


@dataclass(frozen=True)
class Posting:
    """One balanced ledger transaction about one pledge, payout or task (`ref`)."""

    kind: str
    ref: HasId
    legs: tuple[Leg, ...]
    memo: str = ""

    def __post_init__(self) -> None:
        check_balanced(leg.amount for leg in self.legs)

    def key(self) -> str:
        if self.ref.id is None:
            raise ValueError(f"{self.kind}: the posting's subject has no id yet")
        return f"{self.kind}:{self.ref.id}"

    def entries(self, task_id: int | None) -> list[tuple[str, int, str]]:
        """The legs as stored: (account, signed minor units, currency)."""
        return [
            (leg.account.render(task_id), leg.amount.minor, leg.amount.currency)
            for leg in self.legs
        ]


def move(kind: str, ref: HasId, amount: Money, source: Account, dest: Account,
         memo: str = "") -> Posting:
    """The common two-legged posting: `amount` leaves `source` and arrives in `dest`."""
    return Posting(kind, ref, (Leg(source, -amount), Leg(dest, amount)), memo)
