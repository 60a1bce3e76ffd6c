"""Money: the value type, Babel formatting, and the strict reading of typed amounts."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bountybot.money import (
    MAX_MINOR,
    AmountError,
    Money,
    format_money,
    minor_digits,
    parse_amount,
    parse_percent,
    sum_money,
    to_decimal,
    typed,
)

NBSP, NNBSP = "\u00a0", "\u202f"

GOOD = [
    ("50", "EUR", 5000),
    ("50.5", "EUR", 5050),
    ("50.50", "EUR", 5050),
    ("50,50", "EUR", 5050),
    ("50,5", "EUR", 5050),
    ("€50", "EUR", 5000),
    ("€ 50", "EUR", 5000),
    ("50€", "EUR", 5000),
    ("50 €", "EUR", 5000),
    (f"50,50{NBSP}€", "EUR", 5050),
    (f"50{NNBSP}€", "EUR", 5000),
    ("50 EUR", "EUR", 5000),
    ("50EUR", "EUR", 5000),
    ("EUR 50", "EUR", 5000),
    ("eur 50", "EUR", 5000),
    ("50 eur", "EUR", 5000),
    ("  50  ", "EUR", 5000),
    ("0.01", "EUR", 1),
    ("007", "EUR", 700),
    ("$25", "USD", 2500),
    ("25 USD", "USD", 2500),
    ("£3.20", "GBP", 320),
    ("500", "JPY", 500),
    ("¥500", "JPY", 500),
    ("1.125", "KWD", 1125),
    ("1,1", "KWD", 1100),
    ("CHF 12.30", "CHF", 1230),
    ("12 chf", "CHF", 1200),
]

BAD = [
    ("", "EUR", "amount.missing"),
    ("   ", "EUR", "amount.missing"),
    ("99999999999999999999999999999999999", "EUR", "amount.too_long"),
    ("fifty", "EUR", "amount.not_a_number"),
    ("€", "EUR", "amount.not_a_number"),
    ("50.", "EUR", "amount.not_a_number"),
    (".50", "EUR", "amount.not_a_number"),
    ("50%", "EUR", "amount.not_a_number"),
    ("EUR 50 EUR", "EUR", "amount.not_a_number"),
    ("-5", "EUR", "amount.sign"),
    ("+5", "EUR", "amount.sign"),
    ("€-5", "EUR", "amount.sign"),
    ("1e3", "EUR", "amount.exponent"),
    ("1.5E2", "EUR", "amount.exponent"),
    ("0", "EUR", "amount.zero"),
    ("0.00", "EUR", "amount.zero"),
    ("0,0 €", "EUR", "amount.zero"),
    ("50.555", "EUR", "amount.too_many_decimals"),
    ("1,000", "EUR", "amount.too_many_decimals"),
    ("1.125", "EUR", "amount.too_many_decimals"),
    ("1.1255", "KWD", "amount.too_many_decimals"),
    ("500.5", "JPY", "amount.no_decimals"),
    ("1,000", "JPY", "amount.no_decimals"),
    ("1.000,50", "EUR", "amount.thousands_separator"),
    ("1,000.50", "EUR", "amount.thousands_separator"),
    ("1 000", "EUR", "amount.thousands_separator"),
    (f"1{NBSP}000", "EUR", "amount.thousands_separator"),
    ("1'000", "EUR", "amount.thousands_separator"),
    ("1\u2019000", "EUR", "amount.thousands_separator"),
    ("1_000", "EUR", "amount.thousands_separator"),
    ("50 XYZ", "EUR", "amount.unknown_currency"),
    ("50 euros", "EUR", "amount.unknown_currency"),
    ("₹50", "EUR", "amount.unknown_currency"),
    ("$25", "EUR", "amount.currency_mismatch"),
    ("25 usd", "EUR", "amount.currency_mismatch"),
    ("€50", "USD", "amount.currency_mismatch"),
    ("５０", "EUR", "amount.lookalike"),
    ("٥٠", "EUR", "amount.lookalike"),
    ("50٫5", "EUR", "amount.lookalike"),
    ("＄5", "USD", "amount.lookalike"),
    ("\u22125", "EUR", "amount.lookalike"),
    ("50 日本", "EUR", "amount.not_a_number"),
]


@pytest.mark.parametrize(("text", "currency", "minor"), GOOD)
def test_good_amounts(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == Money(minor, currency)


@pytest.mark.parametrize(("text", "currency", "code"), BAD)
def test_bad_amounts(text: str, currency: str, code: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_amount(text, currency)
    assert refused.value.code == code


@pytest.mark.parametrize(("text", "currency", "code"), BAD)
@pytest.mark.parametrize("locale", ["en", "fr"])
def test_refusals_say_what_and_how(text: str, currency: str, code: str, locale: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_amount(text, currency)
    sentence = refused.value.message(locale)
    assert sentence.endswith(".")
    assert "`/pledge " in sentence  # how to write it
    if text.strip() and code != "amount.too_long":
        assert f"`{text.strip().replace(NBSP, ' ')}`" in sentence


def test_french_examples_write_amounts_the_french_way() -> None:
    with pytest.raises(AmountError) as refused:
        parse_amount("50.555", "EUR")
    assert "`/pledge 50,50 €`" in refused.value.message("fr")
    assert "`/pledge 50.50`" in refused.value.message("en")
    assert "décimales" in refused.value.message("fr_FR")


def test_examples_in_refusals_are_themselves_accepted() -> None:
    for currency in ("EUR", "USD", "JPY", "KWD", "CHF"):
        for locale in ("en", "fr"):
            assert parse_amount(typed(Money(5050, currency), locale), currency).minor == 5050


def test_limits_are_shown_formatted_for_the_locale() -> None:
    with pytest.raises(AmountError) as low:
        parse_amount("4.99", "EUR", min_minor=500, max_minor=100_000)
    assert low.value.code == "amount.too_small"
    assert "€5.00" in low.value.message("en")
    assert "5,00\u00a0€" in low.value.message("fr")
    assert "`/pledge 5`" in low.value.message("en")
    with pytest.raises(AmountError) as high:
        parse_amount("1000.01", "EUR", min_minor=500, max_minor=100_000)
    assert high.value.code == "amount.too_large"
    assert "€1,000.00" in high.value.message("en")
    assert parse_amount("5", "EUR", min_minor=500).minor == 500
    assert parse_amount("1000", "EUR", max_minor=100_000).minor == 100_000


def test_an_absolute_ceiling_keeps_amounts_inside_a_database_bigint() -> None:
    with pytest.raises(AmountError) as refused:
        parse_amount("1" + "0" * 20, "EUR")
    assert refused.value.code == "amount.too_large"
    assert refused.value.params["limit_minor"] == MAX_MINOR < 2**63


def test_input_echoed_in_a_refusal_cannot_break_out_of_its_code_span() -> None:
    with pytest.raises(AmountError) as refused:
        parse_amount("5`@all`", "EUR")
    assert "`5'@all'`" in refused.value.message("en")


def test_unknown_project_currency_is_a_configuration_error() -> None:
    with pytest.raises(ValueError) as refused:
        parse_amount("5", "XYZ")
    assert not isinstance(refused.value, AmountError)


@given(st.text())
def test_any_text_is_read_or_refused(text: str) -> None:
    try:
        amount = parse_amount(text, "EUR", min_minor=100, max_minor=10**7)
    except AmountError as refused:
        assert refused.message("en") and refused.message("fr")
    else:
        assert amount.currency == "EUR" and 100 <= amount.minor <= 10**7


@given(st.text(alphabet="0123456789.,€$£ EURSDeUs+-'_%\u00a0٫５", max_size=12))
def test_amountish_text_is_read_or_refused(text: str) -> None:
    try:
        parse_amount(text, "EUR")
    except AmountError as refused:
        assert refused.code.startswith("amount.")
        assert refused.message("fr")


@given(st.integers(1, 10**9))
def test_plain_decimal_round_trip(minor: int) -> None:
    euros, cents = divmod(minor, 100)
    assert parse_amount(f"{euros}.{cents:02d}", "EUR") == Money(minor, "EUR")
    assert parse_amount(f"{euros},{cents:02d} €", "EUR") == Money(minor, "EUR")
    assert parse_amount(typed(Money(minor, "KWD"), "fr"), "KWD") == Money(minor, "KWD")


PERCENT_GOOD = [("40%", 4000), ("33.5%", 3350), ("12,25 %", 1225), (f"12,25{NBSP}%", 1225),
                ("100%", 10_000), ("0.01%", 1), ("  7 % ", 700)]
PERCENT_BAD = [
    ("", "percent.missing"),
    ("40", "percent.not_a_number"),
    ("forty%", "percent.not_a_number"),
    ("%", "percent.not_a_number"),
    ("0%", "percent.zero"),
    ("0.00%", "percent.zero"),
    ("100.01%", "percent.too_large"),
    ("250%", "percent.too_large"),
    ("33.333%", "percent.too_many_decimals"),
    ("-5%", "percent.sign"),
    ("+5%", "percent.sign"),
    ("1e2%", "percent.exponent"),
    ("５0%", "percent.lookalike"),
    ("4" * 40 + "%", "percent.too_long"),
]


@pytest.mark.parametrize(("text", "bp"), PERCENT_GOOD)
def test_good_percentages(text: str, bp: int) -> None:
    assert parse_percent(text) == bp


@pytest.mark.parametrize(("text", "code"), PERCENT_BAD)
def test_bad_percentages(text: str, code: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_percent(text)
    assert refused.value.code == code
    assert "`/award @alice 60% @bob 40%`" in refused.value.message("en")
    assert "`/award @alice 60 % @bob 40 %`" in refused.value.message("fr")


@given(st.text())
def test_any_text_is_a_percentage_or_refused(text: str) -> None:
    try:
        assert 1 <= parse_percent(text) <= 10_000
    except AmountError as refused:
        assert refused.code.startswith("percent.") and refused.message("en")


@pytest.mark.parametrize("minor", [1.0, True, False, Decimal("1"), "1", None])
def test_money_takes_only_int_minor_units(minor: object) -> None:
    with pytest.raises(TypeError):
        Money(minor, "EUR")  # type: ignore[arg-type]


@pytest.mark.parametrize("currency", ["eur", "EURO", "XYZ", "", "€", 978])
def test_money_takes_only_known_iso_codes(currency: object) -> None:
    with pytest.raises(ValueError):
        Money(1, currency)  # type: ignore[arg-type]


def test_money_arithmetic_stays_in_one_currency() -> None:
    a, b = Money(5050, "EUR"), Money(-50, "EUR")
    assert a + b == Money(5000, "EUR")
    assert a - b == Money(5100, "EUR")
    assert -a == Money(-5050, "EUR")
    assert b < Money.zero("EUR") < a and a >= a and b <= a and a > b
    assert Money.zero("JPY").is_zero and not a.is_zero
    assert sum_money([a, b, a], "EUR") == Money(10_050, "EUR")
    assert sum_money([], "KWD") == Money(0, "KWD")
    usd = Money(1, "USD")
    for mix in (lambda: a + usd, lambda: a - usd, lambda: a < usd, lambda: a >= usd,
                lambda: a > usd, lambda: a <= usd, lambda: sum_money([a], "USD")):
        with pytest.raises(ValueError):
            mix()
    assert a != Money(5050, "USD")
    not_money: list[Callable[[], object]] = [
        lambda: a + 1, lambda: a - 1, lambda: a < 1]  # type: ignore[operator]
    for other_type in not_money:
        with pytest.raises(TypeError):
            other_type()
    with pytest.raises(TypeError):  # the builtin starts from 0: sum_money is the way
        sum([a])  # type: ignore[list-item]


@pytest.mark.parametrize(("currency", "digits"), [("EUR", 2), ("JPY", 0), ("KWD", 3), ("USD", 2)])
def test_minor_digits_come_from_babel(currency: str, digits: int) -> None:
    assert minor_digits(currency) == digits


@pytest.mark.parametrize(
    ("money", "value"),
    [(Money(5050, "EUR"), "50.50"), (Money(-5, "EUR"), "-0.05"), (Money(500, "JPY"), "500"),
     (Money(1125, "KWD"), "1.125"), (Money(10**30 + 1, "EUR"), "1" + "0" * 28 + ".01")],
)
def test_to_decimal_is_exact(money: Money, value: str) -> None:
    assert to_decimal(money) == Decimal(value)
    assert str(to_decimal(money)) == value


@pytest.mark.parametrize(
    ("money", "locale", "display"),
    [
        (Money(5000, "EUR"), "en", "€50.00"),
        (Money(5000, "EUR"), "fr", "50,00\u00a0€"),
        (Money(5000, "EUR"), "fr_FR", "50,00\u00a0€"),
        (Money(5000, "EUR"), "fr-CA", "50,00\u00a0€"),
        (Money(123_456_789, "EUR"), "fr", "1\u202f234\u202f567,89\u00a0€"),
        (Money(123_456_789, "EUR"), "en", "€1,234,567.89"),
        (Money(2500, "USD"), "en", "$25.00"),
        (Money(500, "JPY"), "en", "¥500"),
        (Money(5000, "EUR"), "xx", "€50.00"),
    ],
)
def test_format_money(money: Money, locale: str, display: str) -> None:
    assert format_money(money, locale) == display
