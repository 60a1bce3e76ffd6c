"""`bountybot audit`: recompute every invariant of the books from the tables, and say what fails.

The checks take plain values (the bounties and the journal), so the same function audits the
database, the in-memory books of the property tests, and an export someone downloaded.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bountybot.rules.model import Bounty
from bountybot.states import PayoutState, PledgeState, TaskState


@dataclass(frozen=True)
class JournalEntry:
    account: str
    minor: int
    currency: str


@dataclass(frozen=True)
class JournalTransaction:
    """A ledger transaction as stored: its unique key, its kind and its entries."""

    key: str
    kind: str
    task_id: int | None
    entries: tuple[JournalEntry, ...]


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    tasks: int = 0
    transactions: int = 0
    entries: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = (f"checked {self.tasks} tasks, {self.transactions} ledger transactions,"
                f" {self.entries} entries: ")
        if self.ok:
            return head + "all invariants hold"
        lines = [head + f"{len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _sum_by(entries: Iterable[tuple[str, JournalEntry]]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for account, entry in entries:
        totals[(account, entry.currency)] += entry.minor
    return totals


def audit(bounties: Sequence[Bounty], journal: Sequence[JournalTransaction]) -> AuditReport:
    """Check the books; each problem is one readable sentence."""
    report = AuditReport(tasks=len(bounties), transactions=len(journal),
                         entries=sum(len(t.entries) for t in journal))
    bad = report.problems
    _audit_journal(journal, bad)
    by_key = {t.key: t for t in journal}
    balance = _sum_by((e.account, e) for t in journal for e in t.entries)
    for b in bounties:
        _audit_task(b, by_key, balance, bad)
    _audit_accounts(bounties, balance, bad)
    return report


def _audit_journal(journal: Sequence[JournalTransaction], bad: list[str]) -> None:
    """Each transaction written once and balanced, and no money created or lost overall."""
    keys = Counter(t.key for t in journal)
    for key, count in keys.items():
        if count > 1:
            bad.append(f"ledger transaction {key} was written {count} times")
    totals: dict[str, int] = defaultdict(int)
    for txn in journal:
        per_currency: dict[str, int] = defaultdict(int)
        for e in txn.entries:
            per_currency[e.currency] += e.minor
            totals[e.currency] += e.minor
        off = {c: v for c, v in per_currency.items() if v}
        if off or len(txn.entries) < 2:
            bad.append(f"ledger transaction {txn.key} does not balance: {dict(per_currency)}")
    for currency, total in totals.items():
        if total:
            bad.append(f"all entries in {currency} sum to {total}, not 0:"
                       " money was created or lost")


def _audit_accounts(bounties: Sequence[Bounty], balance: dict[tuple[str, str], int],
                    bad: list[str]) -> None:
    """Backers', developers' and the outside world's balances against the pledges and payouts."""
    backers, developers, paid_out_total = _expected_balances(bounties)
    for (account, currency), value in balance.items():
        if account.startswith("backer:") and backers.get((account, currency), 0) != value:
            bad.append(f"{account} balance is {value} {currency} but its pledges in escrow or"
                       f" paid out make {backers.get((account, currency), 0)}")
        if account.startswith("developer:") and developers.get((account, currency), 0) != value:
            bad.append(f"{account} balance is {value} {currency} but its unpaid payouts make"
                       f" {developers.get((account, currency), 0)}")
        if account == "external" and paid_out_total.get(currency, 0) != value:
            bad.append(f"external received {value} {currency} but paid payouts make"
                       f" {paid_out_total.get(currency, 0)}")
    for (account, currency), value in {**backers, **developers}.items():
        if value and (account, currency) not in balance:
            bad.append(f"{account} should hold {value} {currency} but has no entries")


def _expected_balances(bounties: Sequence[Bounty]) -> tuple[
        dict[tuple[str, str], int], dict[tuple[str, str], int], dict[str, int]]:
    """What the backers' and developers' accounts should hold, and what should have gone out."""
    backers: dict[tuple[str, str], int] = defaultdict(int)
    developers: dict[tuple[str, str], int] = defaultdict(int)
    paid_out_total: dict[str, int] = defaultdict(int)
    for b in bounties:
        for p in b.pledges:
            if p.state in (PledgeState.HELD, PledgeState.PAID_OUT):
                backers[(f"backer:{b.forge}:{p.backer}", b.currency)] -= p.amount.minor
        for po in b.payouts:
            if po.state == PayoutState.PAID:
                paid_out_total[b.currency] += po.amount.minor
            elif po.state != PayoutState.CANCELLED:
                developers[(f"developer:{b.forge}:{po.developer}", b.currency)] += po.amount.minor
    return backers, developers, paid_out_total


def _audit_task(b: Bounty, by_key: dict[str, JournalTransaction],
                balance: dict[tuple[str, str], int], bad: list[str]) -> None:
    name = f"task {b.id} ({b.repo}#{b.number})"
    escrow = balance.get((f"escrow:task:{b.id}", b.currency), 0)
    held = b.held().minor
    if escrow != held:
        bad.append(f"{name}: escrow holds {escrow} {b.currency} but its held pledges make {held}")
    _audit_pledges(name, b, by_key, bad)
    done = by_key.get(f"task.done:{b.id}")
    # A dispute decided by /cancel takes a done task's payouts back: cancelled after the merge.
    undone = b.state == TaskState.CANCELLED and any(
        p.state == PayoutState.CANCELLED for p in b.payouts)
    if (done is not None) != (b.state == TaskState.DONE or undone):
        bad.append(f"{name} is {b.state} but its payout transaction is"
                   f" {'' if done else 'not '}on the books")
    for po in b.payouts:
        reversed_ = f"payout.reversed:{po.id}" in by_key
        if reversed_ != (po.state == PayoutState.CANCELLED):
            bad.append(f"{name}: payout {po.id} is {po.state} but a reversal is"
                       f" {'' if reversed_ else 'not '}on the books")
    if done is not None:
        _audit_release(name, b, done, undone, by_key, bad)
    elif b.payouts:
        bad.append(f"{name} has payouts but no payout transaction")
    _audit_payments(name, b, by_key, bad)


def _audit_pledges(name: str, b: Bounty, by_key: dict[str, JournalTransaction],
                   bad: list[str]) -> None:
    """Each pledge's escrow and refund transactions against its state."""
    for p in b.pledges:
        has_held = f"pledge.held:{p.id}" in by_key
        has_refund = f"pledge.refunded:{p.id}" in by_key
        has_withdraw = f"pledge.withdrawn:{p.id}" in by_key
        expect_held = p.state in (PledgeState.HELD, PledgeState.PAID_OUT, PledgeState.REFUNDED) \
            or (p.state == PledgeState.WITHDRAWN and has_withdraw)
        if has_held != expect_held:
            bad.append(f"{name}: pledge {p.id} is {p.state} but its money was"
                       f" {'' if has_held else 'never '}put in escrow")
        if has_refund != (p.state == PledgeState.REFUNDED):
            bad.append(f"{name}: pledge {p.id} is {p.state} but a refund is"
                       f" {'' if has_refund else 'not '}on the books")


def _audit_release(name: str, b: Bounty, done: JournalTransaction, undone: bool,
                   by_key: dict[str, JournalTransaction], bad: list[str]) -> None:
    """What left the escrow at payout against the pledges, the payouts and the fee."""
    paid_out = sum(p.amount.minor for p in b.pledges if p.state == PledgeState.PAID_OUT)
    refunded = sum(p.amount.minor for p in b.pledges if p.state == PledgeState.REFUNDED)
    payouts = sum(p.amount.minor for p in b.payouts if p.state != PayoutState.CANCELLED)
    released = -sum(e.minor for e in done.entries if e.account == f"escrow:task:{b.id}")
    if released != (refunded if undone else paid_out):
        bad.append(f"{name}: {released} left the escrow at payout but"
                   f" {'refunded' if undone else 'paid-out'} pledges make"
                   f" {refunded if undone else paid_out}")
    fee = sum(e.minor for e in done.entries if e.account == "fees")
    if undone:
        fee_back = by_key.get(f"fee.reversed:{b.id}")
        back = -sum(e.minor for e in fee_back.entries if e.account == "fees") \
            if fee_back else 0
        if back != fee:
            bad.append(f"{name}: a fee of {fee} was taken but {back} given back on cancel")
    elif payouts + fee != released:
        bad.append(f"{name}: payouts ({payouts}) and fee ({fee}) do not add up to what left"
                   f" the escrow ({released})")


def _audit_payments(name: str, b: Bounty, by_key: dict[str, JournalTransaction],
                    bad: list[str]) -> None:
    """Each payout's payment transaction against its state and amount."""
    for po in b.payouts:
        paid = by_key.get(f"payout.paid:{po.id}")
        if (paid is not None) != (po.state == PayoutState.PAID):
            bad.append(f"{name}: payout {po.id} is {po.state} but a payment is"
                       f" {'' if paid else 'not '}on the books")
        elif paid is not None:
            sent = sum(e.minor for e in paid.entries if e.account == "external")
            if sent != po.amount.minor:
                bad.append(f"{name}: payout {po.id} is {po.amount.minor} but {sent} was paid")
