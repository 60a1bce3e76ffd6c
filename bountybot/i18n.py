"""The bot's sentences in each language it speaks, looked up by key and filled with values.

Catalogs are plain dicts rather than gettext .po/.mo files: the bot has a few dozen sentences,
and a dict needs no compile step in the install. Babel does what is hard (money, dates,
percentages, lists; plurals are avoided by wording); a missing translation falls back to
English, never to an error.

French typography is applied here, once, to every French template: a narrow no-break space
(U+202F) before `:` `;` `!` `?` and inside « guillemets ». Only the template is touched, never
the values filled in (a user's text stays as typed), and never inside a `code span`, where a
command example must stay copyable.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.lists import format_list
from babel.numbers import format_percent

DEFAULT_LOCALE = "en"
NNBSP = "\u202f"

# key -> {locale -> template}; templates use str.format with named fields.
CATALOG: dict[str, dict[str, str]] = {}


def register(key: str, en: str, fr: str) -> None:
    """Add one sentence in English and French (modules register theirs at import)."""
    CATALOG[key] = {"en": en, "fr": fr}


def language(locale: str) -> str:
    """`fr_FR`, `fr-CA` and `fr` all speak French."""
    return locale.replace("-", "_").split("_", 1)[0].lower() or DEFAULT_LOCALE


@lru_cache(maxsize=64)
def babel_locale(locale: str) -> str:
    """The locale as Babel names it (`fr-CA` -> `fr_CA`); English for one Babel does not know."""
    name = locale.replace("-", "_") or DEFAULT_LOCALE
    try:
        Locale.parse(name)
    except (UnknownLocaleError, ValueError):
        return DEFAULT_LOCALE
    return name


_CODE_SPAN = re.compile(r"(`[^`]*`)")
_BEFORE_PUNCT = re.compile(r"[ \u00a0]([:;!?])")


@lru_cache(maxsize=1024)
def french_spacing(text: str) -> str:
    """A narrow no-break space before `: ; ! ?` and inside « », outside code spans."""
    parts = _CODE_SPAN.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        part = _BEFORE_PUNCT.sub(NNBSP + r"\1", parts[i])
        parts[i] = part.replace("« ", "«" + NNBSP).replace(" »", NNBSP + "»")
    return "".join(parts)


def with_colon(locale: str, text: str) -> str:
    """`State:` in English, `État :` (narrow no-break space) in French: for labels the code
    puts together (`**State:** open`), which no template carries."""
    return f"{text}{NNBSP}:" if language(locale) == "fr" else f"{text}:"


def format_day(value: date | datetime, locale: str) -> str:
    """A day written for the locale: `December 17, 2026`, `17 décembre 2026`. A datetime is
    shown by its date as stored (UTC)."""
    day = value.date() if isinstance(value, datetime) else value
    return format_date(day, "long", locale=babel_locale(locale))


def format_percentage(value: Decimal | int, locale: str) -> str:
    """`value` percent written for the locale, with the decimals it has: `40%`, `2.5%` in
    English, `40 %`, `2,5 %` in French. An int is whole percents (no float on the way)."""
    ratio = Decimal(value) / 100
    return format_percent(ratio, locale=babel_locale(locale), decimal_quantization=False)


def format_names(names: list[str], locale: str) -> str:
    """`@dave`, `@dave and @erin`, `@dave, @erin et @fay`: a list the way the language says it."""
    return format_list(names, locale=babel_locale(locale)) if names else ""


def translate(locale: str, key: str, **params: Any) -> str:
    """The sentence `key` in `locale` (English when that language lacks it), filled with params.

    A `date` or `datetime` value is written for the locale (`format_day`)."""
    forms = CATALOG.get(key)
    if forms is None:
        raise KeyError(f"no sentence registered under {key!r}")
    lang = language(locale)
    template = forms.get(lang) or forms[DEFAULT_LOCALE]
    if lang == "fr" and lang in forms:
        template = french_spacing(template)
    values = {k: format_day(v, locale) if isinstance(v, date) else v for k, v in params.items()}
    return template.format(**values)
