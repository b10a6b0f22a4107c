"""Output plumbing: results to stdout, logs and progress to stderr (so `--json` output stays clean)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from mirror_scan.text import one_line, printable


class SafeConsole(Console):
    """Every string it renders (printed text and table cells alike go through render_str) has its
    terminal control sequences made visible: names and titles come from uploaders and other instances."""

    def render_str(self, text: str, **kwargs):  # noqa: ANN003, ANN201
        return super().render_str(printable(text), **kwargs)


class SafeRichHandler(RichHandler):
    """Log lines with control characters and newlines escaped: a file name never forges a log line."""

    def render_message(self, record: logging.LogRecord, message: str):  # noqa: ANN201
        return super().render_message(record, one_line(message))


out = SafeConsole(soft_wrap=True, highlight=False, markup=False)
err = SafeConsole(stderr=True, highlight=False, markup=False)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = (
        logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[SafeRichHandler(console=err, show_path=False, markup=False, rich_tracebacks=False)],
        force=True,
    )


def print_json(data: Any) -> None:
    """JSON with every unsafe character as a \\u escape (json.dumps leaves DEL, C1 controls and bidi
    overrides raw); it parses to the same values."""
    sys.stdout.write(printable(json.dumps(data, ensure_ascii=False, default=str)) + "\n")
    sys.stdout.flush()
