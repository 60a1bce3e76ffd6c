"""Random bounties on the Stripe provider with Stripe failing at random: refusals, server errors,
rate limits and answers that come after the gateway gave up (the work done all the same).

Through the rules, the database (SQLite), the Stripe events as the webhook applies them and the
payment worker, against the local fake Stripe; no forge and no HTTP door (both tested in
test_stripe_flow.py), so that many stories run quickly. After every step the books pass the
audit; at the end, once the worker has settled everything it can, Stripe and the books agree:
every transfer at Stripe is a payout paid once with it, every refund gives back a pledge whose
money left the escrow, nothing was paid or refunded twice, and when no call was refused for good,
`audit --provider` finds no difference. Then Stripe recovers (no more failures), an operator
revives what died (`bountybot payments retry`) and the developer finishes onboarding: every
payout ends paid (but one whose transfer Stripe refused for good, with a 400), and `audit
--provider` finds no difference, on every example."""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from bountybot.config import Settings
from bountybot.payments.backlog import retry_dead
from bountybot.payments.provider_audit import audit_provider
from bountybot.payments.stripe_api import StripeGateway
from bountybot.payments.stripe_events import apply_event
from bountybot.payments.worker import PaymentWorker
from bountybot.rules import Actor, Comment, IssueRef, LinkClosed, decide_comment, decide_event
from bountybot.rules.policy import policy_from_settings
from bountybot.states import PayoutState, PledgeState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit
from bountybot.storage.bounties import ensure_repo, load_bounty, save_decision
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import UnitOfWork

from fakes.stripe import FakeStripe

ISSUE = IssueRef("github", "commons/garden", 7, "Add a seed library",
                 "https://github.com/commons/garden/issues/7")
PATHS = {"checkout": r"^/v1/checkout/sessions$", "refund": r"^/v1/refunds$",
         "transfer": r"^/v1/transfers$", "account": r"^/v1/account"}

# What can go wrong at Stripe, or simply pass, between two steps of a story.
noise = st.one_of(
    st.tuples(st.just("fail"), st.sampled_from(sorted(PATHS)),
              st.sampled_from([400, 429, 500, 503])),
    st.tuples(st.just("slow"), st.sampled_from(["refund", "transfer", "checkout"])),
    st.tuples(st.just("run")),
    st.tuples(st.just("wait"), st.sampled_from([1, 30, 90])),
)


@st.composite
def stories(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """A bounty's skeleton (pledges, payments or not, then the work delivered or the task
    cancelled, then late payments), with Stripe's trouble drawn between every two steps."""
    out: list[tuple[Any, ...]] = []

    def then(*step: Any) -> None:
        out.append(step)
        out.extend(draw(st.lists(noise, max_size=3)))

    backers = draw(st.lists(st.sampled_from(["alice", "bob", "carol"]), min_size=1,
                            max_size=3, unique=True))
    for backer in backers:
        then("say", backer, f"/pledge {draw(st.sampled_from([15, 25, 40]))}")
    then("run")
    for backer in backers:
        then(*draw(st.sampled_from([("pay", 0), ("pay", 1), ("expire", 0),
                                    ("say", backer, "/withdraw")])))
    if draw(st.booleans()):
        then("say", "dave", "/claim")
        then("merge")
        then("run")
        then("say", "dave", "/payout-account")
        then("run")
        then("onboard")
    else:
        then("say", "maya", "/cancel")
    for _ in range(draw(st.integers(0, 2))):
        then("pay", draw(st.integers(0, 2)))  # a late payment, if a link is still open
    return out


@dataclass
class World:
    """One story's bot, without its forge: the database, the worker, the fake Stripe."""

    stripe: FakeStripe
    settings: Settings
    sessionmaker: Any
    worker: PaymentWorker
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    comments: itertools.count = field(default_factory=lambda: itertools.count(1))
    refused_for_good: bool = False

    async def decide(self, what: Comment | LinkClosed, source: str) -> None:
        async with UnitOfWork(self.sessionmaker) as uow:
            repo = await ensure_repo(uow.session, "github", "42", ISSUE.repo)
            bounty = await load_bounty(uow.session, repo, ISSUE.number, lock=True)
            policy = policy_from_settings(self.settings)
            decision = (decide_comment(bounty, ISSUE, what, policy, self.now)
                        if isinstance(what, Comment)
                        else decide_event(bounty, ISSUE, what, policy, self.now))
            await save_decision(uow.session, repo, ISSUE, decision, source=source, now=self.now)

    async def deliver(self, stripe_event: dict[str, Any]) -> None:
        async with UnitOfWork(self.sessionmaker) as uow:
            await apply_event(uow.session, self.settings, stripe_event, self.now)

    async def step(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "say":
            number = next(self.comments)
            comment = Comment(str(number), Actor(step[1], is_maintainer=step[1] == "maya"),
                              step[2])
            await self.decide(comment, f"comment:{number}")
        elif kind == "merge":
            await self.decide(LinkClosed(5, "dave", merged=True), "merge")
        elif kind in ("pay", "expire"):
            open_ = [s for s in self.stripe.sessions.values() if s["status"] == "open"]
            if open_:
                session = open_[step[1] % len(open_)]["id"]
                made = self.stripe.pay(session) if kind == "pay" else self.stripe.expire(session)
                await self.deliver(made)
        elif kind == "onboard":
            for account, found in self.stripe.accounts.items():
                if found["capabilities"].get("transfers") != "active":
                    await self.deliver(self.stripe.complete_onboarding(account))
        elif kind == "fail":
            self.stripe.fail_next("POST", PATHS[step[1]], step[2])
        elif kind == "slow":
            self.stripe.delay_next("POST", PATHS[step[1]], 0.3)
        elif kind == "run":
            await self.worker.run_once()
        else:
            self.now += timedelta(minutes=step[1])

    async def settle(self) -> None:
        """Every retry due, every lookup made, until nothing is left to do."""
        for _ in range(8):
            self.now += timedelta(hours=2)
            await self.worker.run_once()

    async def books_hold(self) -> None:
        report = await run_audit(self.sessionmaker)
        assert report.ok, report.render()


async def story(steps_: list[tuple[Any, ...]], db: Path) -> None:
    stripe = await FakeStripe.start()
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    gateway = StripeGateway(stripe.api_key, api_base=stripe.url, timeout=0.15)
    try:
        config = Settings.model_validate({
            "database": {"url": f"sqlite+aiosqlite:///{db}"},
            "payments": {"provider": "stripe"},
            "stripe": {"api_key": stripe.api_key, "webhook_secret": "whsec_property_0123",
                       "api_base": stripe.url},
            "server": {"public_url": "https://bounties.example.org"},
        })
        sessionmaker = create_sessionmaker(engine)
        world = World(stripe, config, sessionmaker, None)  # type: ignore[arg-type]
        world.worker = PaymentWorker(sessionmaker, config, gateway, clock=lambda: world.now,
                                     base_delay=60.0, max_delay=600.0, max_attempts=6,
                                     rng=random.Random(3))
        await world.step(("say", "maya", "/goal 40"))
        for step in steps_:
            await world.step(step)
            await world.books_hold()
        await world.settle()
        await world.books_hold()
        await agree(world)
        await recover(world)
        await world.books_hold()
        await all_paid(world)
        await provider_audit_after_recovery(world)
    finally:
        gateway.close()
        await engine.dispose()
        await stripe.close()


async def agree(world: World) -> None:
    """Stripe and the books tell the same story."""
    stripe = world.stripe
    async with world.sessionmaker() as session:
        payouts = {p.id: p for p in (await session.exec(select(t.Payout))).all()}
        pledges = {p.id: p for p in (await session.exec(select(t.Pledge))).all()}
        ops = list((await session.exec(select(t.PaymentOp))).all())
    groups: dict[str, list[dict[str, Any]]] = {}
    for transfer in stripe.transfers.values():
        groups.setdefault(transfer["transfer_group"], []).append(transfer)
    for group, made in groups.items():
        assert len(made) == 1, f"{group} paid {len(made)} times"
        payout = payouts[int(group.removeprefix("payout-"))]
        assert payout.state == PayoutState.PAID and payout.reference == made[0]["id"]
        assert made[0]["amount"] == payout.amount_minor
    for payout in payouts.values():
        if payout.state == PayoutState.PAID:
            assert f"payout-{payout.id}" in groups
    refunded: dict[int, int] = {}
    for refund in stripe.refunds.values():
        pledge_id = int(refund["metadata"]["pledge_id"])
        refunded[pledge_id] = refunded.get(pledge_id, 0) + refund["amount"]
    for pledge_id, amount in refunded.items():
        pledge = pledges[pledge_id]
        assert amount == pledge.amount_minor, f"pledge {pledge_id}: {amount} back"
        assert pledge.state in (PledgeState.REFUNDED, PledgeState.WITHDRAWN)
    assert all(v >= 0 for v in stripe.available.values())
    dead = [op for op in ops if op.state in (t.PaymentOpState.FAILED, t.PaymentOpState.DEAD)]
    if not dead:
        report = await audit_provider(world.sessionmaker, world.worker.caller.gateway)
        assert report.ok, report.render()


async def provider_audit_after_recovery(world: World) -> None:
    """On every example: `audit --provider` finds no difference but the refunds Stripe refused
    for good (the books owe the backer, Stripe sent nothing), and names each of those."""
    async with world.sessionmaker() as session:
        ops = list((await session.exec(select(t.PaymentOp))).all())
    assert not [op for op in ops if op.state == t.PaymentOpState.DEAD]
    refused = {f"pledge {op.pledge_id} " for op in ops if op.kind == "refund"
               and op.state == t.PaymentOpState.FAILED}
    report = await audit_provider(world.sessionmaker, world.worker.caller.gateway)
    named = {head for head in refused for problem in report.problems if problem.startswith(head)}
    assert named == refused, report.render()
    assert all(any(problem.startswith(head) for head in refused)
               for problem in report.problems), report.render()


async def recover(world: World) -> None:
    """Stripe works again: what was still to fail or lag no longer does, an operator revives
    the operations that ran out of tries, the developer asks for an account again (in case the
    first ask was refused) and finishes onboarding, and the worker settles."""
    world.stripe._failures.clear()  # the fake's pending trouble (fakes/recording.py)
    world.stripe._delays.clear()
    await retry_dead(world.sessionmaker, now=world.now)
    await world.settle()
    async with world.sessionmaker() as session:
        payouts = (await session.exec(select(t.Payout))).all()
    if payouts:
        await world.step(("say", "dave", "/payout-account"))
        await world.step(("run",))
        await world.step(("onboard",))
    await world.settle()


async def all_paid(world: World) -> None:
    """Every payout is paid, but one whose transfer Stripe refused for good (a 400): that one
    is failed, for an operator to look at, and no transfer was made for it."""
    async with world.sessionmaker() as session:
        payouts = list((await session.exec(select(t.Payout))).all())
        ops = list((await session.exec(select(t.PaymentOp))).all())
    refused = {op.payout_id for op in ops if op.kind == "transfer"
               and op.state == t.PaymentOpState.FAILED}
    for payout in payouts:
        expected = PayoutState.FAILED if payout.id in refused else PayoutState.PAID
        assert payout.state == expected, (payout.id, payout.state, [
            (op.kind, op.state, op.last_error) for op in ops])


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps_=stories())
def test_stripe_failing_at_random_never_loses_or_doubles_money(steps_, sqlite_template,
                                                               tmp_path):
    db = tmp_path / "story.db"
    shutil.copyfile(sqlite_template, db)
    asyncio.run(story(steps_, db))
