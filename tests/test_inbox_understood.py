"""A delivery is read and understood once: when a batch commits early (webhooks wait for the
database), the deliveries it understood but left are applied next turn without being parsed,
normalized and asked about again; what waits longer than a minute is understood afresh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from test_inbox import NOW, comment, label
from test_inbox_isolation import pledges, row, states, store

from bountybot import inbox, inbox_reading
from bountybot.config import Settings
from bountybot.inbox import DeliveryWorker
from bountybot.states import PledgeState
from bountybot.storage.engine import create_engine, create_sessionmaker
from bountybot.storage.uow import UnitOfWork

from clocks import Clock


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[Any]:
    engine = create_engine(db_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


class Crowded(UnitOfWork):
    """A unit of work in which a webhook always waits: a batch commits after each delivery."""

    @property
    def contended(self) -> bool:
        return True


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The deliveries the worker normalizes (the real `normalize`, counted)."""
    names: list[str] = []
    real = inbox_reading.normalize

    def counted(forge: str, kind: str, payload: Any, settings: Any, name: str) -> Any:
        names.append(name)
        return real(forge, kind, payload, settings, name)

    monkeypatch.setattr(inbox, "normalize", counted)
    monkeypatch.setattr(inbox, "UnitOfWork", Crowded)
    return names


async def test_a_batch_cut_short_is_not_read_again(sessionmaker: Any, read: list[str]):
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        *(row(f"d0{i}", "issue_comment", comment(1, 10 + i, f"backer{i}", "/pledge 5"))
          for i in range(1, 4)),
    ])
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=Clock(NOW))
    worker.yield_after = 0.0  # no time to go on: each turn stops after one delivery
    finished = [await worker.run_once() for _ in range(5)]
    assert finished == [1, 1, 1, 1, 0]  # one a turn: each turn found webhooks waiting
    assert sorted(read) == ["d00", "d01", "d02", "d03"]  # each understood once
    assert set((await states(sessionmaker)).values()) == {("handled", 0)}
    assert await pledges(sessionmaker, 1) == [(f"backer{i}", PledgeState.HELD, 500)
                                              for i in range(1, 4)]


async def test_a_batch_goes_on_for_its_time_while_webhooks_wait(sessionmaker: Any,
                                                                 read: list[str]):
    """Webhooks wait (`Crowded`), but the batch has not decided for `yield_after` yet: it goes
    on, and its deliveries are written together."""
    await store(sessionmaker, [
        row("d00", "issues", label(1)),
        *(row(f"d0{i}", "issue_comment", comment(1, 10 + i, f"backer{i}", "/pledge 5"))
          for i in range(1, 4)),
    ])
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=Clock(NOW))
    worker.yield_after = 3600.0
    assert [await worker.run_once() for _ in range(2)] == [4, 0]
    assert sorted(read) == ["d00", "d01", "d02", "d03"]
    assert await pledges(sessionmaker, 1) == [(f"backer{i}", PledgeState.HELD, 500)
                                              for i in range(1, 4)]


async def test_what_waits_longer_than_a_minute_is_understood_afresh(sessionmaker: Any,
                                                                      read: list[str]):
    await store(sessionmaker, [row("d00", "issues", label(1)),
                               row("d01", "issue_comment", comment(1, 11, "ada", "/pledge 5"))])
    clock = Clock(NOW)
    worker = DeliveryWorker(sessionmaker, Settings(), {}, clock=clock)
    worker.yield_after = 0.0  # no time to go on: each turn stops after one delivery
    assert await worker.run_once() == 1
    clock.move(seconds=(inbox.UNDERSTOOD_FOR + timedelta(seconds=1)).total_seconds())
    assert await worker.run_once() == 1
    assert read == ["d00", "d01", "d01"]  # who maintains the repo may have changed meanwhile
