"""The payment worker's looks at Stripe: checkout sessions left open past `poll_every`, and
the accounts of developers whose payouts wait (webhooks that never came, or a Connect
endpoint not set up). `PaymentWorker.run_once` ends each round with them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.clock import Clock
from bountybot.config import Settings
from bountybot.logs import event
from bountybot.payments.ops import OpState, ops_for, payout_account
from bountybot.payments.stripe_api import StripeGateway
from bountybot.payments.stripe_events import apply_session, set_ready
from bountybot.providers.base import PaymentKind
from bountybot.storage import tables as t
from bountybot.storage.uow import LATER, UnitOfWork

log = logging.getLogger(__name__)


@dataclass
class Polls:
    """What the polls need, given by the `PaymentWorker` that runs them; `wrote` asks its
    unit of work to tell the outbox after the commit."""

    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    gateway: StripeGateway
    clock: Clock
    wrote: Callable[[UnitOfWork], None]
    poll_every: float = 3600.0
    batch: int = 10

    async def sessions(self) -> int:
        """Ask Stripe about checkout sessions still open after `poll_every`: a paid or expired
        one whose webhook never came is applied as the webhook would have been."""
        now = self.clock()
        async with self.sessionmaker() as session:
            due = list((await session.exec(
                select(t.PaymentOp.id, t.PaymentOp.session_id)
                .where(t.PaymentOp.kind == PaymentKind.CHECKOUT.value,
                       t.PaymentOp.state == OpState.DONE, t.PaymentOp.status == "open",
                       t.PaymentOp.next_attempt_at <= now)
                .order_by(col(t.PaymentOp.id)).limit(self.batch))).all())
        looked = 0
        for op_id, session_id in due:
            if not session_id:
                continue
            try:
                found = await asyncio.to_thread(self.gateway.retrieve_checkout_session,
                                                session_id)
            except Exception as error:  # noqa: BLE001 - one failed look must not stop the poll
                event(log, "payments.poll_failed", logging.WARNING, op=op_id, error=str(error))
                continue
            async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
                op = await uow.session.get(t.PaymentOp, op_id, with_for_update=True)
                if op is None or op.status != "open" or op.state != OpState.DONE:
                    continue
                obj = {**asdict(found), "currency": (found.currency or "").upper()}
                await apply_session(uow.session, self.settings, op, obj,
                                    "checkout.session.retrieved",
                                    source=f"payment:poll:{op_id}:{now.isoformat()}", now=now)
                op.next_attempt_at = now + timedelta(seconds=self.poll_every)
                self.wrote(uow)
            looked += 1
        return looked

    async def accounts(self) -> int:
        """Ask Stripe, every `poll_every`, whether the accounts that payouts wait for can take
        transfers now; those that can get their payouts sent."""
        now = self.clock()
        op = t.PaymentOp
        async with self.sessionmaker() as session:
            waiting = list((await session.exec(
                select(op.forge, op.login).where(
                    op.kind == PaymentKind.TRANSFER.value, op.state == OpState.WAITING,
                    op.next_attempt_at <= now).distinct())).all())
            accounts = {(forge, login): await payout_account(session, forge or "", login or "")
                        for forge, login in waiting}
        for (forge, login), account in accounts.items():
            ready = False
            if account is not None:
                try:
                    found = await asyncio.to_thread(self.gateway.retrieve_account,
                                                    account.account_id)
                    ready = found.transfers_active
                except Exception as error:  # noqa: BLE001 - one failed look must not stop the poll
                    event(log, "payments.poll_failed", logging.WARNING, account=account.id,
                          error=str(error))
            async with UnitOfWork(self.sessionmaker, priority=LATER) as uow:
                s = uow.session
                if ready and account is not None:
                    mine = await s.get(t.PayoutAccount, account.id, with_for_update=True)
                    assert mine is not None
                    await set_ready(s, mine, True, now)
                    self.wrote(uow)
                for row in await ops_for(s, kind=PaymentKind.TRANSFER.value,
                                         state=OpState.WAITING, forge=forge, login=login):
                    row.next_attempt_at = now + timedelta(seconds=self.poll_every)
        return len(accounts)
