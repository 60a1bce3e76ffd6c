"""Closing references: which issues a pull/merge request says it closes ("Fixes #12")."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_PATH = r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+"
_MAX_TEXT = 65_536
# Issue numbers are INTEGER columns: `#2147483648` names no issue (and must reach no query).
_MAX_NUMBER = 2**31 - 1


def closing_pattern(keywords: str) -> re.Pattern[str]:
    """The closing references a forge reads, from its keywords (a regular expression's
    alternatives, such as `close[sd]?|fix(?:e[sd])?`)."""
    # A keyword, an optional colon, then one or more references separated by commas/"and":
    # `Fixes #1`, `closes: octo/repo#2`, `Resolves https://host/o/r/issues/3, #4 and #5`.
    ref = rf"(?:https?://[^\s,)>\]]+|(?:{_PATH})?#\d+)"
    return re.compile(
        rf"(?<![\w/])(?:{keywords})(?::\s*|\s+)(?P<refs>{ref}(?:(?:\s*,\s*|\s+and\s+){ref})*)",
        re.IGNORECASE,
    )


_ONE_REF = re.compile(rf"https?://[^\s,)>\]]+|(?:(?P<path>{_PATH}))?#(?P<num>\d+)")


def _from_url(url: str, web_host: str, issue_paths: tuple[str, ...]) -> tuple[str, int] | None:
    parts = urlsplit(url.rstrip(".,;"))
    if parts.netloc.lower() != web_host.lower():
        return None
    for marker in issue_paths:
        path, found, number = parts.path.strip("/").rpartition(marker)
        if found:
            path = path.rstrip("/").removesuffix("/-")
            break
    if not found or not number.isdigit() or len(number) > 10 or not path:
        return None
    return path.rstrip("/"), int(number)


def closing_refs(text: str | None, *, pattern: re.Pattern[str], repo_path: str, web_host: str,
                 issue_paths: tuple[str, ...] = ("issues/",)) -> list[tuple[str, int]]:
    """The (repo path, issue number) pairs that `text` says it closes, in order, without
    repeats, as a forge reads them: its `pattern` (`closing_pattern`), and its issue URLs on
    `web_host`, `<repo path>/<one of issue_paths><number>`. `#N` is an issue of `repo_path`;
    `owner/repo#N` and issue URLs name any repo of the forge (the caller keeps those it
    knows)."""
    if not text:
        return []
    found: dict[tuple[str, int], None] = {}
    for match in pattern.finditer(text[:_MAX_TEXT]):
        for ref in _ONE_REF.finditer(match.group("refs")):
            if ref.group(0).lower().startswith("http"):
                parsed = _from_url(ref.group(0), web_host, issue_paths)
            elif len(ref.group("num")) <= 10:
                parsed = (ref.group("path") or repo_path, int(ref.group("num")))
            else:
                parsed = None
            if parsed and 1 <= parsed[1] <= _MAX_NUMBER:
                found.setdefault(parsed, None)
    return list(found)


def same_repo(a: str, b: str) -> bool:
    """Forge paths compare without case (GitHub and GitLab both ignore it)."""
    return a.lower() == b.lower()
