"""Random interleavings of webhooks, edits, redeliveries and reconciliation of the same comments
and pull requests, thrown at the real app (signed GitHub webhooks, the local fake GitHub, the
real `Reconciler`), on SQLite.

Each example is a script of forge actions (a comment written or edited, by its author or a
maintainer; a pull request opened, edited before or after its merge, merged; in the task's repo
or in another one) and of deliveries: the webhook each action made is sent at once, late, never,
or again (under the same X-GitHub-Delivery id, or a new one), and reconciliation runs at random
points. A small model in this file says what must follow:

(a) a comment's command lines (as written, compared without case, counting repeats) are applied
    once each, whichever of its `created` webhook, its author's `edited` webhooks, a
    redelivery or reconciliation (which reads only comments unedited since written) brings them
    first: each backer holds the sum of the distinct `/pledge` lines of the versions so
    delivered, and `handled_comment` has one row per distinct line; an edit by someone else
    applies nothing.
(b) a task is paid (to its claimant, once) exactly when a pull request of its claimant in the
    task's own repo was merged and the bot learnt it: the `closed` webhook of a merge that closes
    the task, or reconciliation reading the merge (today's text when the pull request was not
    touched since its merge, else only for tasks it was linked to while open). An `edited`
    webhook of a closed pull request changes nothing; a merge in another repo never pays, and
    leaves a notice for a maintainer.

After each example the books audit clean and no delivery is pending or failed. One bot serves
all the examples of a run (starting one is slow); each example has issues and pulls of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlmodel import col, select

from bountybot.governor import Governor
from bountybot.reconcile import Reconciler
from bountybot.resources import SESSIONMAKER, SETTINGS
from bountybot.service import RUNTIME
from bountybot.states import PledgeState, TaskState
from bountybot.storage import tables as t
from bountybot.storage.books import run_audit

from fakes.github import FakeGitHub
from fixtures import payload
from github_harness import REPO, REPO_ID, GitHubBot

OTHER, OTHER_ID = "mallory/sandbox", 555_001
HELD = frozenset({PledgeState.HELD})
FUNDING = 1000  # each payout task holds €10, pledged by its claimant
CLAIMANT = "dave"

# Comment lines: (text, the command key it records or None, the money it pledges in cents).
# The key is the line without surrounding spaces and without case (DESIGN.md: "case-insensitive").
LINES: list[tuple[str, str | None, int]] = [
    ("/pledge 5", "/pledge 5", 500),
    ("/PLEDGE 5", "/pledge 5", 500),
    ("/pledge 7", "/pledge 7", 700),
    ("  /Pledge 7", "/pledge 7", 700),
    ("/pledge 2.50", "/pledge 2.50", 250),
    ("@bountybot pledge 3", "@bountybot pledge 3", 300),
    ("/pledge 0", "/pledge 0", 0),  # refused (a reply), but a command line all the same
    ("thanks!", None, 0),
    ("> /pledge 9", None, 0),  # a quote is no command
]
KEYS = {text: (key, cents) for text, key, cents in LINES}


def keys_of(body: str) -> dict[tuple[str, int], int]:
    """The model's reading of a comment: {(command key, occurrence): cents}."""
    seen: Counter[str] = Counter()
    out: dict[tuple[str, int], int] = {}
    for line in body.split("\n"):
        key, cents = KEYS[line]
        if key is not None:
            out[(key, seen[key])] = cents
            seen[key] += 1
    return out


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ForgeClock:
    """The fake GitHub's clock (and the reconciler's): moved two seconds before every forge
    action, since GitHub's timestamps are whole seconds and an edit must be seen as one."""

    def __init__(self) -> None:
        self.shift = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift

    def tick(self) -> None:
        self.shift += timedelta(seconds=2)


# -- scripts ---------------------------------------------------------------------------------

bodies = st.lists(st.sampled_from([text for text, _, _ in LINES]), min_size=1, max_size=3)
targets = st.sampled_from([[1], [2], [1, 2], []])
# Between two forge actions: a webhook sent late or again (three times in four), or a sync.
extras = st.lists(st.tuples(st.sampled_from(["deliver", "deliver", "deliver", "sync"]),
                            st.integers(0, 40), st.booleans())
                  .map(lambda drawn: drawn if drawn[0] == "deliver" else ("sync",)), max_size=2)


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Each comment's and each pull request's life in its own order (written, then edited;
    opened, edited, merged, edited again), the lives interleaved at random, with webhooks sent
    at once (`now`) or later (`deliver`: any webhook made so far, again or not, under its
    first delivery id or a new one) and reconciliation between any two steps."""
    lives: list[list[tuple[Any, ...]]] = []
    life: list[tuple[Any, ...]]
    for k in range(draw(st.integers(1, 3))):
        life = [("write", k, draw(st.sampled_from(["alice", "bob"])), draw(bodies),
                 draw(st.booleans()))]
        for _ in range(draw(st.integers(0, 2))):
            life.append(("edit", k, draw(st.sampled_from(["author", "author", "maya"])),
                         draw(st.sampled_from(["new", "add", "prose", "drop", "case"])),
                         draw(bodies), draw(st.booleans())))
        lives.append(life)
    for j in range(draw(st.integers(1, 3))):
        life = [("open", j, draw(st.sampled_from(["own", "own", "other"])),
                 draw(st.sampled_from([CLAIMANT, CLAIMANT, CLAIMANT, "erin"])),
                 draw(targets), draw(st.booleans()), draw(st.booleans()))]
        for _ in range(draw(st.integers(0, 1))):
            life.append(("pedit", j, draw(targets), draw(st.booleans())))
        if draw(st.integers(0, 3)):
            life.append(("merge", j, draw(st.booleans())))
            for _ in range(draw(st.integers(0, 1))):
                life.append(("pedit", j, draw(targets), draw(st.booleans())))
        lives.append(life)
    script: list[tuple[Any, ...]] = []
    while any(lives):
        going = [life for life in lives if life]
        script.append(going[draw(st.integers(0, len(going) - 1))].pop(0))
        script.extend(draw(extras))
    return script


# -- the model -------------------------------------------------------------------------------


@dataclass
class Note:
    """A comment on the example's pledge issue, as the fake has it and as the model expects."""

    id: int
    author: str
    versions: list[str]
    applied: dict[tuple[str, int], int] = field(default_factory=dict)

    def deliver(self, body: str) -> None:
        self.applied.update(keys_of(body))


@dataclass
class Pull:
    repo: str  # REPO or OTHER
    number: int
    author: str
    targets: frozenset[int]  # the example's tasks (1, 2) its text says it closes, now
    body: str
    while_open: set[int] = field(default_factory=set)  # every target while it was open
    merged: bool = False
    at_merge: frozenset[int] = frozenset()
    edited_after_merge: bool = False
    read_by_sync: bool = False
    linked: set[int] = field(default_factory=set)  # targets the bot has a link for

    @property
    def own(self) -> bool:
        return self.repo == REPO


@dataclass
class Sent:
    """A webhook a forge action made: sent at once, late, again, or never."""

    event: str
    data: dict[str, Any]
    effect: Any  # what the model expects once it is delivered (idempotent)
    ids: list[str] = field(default_factory=list)


@dataclass
class Example:
    pledge_issue: int
    tasks: dict[int, int]  # target (1, 2) -> issue number
    first_pull: int
    notes: dict[int, Note] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    must_pay: set[int] = field(default_factory=set)  # targets
    other_merges: set[tuple[int, int]] = field(default_factory=set)  # (target, pull number)


def edited(before: str, how: str, lines: list[str]) -> str:
    """A new version of a comment: new text, a line added, prose added, a line dropped, or a
    command's case changed (most edits keep most of what was there)."""
    old = before.split("\n")
    if how == "add":
        new = old + lines[:1]
    elif how == "prose":
        new = [*old, "thanks!"]
    elif how == "drop":
        new = old[:-1] or ["thanks!"]
    elif how == "case":
        swap = {"/pledge 5": "/PLEDGE 5", "/PLEDGE 5": "/pledge 5", "/pledge 7": "  /Pledge 7",
                "  /Pledge 7": "/pledge 7"}
        new = [swap.get(line, line) for line in old]
    else:
        new = lines
    return "\n".join(new[:3])


def body_of(pull_repo: str, targets: frozenset[int], tasks: dict[int, int],
            style: bool) -> str:
    """A pull request's text closing `targets`. In another repo `#N` is an issue of that repo
    (the model counts only `Codertocat/Hello-World#N` there); `style` varies the wording."""
    parts = ["A change."]
    for target in sorted(targets):
        number = tasks[target]
        if pull_repo == OTHER or not style:
            parts.append(f"Fixes {REPO}#{number}")
        else:
            parts.append(f"closes #{number}")
    if pull_repo == OTHER and style:
        parts.append(f"Fixes #{tasks[1]}")  # mallory/sandbox's own issue: nothing of ours
    return "\n".join(parts)


# -- the world -------------------------------------------------------------------------------


class World:
    def __init__(self, bot: GitHubBot, clock: ForgeClock) -> None:
        self.bot = bot
        self.fake = bot.fake
        self.clock = clock
        self.numbers = itertools.count(1000, 40)
        runtime = bot.app[RUNTIME]
        self.reconciler = Reconciler(bot.app[SESSIONMAKER], bot.app[SETTINGS], runtime.clients,
                                     clock, on_stored=runtime.wake_worker.set)

    @classmethod
    async def start(cls, db_url: str) -> World:
        clock = ForgeClock()
        fake = await FakeGitHub.start(clock=clock)
        # Many writes a minute (reactions, summaries): no secondary rate limit in this test.
        bot = await GitHubBot.start(db_url, fake,
                                    governor=Governor(per_minute=10**6, per_hour=10**7))
        fake.add_repo(OTHER, OTHER_ID)
        return cls(bot, clock)

    async def close(self) -> None:
        await self.bot.close()
        await self.fake.close()

    # -- payloads ---------------------------------------------------------------------------

    def comment_data(self, action: str, note: Note, version: int, sender: str,
                     number: int) -> dict[str, Any]:
        comment = self.fake._comments[note.id]
        data = payload("github", f"issue_comment.{action}")
        data["issue"].update(number=number,
                             html_url=f"https://github.com/{REPO}/issues/{number}")
        data["comment"].update(id=note.id, body=note.versions[version],
                               created_at=iso(comment.created_at),
                               updated_at=iso(comment.updated_at))
        data["comment"]["user"].update(login=note.author, type="User")
        data["sender"].update(login=sender)
        if action == "edited":
            data["changes"] = {"body": {"from": note.versions[version - 1]}}
        return data

    def pull_data(self, action: str, pull: Pull, *, before: str | None = None
                  ) -> dict[str, Any]:
        data = payload("github", "pull_request.opened")
        data["action"] = action
        data["number"] = pull.number
        repo_id = REPO_ID if pull.own else OTHER_ID
        data["repository"].update(id=repo_id, full_name=pull.repo, name=pull.repo.split("/")[1],
                                  html_url=f"https://github.com/{pull.repo}")
        data["pull_request"].update(
            number=pull.number, body=pull.body, merged=pull.merged,
            state="closed" if pull.merged else "open",
            merged_at=iso(self.clock()) if pull.merged else None,
            html_url=f"https://github.com/{pull.repo}/pull/{pull.number}")
        data["pull_request"]["user"]["login"] = pull.author
        if before is not None:
            data["changes"] = {"body": {"from": before}}
        return data

    # -- one example ------------------------------------------------------------------------

    async def setup(self) -> Example:
        base = next(self.numbers)
        # Past the two minutes reconciliation reads again (its overlap): it reads this example.
        self.clock.shift += timedelta(minutes=10)
        ex = Example(pledge_issue=base, tasks={1: base + 1, 2: base + 2}, first_pull=base + 10)
        await self.bot.label(ex.pledge_issue)
        for number in ex.tasks.values():
            await self.bot.label(number)
            # One comment funds and claims it (fewer deliveries: examples are many).
            await self.bot.comment(CLAIMANT, f"/pledge {FUNDING // 100}\n/claim", number)
        # No waiting: the worker applies deliveries in the order they came, these first.
        return ex

    async def send(self, sent: Sent, reuse: bool) -> None:
        delivery = sent.ids[0] if reuse and sent.ids else str(uuid.uuid4())
        sent.ids.append(delivery)
        response = await self.bot.post(sent.event, sent.data, delivery=delivery)
        assert response.status in (200, 202), response.status
        sent.effect()

    async def made(self, ex: Example, event: str, data: dict[str, Any], effect: Any,
                   now: bool) -> None:
        sent = Sent(event, data, effect)
        ex.sent.append(sent)
        if now:
            await self.send(sent, reuse=False)

    async def step(self, ex: Example, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "write":
            _, k, author, lines, now = step
            self.clock.tick()
            body = "\n".join(lines)
            note = Note(self.fake.add_comment(REPO, ex.pledge_issue, body, login=author),
                        author, [body])
            ex.notes[k] = note
            data = self.comment_data("created", note, 0, author, ex.pledge_issue)
            await self.made(ex, "issue_comment", data, lambda: note.deliver(body), now)
        elif kind == "edit":
            _, k, who, how, lines, now = step
            note = ex.notes[k]
            self.clock.tick()
            body = edited(note.versions[-1], how, lines)
            self.fake.edit_comment_text(note.id, body)
            note.versions.append(body)
            sender = note.author if who == "author" else "maya"
            data = self.comment_data("edited", note, len(note.versions) - 1, sender,
                                     ex.pledge_issue)
            effect: Any = (lambda: note.deliver(body)) if sender == note.author else (lambda: None)
            await self.made(ex, "issue_comment", data, effect, now)
        elif kind == "open":
            _, j, where, author, chosen, style, now = step
            self.clock.tick()
            repo = REPO if where == "own" else OTHER
            # Numbered in each repo from the same start: mallory's #N is not ours.
            number = ex.first_pull + sum(1 for p in ex.pulls.values() if p.repo == repo)
            aimed = frozenset(chosen)
            pull = Pull(repo, number, author, aimed, body_of(repo, aimed, ex.tasks, style),
                        while_open=set(aimed))
            ex.pulls[j] = pull
            self.fake.add_pull(repo, number, pull.body, login=author)
            data = self.pull_data("opened", pull)
            await self.made(ex, "pull_request", data, lambda: pull.linked.update(aimed), now)
        elif kind == "pedit":
            _, j, chosen, now = step
            pull = ex.pulls[j]
            self.clock.tick()
            before, aimed = pull.body, frozenset(chosen)
            pull.targets, pull.body = aimed, body_of(pull.repo, aimed, ex.tasks, True)
            self.fake.edit_pull(pull.repo, pull.number, pull.body)
            if pull.merged:
                pull.edited_after_merge = True
                effect = lambda: None  # noqa: E731 - an edit of a closed one: nothing
            else:
                pull.while_open |= aimed
                effect = lambda: pull.linked.update(aimed)  # noqa: E731
            data = self.pull_data("edited", pull, before=before)
            await self.made(ex, "pull_request", data, effect, now)
        elif kind == "merge":
            _, j, now = step
            pull = ex.pulls[j]
            self.clock.tick()
            self.fake.merge_pull(pull.repo, pull.number)
            pull.merged, pull.at_merge = True, pull.targets
            at_merge = pull.at_merge

            def merged() -> None:
                if pull.own and pull.author == CLAIMANT:
                    ex.must_pay.update(at_merge)
                if not pull.own:
                    ex.other_merges.update((target, pull.number) for target in at_merge)

            await self.made(ex, "pull_request", self.pull_data("closed", pull), merged, now)
        elif kind == "deliver":
            _, index, reuse = step
            if ex.sent:
                await self.send(ex.sent[index % len(ex.sent)], reuse)
        else:
            assert kind == "sync", step
            await self.sync(ex)

    async def sync(self, ex: Example) -> None:
        report = await self.reconciler.run_once()
        assert report.failed == [], [r.line() for r in report.failed]
        for note in ex.notes.values():  # read only while never edited
            if len(note.versions) == 1:
                note.deliver(note.versions[0])
        for pull in ex.pulls.values():
            if not pull.merged or pull.read_by_sync or not pull.targets:
                continue  # a merge that closes nothing (now) is not stored: read again later
            pull.read_by_sync = True  # a merge is stored once (`sync:github:merge:<id>`)
            if not pull.own or pull.author != CLAIMANT:
                continue
            if pull.edited_after_merge:  # today's text, counted only where it was linked
                ex.must_pay.update(pull.targets & pull.linked)
            else:
                ex.must_pay.update(pull.at_merge)

    # -- checks -----------------------------------------------------------------------------

    async def check(self, ex: Example) -> None:
        bot = self.bot
        await bot.settle()
        async with bot.app[SESSIONMAKER]() as session:
            stuck = (await session.exec(select(t.Delivery).where(
                t.Delivery.state != t.DeliveryState.HANDLED))).all()
            handled = (await session.exec(select(t.HandledComment).where(
                t.HandledComment.forge == "github", col(t.HandledComment.comment_id).in_(
                    [str(n.id) for n in ex.notes.values()])))).all()
        assert [(d.delivery_id, d.state, d.error) for d in stuck] == []
        report = await run_audit(bot.app[SESSIONMAKER])
        assert report.ok, report.render()

        # (a) every command line once, whatever brought it first
        task = await bot.task(ex.pledge_issue)
        assert task is not None
        rows = Counter(r.comment_id for r in handled)
        for note in ex.notes.values():
            assert rows[str(note.id)] == len(note.applied), (note, rows[str(note.id)])
        for backer in ("alice", "bob"):
            expected = sum(sum(n.applied.values()) for n in ex.notes.values() if n.author == backer)
            assert task.backer_total(backer, HELD).minor == expected, (backer, ex.notes)

        # (b) a payout only for a merge of the claimant's pull request in the task's own repo,
        # closing the task while open; and exactly when the bot learnt of such a merge.
        for target, number in ex.tasks.items():
            task = await bot.task(number)
            assert task is not None
            justified = any(p.own and p.merged and p.author == CLAIMANT
                            and target in p.while_open for p in ex.pulls.values())
            assert [c.developer for c in task.claims] == [CLAIMANT]
            for link in task.links:  # a pull request links only what it closed while open
                [pull] = [p for p in ex.pulls.values() if p.number == link.number
                          and p.repo.lower() == (link.repo_path or REPO).lower()]
                assert target in pull.while_open, (target, link, pull)
            paid = [(p.developer, p.amount.minor) for p in task.payouts]
            if paid:
                assert justified, (target, paid, ex.pulls)
                assert paid == [(CLAIMANT, FUNDING)]
            assert (task.state == TaskState.DONE) == (target in ex.must_pay), (
                target, task.state, ex.must_pay, ex.pulls)
            if task.state != TaskState.DONE:
                assert paid == [] and task.held().minor == FUNDING
                for aimed, pull_number in ex.other_merges:
                    if aimed == target:  # a merge elsewhere: a notice asks for /award
                        notices = [c.body for c in bot.bot_comments(number)
                                   if f"{OTHER}#{pull_number}" in c.body
                                   and "another repository" in c.body]
                        assert notices, (target, pull_number)


def test_random_deliveries_apply_each_command_once_and_pay_only_own_merges(sqlite_url: str):
    loop = asyncio.new_event_loop()
    world = loop.run_until_complete(World.start(sqlite_url))

    async def play(script: list[tuple[Any, ...]]) -> None:
        ex = await world.setup()
        for step in script:
            await world.step(ex, step)
        await world.check(ex)

    # Twelve random scripts a run (about 20 s on two cores) keep the suite under its ten
    # minutes; each run draws new ones. For a longer hunt, raise the number locally.
    @settings(max_examples=12, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(script=scripts())
    # alice's comment reaches the bot only through her edit's webhook (its `created` one was
    # lost, and reconciliation does not read an edited comment): its lines are applied then.
    @example(script=[("write", 0, "alice", ["/pledge 5"], False),
                     ("edit", 0, "author", "prose", [], True), ("sync",)])
    def run(script: list[tuple[Any, ...]]) -> None:
        loop.run_until_complete(play(script))

    try:
        run()
    finally:
        loop.run_until_complete(world.close())
        loop.close()
