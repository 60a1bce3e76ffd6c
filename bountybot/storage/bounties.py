"""Bounties in the database: load a task with what hangs from it, and write a decision back.

`save_decision` writes everything a decision holds in the caller's transaction: the task and
its rows, the ledger transactions (refused when unbalanced; a key written twice fails the
whole transaction, so nothing is paid twice), the outbox messages (deduplicated by key, so a
replay queues nothing new), the payment operations (likewise) and the audit trail. It never
commits: the unit of work does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.ledger import check_balanced
from bountybot.money import Money
from bountybot.payments.ops import queue_requests
from bountybot.refs import RepoRef
from bountybot.rules import (
    Actor,
    Bounty,
    Claim,
    Decision,
    Event,
    IssueRef,
    Link,
    Message,
    Payout,
    Pledge,
    decide_event,
)
from bountybot.rules.model import Dispute
from bountybot.rules.policy import Policy, policy_from_settings
from bountybot.storage import tables as t
from bountybot.storage.dialect import insert_rows

log = logging.getLogger(__name__)


async def stored_repo(session: AsyncSession, forge: str, forge_repo_id: str) -> t.Repo | None:
    """The repo row for the forge's stable id, if stored."""
    return (await session.exec(select(t.Repo).where(
        t.Repo.forge == forge, t.Repo.forge_repo_id == forge_repo_id))).first()


async def ensure_repo(session: AsyncSession, forge: str, forge_repo_id: str, full_path: str,
                      installation_id: str | None = None, *,
                      private: bool | None = None) -> t.Repo:
    """The repo row for the forge's stable id; a rename only updates its path, and whether it
    is private follows what the forge last said (None: the payload did not say)."""
    row = await stored_repo(session, forge, forge_repo_id)
    if row is None:
        row = t.Repo(forge=forge, forge_repo_id=forge_repo_id, full_path=full_path,
                     installation_id=installation_id, private=bool(private))
        session.add(row)
        await session.flush()
    else:
        if row.full_path != full_path:
            row.full_path = full_path
        if installation_id and row.installation_id != installation_id:
            row.installation_id = installation_id
        if private is not None and row.private != private:
            row.private = private
    return row


def repo_ref(row: t.Repo) -> RepoRef:
    """The forge's view of a stored repo."""
    return RepoRef(row.forge, row.forge_repo_id, row.full_path, row.installation_id,
                   row.private)


def _money(minor: int | None, currency: str) -> Money | None:
    return None if minor is None else Money(minor, currency)


async def _children(session: AsyncSession, row: type[Any], task_id: int) -> list[Any]:
    stmt = select(row).where(row.task_id == task_id).order_by(col(row.id))
    rows = list((await session.exec(stmt)).all())
    # The session's identity map holds rows weakly: keep them for the rest of the transaction,
    # so writing the decision back finds them there instead of querying each one again.
    session.sync_session.info.setdefault("bountybot.loaded", []).extend(rows)
    return rows


async def load_bounty(session: AsyncSession, repo: t.Repo, number: int, *,
                      lock: bool = False) -> Bounty | None:
    """The task of issue `number` in `repo`, or None; `lock` takes its row for this transaction
    on PostgreSQL so two workers never decide on the same task at once."""
    stmt = select(t.Task).where(t.Task.repo_id == repo.id, t.Task.number == number)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    task = (await session.exec(stmt)).first()
    if task is None:
        return None
    return await to_bounty(session, repo, task)


async def load_bounty_by_id(session: AsyncSession, task_id: int) -> Bounty | None:
    task = await session.get(t.Task, task_id)
    if task is None:
        return None
    repo = await session.get(t.Repo, task.repo_id)
    assert repo is not None
    return await to_bounty(session, repo, task)


def bounty_of(repo: t.Repo, task: t.Task, pledges: Sequence[t.Pledge],
              claims: Sequence[t.Claim], waiting: Sequence[t.Waiting], links: Sequence[t.Link],
              payouts: Sequence[t.Payout]) -> Bounty:
    """The one mapping of a task's rows to the rules' `Bounty`, for the workers and the public
    reads alike; each child list in id order (the waiting list in any: its positions order
    it)."""
    cur = task.currency
    return Bounty(
        repo.forge, repo.full_path, task.number, cur, task.state, task.title, task.url,
        _money(task.goal_minor, cur), task.deadline, task.created_at,
        [Pledge(p.backer, Money(p.amount_minor, cur), p.state, p.created_at, p.comment_id, p.id)
         for p in pledges],
        [Claim(c.developer, c.state, c.created_at, c.expires_at, c.paused_seconds, c.ended_at,
               c.id, c.remind_at) for c in claims],
        [w.login for w in sorted(waiting, key=lambda w: w.position)],
        [Link(li.number, li.author, li.state, li.url, li.id, li.repo_path) for li in links],
        [Payout(p.developer, Money(p.amount_minor, cur), p.state, p.created_at, p.reference,
                p.paid_at, p.id, p.due_at, p.released_at) for p in payouts],
        task.id,
        Dispute(task.disputed_by, task.dispute_reason or "", task.disputed_at)
        if task.disputed_by and task.disputed_at else None, task.labelled)


async def to_bounty(session: AsyncSession, repo: t.Repo, task: t.Task) -> Bounty:
    assert task.id is not None
    # Kept like its children (`_children`): writing the decision back then finds the task row
    # in the identity map instead of selecting it again.
    session.sync_session.info.setdefault("bountybot.loaded", []).append(task)
    return bounty_of(repo, task, *[await _children(session, table, task.id) for table in
                                   (t.Pledge, t.Claim, t.Waiting, t.Link, t.Payout)])


async def _update(session: AsyncSession, row_type: type[Any], obj: Any,
                  values: dict[str, Any], before: dict[tuple[type, int], Any],
                  new: list[tuple[Any, Any]]) -> None:
    """Queue a new child row (its id comes at the next flush), or update the loaded row when
    the object changed since it was loaded (`before`: the objects as loaded, by type and id)."""
    if obj.id is None:
        row = row_type(**values)
        session.add(row)
        new.append((obj, row))
        return
    if before.get((type(obj), obj.id)) == obj:
        return  # unchanged since it was loaded
    # The row was loaded with the bounty, so it is in the session's identity map: no query.
    sync = session.sync_session
    row = sync.identity_map.get(sync.identity_key(row_type, obj.id))
    if row is None:
        row = await session.get(row_type, obj.id)
    if row is None:
        raise LookupError(f"{row_type.__name__} {obj.id} vanished")
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)


def _loaded(b: Bounty | None) -> dict[tuple[type, int], Any]:
    if b is None:
        return {}
    objects: list[Any] = [*b.pledges, *b.claims, *b.links, *b.payouts]
    return {(type(o), o.id): o for o in objects if o.id is not None}


def task_values(repo: t.Repo, b: Bounty) -> dict[str, Any]:
    """The task row's columns that a decision may change, as the rules left them."""
    return dict(
        repo_id=repo.id, number=b.number, title=b.title, url=b.url, state=b.state,
        goal_minor=b.goal.minor if b.goal else None, currency=b.currency, deadline=b.deadline,
        disputed_by=b.dispute.by if b.dispute else None,
        dispute_reason=b.dispute.reason if b.dispute else None,
        disputed_at=b.dispute.at if b.dispute else None, labelled=b.labelled)


# A child row's columns that a decision may change, besides `created_at` (written once).
Child = tuple[type[Any], Any, dict[str, Any]]


def child_values(task_id: int, b: Bounty) -> list[Child]:
    """(table, object, columns) for each pledge, claim, link and payout of `b`, in order."""
    rows: list[Child] = []
    for p in b.pledges:
        rows.append((t.Pledge, p, dict(
            task_id=task_id, backer=p.backer, amount_minor=p.amount.minor,
            currency=p.amount.currency, state=p.state, comment_id=p.comment_id)))
    for c in b.claims:
        rows.append((t.Claim, c, dict(
            task_id=task_id, developer=c.developer, state=c.state, expires_at=c.expires_at,
            paused_seconds=c.paused_seconds, ended_at=c.ended_at, remind_at=c.remind_at)))
    for li in b.links:
        rows.append((t.Link, li, dict(task_id=task_id, number=li.number, author=li.author,
                                      state=li.state, url=li.url, repo_path=li.repo_path)))
    for po in b.payouts:
        rows.append((t.Payout, po, dict(
            task_id=task_id, developer=po.developer, amount_minor=po.amount.minor,
            currency=po.amount.currency, state=po.state, reference=po.reference,
            paid_at=po.paid_at, due_at=po.due_at, released_at=po.released_at)))
    return rows


def created(obj: Any) -> dict[str, Any]:
    """A new child row's `created_at`, for the tables that have one (a link has none)."""
    at = getattr(obj, "created_at", None)
    return {} if at is None else {"created_at": at}


async def _save_task(session: AsyncSession, repo: t.Repo, b: Bounty, now: datetime,
                     original: Bounty | None = None) -> int:
    values = task_values(repo, b)
    if b.id is None:
        row = t.Task(**values, created_at=b.created_at or now)
        session.add(row)
        await session.flush()
        b.id = row.id
    else:
        task = await session.get(t.Task, b.id)  # in the identity map since it was loaded
        if task is None:
            raise LookupError(f"task {b.id} vanished")
        for key, value in values.items():
            if getattr(task, key) != value:
                setattr(task, key, value)
    assert b.id is not None
    task_id = b.id
    before = _loaded(original)
    new: list[tuple[Any, Any]] = []
    for row_type, obj, child in child_values(task_id, b):
        await _update(session, row_type, obj, child | created(obj) if obj.id is None else child,
                      before, new)
    if original is not None and original.id == task_id and original.waiting == b.waiting:
        current = b.waiting
    else:
        current = [w.login for w in sorted(await _children(session, t.Waiting, task_id),
                                           key=lambda w: w.position)]
    if current != b.waiting:
        # Delete first and flush: the unit of work would otherwise insert before it deletes,
        # and (task_id, login) is unique.
        await session.exec(delete(t.Waiting).where(col(t.Waiting.task_id) == task_id))
        await session.flush()
        session.add_all(t.Waiting(task_id=task_id, login=login, position=i, created_at=now)
                        for i, login in enumerate(b.waiting))
    await session.flush()  # one flush gives every new row its id
    for obj, row in new:
        obj.id = row.id
    return task_id


def posting_rows(decision: Decision, task_id: int | None, now: datetime
                 ) -> tuple[list[dict[str, Any]], list[tuple[str, list[tuple[str, int, str]]]]]:
    """The ledger transactions of a decision (rows) and their legs by key, each checked
    balanced: an unbalanced posting fails the decision before anything is written."""
    books = []
    for posting in decision.postings:
        entries = posting.entries(task_id)
        check_balanced(Money(minor, cur) for _, minor, cur in entries)
        books.append((posting.key(), entries))
    rows = [dict(key=posting.key(), kind=posting.kind, task_id=task_id,
                 memo=posting.memo or None, created_at=now) for posting in decision.postings]
    return rows, books



async def write_postings(session: AsyncSession, rows: list[dict[str, Any]],
                         books: list[tuple[str, list[tuple[str, int, str]]]]) -> None:
    """Write ledger transactions and their entries: two statements however many there are."""
    # A key already on the books fails here (unique), and so does the whole decision.
    ids = {key: txn_id for txn_id, key in await insert_rows(
        session, t.LedgerTransaction, rows,
        returning=(t.LedgerTransaction.id, t.LedgerTransaction.key))}
    await insert_rows(session, t.LedgerEntry, [
        dict(transaction_id=ids[key], account=account, amount_minor=minor, currency=cur)
        for key, entries in books for account, minor, cur in entries])


def outbox_rows(repo: t.Repo, issue: IssueRef, task_id: int | None, decision: Decision, *,
                source: str, now: datetime, summary_delay: float) -> list[dict[str, Any]]:
    """The outbox rows of a decision's messages, each with the key that makes it once."""
    notices = 0
    queued: list[dict[str, Any]] = []
    for message in decision.messages:
        if message.kind in ("reaction", "reply"):
            # One reaction and one reply per comment (per edit, for commands an edit adds).
            key = f"{message.kind}:{repo.forge}:{message.comment_id}"
            if message.revision:
                key += f"@{message.revision}"
        elif message.kind == "summary":
            key = f"summary:{task_id}:{source}"
        else:
            notices += 1
            key = f"{message.kind}:{repo.id}:{issue.number}:{source}:{notices}"
        payload = {"repo_id": repo.id, "number": issue.number, "comment_id": message.comment_id,
                   "text": message.text}
        lane = (f"summary:{task_id}" if message.kind == "summary"
                else f"issue:{repo.id}:{issue.number}")
        due = now + timedelta(seconds=summary_delay) if message.kind == "summary" else now
        queued.append(dict(
            task_id=task_id, kind=message.kind, payload=payload, dedup_key=key[:255], lane=lane,
            state=t.OutboxState.PENDING, attempts=0, next_attempt_at=due, created_at=now))
    return queued


def audit_rows(task_id: int | None, decision: Decision, now: datetime) -> list[dict[str, Any]]:
    """The audit trail of a decision, as rows."""
    return [dict(task_id=task_id, actor=item.actor, action=item.action[:64], detail=item.detail,
                 created_at=now) for item in decision.trail]


async def save_decision(session: AsyncSession, repo: t.Repo, issue: IssueRef,
                        decision: Decision, *, source: str, now: datetime,
                        summary_delay: float = 0.0) -> int | None:
    """Write a decision; `source` names what caused it (a delivery, a command line, a sweep)
    and keys its outbox messages, so the same cause never queues the same message twice.
    A summary is due `summary_delay` seconds later: the changes of a burst then coalesce into
    one edit. Returns the task id, if there is a task."""
    b = decision.bounty
    task_id = (await _save_task(session, repo, b, now, decision.before)
               if b is not None else None)
    await write_postings(session, *posting_rows(decision, task_id, now))
    await insert_rows(session, t.Outbox, outbox_rows(
        repo, issue, task_id, decision, source=source, now=now, summary_delay=summary_delay),
        skip_conflicts=True)
    if decision.payments:
        await queue_requests(session, repo, issue.number, task_id, decision.payments, now)
    await insert_rows(session, t.AuditEvent, audit_rows(task_id, decision, now))
    return task_id

def issue_of(repo: t.Repo, task: t.Task) -> IssueRef:
    """The forge issue of a stored task, as the rules name it."""
    return IssueRef(repo.forge, repo.full_path, task.number, task.title, task.url)


def policy_of(settings: Any, repo: t.Repo) -> Policy:
    """The rules' policy for a stored repo: the settings, with the repo's locale and currency."""
    return policy_from_settings(settings, locale=repo.locale, currency=repo.currency)


async def decide_on_task(session: AsyncSession, settings: Any, task_id: int, event: Event, *,
                         source: str, now: datetime, actor: str) -> Decision:
    """Apply one event to a stored task through the rules and write the decision, in the
    caller's transaction (the task row locked on PostgreSQL). For what happens outside a
    forge delivery: a command line action, a payment provider's outcome. A `Refused` from the
    rules is raised to the caller, and nothing is written."""
    task = await session.get(t.Task, task_id)
    if task is None:
        raise LookupError(f"task {task_id} is gone")
    repo = await session.get(t.Repo, task.repo_id)
    assert repo is not None  # a foreign key
    bounty = await load_bounty(session, repo, task.number, lock=True)
    issue = issue_of(repo, task)
    decision = decide_event(bounty, issue, event, policy_of(settings, repo), now, Actor(actor))
    await save_decision(session, repo, issue, decision, source=source, now=now)
    return decision


async def queue_reply(session: AsyncSession, op: t.PaymentOp, text: str, now: datetime) -> None:
    """Answer the comment that led to `op` (the pledge, the `/payout-account`) with `text`,
    through the outbox; once per operation."""
    repo = await session.get(t.Repo, op.repo_id) if op.repo_id is not None else None
    if repo is None or op.number is None:
        log.warning("payments.no_reply_target op=%s", op.id)
        return
    issue = IssueRef(repo.forge, repo.full_path, op.number)
    kind = "reply" if op.comment_id else "notice"
    # The revision keeps it apart from the rules' own reply to the same comment, if any.
    message = Message(kind, comment_id=op.comment_id, text=text, revision=f"payment-{op.id}")
    await save_decision(session, repo, issue, Decision(None, messages=[message]),
                        source=f"payment:{op.id}", now=now)



__all__ = ["audit_rows", "child_values", "created", "decide_on_task", "ensure_repo", "issue_of",
           "load_bounty", "load_bounty_by_id", "outbox_rows", "policy_of", "posting_rows",
           "queue_reply", "repo_ref", "save_decision", "stored_repo", "task_values", "to_bounty",
           "write_postings"]
