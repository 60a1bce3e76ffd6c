"""Commands: which lines of a comment are read, what they say, and how the bad ones are refused."""

from __future__ import annotations

import time
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bountybot.commands import (
    AwardShare,
    Command,
    CommandName,
    CommandRefusal,
    help_text,
    parse_comment,
)
from bountybot.money import Money

N = CommandName


def eur(minor: int) -> Money:
    return Money(minor, "EUR")


def parse(text: str, **kwargs: object) -> list[Command | CommandRefusal]:
    options: dict[str, object] = {"bot_login": "bountybot", "currency": "EUR"}
    options.update(kwargs)
    return parse_comment(text, **options)  # type: ignore[arg-type]


def summary(items: list[Command | CommandRefusal]) -> list[tuple[object, ...]]:
    """Each item as (line, name, value), or (line, refusal code) for refusals."""
    out: list[tuple[object, ...]] = []
    for item in items:
        if isinstance(item, CommandRefusal):
            out.append((item.line, item.code))
        else:
            value = item.amount or item.deadline or item.target or item.shares or None
            out.append((item.line, item.name, value))
    return out


READ = [
    ("/pledge 20", [(1, N.PLEDGE, eur(2000))]),
    ("/pledge 50,50 €", [(1, N.PLEDGE, eur(5050))]),
    ("/pledge 50,50\u00a0€", [(1, N.PLEDGE, eur(5050))]),
    ("/pledge €50", [(1, N.PLEDGE, eur(5000))]),
    ("/pledge 20 EUR", [(1, N.PLEDGE, eur(2000))]),
    ("/pledge EUR 20", [(1, N.PLEDGE, eur(2000))]),
    ("/pledge € 20", [(1, N.PLEDGE, eur(2000))]),
    ("/PLEDGE 20", [(1, N.PLEDGE, eur(2000))]),
    ("@bountybot pledge 20", [(1, N.PLEDGE, eur(2000))]),
    ("@BountyBot Pledge 20", [(1, N.PLEDGE, eur(2000))]),
    ("@bountybot /pledge 20", [(1, N.PLEDGE, eur(2000))]),
    ("@bountybot: claim", [(1, N.CLAIM, None)]),
    ("@bountybot[bot] claim", [(1, N.CLAIM, None)]),
    ("/withdraw", [(1, N.WITHDRAW, None)]),
    ("/goal 300", [(1, N.GOAL, eur(30000))]),
    ("/bounty 300", [(1, N.GOAL, eur(30000))]),
    ("/deadline 2026-12-31", [(1, N.DEADLINE, date(2026, 12, 31))]),
    ("/deadline 2028-02-29", [(1, N.DEADLINE, date(2028, 2, 29))]),
    ("/claim", [(1, N.CLAIM, None)]),
    ("/unclaim", [(1, N.UNCLAIM, None)]),
    ("/unclaim @dev", [(1, N.UNCLAIM, "dev")]),
    ("/unclaim @Dev-1.x", [(1, N.UNCLAIM, "Dev-1.x")]),
    ("/cancel", [(1, N.CANCEL, None)]),
    ("/status", [(1, N.STATUS, None)]),
    ("/help", [(1, N.HELP, None)]),
    ("   /claim   ", [(1, N.CLAIM, None)]),
    ("/claim\r\n/status\r\n", [(1, N.CLAIM, None), (2, N.STATUS, None)]),
    ("/claim\r/status", [(1, N.CLAIM, None), (2, N.STATUS, None)]),
    ("\ufeff/claim", [(1, N.CLAIM, None)]),
    ("Great idea!\n\n/pledge 20\nand\n/claim\n", [(3, N.PLEDGE, eur(2000)), (5, N.CLAIM, None)]),
    ("/pledge 20 <!-- my share -->", [(1, N.PLEDGE, eur(2000))]),
    ("Write `<!--` to hide text.\n/claim", [(2, N.CLAIM, None)]),
    ("```\ncode\n```\n/claim", [(4, N.CLAIM, None)]),
    ("````\n```\n/pledge 1\n````\n/claim", [(5, N.CLAIM, None)]),
    ("```suggestion\n/pledge 1\n```\n/claim", [(4, N.CLAIM, None)]),
    ("~~~\n```\n/pledge 1\n~~~\n/claim", [(5, N.CLAIM, None)]),
    ("```a```\n/claim", [(2, N.CLAIM, None)]),
    ("/pledge 5\n/pledge 5 \n", [(1, N.PLEDGE, eur(500)), (2, N.PLEDGE, eur(500))]),
    # Awards: a share is an amount (symbol or code, even as its own word), a percentage, or
    # nothing at all for the rest.
    ("/award @alice", [(1, N.AWARD, (AwardShare("alice"),))]),
    ("/award @alice 60% @bob 40%",
     [(1, N.AWARD, (AwardShare("alice", percent_bp=6000), AwardShare("bob", percent_bp=4000)))]),
    ("/award @alice 33,5 % @bob",
     [(1, N.AWARD, (AwardShare("alice", percent_bp=3350), AwardShare("bob")))]),
    ("/award @alice 30 @bob",
     [(1, N.AWARD, (AwardShare("alice", amount=eur(3000)), AwardShare("bob")))]),
    ("/award @alice €30 @bob 20 EUR",
     [(1, N.AWARD, (AwardShare("alice", amount=eur(3000)), AwardShare("bob", amount=eur(2000))))]),
    ("/award @alice € 30 @bob 50% @carol",
     [(1, N.AWARD, (AwardShare("alice", amount=eur(3000)), AwardShare("bob", percent_bp=5000),
                    AwardShare("carol")))]),
    ("/award @alice, @bob 10", [(1, N.AWARD, (AwardShare("alice"), AwardShare("bob", eur(1000))))]),
]


@pytest.mark.parametrize(("text", "expected"), READ)
def test_commands_are_read(text: str, expected: list[tuple[object, ...]]) -> None:
    items = parse(text)
    assert summary(items) == expected
    assert all(isinstance(item, Command) for item in items)


def test_a_share_is_an_amount_or_a_percentage_not_both() -> None:
    with pytest.raises(ValueError):
        AwardShare("alice", amount=eur(100), percent_bp=5000)


def test_a_command_keeps_its_line_as_written() -> None:
    [first, second] = parse("Thanks!\n  @BountyBot Pledge 20 EUR  \n/claim")
    assert isinstance(first, Command) and isinstance(second, Command)
    assert (first.line, first.raw) == (2, "@BountyBot Pledge 20 EUR")
    assert (second.line, second.raw) == (3, "/claim")


IGNORED = [
    "",
    "Just a comment about pledges.",
    "I will /pledge 20 later",
    "> /pledge 20",
    "   > /claim",
    "> quoting\n>/claim",
    "```\n/pledge 20\n```",
    "``` python\n/pledge 20\n```",
    "~~~\n/pledge 20\n~~~",
    "~~~~\n/pledge 20\n~~~\n/claim",  # a shorter fence does not close
    "```\n/pledge 20\n~~~\n/claim",  # nor does one of the other kind
    "```\n/pledge 20",  # an unclosed fence runs to the end
    "- ```\n  /pledge 20\n  ```",
    "<!-- /pledge 20 -->",
    "<!--\n/pledge 20\n/claim\n-->",
    "text <!-- hidden\n/pledge 20\n--> shown",
    "<!-- one --> <!-- two\n/claim\n-->",
    "    /pledge 20",
    "\t/pledge 20",
    "- /pledge 20",
    "`/pledge 20`",
    "/assign @me",
    "/lgtm",
    "/label ~bug\n/estimate 3d",
    "/pledges 20",
    "/pledge20",
    "/ pledge 20",
    "/",
    "@someone pledge 20",
    "@bountybot2 pledge 20",
    "@bountybotpledge 20",
    "Hi @bountybot pledge 20",
    "／pledge 20",
]


@pytest.mark.parametrize("text", IGNORED)
def test_lines_that_are_not_commands_are_ignored(text: str) -> None:
    assert parse(text) == []


REFUSED = [
    ("/pledge", [(1, "amount.missing")]),
    ("/pledge twenty", [(1, "amount.not_a_number")]),
    ("/pledge 0", [(1, "amount.zero")]),
    ("/pledge -5", [(1, "amount.sign")]),
    ("/pledge 1e3", [(1, "amount.exponent")]),
    ("/pledge 50.555", [(1, "amount.too_many_decimals")]),
    ("/pledge 1.000,50", [(1, "amount.thousands_separator")]),
    ("/pledge 1 000", [(1, "amount.thousands_separator")]),
    ("/pledge $25", [(1, "amount.currency_mismatch")]),
    ("/pledge 25 USD", [(1, "amount.currency_mismatch")]),
    ("/pledge 25 XYZ", [(1, "amount.unknown_currency")]),
    ("/pledge ５０", [(1, "amount.lookalike")]),
    ("/pledge 20 for the docs", [(1, "command.extra_text")]),
    ("/goal", [(1, "amount.missing")]),
    ("/bounty 0", [(1, "amount.zero")]),
    ("@bountybot pledge", [(1, "amount.missing")]),
    ("@bountybot", [(1, "command.unknown")]),
    ("@bountybot thanks!", [(1, "command.unknown")]),
    ("@bountybot /assign", [(1, "command.unknown")]),
    ("/claim foo", [(1, "command.no_arguments")]),
    ("/withdraw all", [(1, "command.no_arguments")]),
    ("/help me", [(1, "command.no_arguments")]),
    ("/deadline", [(1, "command.deadline_missing")]),
    ("/deadline 2026-13-01", [(1, "command.bad_date")]),
    ("/deadline 2026-02-30", [(1, "command.bad_date")]),
    ("/deadline 31/12/2026", [(1, "command.bad_date")]),
    ("/deadline 2026-1-5", [(1, "command.bad_date")]),
    ("/deadline tomorrow", [(1, "command.bad_date")]),
    ("/deadline 2026-12-31 noon", [(1, "command.extra_text")]),
    ("/unclaim dev", [(1, "command.bad_login")]),
    ("/unclaim @-dev", [(1, "command.bad_login")]),
    ("/unclaim @a @b", [(1, "command.extra_text")]),
    ("/award", [(1, "command.award_missing")]),
    ("/award alice", [(1, "command.bad_login")]),
    ("/award @alice lots", [(1, "amount.not_a_number")]),
    ("/award @alice 30 for now", [(1, "command.award_share")]),
    ("/award @alice 30 @bob 40 @alice 10", [(1, "command.award_duplicate")]),
    ("/award @alice 30 @Alice", [(1, "command.award_duplicate")]),
    ("/award @alice @bob", [(1, "command.award_rest")]),
    ("/award @alice 0%", [(1, "percent.zero")]),
    ("/award @alice 120%", [(1, "percent.too_large")]),
    ("/award @alice 33.333%", [(1, "percent.too_many_decimals")]),
    ("/award @alice $30", [(1, "amount.currency_mismatch")]),
    ("/pledge " + "1" * 600, [(1, "command.too_long")]),
    ("@bountybot " + "x" * 600, [(1, "command.too_long")]),
    ("/claim\n/claim x\n/assign\n/status", [(1, N.CLAIM, None), (2, "command.no_arguments"),
                                             (4, N.STATUS, None)]),
]


@pytest.mark.parametrize(("text", "expected"), REFUSED)
def test_bad_commands_are_refused(text: str, expected: list[tuple[object, ...]]) -> None:
    assert summary(parse(text)) == expected


def test_pledge_limits_apply_to_pledges_only() -> None:
    limits = {"min_pledge": 500, "max_pledge": 100_000}
    assert summary(parse("/pledge 4\n/pledge 2000\n/pledge 5", **limits)) == [
        (1, "amount.too_small"), (2, "amount.too_large"), (3, N.PLEDGE, eur(500))]
    assert summary(parse("/goal 2000\n/award @alice 1", **limits)) == [
        (1, N.GOAL, eur(200_000)), (2, N.AWARD, (AwardShare("alice", eur(100)),))]


def test_the_project_currency_decides_what_an_amount_means() -> None:
    assert summary(parse("/pledge $25\n/pledge 500", currency="USD")) == [
        (1, N.PLEDGE, Money(2500, "USD")), (2, N.PLEDGE, Money(50_000, "USD"))]
    assert summary(parse("/pledge 500\n/pledge 500.5", currency="JPY")) == [
        (1, N.PLEDGE, Money(500, "JPY")), (2, "amount.no_decimals")]


def test_extra_commands_beyond_the_limit_are_refused_once() -> None:
    items = parse("\n".join(["/pledge 1"] * 4 + ["text", "@bountybot nope", "/claim"]),
                  max_commands=3)
    assert summary(items) == [
        (1, N.PLEDGE, eur(100)), (2, N.PLEDGE, eur(100)), (3, N.PLEDGE, eur(100)),
        (4, "command.too_many")]


def test_thousands_of_command_lines_give_ten_commands_and_one_refusal() -> None:
    items = parse("\n".join(["/pledge 1"] * 5000))
    assert len(items) == 11
    assert summary(items)[-1] == (11, "command.too_many")


def refusal(text: str) -> CommandRefusal:
    [item] = parse(text, min_pledge=500, max_pledge=100_000)
    assert isinstance(item, CommandRefusal)
    return item


@pytest.mark.parametrize("text", [line for line, _ in REFUSED[:-1]] + ["/pledge 1", "/pledge 9999"])
@pytest.mark.parametrize("locale", ["en", "fr"])
def test_every_refusal_says_what_was_wrong_and_how_to_write_it(text: str, locale: str) -> None:
    sentence = refusal(text).message(locale)
    assert sentence.endswith(".") and len(sentence) > 30
    assert "`/" in sentence  # an example of the right way to write it
    words = text.split(maxsplit=1)
    if len(text) <= 40 and len(words) > 1:  # what was written: the line, or the faulty part
        assert f"`{text}`" in sentence or any(word in sentence for word in words[1].split())


def test_refusal_sentences_in_french_use_french_amounts() -> None:
    assert "`/pledge 50,50 €`" in refusal("/pledge 50.555").message("fr")
    assert "n'est pas une date" in refusal("/deadline 2026-13-01").message("fr")
    assert refusal("/deadline 31/12/2026").message("en").endswith("`/deadline 2026-12-31`.")


def test_refusals_echo_user_text_safely() -> None:
    sentence = refusal("@bountybot `@everyone` ```").message("en")
    assert sentence.startswith("`@bountybot '@everyone' " + "'" * 3 + "` is not")
    assert refusal("/claim " + "x" * 300).message("en").count("x") <= 40


@pytest.mark.parametrize("locale", ["en", "fr", "fr_CA", "de"])
def test_help_lists_every_command(locale: str) -> None:
    text = help_text(locale, "bountybot[bot]")
    for name in CommandName:
        assert f"`/{name}" in text
    assert "`/bounty" in text and "`@bountybot pledge 20`" in text
    assert all(line.startswith("- ") for line in text.splitlines()[1:])


def test_help_is_in_the_repo_language() -> None:
    assert "montant" in help_text("fr", "bountybot")
    assert "amount" in help_text("en", "bountybot")


@given(st.text())
def test_no_text_makes_the_parser_raise(text: str) -> None:
    check(text)


FRAGMENTS = [
    "/pledge", "/PLEDGE", "/goal", "/bounty", "/deadline", "/claim", "/unclaim", "/award",
    "/withdraw", "/cancel", "/status", "/help", "/assign", "@bountybot", "@BOUNTYBOT:",
    "@bountybot[bot]", "@alice", "@", " ", "  ", "\t", "\n", "\r\n", "\r", "> ", "```", "~~~",
    "````", "<!--", "-->", "`", "20", "50,50", "€", "$", "EUR", "usd", "%", "40%", "2026-12-31",
    "2026-02-30", "-", "+", "1e3", "0", ".", ",", "1 000", "\u00a0", "５", "٫", "x" * 80,
]


@settings(max_examples=300)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=40))
def test_commandish_texts_make_the_parser_raise_nothing(parts: list[str]) -> None:
    check("".join(parts))


def check(text: str) -> None:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
    items = parse(text, min_pledge=100, max_pledge=10**6, max_commands=5)
    previous = 0
    for item in items:
        assert isinstance(item, Command | CommandRefusal)
        assert previous < item.line <= lines
        previous = item.line
        if isinstance(item, CommandRefusal):
            assert item.message("en") and item.message("fr")
    assert sum(isinstance(item, Command) for item in items) <= 5


@pytest.mark.parametrize(
    "text",
    [
        "`" * 65_536,
        "` `` ``` " * 8_000,
        "<!--" * 20_000,
        "<!-- `x` " * 8_000,
        "```\n" * 30_000,
        "/pledge 1\n" * 10_000,
        "@bountybot " * 10_000,
        "/award " + "@a 1 " * 20_000,
        "x" * 10_000_000,
    ],
)
def test_pathological_comments_are_cheap(text: str) -> None:
    start = time.perf_counter()
    parse(text)
    assert time.perf_counter() - start < 2
