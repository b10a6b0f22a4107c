"""Text that other people chose (file names, object keys, hash-list notes, post titles, user names) made
safe for every output: terminal control sequences and bidirectional overrides become visible escapes,
and spreadsheet formulas stay text.

A file name holding ESC [ 2 J clears an admin's terminal when `quarantine list` prints it; one holding a
newline forges a log line; U+202E reverses what follows on screen; a CSV cell starting with `=` is a
formula when the report is opened in a spreadsheet. Outputs call these at the edge, so no caller has to
remember (console.py, report.py, the log handler, the webhook and Lemmy notices). JSON that others sent
is parsed with a nesting limit (`peer_json`): the parser and whatever walks its result recurse."""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls but tab and newline, DEL, C1 controls (U+009B is a one-character CSI), the characters that
# reorder or hide text on screen (bidi embeddings, overrides and isolates; the Arabic letter mark; zero-width
# spaces, joiners and word joiners; the byte-order mark; the soft hyphen), and the Unicode line and
# paragraph separators (a line break to log viewers and browsers).
_HIDDEN = "\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_HIDDEN}]")
_UNSAFE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_HIDDEN}]")
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


# ---------------------------------------------------------------- JSON that others sent

MAX_JSON_DEPTH = 64  # no peer's answer mirror-scan reads nests deeper than a few levels


def peer_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON a peer sent, or None when it is not JSON, or nests deeper than `max_depth` (Python's parser and
    everything that walks the result recurse: a deep answer would end the command in a RecursionError)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    return value if within_depth(value, max_depth) else None


def within_depth(value: Any, max_depth: int) -> bool:
    """Whether no list or object in `value` lies deeper than `max_depth` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            if depth > max_depth:
                return False
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return True
