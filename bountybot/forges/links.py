"""Closing references: which issues a pull/merge request says it closes ("Fixes #12")."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# GitHub's closing keywords (docs: "Linking a pull request to an issue").
GITHUB_KEYWORDS = r"close[sd]?|fix(?:e[sd])?|resolve[sd]?"
# GitLab's default closing pattern adds the -ing forms and "implement".
GITLAB_KEYWORDS = (r"clos(?:e[sd]?|ing)|fix(?:e[sd]|ing)?|resolv(?:e[sd]?|ing)"
                   r"|implement(?:s|ed|ing)?")

_PATH = r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+"
_MAX_TEXT = 65_536
# Issue numbers are INTEGER columns: `#2147483648` names no issue (and must reach no query).
_MAX_NUMBER = 2**31 - 1


def _pattern(keywords: str) -> re.Pattern[str]:
    # A keyword, an optional colon, then one or more references separated by commas/"and":
    # `Fixes #1`, `closes: octo/repo#2`, `Resolves https://host/o/r/issues/3, #4 and #5`.
    ref = rf"(?:https?://[^\s,)>\]]+|(?:{_PATH})?#\d+)"
    return re.compile(
        rf"(?<![\w/])(?:{keywords})(?::\s*|\s+)(?P<refs>{ref}(?:(?:\s*,\s*|\s+and\s+){ref})*)",
        re.IGNORECASE,
    )


_GITHUB = _pattern(GITHUB_KEYWORDS)
_GITLAB = _pattern(GITLAB_KEYWORDS)
_ONE_REF = re.compile(rf"https?://[^\s,)>\]]+|(?:(?P<path>{_PATH}))?#(?P<num>\d+)")


def _from_url(url: str, web_host: str, forge: str) -> tuple[str, int] | None:
    parts = urlsplit(url.rstrip(".,;"))
    if parts.netloc.lower() != web_host.lower():
        return None
    sep = "/-/issues/" if forge == "gitlab" else "/issues/"
    path, found, number = parts.path.strip("/").rpartition(sep.strip("/") + "/")
    if forge == "gitlab" and not found:
        path, found, number = parts.path.strip("/").rpartition("issues/")
        path = path.rstrip("/").removesuffix("/-")
    if not found or not number.isdigit() or len(number) > 10 or not path:
        return None
    return path.rstrip("/"), int(number)


def closing_refs(text: str | None, *, forge: str, repo_path: str,
                 web_host: str) -> list[tuple[str, int]]:
    """The (repo path, issue number) pairs that `text` says it closes, in order, without
    repeats. `#N` is an issue of `repo_path`; `owner/repo#N` and issue URLs on `web_host`
    name any repo of the forge (the caller keeps those it knows)."""
    if not text:
        return []
    found: dict[tuple[str, int], None] = {}
    pattern = _GITLAB if forge == "gitlab" else _GITHUB
    for match in pattern.finditer(text[:_MAX_TEXT]):
        for ref in _ONE_REF.finditer(match.group("refs")):
            if ref.group(0).lower().startswith("http"):
                parsed = _from_url(ref.group(0), web_host, forge)
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
