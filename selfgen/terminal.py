"""Model text made safe to show on a terminal.

Generated text is data, and a terminal obeys some data: an ANSI escape (``\\x1b[2J``) moves the
cursor or clears the screen, an OSC sequence (``\\x1b]0;title\\x07``) retitles the window, a
carriage return overwrites the line, a bidirectional override reorders what follows. Inside a
bordered view each of them shifts or breaks the borders. Everything that shows stored or
generated text on a terminal (`inspect`, `stats`, `traces replay`, the run's log lines) passes
it through :func:`printable` first, which writes such characters as visible escapes.
"""

from __future__ import annotations

import re

# C0 controls but newline and tab (Rich lays those out itself), DEL, C1 controls, the
# bidirectional marks, embeddings, overrides and isolates, and the Unicode line and paragraph
# separators (some terminals start a new line at them).
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(text: str) -> str:
    """`text` with each control character written as its Python escape (``\\x1b``, ``\\r``,
    ``\\u202e``), so that it shows as text instead of acting on the terminal. Newlines and
    tabs are kept."""
    return _CONTROL.sub(_escape, text)
