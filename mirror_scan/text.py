"""Text that other people chose (file names, object keys, hash-list notes, post titles, user names) made
safe for every output: terminal control sequences and bidirectional overrides become visible escapes,
and spreadsheet formulas stay text.

A file name holding ESC [ 2 J clears an admin's terminal when `quarantine list` prints it; one holding a
newline forges a log line; U+202E reverses what follows on screen; a CSV cell starting with `=` is a
formula when the report is opened in a spreadsheet. Outputs call these at the edge, so no caller has to
remember (console.py, report.py, the log handler, the webhook and Lemmy notices)."""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (U+009B is a one-character CSI), and the characters
# that reorder or hide text on screen (bidi embeddings, overrides and isolates; the Arabic letter mark).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def printable(text: str) -> str:
    """Every unsafe character as a visible \\uXXXX escape (tabs and newlines kept: messages have lines)."""
    return _UNSAFE.sub(_escape, text)


def one_line(text: str) -> str:
    """printable(), and newlines and tabs escaped too: a value that must stay on its line (a log line, a
    table cell, a CSV field)."""
    return _UNSAFE_LINE.sub(_escape, text)


def csv_cell(value: object) -> object:
    """A CSV field that a spreadsheet shows as text, never evaluates: a leading =, +, -, @, tab or CR gets
    a leading apostrophe (OWASP's advice). Numbers and empty values pass as they are."""
    if not isinstance(value, str) or not value:
        return value
    value = printable(value)  # a newline inside a quoted CSV field is CSV; control sequences are not
    return "'" + value if value.startswith(FORMULA_START) else value
