"""The payment worker: makes the provider calls the decisions queued (`payment_op`), once each,
with retries, and applies their outcomes through the rules.

One round (`run_once`), safe on several replicas at once:

1. **Queue transfers**: every released, undisputed, pending payout without a transfer gets one,
   `pending` when its developer's account is ready, else `waiting` (and the developer is told
   to run `/payout-account`). The operation's unique key makes this happen once per payout.
2. **Lease**, in a short unit of work: the due `pending` and `unknown` operations (`FOR UPDATE
   SKIP LOCKED` on PostgreSQL) get one more attempt and `next_attempt_at = now + lease`; a
   replica that dies mid-call leaves them due again when the lease is over. A transfer whose
   payout was marked paid by hand meanwhile is not sent.
3. **Call** the provider, holding no database lock (`bountybot.payments.calls`).
4. **Finish**, one unit of work per operation: its outcome, and what the rules make of it
   (`PayoutPaid` with the transfer's id, a pledge that lapses, a link replied through the
   outbox), committed together. A failure is tried again with the same key after an
   exponential backoff with jitter, until `max_attempts`; then it is dead, and logged (and
   listed by `bountybot payments`, which can give it another round: `bountybot.payments.backlog`).
   An outcome that may hide a success (a timeout) is `unknown`: the next try asks first.
5. **Look** at checkout sessions left open past `poll_every`, and at the accounts of developers
   whose payouts wait (webhooks that never came, or a Connect endpoint not set up):
   `bountybot.payments.polls`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.clock import Clock, backoff
from bountybot.config import Settings
from bountybot.i18n import translate
from bountybot.logs import event
from bountybot.loops import wait_any
from bountybot.metrics import Metrics
from bountybot.money import Money, format_money
from bountybot.payments.calls import Caller, LeasedOp, Outcome
from bountybot.payments.ops import OpState, insert_ops, op_values, ops_for, payout_account
from bountybot.payments.polls import Polls
from bountybot.payments.stripe_api import StripeGateway, idempotency_key
from bountybot.payments.stripe_events import set_ready
from bountybot.providers.base import PaymentKind
from bountybot.rules import PayoutAwaitingAccount, PayoutFailed, PayoutPaid, PledgeLapsed, Refused
from bountybot.states import PayoutState, PledgeState
from bountybot.storage import tables as t
from bountybot.storage.bounties import decide_on_task, queue_reply
from bountybot.storage.uow import LATER, UnitOfWork, for_update_skip_locked

log = logging.getLogger(__name__)

DUE = (OpState.PENDING, OpState.UNKNOWN)


@dataclass(frozen=True)
class PaymentOptions:
    """How `bountybot.service` tunes its `PaymentWorker`: the worker's own arguments, whose
    defaults are these (tests shorten the backoff and seed the jitter)."""

    max_attempts: int = 8
    base_delay: float = 30.0
    max_delay: float = 3600.0
    lease: float = 120.0
    wait_delay: float = 3600.0
    poll_every: float = 3600.0
    batch: int = 10
    rng: random.Random | None = None


class PaymentWorker:
    """Makes due payment operations through `gateway`; `run_once` is one round."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings,
                 gateway: StripeGateway, *, clock: Clock,
                 on_written: Callable[[], None] | None = None,
                 max_attempts: int = PaymentOptions.max_attempts,
                 base_delay: float = PaymentOptions.base_delay,
                 max_delay: float = PaymentOptions.max_delay,
                 lease: float = PaymentOptions.lease,
                 wait_delay: float = PaymentOptions.wait_delay,
                 poll_every: float = PaymentOptions.poll_every,
                 batch: int = PaymentOptions.batch, rng: random.Random | None = None,
                 metrics: Metrics | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.caller = Caller(gateway)
        self.clock = clock
        self.on_written = on_written
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.lease = lease
        self.wait_delay = wait_delay  # for money to become available on our balance
        self.poll_every = poll_every
        self.batch = batch
        self.rng = rng or random.Random()
        self.polls = Polls(sessionmaker, settings, gateway, clock, self._wrote,
                           poll_every=poll_every, batch=batch)

    async def run_once(self, rounds: int = 3) -> int:
        """One round; returns how many operations were queued, finished or looked at."""
        count = await self.queue_transfers()
        for _ in range(rounds):
            jobs = await self._lease()
            if not jobs:
                break
            outcomes = await asyncio.gather(*(self.caller.perform(job) for job in jobs))
            for job, outcome in zip(jobs, outcomes, strict=True):
                self.metrics.payment_call(job.kind, outcome.what)
                await self._finish(job, outcome)
            count += len(jobs)
        return count + await self.polls.sessions() + await self.polls.accounts()

    async def run_forever(self, wake: asyncio.Event, stop: asyncio.Event,
                          idle: float = 30.0) -> None:
        """`run_once` until `stop`; in between, wait for `wake` (new work) or `idle` seconds
        (retries come due). Errors (the database going away) are logged; the loop goes on."""
        while not stop.is_set():
            wake.clear()
            try:
                busy = await self.run_once()
            except Exception:
                log.exception("payments.loop_failed")
                busy = 0
            if not busy:
                await wait_any((wake, stop), idle)

    def _wrote(self, uow: UnitOfWork) -> None:
        if self.on_written is not None:
            uow.after_commit(self.on_written)

    # -- 1. transfers for due payouts -------------------------------------------------------

    async def queue_transfers(self) -> int:
        now = self.clock()
        op = t.PaymentOp
        has_transfer = exists().where(col(op.payout_id) == col(t.Payout.id),
                                      col(op.kind) == PaymentKind.TRANSFER.value)
        async with self.sessionmaker() as session:
            ids = list((await session.exec(
                select(t.Payout.id).join(t.Task, col(t.Task.id) == t.Payout.task_id)
                .where(t.Payout.state == PayoutState.PENDING,
                       col(t.Payout.released_at).is_not(None),
                       col(t.Task.disputed_by).is_(None), ~has_transfer)
                .order_by(col(t.Payout.id)).limit(100))).all())
        if not ids:
            return 0
        queued = 0
        async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
            s = uow.session
            for payout_id in ids:
                payout = await s.get(t.Payout, payout_id)
                task = await s.get(t.Task, payout.task_id) if payout else None
                if (payout is None or task is None or payout.state != PayoutState.PENDING
                        or payout.released_at is None or task.disputed_by is not None):
                    continue  # changed since it was read
                repo = await s.get(t.Repo, task.repo_id)
                assert repo is not None and payout_id is not None
                account = await payout_account(s, repo.forge, payout.developer)
                ready = account is not None and account.ready
                made = await insert_ops(s, [op_values(
                    PaymentKind.TRANSFER, idempotency_key("transfer", "payout", payout_id), now,
                    state=OpState.PENDING if ready else OpState.WAITING, task_id=task.id,
                    payout_id=payout_id, repo_id=repo.id, number=task.number, forge=repo.forge,
                    login=payout.developer, amount_minor=payout.amount_minor,
                    currency=payout.currency)])
                if made and not ready:
                    await decide_on_task(s, self.settings, t.id_of(task),
                                         PayoutAwaitingAccount(payout_id),
                                         source=f"payment:await:{payout_id}", now=now,
                                         actor="stripe")
                queued += len(made)
            if queued:
                self._wrote(uow)
        return queued

    # -- 2. lease ---------------------------------------------------------------------------

    async def _lease(self) -> list[LeasedOp]:
        now = self.clock()
        async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
            s = uow.session
            stmt = (select(t.PaymentOp)
                    .where(col(t.PaymentOp.state).in_(DUE), t.PaymentOp.next_attempt_at <= now)
                    .order_by(col(t.PaymentOp.id)).limit(self.batch))
            rows = list(await s.exec(for_update_skip_locked(stmt, uow.dialect)))
            jobs = []
            for row in rows:
                if row.kind == PaymentKind.CHECKOUT.value and row.state == OpState.PENDING:
                    pledge = await s.get(t.Pledge, row.pledge_id)
                    if pledge is None or pledge.state != PledgeState.PENDING:
                        # Withdrawn before its page was made: there is nothing to pay.
                        row.state, row.status, row.done_at = OpState.DONE, "not_needed", now
                        continue
                if row.kind == PaymentKind.TRANSFER.value:
                    payout = await s.get(t.Payout, row.payout_id)
                    if payout is None or payout.state in (PayoutState.PAID,
                                                          PayoutState.CANCELLED):
                        # Marked paid by hand (or taken back) since: sending would pay twice.
                        row.state, row.status, row.done_at = OpState.DONE, "not_needed", now
                        event(log, "payments.not_needed", logging.WARNING, op=row.id,
                              payout=row.payout_id,
                              state=payout.state if payout is not None else "gone")
                        continue
                row.attempts += 1
                row.next_attempt_at = now + timedelta(seconds=self.lease)
                jobs.append(await self._job(s, row))
        return jobs

    async def _job(self, s: AsyncSession, row: t.PaymentOp) -> LeasedOp:
        """What the call needs, read now: the issue to come back to, the payment to refund,
        the account to pay."""
        kind = PaymentKind(row.kind)
        task = await s.get(t.Task, row.task_id) if row.task_id is not None else None
        repo = await s.get(t.Repo, row.repo_id) if row.repo_id is not None else None
        url = task.url if task is not None and task.url.startswith(("https://", "http://")) \
            else self.settings.server.public_url
        where = f"{repo.full_path}#{row.number}" if repo is not None else "a task"
        intent = row.payment_intent
        if kind == PaymentKind.REFUND and intent is None:
            paid = await ops_for(s, kind=PaymentKind.CHECKOUT.value, pledge_id=row.pledge_id)
            intent = paid[0].payment_intent if paid else None
        account_id = None
        if kind in (PaymentKind.TRANSFER, PaymentKind.ACCOUNT):
            account = await payout_account(s, row.forge or "", row.login or "")
            if account is not None and (account.ready or kind == PaymentKind.ACCOUNT):
                account_id = account.account_id
        title = f": {task.title}" if task is not None and task.title else ""
        return LeasedOp(id=t.id_of(row), kind=kind, key=row.idempotency_key,
                        attempts=row.attempts,
                        unknown=row.state == OpState.UNKNOWN or row.attempts > 1,
                        pledge_id=row.pledge_id, payout_id=row.payout_id, task_id=row.task_id,
                        forge=row.forge, login=row.login, amount_minor=row.amount_minor,
                        currency=row.currency, payment_intent=intent, account_id=account_id,
                        description=f"Bounty for {where}{title}"[:250], return_url=url)

    # -- 4. finish --------------------------------------------------------------------------

    async def _finish(self, job: LeasedOp, outcome: Outcome) -> None:
        now = self.clock()
        async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
            s = uow.session
            op = await s.get(t.PaymentOp, job.id, with_for_update=True)
            if op is None or op.attempts != job.attempts or op.state not in DUE:
                # Its lease ran out and another worker took it: that one asks Stripe first.
                event(log, "payments.lease_lost", logging.WARNING, op=job.id, kind=job.kind,
                      outcome=outcome.what)
                return
            op.last_error = outcome.error[:2000] if outcome.error else None
            if outcome.what == "done":
                await self._done(s, op, outcome, now)
            elif outcome.what == "postponed":
                op.attempts -= 1  # no failure: the money is not there yet
                op.next_attempt_at = now + timedelta(seconds=self.wait_delay)
            elif outcome.what == "waiting":
                op.attempts -= 1
                op.state = OpState.WAITING
                account = await payout_account(s, op.forge or "", op.login or "")
                if account is not None:
                    await set_ready(s, account, False, now)
            elif outcome.what == "failed" or op.attempts >= self.max_attempts:
                op.state = OpState.FAILED if outcome.what == "failed" else OpState.DEAD
                await self._gave_up(s, op, now)
            else:  # retry, unknown
                if outcome.what == "unknown":
                    op.state = OpState.UNKNOWN
                op.next_attempt_at = now + timedelta(
                    seconds=backoff(op.attempts, self.base_delay, self.max_delay, self.rng))
            self._wrote(uow)
        level = logging.INFO if outcome.what in ("done", "waiting", "postponed") else \
            logging.ERROR if op.state in (OpState.FAILED, OpState.DEAD) else logging.WARNING
        event(log, f"payments.{op.state if op.state != OpState.PENDING else outcome.what}",
              level, op=op.id, kind=op.kind, attempt=job.attempts, key=op.idempotency_key,
              **({"error": outcome.error} if outcome.error else {}))

    async def _done(self, s: AsyncSession, op: t.PaymentOp, outcome: Outcome,
                    now: datetime) -> None:
        op.state, op.done_at = OpState.DONE, now
        kind = PaymentKind(op.kind)
        if outcome.session is not None:  # checkout
            op.session_id, op.url = outcome.session.id, outcome.session.url
            # Its webhook may have come first (a quick backer): what it said stands.
            op.status = op.status or outcome.session.status
            op.next_attempt_at = now + timedelta(seconds=self.poll_every)
            pledge = await s.get(t.Pledge, op.pledge_id)
            if pledge is not None and pledge.state == PledgeState.PENDING and op.url:
                await self._reply(s, op, "pledge.payment_link", backer=pledge.backer,
                                  amount=Money(pledge.amount_minor, pledge.currency),
                                  url=op.url)
        elif kind == PaymentKind.REFUND:
            op.refund_id = outcome.refund.id if outcome.refund else op.refund_id
            op.status = outcome.refund.status if outcome.refund else "already_refunded"
            s.add(t.AuditEvent(task_id=op.task_id, actor="stripe", action="pledge.refund_sent",
                               detail={"pledge": op.pledge_id, "refund": op.refund_id,
                                       "amount": op.amount_minor}, created_at=now))
        elif outcome.transfer is not None:
            op.transfer_id, op.account_id = outcome.transfer.id, outcome.transfer.destination
            op.status = "paid"
            assert op.task_id is not None and op.payout_id is not None
            try:
                # The source names the outcome: a revived transfer's first round may have
                # written a decision (PayoutFailed) whose summary would otherwise hide this one.
                await decide_on_task(s, self.settings, op.task_id,
                                     PayoutPaid(op.payout_id, outcome.transfer.id),
                                     source=f"payment:{op.id}:done", now=now, actor="stripe")
            except Refused as refusal:
                event(log, "payments.paid_refused", logging.ERROR, op=op.id,
                      payout=op.payout_id, transfer=outcome.transfer.id,
                      why=refusal.message("en"))
        elif outcome.account is not None:  # account
            await self._account_done(s, op, outcome, now)

    async def _account_done(self, s: AsyncSession, op: t.PaymentOp, outcome: Outcome,
                            now: datetime) -> None:
        assert outcome.account is not None and op.forge is not None and op.login is not None
        op.account_id, op.url = outcome.account.id, outcome.url
        ready = outcome.account.transfers_active
        op.status = "ready" if ready else "onboarding"
        account = await payout_account(s, op.forge, op.login)
        if account is None:
            account = t.PayoutAccount(forge=op.forge, login=op.login.lower(),
                                      account_id=outcome.account.id, created_at=now)
            s.add(account)
            await s.flush()
        await set_ready(s, account, ready, now)
        if ready:
            await self._reply(s, op, "payout_account.ready", developer=op.login)
        else:
            await self._reply(s, op, "payout_account.link", developer=op.login, url=op.url)

    async def _gave_up(self, s: AsyncSession, op: t.PaymentOp, now: datetime) -> None:
        """The call will not be made: what that means for the books and for people."""
        why = "Stripe refused it" if op.state == OpState.FAILED else "Stripe did not answer"
        kind = PaymentKind(op.kind)
        if kind == PaymentKind.CHECKOUT and op.task_id and op.pledge_id:
            await decide_on_task(s, self.settings, op.task_id,
                                 PledgeLapsed(op.pledge_id, "payment_unavailable", why),
                                 source=f"payment:{op.id}", now=now, actor="stripe")
        elif kind == PaymentKind.TRANSFER and op.task_id and op.payout_id:
            payout = await s.get(t.Payout, op.payout_id)
            if payout is not None and payout.state == PayoutState.PENDING:
                await decide_on_task(s, self.settings, op.task_id,
                                     PayoutFailed(op.payout_id, op.last_error or why),
                                     source=f"payment:{op.id}", now=now, actor="stripe")
            # else: failed in an earlier round (`bountybot payments retry` revived it)
        elif kind == PaymentKind.REFUND:
            # The books say the backer is owed it back; an operator must see to it.
            s.add(t.AuditEvent(task_id=op.task_id, actor="stripe", action="pledge.refund_failed",
                               detail={"pledge": op.pledge_id, "error": op.last_error},
                               created_at=now))
        elif kind == PaymentKind.ACCOUNT:
            await self._reply(s, op, "payout_account.unavailable", developer=op.login,
                              error=why)

    async def _reply(self, s: AsyncSession, op: t.PaymentOp, key: str, **params: Any) -> None:
        repo = await s.get(t.Repo, op.repo_id) if op.repo_id is not None else None
        locale = (repo.locale if repo is not None else None) or self.settings.bot.locale
        params = {k: format_money(v, locale) if isinstance(v, Money) else v
                  for k, v in params.items()}
        await queue_reply(s, op, translate(locale, key, **params), now=self.clock())
