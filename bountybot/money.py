"""Money as integer minor units plus a currency, and the strict parsing of amounts people type."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache, total_ordering
from typing import Any

from babel import UnknownLocaleError
from babel.numbers import format_currency, get_currency_precision, list_currencies

from bountybot.i18n import language, register, translate


@cache
def known_currencies() -> frozenset[str]:
    """ISO 4217 codes Babel knows (current and historic)."""
    return frozenset(list_currencies())


def _check_currency(currency: object) -> str:
    if (not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency)
            or currency not in known_currencies()):
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    return currency


def minor_digits(currency: str) -> int:
    """How many decimals the currency has: EUR 2, JPY 0, KWD 3."""
    return int(get_currency_precision(_check_currency(currency)))


@total_ordering
@dataclass(frozen=True, slots=True)
class Money:
    """An amount: `minor` units (cents; signed, for ledger legs) of an ISO 4217 `currency`."""

    minor: int
    currency: str

    def __deepcopy__(self, memo: dict[int, Any]) -> Money:
        return self  # immutable: a copy would be the same value

    def __post_init__(self) -> None:
        # `type() is int` and not isinstance: bool is an int, and so is an IntEnum member.
        if type(self.minor) is not int:
            raise TypeError(f"Money.minor must be an int, not {type(self.minor).__name__}")
        _check_currency(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @property
    def is_zero(self) -> bool:
        return self.minor == 0

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise ValueError(f"cannot mix {self.currency} and {other.currency}")

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same(other)
        return self.minor < other.minor


def sum_money(items: Iterable[Money], currency: str) -> Money:
    """The total of `items`, all in `currency` (zero when empty). Summed as integers, one
    `Money` at the end: a task's summary sums thousands of pledges."""
    total = 0
    for item in items:
        if item.currency != currency:
            raise ValueError(f"cannot mix {currency} and {item.currency}")
        total += item.minor
    return Money(total, currency)


def to_decimal(m: Money) -> Decimal:
    """The exact decimal value (`Money(5050, "EUR")` is `Decimal("50.50")`)."""
    sign, digits, _ = Decimal(m.minor).as_tuple()
    return Decimal((sign, digits, -minor_digits(m.currency)))


# Babel parses the locale and its number pattern on every call (most of an export's time): the
# amounts people pledge repeat, so their displays are kept.
@lru_cache(maxsize=1 << 16)
def format_money(m: Money, locale: str) -> str:
    """Babel's display for the locale: `€50.00` in en, `50,00 €` in fr (an unknown locale: en)."""
    try:
        return format_currency(to_decimal(m), m.currency, locale=locale.replace("-", "_") or "en")
    except (UnknownLocaleError, ValueError):
        return format_currency(to_decimal(m), m.currency, locale="en")


# Above 10**15 minor units nothing is a real pledge, and sums must stay far inside BIGINT.
MAX_MINOR = 10**15
MAX_TEXT = 32
SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP", "¥": "JPY"}
# French keyboards and Babel put these between the number and the symbol.
_SPACES = frozenset("\u00a0\u202f\u2009\u2007")
_APOSTROPHES = frozenset("\u2019\u02bc\u2032")
# Separators of other scripts: they look like ours but are not what we parse.
_LOOKALIKE_PUNCT = frozenset("\u066b\u066c\u060c\u2212\u2010\u2011\u2012\u2013\u2014\ufe63")


class AmountError(ValueError):
    """An amount or percentage that was refused; `message(locale)` is the reply to give."""

    def __init__(self, code: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.params: dict[str, Any] = dict(params or {})

    def message(self, locale: str) -> str:
        p = self.params
        currency = p.get("currency", "EUR")
        command = p.get("command", "pledge")
        fields = dict(p, text=shown(str(p.get("text", ""))))
        fields["example"] = _example(command, currency, locale, p.get("example_minor"))
        if "limit_minor" in p:
            fields["limit"] = format_money(Money(p["limit_minor"], currency), locale)
        return translate(locale, self.code, **fields)


def shown(text: str, limit: int = 40) -> str:
    """User text made safe to echo inside a Markdown code span: no backticks, controls, length."""
    out = []
    for c in text[: limit + 1]:
        if c == "`":
            out.append("'")
        elif c.isspace():
            out.append(" ")
        elif unicodedata.category(c)[0] == "C":
            out.append("\ufffd")
        else:
            out.append(c)
    cleaned = "".join(out)
    return cleaned[:limit] + "…" if len(text) > limit else cleaned


def _describe(c: str) -> str:
    code = f"U+{ord(c):04X}"
    return code if unicodedata.category(c)[0] == "C" else f"`{c}` ({code})"


def typed(m: Money, locale: str) -> str:
    """How to type the amount in a command: `50.50` in English, `50,50 €` in French."""
    digits = minor_digits(m.currency)
    whole, frac = divmod(m.minor, 10**digits)
    french = language(locale) == "fr"
    number = str(whole) if frac == 0 else f"{whole}{',' if french else '.'}{frac:0{digits}d}"
    if not french:
        return number
    symbol = next((s for s, code in SYMBOLS.items() if code == m.currency), m.currency)
    return f"{number} {symbol}"


def _example(command: str, currency: str, locale: str, minor: int | None) -> str:
    if minor is None:
        digits = minor_digits(currency)
        minor = 50 * 10**digits + (5 * 10 ** (digits - 1) if digits else 0)
    return f"/{command} {typed(Money(minor, currency), locale)}"


def _odd_char(c: str) -> tuple[str, dict[str, Any]] | None:
    """Why a non-ASCII character cannot be part of an amount (None when it may)."""
    if c in SYMBOLS or c in _SPACES or c in _APOSTROPHES or c.isspace():
        return None
    lookalike = (
        unicodedata.digit(c, None) is not None
        or c in _LOOKALIKE_PUNCT
        or unicodedata.normalize("NFKC", c).isascii()
    )
    if lookalike:
        return "lookalike", {"char": _describe(c)}
    if unicodedata.category(c) == "Sc":
        return "unknown_currency", {"written": c}
    return "not_a_number", {}


_SHAPE = re.compile(r"(?P<pre>[€$£¥]|[A-Za-z]+)? *(?P<body>.*?) *(?P<post>[€$£¥]|[A-Za-z]+)?", re.S)
_EXPONENT = re.compile(r"[0-9.,][eE][+-]?[0-9]")


def _normalize(text: str, refuse: Callable[..., AmountError], prefix: str) -> str:
    """Surrounding space stripped, inner spaces and apostrophes made ASCII; others refused."""
    s = text.strip()
    if not s:
        raise refuse(f"{prefix}.missing")
    if len(s) > MAX_TEXT:
        raise refuse(f"{prefix}.too_long")
    for c in s:
        if not c.isascii() and (odd := _odd_char(c)) is not None:
            why, extra = odd
            if prefix == "percent" and why != "lookalike":
                why, extra = "not_a_number", {}
            raise refuse(f"{prefix}.{why}", **extra)
    chars = ("'" if c in _APOSTROPHES else " " if c.isspace() else c for c in s)
    return "".join(chars)


def _check_written_currency(written: str, currency: str,
                            refuse: Callable[..., AmountError]) -> None:
    """The currency written beside an amount (`€`, `eur`) must be known and the task's."""
    code = SYMBOLS.get(written) or written.upper()
    if code not in known_currencies() or len(code) != 3:
        raise refuse("amount.unknown_currency", written=written)
    if code != currency:
        raise refuse("amount.currency_mismatch", written=code)


def _minor_units(body: str, digits: int, refuse: Callable[..., AmountError]) -> int:
    """The number of an amount (`50`, `50,5`) in minor units, or refused."""
    whole: str
    frac: str
    if re.fullmatch(r"[0-9]+", body):
        whole, frac = body, ""
    elif decimal := re.fullmatch(r"([0-9]+)[.,]([0-9]+)", body):
        whole, frac = decimal[1], decimal[2]
        if digits == 0:
            raise refuse("amount.no_decimals", example_minor=1500)
        if len(frac) > digits:
            raise refuse("amount.too_many_decimals", digits=digits)
    elif re.fullmatch(r"[0-9][0-9 .,'_]*[0-9]", body):
        raise refuse("amount.thousands_separator", example_minor=1500 * 10**digits)
    else:
        raise refuse("amount.not_a_number")
    minor: int = int(whole) * 10**digits + int(frac.ljust(digits, "0") or "0")
    return minor


def parse_amount(text: str, currency: str, *, min_minor: int | None = None,
                 max_minor: int | None = None, command: str = "pledge") -> Money:
    """Read an amount as DESIGN.md writes them (`50`, `50,50`, `€50`, `50 EUR`...), or refuse.

    `command` (what the user typed before the amount, e.g. `goal` or `award @alice`) only
    shapes the example in the refusal's sentence.
    """
    digits = minor_digits(currency)
    shown_text = text.strip()[:100]

    def refuse(code: str, **params: Any) -> AmountError:
        return AmountError(code, dict(params, text=shown_text, currency=currency, command=command))

    s = _normalize(text, refuse, "amount")
    if _EXPONENT.search(s):
        raise refuse("amount.exponent")
    if "+" in s or "-" in s:
        raise refuse("amount.sign")
    shape = _SHAPE.fullmatch(s)
    assert shape is not None  # the body alone can take any text
    pre, body, post = shape["pre"], shape["body"], shape["post"]
    if (pre and post) or not any("0" <= c <= "9" for c in body):
        raise refuse("amount.not_a_number")
    written = pre or post
    if written:
        _check_written_currency(written, currency, refuse)
    minor = _minor_units(body, digits, refuse)
    if minor == 0:
        raise refuse("amount.zero")
    if min_minor is not None and minor < min_minor:
        raise refuse("amount.too_small", limit_minor=min_minor, example_minor=min_minor)
    ceiling = MAX_MINOR if max_minor is None else min(max_minor, MAX_MINOR)
    if minor > ceiling:
        raise refuse("amount.too_large", limit_minor=ceiling, example_minor=ceiling)
    return Money(minor, currency)


def parse_percent(text: str) -> int:
    """Read an /award share like `40%`, `33.5%` or `12,25 %` as basis points (4000, 3350...)."""
    shown_text = text.strip()[:100]

    def refuse(code: str, **params: Any) -> AmountError:
        return AmountError(code, {"text": shown_text, **params})

    s = _normalize(text, refuse, "percent")
    if _EXPONENT.search(s):
        raise refuse("percent.exponent")
    if "+" in s or "-" in s:
        raise refuse("percent.sign")
    number = re.fullmatch(r"([0-9]+)(?:[.,]([0-9]+))? *%", s)
    if number is None:
        raise refuse("percent.not_a_number")
    whole, frac = number[1], number[2] or ""
    if len(frac) > 2:
        raise refuse("percent.too_many_decimals")
    bp = int(whole) * 100 + int(frac.ljust(2, "0"))
    if bp == 0:
        raise refuse("percent.zero")
    if bp > 10_000:
        raise refuse("percent.too_large")
    return bp


register(
    "amount.missing",
    "Write an amount after `/{command}`, like `{example}`.",
    "Indiquez un montant après `/{command}`, par exemple `{example}`.",
)
register(
    "amount.too_long",
    "`{text}` is too long to be an amount. Write it like `{example}`.",
    "`{text}` est trop long pour être un montant. Écrivez-le comme ceci : `{example}`.",
)
register(
    "amount.not_a_number",
    "`{text}` is not an amount bountybot can read. Write a number, with the currency or"
    " without, like `{example}`.",
    "`{text}` n'est pas un montant que bountybot sait lire. Écrivez un nombre, avec ou sans"
    " la devise, comme ceci : `{example}`.",
)
register(
    "amount.lookalike",
    "`{text}` contains {char}, which only looks like a plain digit, sign or separator. Type the"
    " amount with ordinary digits, like `{example}`.",
    "`{text}` contient {char}, un caractère qui ressemble à un chiffre ou à un signe ordinaire"
    " sans en être un. Tapez le montant avec des chiffres ordinaires, comme ceci : `{example}`.",
)
register(
    "amount.thousands_separator",
    "`{text}` has a thousands separator, which bountybot does not accept (it can be read two"
    " ways). Write the amount without one, like `{example}`.",
    "`{text}` contient un séparateur de milliers, que bountybot refuse (on peut le lire de deux"
    " façons). Écrivez le montant sans séparateur, comme ceci : `{example}`.",
)
register(
    "amount.sign",
    "`{text}` has a sign: an amount is written without `+` or `-`, like `{example}`.",
    "`{text}` comporte un signe : un montant s'écrit sans `+` ni `-`, comme ceci : `{example}`.",
)
register(
    "amount.exponent",
    "`{text}` uses an exponent: write the amount in full, like `{example}`.",
    "`{text}` utilise une puissance de dix : écrivez le montant en entier, comme ceci :"
    " `{example}`.",
)
register(
    "amount.zero",
    "`{text}` is zero: an amount must be more than nothing, like `{example}`.",
    "`{text}` vaut zéro : un montant doit être supérieur à zéro, par exemple `{example}`.",
)
register(
    "amount.too_small",
    "`{text}` is below the smallest amount accepted here, {limit}. Write at least that much,"
    " like `{example}`.",
    "`{text}` est inférieur au minimum accepté ici, {limit}. Indiquez au moins ce montant, par"
    " exemple `{example}`.",
)
register(
    "amount.too_large",
    "`{text}` is above the largest amount accepted here, {limit}. Write at most that much, like"
    " `{example}`.",
    "`{text}` dépasse le maximum accepté ici, {limit}. Indiquez au plus ce montant, par exemple"
    " `{example}`.",
)
register(
    "amount.too_many_decimals",
    "`{text}` has more decimals than {currency} allows ({digits}), and thousands separators are"
    " not accepted. Write it like `{example}`.",
    "`{text}` a trop de décimales : les montants en {currency} en ont au plus {digits}, et les"
    " séparateurs de milliers ne sont pas acceptés. Écrivez-le comme ceci : `{example}`.",
)
register(
    "amount.no_decimals",
    "`{text}`: {currency} amounts have no decimals, and thousands separators are not accepted."
    " Write a whole number, like `{example}`.",
    "`{text}` : les montants en {currency} n'ont pas de décimales, et les séparateurs de milliers"
    " ne sont pas acceptés. Écrivez un nombre entier, comme ceci : `{example}`.",
)
register(
    "amount.unknown_currency",
    "`{written}` in `{text}` is not a currency bountybot knows. This project takes {currency}:"
    " write the amount alone or with its code, like `{example}`.",
    "`{written}` dans `{text}` n'est pas une devise connue de bountybot. Ce projet fonctionne en"
    " {currency} : écrivez le montant seul ou avec sa devise, comme ceci : `{example}`.",
)
register(
    "amount.currency_mismatch",
    "This project takes {currency}, but `{text}` is in {written}, and bountybot does not convert"
    " currencies. Write the amount in {currency}, like `{example}`.",
    "Ce projet fonctionne en {currency}, mais `{text}` est en {written}, et bountybot ne convertit"
    " pas les devises. Indiquez le montant en {currency}, comme ceci : `{example}`.",
)

_AWARD_EN = "`/award @alice 60% @bob 40%`"
_AWARD_FR = "`/award @alice 60 % @bob 40 %`"
for _code, _en, _fr in [
    ("missing", "Write a percentage, like {ex}.", "Indiquez un pourcentage, par exemple {ex}."),
    ("too_long", "`{{text}}` is too long to be a percentage. Write it like {ex}.",
     "`{{text}}` est trop long pour être un pourcentage. Écrivez-le comme ceci : {ex}."),
    ("not_a_number", "`{{text}}` is not a percentage bountybot can read. Write it like {ex}.",
     "`{{text}}` n'est pas un pourcentage que bountybot sait lire. Écrivez-le comme ceci : {ex}."),
    ("lookalike", "`{{text}}` contains {{char}}, which only looks like a plain digit or sign."
     " Type ordinary digits, like {ex}.",
     "`{{text}}` contient {{char}}, un caractère qui ressemble à un chiffre ou à un signe"
     " ordinaire sans en être un. Tapez des chiffres ordinaires, comme ceci : {ex}."),
    ("sign", "`{{text}}` has a sign: a percentage is written without `+` or `-`, like {ex}.",
     "`{{text}}` comporte un signe : un pourcentage s'écrit sans `+` ni `-`, comme ceci : {ex}."),
    ("exponent", "`{{text}}` uses an exponent: write the percentage in full, like {ex}.",
     "`{{text}}` utilise une puissance de dix : écrivez le pourcentage en entier, comme ceci :"
     " {ex}."),
    ("zero", "`{{text}}` is zero: give each share more than nothing, like {ex}.",
     "`{{text}}` vaut zéro : chaque part doit être supérieure à zéro, comme ceci : {ex}."),
    ("too_large", "`{{text}}` is more than 100%: no share can be more than the whole. Write it"
     " like {ex}.",
     "`{{text}}` dépasse 100 % : une part ne peut pas dépasser le tout. Écrivez-le comme ceci :"
     " {ex}."),
    ("too_many_decimals", "`{{text}}` has more than 2 decimals. Write it like `33.33%`, as in"
     " {ex}.",
     "`{{text}}` a plus de 2 décimales. Écrivez-le comme `33,33 %`, comme dans {ex}."),
]:
    register(f"percent.{_code}", _en.format(ex=_AWARD_EN), _fr.format(ex=_AWARD_FR))
