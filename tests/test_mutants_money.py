"""The exact replies to refused amounts, for currencies of 0, 2 and 3 decimals, and how user
text is echoed: these kill the mutants of `make mutate` in `bountybot.money` that the other
tests let through (tests/MUTANTS.md)."""

from __future__ import annotations

from typing import Any

import pytest

from bountybot.money import AmountError, Money, parse_amount, parse_percent, shown, sum_money


@pytest.mark.parametrize(("text", "currency", "limits", "reply"), [
    ("50.5", "JPY", {}, "`50.5`: JPY amounts have no decimals, and thousands separators are not"
     " accepted. Write a whole number, like `/pledge 1500`."),
    ("50.555", "EUR", {}, "`50.555` has more decimals than EUR allows (2), and thousands"
     " separators are not accepted. Write it like `/pledge 50.50`."),
    ("50.5555", "KWD", {}, "`50.5555` has more decimals than KWD allows (3), and thousands"
     " separators are not accepted. Write it like `/pledge 50.500`."),
    ("1 500,00", "EUR", {}, "`1 500,00` has a thousands separator, which bountybot does not"
     " accept (it can be read two ways). Write the amount without one, like `/pledge 1500`."),
    ("2000000", "EUR", {"max_minor": 100000}, "`2000000` is above the largest amount accepted"
     " here, €1,000.00. Write at most that much, like `/pledge 1000`."),
    ("5 XYZ", "EUR", {}, "`XYZ` in `5 XYZ` is not a currency bountybot knows. This project takes"
     " EUR: write the amount alone or with its code, like `/pledge 50.50`."),
    ("5 USD", "EUR", {}, "This project takes EUR, but `5 USD` is in USD, and bountybot does not"
     " convert currencies. Write the amount in EUR, like `/pledge 50.50`."),
    ("５", "EUR", {}, "`５` contains `５` (U+FF15), which only looks like a plain digit, sign or"
     " separator. Type the amount with ordinary digits, like `/pledge 50.50`."),
    ("1e3", "JPY", {}, "`1e3` uses an exponent: write the amount in full, like `/pledge 50`."),
    ("1e3", "KWD", {}, "`1e3` uses an exponent: write the amount in full, like `/pledge 50.500`."),
])
def test_a_refused_amount_gets_its_exact_reply(text: str, currency: str, limits: dict[str, Any],
                                               reply: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_amount(text, currency, **limits)
    assert refused.value.message("en") == reply


def test_a_refused_percentage_names_a_lookalike_and_nothing_else():
    with pytest.raises(AmountError) as lookalike:
        parse_percent("５%")
    assert lookalike.value.message("en") == (
        "`５%` contains `５` (U+FF15), which only looks like a plain digit or sign. Type ordinary"
        " digits, like `/award @alice 60% @bob 40%`.")
    with pytest.raises(AmountError) as currency:
        parse_percent("5 € %")
    assert currency.value.code == "percent.not_a_number"
    # A currency sign no amount knows is "not a number" in a share, not an unknown currency.
    with pytest.raises(AmountError) as sign:
        parse_percent("5₿%")
    assert sign.value.code == "percent.not_a_number" and sign.value.params == {"text": "5₿%"}


def test_money_in_no_iso_currency_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"^not an ISO 4217 currency code: 'XYZ'$"):
        Money(100, "XYZ")


def test_user_text_is_echoed_safe_and_cut_at_forty_characters():
    assert shown("x" * 40) == "x" * 40
    assert shown("x" * 41) == "x" * 40 + "…"
    assert shown("a`b\tc\x00d") == "a'b c\ufffdd"
    long = "1" * 150
    with pytest.raises(AmountError) as refused:
        parse_amount(long + "x", "EUR")
    assert refused.value.params["text"] == long[:100]


def test_money_says_what_it_refuses():
    with pytest.raises(TypeError, match="^Money.minor must be an int, not float$"):
        Money(1.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^cannot mix EUR and USD$"):
        Money(1, "EUR") + Money(1, "USD")


def test_a_sum_refuses_another_currency_and_says_which():
    assert sum_money([Money(150, "EUR"), Money(250, "EUR")], "EUR") == Money(400, "EUR")
    assert sum_money([], "JPY") == Money(0, "JPY")
    with pytest.raises(ValueError, match="^cannot mix EUR and USD$"):
        sum_money([Money(150, "EUR"), Money(250, "USD")], "EUR")
    with pytest.raises(ValueError, match="not an ISO 4217 currency code"):
        sum_money([], "EURO")
