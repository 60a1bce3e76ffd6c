# ruff: noqa: E501 -- the expected summaries are written as the forge shows them, one line each
"""What a backer reads: the summary of every state, in English and French, as rendered Markdown.

The summaries are written out in full below, then parsed with markdown-it-py (CommonMark plus
GFM tables, what GitHub and GitLab render) to check their structure: the backers' table holds
exactly the backers' rows, and what follows it are paragraphs, not rows it swallowed.
In the expected texts `~` stands for a no-break space (U+00A0, Babel's, in money and
percentages) and `^` for a narrow no-break space (U+202F, before French `:` `;` `!` `?`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from markdown_it import MarkdownIt

from bountybot.i18n import format_day, format_percentage, french_spacing, translate
from bountybot.money import Money
from bountybot.providers.manual import ManualProvider
from bountybot.rules import (
    LabelAdded,
    LinkClosed,
    LinkOpened,
    PayoutPaid,
    PledgeConfirmed,
    Policy,
    Tick,
)
from bountybot.rules.summary import (
    SUMMARY_MARKER,
    counted_backers,
    headline,
    progress_bar,
    render_summary,
    state_word,
    status_text,
)
from bountybot.states import ClaimState, PledgeState, TaskState

from memory_books import Story

MARKDOWN = MarkdownIt("commonmark").enable("table")


# -- the stories: one per state a backer can find a task in ------------------------------


def started(**policy: Any) -> Story:
    story = Story(Policy(**policy))
    story.event(LabelAdded())
    story.say("maya", "/goal 100\n/deadline 2026-12-17")
    return story


def open_with_a_pending_pledge() -> Story:
    s = started(provider=ManualProvider(confirm=True))
    s.say("alice", "/pledge 60")
    pledge_id = s.task.pledges[0].id
    assert pledge_id is not None
    s.event(PledgeConfirmed(pledge_id), actor="maya")
    s.say("carol", "/pledge 10")  # not confirmed yet: shown, not counted
    return s


def funded() -> Story:
    s = started()
    s.say("alice", "/pledge 60")
    s.say("bob", "/pledge 40")
    return s


def claimed() -> Story:
    s = funded()
    s.say("dave", "/claim")
    s.say("erin", "/claim")
    return s


def in_review() -> Story:
    s = claimed()
    s.event(LinkOpened(12, "dave"))
    return s


def done_pending() -> Story:
    s = started(release_after_days=3, fee_bp=250)
    s.say("alice", "/pledge 60")
    s.say("bob", "/pledge 40")
    s.say("carol", "/pledge 5")
    s.say("carol", "/withdraw")  # withdrawn money was never raised
    s.say("dave", "/claim")
    s.event(LinkOpened(12, "dave"))
    s.event(LinkClosed(12, "dave", merged=True))
    return s


def done_paid() -> Story:
    s = done_pending()
    s.wait(4)
    s.event(Tick())
    payout_id = s.task.payouts[0].id
    assert payout_id is not None
    s.event(PayoutPaid(payout_id, "SEPA-2026-118"), actor="maya")
    return s


def done_split_and_disputed() -> Story:
    s = started(release_after_days=3)
    s.say("alice", "/pledge 100")
    s.say("maya", "/award @dave 60 % @erin 40 %")
    s.say("alice", "/dispute it does not build")
    return s


def cancelled() -> Story:
    s = started()
    s.say("alice", "/pledge 60")
    s.say("bob", "/pledge 10")
    s.say("bob", "/pledge 5")
    s.say("maya", "/cancel")
    return s


def expired() -> Story:
    s = started()
    s.say("alice", "/pledge 60")
    s.wait(30)
    s.event(Tick())
    return s


STORIES: dict[str, tuple[Callable[[], Story], int, TaskState]] = {
    "open": (open_with_a_pending_pledge, 0, TaskState.OPEN),
    "funded": (funded, 0, TaskState.FUNDED),
    "claimed": (claimed, 0, TaskState.CLAIMED),
    "in_review": (in_review, 250, TaskState.IN_REVIEW),
    "done_pending": (done_pending, 250, TaskState.DONE),
    "done_paid": (done_paid, 250, TaskState.DONE),
    "done_disputed": (done_split_and_disputed, 0, TaskState.DONE),
    "cancelled": (cancelled, 0, TaskState.CANCELLED),
    "expired": (expired, 0, TaskState.EXPIRED),
}

EXPECTED = {
    ("open", "en"): """\
### Bounty: €60.00 pledged of €100.00
`[████████████░░░░░░░░] 60%`

**State:** open · **Backers:** 1 · **Funding deadline:** December 17, 2026

€10.00 more pledged, not counted until the payment is confirmed: @carol €10.00.

| Backer | Amount |
|---|---:|
| @alice | €60.00 |
| @carol | €10.00 (€10.00 pending) |

No service fee: every cent pledged goes to the developers or back to the backers.

Pledge with `/pledge <amount>`; once funded, offer to do the work with `/claim`. `/help` lists every command.
""",
    ("open", "fr"): """\
### Prime^: 60,00~€ promis sur 100,00~€
`[████████████░░░░░░░░] 60~%`

**État^:** ouverte · **Donateurs^:** 1 · **Échéance de financement^:** 17 décembre 2026

10,00~€ de plus promis, non comptés tant que le paiement n'est pas confirmé^: @carol 10,00~€.

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ |
| @carol | 10,00~€ (10,00~€ en attente) |

Aucuns frais de service^: chaque centime promis va aux développeurs ou revient aux donateurs.

Promettez un don avec `/pledge <montant>`^; une fois la tâche financée, proposez-vous pour la faire avec `/claim`. `/help` liste toutes les commandes.
""",
    ("funded", "en"): """\
### Bounty: €100.00 pledged of €100.00
`[████████████████████] 100%`

**State:** funded · **Backers:** 2 · **Funding deadline:** December 17, 2026

| Backer | Amount |
|---|---:|
| @alice | €60.00 |
| @bob | €40.00 |

No service fee: every cent pledged goes to the developers or back to the backers.

Pledge with `/pledge <amount>`; once funded, offer to do the work with `/claim`. `/help` lists every command.
""",
    ("funded", "fr"): """\
### Prime^: 100,00~€ promis sur 100,00~€
`[████████████████████] 100~%`

**État^:** financée · **Donateurs^:** 2 · **Échéance de financement^:** 17 décembre 2026

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ |
| @bob | 40,00~€ |

Aucuns frais de service^: chaque centime promis va aux développeurs ou revient aux donateurs.

Promettez un don avec `/pledge <montant>`^; une fois la tâche financée, proposez-vous pour la faire avec `/claim`. `/help` liste toutes les commandes.
""",
    ("claimed", "en"): """\
### Bounty: €100.00 pledged of €100.00
`[████████████████████] 100%`

**State:** claimed · **Backers:** 2

| Backer | Amount |
|---|---:|
| @alice | €60.00 |
| @bob | €40.00 |

**Claimed by:** @dave (until December 7, 2026)

**Waiting list:** @erin

No service fee: every cent pledged goes to the developers or back to the backers.

Pledge with `/pledge <amount>`; once funded, offer to do the work with `/claim`. `/help` lists every command.
""",
    ("claimed", "fr"): """\
### Prime^: 100,00~€ promis sur 100,00~€
`[████████████████████] 100~%`

**État^:** réservée · **Donateurs^:** 2

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ |
| @bob | 40,00~€ |

**Réservée par^:** @dave (jusqu'au 7 décembre 2026)

**Liste d'attente^:** @erin

Aucuns frais de service^: chaque centime promis va aux développeurs ou revient aux donateurs.

Promettez un don avec `/pledge <montant>`^; une fois la tâche financée, proposez-vous pour la faire avec `/claim`. `/help` liste toutes les commandes.
""",
    ("in_review", "en"): """\
### Bounty: €100.00 pledged of €100.00
`[████████████████████] 100%`

**State:** in review · **Backers:** 2

| Backer | Amount |
|---|---:|
| @alice | €60.00 |
| @bob | €40.00 |

**Claimed by:** @dave (in review, clock stopped)

**Waiting list:** @erin

**Pull requests:** #12 @dave (open)

Service fee: 2.5% of the escrow, taken at payout.

Pledge with `/pledge <amount>`; once funded, offer to do the work with `/claim`. `/help` lists every command.
""",
    ("in_review", "fr"): """\
### Prime^: 100,00~€ promis sur 100,00~€
`[████████████████████] 100~%`

**État^:** en revue · **Donateurs^:** 2

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ |
| @bob | 40,00~€ |

**Réservée par^:** @dave (en revue, délai suspendu)

**Liste d'attente^:** @erin

**Demandes de fusion^:** #12 @dave (ouverte)

Frais de service^: 2,5~% du séquestre, prélevés au versement.

Promettez un don avec `/pledge <montant>`^; une fois la tâche financée, proposez-vous pour la faire avec `/claim`. `/help` liste toutes les commandes.
""",
    ("done_pending", "en"): """\
### Bounty: €100.00 raised of €100.00 — paid to @dave (pending)
`[████████████████████] 100%`

**State:** done · **Backers:** 2

| Backer | Amount |
|---|---:|
| @alice | €60.00 |
| @bob | €40.00 |

**Claimed by:** @dave (done)

**Pull requests:** #12 @dave (merged)

**Payouts:** @dave €97.50 (released on November 26, 2026 unless disputed)

Service fee: 2.5% of the escrow, taken at payout.
""",
    ("done_pending", "fr"): """\
### Prime^: 100,00~€ réunis sur 100,00~€ — pour @dave (versement en attente)
`[████████████████████] 100~%`

**État^:** terminée · **Donateurs^:** 2

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ |
| @bob | 40,00~€ |

**Réservée par^:** @dave (terminée)

**Demandes de fusion^:** #12 @dave (fusionnée)

**Versements^:** @dave 97,50~€ (libéré le 26 novembre 2026 sauf contestation)

Frais de service^: 2,5~% du séquestre, prélevés au versement.
""",
    ("done_paid", "en"): """\
### Bounty: €100.00 raised of €100.00 — paid to @dave (settled)
`[████████████████████] 100%`

**State:** done · **Backers:** 2

| Backer | Amount |
|---|---:|
| @alice | €60.00 |
| @bob | €40.00 |

**Claimed by:** @dave (done)

**Pull requests:** #12 @dave (merged)

**Payouts:** @dave €97.50 (paid)

Service fee: 2.5% of the escrow, taken at payout.
""",
    ("done_paid", "fr"): """\
### Prime^: 100,00~€ réunis sur 100,00~€ — pour @dave (versement effectué)
`[████████████████████] 100~%`

**État^:** terminée · **Donateurs^:** 2

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ |
| @bob | 40,00~€ |

**Réservée par^:** @dave (terminée)

**Demandes de fusion^:** #12 @dave (fusionnée)

**Versements^:** @dave 97,50~€ (payé)

Frais de service^: 2,5~% du séquestre, prélevés au versement.
""",
    ("done_disputed", "en"): """\
### Bounty: €100.00 raised of €100.00 — paid to @dave and @erin (disputed)
`[████████████████████] 100%`

**State:** done · **Backers:** 1

| Backer | Amount |
|---|---:|
| @alice | €100.00 |

**Payouts:** @dave €60.00 (held by the dispute), @erin €40.00 (held by the dispute)

**Disputed** by @alice: it does not build. The payouts are held until a maintainer decides (`/award` or `/cancel`).

No service fee: every cent pledged goes to the developers or back to the backers.
""",
    ("done_disputed", "fr"): """\
### Prime^: 100,00~€ réunis sur 100,00~€ — pour @dave et @erin (versement contesté)
`[████████████████████] 100~%`

**État^:** terminée · **Donateurs^:** 1

| Donateur | Montant |
|---|---:|
| @alice | 100,00~€ |

**Versements^:** @dave 60,00~€ (bloqué par la contestation), @erin 40,00~€ (bloqué par la contestation)

**Contesté** par @alice^: it does not build. Les versements sont bloqués jusqu'à la décision d'un mainteneur (`/award` ou `/cancel`).

Aucuns frais de service^: chaque centime promis va aux développeurs ou revient aux donateurs.
""",
    ("cancelled", "en"): """\
### Bounty: cancelled — €75.00 refunded to the backers

**State:** cancelled · **Backers:** 2 · **Goal:** €100.00

| Backer | Amount |
|---|---:|
| @alice | €60.00 refunded |
| @bob | €15.00 refunded |

No service fee: every cent pledged goes to the developers or back to the backers.
""",
    ("cancelled", "fr"): """\
### Prime^: annulée — 75,00~€ remboursés aux donateurs

**État^:** annulée · **Donateurs^:** 2 · **Objectif^:** 100,00~€

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ remboursés |
| @bob | 15,00~€ remboursés |

Aucuns frais de service^: chaque centime promis va aux développeurs ou revient aux donateurs.
""",
    ("expired", "en"): """\
### Bounty: expired — €60.00 refunded to the backers

**State:** expired · **Backers:** 1 · **Funding deadline:** December 17, 2026 · **Goal:** €100.00

| Backer | Amount |
|---|---:|
| @alice | €60.00 refunded |

No service fee: every cent pledged goes to the developers or back to the backers.
""",
    ("expired", "fr"): """\
### Prime^: expirée — 60,00~€ remboursés aux donateurs

**État^:** expirée · **Donateurs^:** 1 · **Échéance de financement^:** 17 décembre 2026 · **Objectif^:** 100,00~€

| Donateur | Montant |
|---|---:|
| @alice | 60,00~€ remboursés |

Aucuns frais de service^: chaque centime promis va aux développeurs ou revient aux donateurs.
""",
}

CASES = sorted(EXPECTED)


def summary(name: str, locale: str) -> str:
    make, fee_bp, state = STORIES[name]
    story = make()
    assert story.task.state == state  # the story reached the state it is named after
    return render_summary(story.task, locale, fee_bp)


def spelled(text: str) -> str:
    return text.replace("~", "\u00a0").replace("^", "\u202f")


# -- rendered Markdown: the structure a reader sees --------------------------------------


def blocks(text: str) -> list[tuple[str, Any]]:
    """The top-level blocks: ("html", ...), ("h3", text), ("p", text), ("table", rows)."""
    tokens = MARKDOWN.parse(text)
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "html_block":
            out.append(("html", tok.content.strip()))
        elif tok.type == "heading_open":
            out.append((tok.tag, tokens[i + 1].content))
        elif tok.type == "paragraph_open":
            inline = tokens[i + 1]
            assert not [c for c in inline.children or [] if c.type in ("softbreak", "hardbreak")], (
                f"one paragraph spans several lines: {inline.content!r}")
            out.append(("p", inline.content))
        elif tok.type == "table_open":
            rows: list[list[str]] = []
            while tokens[i].type != "table_close":
                if tokens[i].type == "tr_open":
                    rows.append([])
                elif tokens[i].type == "inline":
                    rows[-1].append(tokens[i].content)
                i += 1
            out.append(("table", rows))
        elif tok.level == 0 and tok.type.endswith("_open"):
            out.append((tok.type.removesuffix("_open"), None))
        i += 1
    return out


@pytest.mark.parametrize(("name", "locale"), CASES)
def test_every_state_reads_as_written_down(name: str, locale: str) -> None:
    text = summary(name, locale)
    assert text == f"{SUMMARY_MARKER}\n{spelled(EXPECTED[name, locale])}".rstrip("\n")


@pytest.mark.parametrize(("name", "locale"), CASES)
def test_every_state_renders_as_a_heading_facts_one_table_and_paragraphs(
        name: str, locale: str) -> None:
    make, fee_bp, _ = STORIES[name]
    task = make().task
    shape = blocks(render_summary(task, locale, fee_bp))
    assert shape[0] == ("html", SUMMARY_MARKER)
    assert shape[1][0] == "h3" and shape[1][1].startswith(
        "Bounty: " if locale == "en" else "Prime\u202f: ")
    tables = [rows for kind, rows in shape if kind == "table"]
    assert len(tables) == 1
    header, *rows = tables[0]
    assert header == (["Backer", "Amount"] if locale == "en" else ["Donateur", "Montant"])
    # Exactly the backers' rows: each names one backer, with an amount and nothing else.
    shown = [row[0] for row in rows]
    pending = [p.backer for p in task.pledges if p.state == PledgeState.PENDING]
    assert shown == [f"@{b}" for b in dict.fromkeys([*counted_backers(task), *pending])]
    assert all(len(row) == 2 and "**" not in "".join(row) for row in rows)
    # After the table, paragraphs only: nothing was swallowed into it.
    after = shape[[kind for kind, _ in shape].index("table") + 1:]
    assert after and all(kind == "p" for kind, _ in after)
    assert {kind for kind, _ in shape} <= {"html", "h3", "p", "table"}


def test_a_table_without_a_blank_line_after_it_would_swallow_the_next_line() -> None:
    """The parser sees the bug the summary had, so the test above can see it too."""
    swallowed = "| Backers | |\n|---|---:|\n| @alice | €60.00 |\n**Payouts:** @dave €100.00"
    assert blocks(swallowed) == [("table", [["Backers", ""], ["@alice", "€60.00"],
                                            ["**Payouts:** @dave €100.00", ""]])]


# -- a done task shows what was raised, who gave it and who was paid ---------------------


def test_raised_is_held_plus_paid_out_and_not_refunded_nor_withdrawn() -> None:
    story = done_pending()
    task = story.task
    assert task.held() == Money(0, "EUR")  # all paid out: "pledged" (held now) is zero
    assert task.raised() == Money(10000, "EUR")  # carol's withdrawn €5 is not counted
    assert counted_backers(task) == ["alice", "bob"]
    assert [(c.developer, c.state) for c in task.claims] == [("dave", ClaimState.DONE)]
    assert funded().task.raised() == funded().task.held() == Money(10000, "EUR")
    assert cancelled().task.raised() == Money(0, "EUR")


def test_a_backer_is_one_row_whatever_the_case_of_their_login() -> None:
    story = started()
    story.say("Alice", "/pledge 10")
    story.say("alice", "/pledge 5")
    story.say("bob", "/pledge 1")
    shape = blocks(render_summary(story.task, "en", 0))
    assert ("table", [["Backer", "Amount"], ["@Alice", "€15.00"], ["@bob", "€1.00"]]) in shape
    assert ("p", "**State:** open · **Backers:** 2 · **Funding deadline:** December 17, 2026") in shape


def test_the_done_headline_says_raised_paid_to_and_whether_it_is_settled() -> None:
    assert headline(done_pending().task, "en") == (
        "€100.00 raised of €100.00 — paid to @dave (pending)")
    assert headline(done_paid().task, "en") == (
        "€100.00 raised of €100.00 — paid to @dave (settled)")
    assert headline(done_split_and_disputed().task, "fr") == spelled(
        "100,00~€ réunis sur 100,00~€ — pour @dave et @erin (versement contesté)")


@pytest.mark.parametrize(("name", "locale"), CASES)
def test_status_says_what_the_summary_says(name: str, locale: str) -> None:
    make, fee_bp, _ = STORIES[name]
    task = make().task
    text = render_summary(task, locale, fee_bp)
    status = status_text(task, locale)
    first, *rest = blocks(status)
    label = "**State:**" if locale == "en" else "**État\u202f:**"
    assert first == ("p", f"{label} {state_word(locale, task.state)} — {headline(task, locale)}")
    assert headline(task, locale) in text
    # The claim (live, or the one a done task was done under) and the waiting list: the same
    # paragraphs as in the summary.
    assert all(kind == "p" and (kind, line) in blocks(text) for kind, line in rest)
    assert bool(rest) == (task.live_claim() is not None or task.waiting != []
                          or any(c.state == ClaimState.DONE for c in task.claims))


# -- French typography, dates and percentages --------------------------------------------


def test_french_replies_get_a_narrow_no_break_space_before_high_punctuation() -> None:
    reply = translate("fr", "claim.not_funded", held="60,00\u00a0€", goal="100,00\u00a0€")
    assert "\u202f: elle pourra" in reply and " :" not in reply
    assert french_spacing("« {reason} » ; vraiment ? oui !") == (
        "«\u202f{reason}\u202f»\u202f; vraiment\u202f? oui\u202f!")
    # A command example in a code span stays exactly as it is typed.
    refusal = translate("fr", "percent.zero", text="0 %")
    assert "`/award @alice 60 % @bob 40 %`" in refusal and "vaut zéro\u202f:" in refusal
    # Values filled in (a user's words) are not retouched, and English is left alone.
    assert translate("fr", "summary.disputed", by="bob", reason="why ? : no").count(
        "why ? : no") == 1
    assert " : " not in translate("en", "summary.nofee")


def test_dates_and_percentages_are_written_by_babel_for_the_locale() -> None:
    assert format_day(date(2026, 12, 17), "fr") == "17 décembre 2026"
    assert format_day(date(2026, 12, 17), "en") == "December 17, 2026"
    assert translate("fr", "summary.until", date=date(2026, 12, 17)) == "jusqu'au 17 décembre 2026"
    assert format_percentage(0, "fr") == "0\u00a0%" and format_percentage(0, "en") == "0%"
    assert format_percentage(Decimal("2.5"), "fr-CA") == "2,5\u00a0%"
    assert format_percentage(40, "xx") == "40%"  # a locale Babel does not know: English
    goal = Money(10000, "EUR")
    assert progress_bar(Money(0, "EUR"), goal, "fr") == f"`[{'░' * 20}] 0\u00a0%`"
    # Rounded down: a task 50 cents short is not "100%".
    assert progress_bar(Money(9950, "EUR"), goal).endswith("] 99%`")
