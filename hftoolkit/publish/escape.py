"""Escaping for the model card: user strings (labels, split and metric names, notes, paths) made literal where the
card puts them: Markdown text and table cells, code spans and fences, Python string literals, shell words."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

# Markdown and HTML characters that would make a user string (a label, a split or metric name, a note) into markup:
# a table cell break, a code span, a link or image, a tag. Entities render as the character itself everywhere, table
# cells included, and no renderer reads them as syntax (GFM's cell splitter and other renderers differ on backslashes).
_MD_ENTITIES = {
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "`": "&#96;", "[": "&#91;", "]": "&#93;", "\\": "&#92;",
}
_MD_SPECIAL = re.compile("[" + re.escape("".join(_MD_ENTITIES)) + "]")
# Line breaks (Markdown's and Unicode's) and other control characters: one would end a table row or list item and
# let the rest of the string start a heading, a `---` rule or a new block.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]+")
_BACKTICK_RUN = re.compile(r"`+")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
MIN_FENCE = 3  # CommonMark's shortest code fence


def md_text(value: Any) -> str:
    """`value` as literal Markdown text, one line, safe in a paragraph, a list item or a table cell."""
    return _MD_SPECIAL.sub(lambda m: _MD_ENTITIES[m.group()], _CONTROL.sub(" ", str(value)))


def code_span(value: Any) -> str:
    """`value` as a one-line code span shown verbatim: delimited by a backtick run longer than any inside it."""
    text = _CONTROL.sub(" ", str(value))
    ticks = "`" * (max((len(r) for r in _BACKTICK_RUN.findall(text)), default=0) + 1)
    # CommonMark strips one space from each side of a span that starts and ends with one, and a backtick at an edge
    # would merge with the delimiter: pad with a space in both cases.
    pad = " " if text[:1] == "`" or text[-1:] == "`" or (text[:1] == text[-1:] == " " and text.strip()) else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def md_inline(value: Any) -> str:
    """hft's own sentences that quote values in code spans: spans are kept (they are inert), the rest is md_text."""
    text = _CONTROL.sub(" ", str(value))
    out, pos = [], 0
    for m in _CODE_SPAN.finditer(text):
        out += [md_text(text[pos:m.start()]), m.group()]
        pos = m.end()
    return "".join(out) + md_text(text[pos:])


def code_fence(content: str) -> str:
    """A backtick fence no line of `content` can close (longer than any backtick run in it)."""
    return "`" * max(MIN_FENCE, max((len(r) for r in _BACKTICK_RUN.findall(content)), default=0) + 1)


def python_str(value: Any) -> str:
    """`value` as a Python string literal on one line (JSON's escaping is valid Python)."""
    return json.dumps(str(value))


def shell_word(value: Any) -> str:
    """`value` as one shell word: bare when nothing in it needs quoting, else in double quotes (as a user types it)."""
    text = _CONTROL.sub(" ", str(value))
    if shlex.quote(text) == text:
        return text
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'
