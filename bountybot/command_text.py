"""Which lines of a Markdown comment a reader sees as text: not quoted, not code, not hidden.

Commands are only read where a person reading the rendered comment would see them typed at
the start of a line, so an example in a code block, a quoted command or one inside an HTML
comment never moves money. This is a line scanner with the few CommonMark rules that matter
here, not a Markdown parser: where it has to guess, it guesses "not a command".
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# Longer comments are cut: nobody writes commands after 64 KiB, and the scan stays cheap.
MAX_COMMENT = 65_536

# A fence may follow a list marker (`- ```), so its code is hidden inside the list item.
_FENCE_OPEN = re.compile(r"((?:[-*+]|[0-9]{1,9}[.)])[ \t]+)?(`{3,}|~{3,})(.*)")
_FENCE_CLOSE = re.compile(r"(`{3,}|~{3,})[ \t]*")
_BACKTICKS = re.compile(r"`+")


def _indent(line: str) -> tuple[int, str]:
    """Columns of leading indentation (a tab reaches the next multiple of 4) and the rest."""
    columns = 0
    for i, c in enumerate(line):
        if c == " ":
            columns += 1
        elif c == "\t":
            columns += 4 - columns % 4
        else:
            return columns, line[i:]
    return columns, ""


def _mask_code_spans(line: str) -> str:
    """The line with inline code spans blanked, so a `<!--` shown as code hides nothing.

    A backtick run opens a span closed by the next run of the same length (CommonMark);
    this walks the runs once rather than asking a backtracking regex, which is quadratic.
    """
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(line)]
    closer: list[int | None] = [None] * len(runs)
    last: dict[int, int] = {}
    for i in range(len(runs) - 1, -1, -1):
        length = runs[i][1] - runs[i][0]
        closer[i] = last.get(length)
        last[length] = i
    chars = list(line)
    i = 0
    while i < len(runs):
        j = closer[i]
        if j is None:
            i += 1
            continue
        start, end = runs[i][0], runs[j][1]
        chars[start:end] = " " * (end - start)
        i = j + 1
    return "".join(chars)


def cut_html_comments(line: str) -> tuple[str, bool]:
    """The text before the first HTML comment, and whether a comment is left open at the end."""
    if "<!--" not in line:
        return line, False
    masked = _mask_code_spans(line)
    start = masked.find("<!--")
    if start < 0:
        return line, False
    pos = start
    while pos >= 0:
        end = masked.find("-->", pos + 4)
        if end < 0:
            return line[:start], True
        pos = masked.find("<!--", end + 3)
    return line[:start], False


def _opening_fence(rest: str, columns: int) -> tuple[str, int, int] | None:
    """(fence char, fence length, most indentation its closing fence may have), if one opens."""
    m = _FENCE_OPEN.fullmatch(rest)
    if m is None:
        return None
    fence, info = m[2], m[3]
    if fence[0] == "`" and "`" in info:
        return None  # ```a``` on one line is inline code, not a fence
    return fence[0], len(fence), columns + len(m[1] or "") + 3


def _closes(rest: str, columns: int, fence: tuple[str, int, int]) -> bool:
    m = _FENCE_CLOSE.fullmatch(rest)
    char, length, max_columns = fence
    return m is not None and columns <= max_columns and m[1][0] == char and len(m[1]) >= length


def visible_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without indentation) for each line that may hold a command.

    Skipped: lines indented 4 columns or more (indented code), quotes (`>`), fenced code
    (``` or ~~~, unclosed fences run to the end), HTML comments (`<!-- -->`, across lines).
    """
    text = text[:MAX_COMMENT].removeprefix("\ufeff")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fence: tuple[str, int, int] | None = None
    in_comment = False
    for number, line in enumerate(lines, 1):
        if in_comment:
            end = line.find("-->")
            if end >= 0:
                in_comment = cut_html_comments(line[end + 3:])[1]
            continue
        columns, rest = _indent(line)
        if fence is not None:
            if _closes(rest, columns, fence):
                fence = None
            continue
        if columns >= 4:
            continue
        opened = _opening_fence(rest, columns)
        if opened is not None:
            fence = opened
            continue
        head, in_comment = cut_html_comments(rest)
        if not rest.startswith(">"):
            yield number, head
