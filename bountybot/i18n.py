"""The bot's sentences in each language it speaks, looked up by key and filled with values.

Catalogs are plain dicts rather than gettext .po/.mo files: the bot has a few dozen sentences,
and a dict needs no compile step in the install. Babel does what is hard (money, dates, plurals
are avoided by wording); a missing translation falls back to English, never to an error.
"""

from __future__ import annotations

from typing import Any

DEFAULT_LOCALE = "en"

# key -> {locale -> template}; templates use str.format with named fields.
CATALOG: dict[str, dict[str, str]] = {}


def register(key: str, en: str, fr: str) -> None:
    """Add one sentence in English and French (modules register theirs at import)."""
    CATALOG[key] = {"en": en, "fr": fr}


def language(locale: str) -> str:
    """`fr_FR`, `fr-CA` and `fr` all speak French."""
    return locale.replace("-", "_").split("_", 1)[0].lower() or DEFAULT_LOCALE


def translate(locale: str, key: str, **params: Any) -> str:
    """The sentence `key` in `locale` (English when that language lacks it), filled with params."""
    forms = CATALOG.get(key)
    if forms is None:
        raise KeyError(f"no sentence registered under {key!r}")
    template = forms.get(language(locale)) or forms[DEFAULT_LOCALE]
    return template.format(**params)
