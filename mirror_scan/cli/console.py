"""Output plumbing: results to stdout, logs and progress to stderr (so `--json` output stays clean)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
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


LOG_FORMATS = ("auto", "text", "json")
# syslog priorities: journald reads a "<N>" prefix on a service's stderr as the line's level
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_chosen = {"format": "auto", "verbose": 0}


class PlainFormatter(logging.Formatter):
    """One line per event, never wrapped: `warning: mirror_scan.store.quarantine: ...`, with the syslog
    priority first under journald (JOURNAL_STREAM set)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>" if os.environ.get("JOURNAL_STREAM") else ""
        return f"{prefix}{record.levelname.lower()}: {record.name}: {one_line(record.getMessage())}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, priority, logger, message (every unsafe character escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "priority": PRIORITY.get(record.levelno, 6),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return printable(json.dumps(event, ensure_ascii=False))


class StderrConsole(SafeConsole):
    """Notes and progress for people. Not at a terminal, a note is one line however long (a journal
    splits wrapped lines into separate entries); with --log-format json, each note is a JSON event like
    the log lines, and in-place progress (end="") is left out."""

    def print(self, *objects, **kwargs):  # noqa: ANN002, ANN003, ANN201
        if _chosen["format"] == "json" and all(isinstance(o, str) for o in objects):
            if kwargs.get("end") == "":
                return None
            text = " ".join(objects).strip("\r")
            level = logging.INFO
            if text.startswith("error: "):
                text, level = text.removeprefix("error: "), logging.ERROR
            record = logging.LogRecord("mirror_scan", level, "", 0, text, None, None)
            sys.stderr.write(JsonFormatter().format(record) + "\n")
            sys.stderr.flush()
            return None
        return super().print(*objects, **kwargs)


out = SafeConsole(soft_wrap=True, highlight=False, markup=False)
err = StderrConsole(stderr=True, highlight=False, markup=False, soft_wrap=not sys.stderr.isatty())


def setup_logging(
    verbose: int | None = None, quiet: bool = False, fmt: str | None = None, events: bool = False
) -> None:
    """verbose/fmt: from the root options (kept for later calls); quiet: warnings only; events: a service
    (watch, serve) logs each event that matters (quarantined, error, restored, removal pending ...) at INFO
    without -v. Format auto: rich at a terminal, plain lines otherwise; text: plain lines; json."""
    if verbose is not None:
        _chosen["verbose"] = verbose
    if fmt is not None:
        if fmt not in LOG_FORMATS:
            from mirror_scan.errors import UsageError

            raise UsageError(f"--log-format {fmt!r} is not known", hint="auto, text or json")
        _chosen["format"] = fmt
    verbose = _chosen["verbose"]
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose or events else logging.WARNING
    if quiet:
        level = logging.WARNING
    chosen = _chosen["format"]
    if chosen == "auto" and err.is_terminal:
        handler: logging.Handler = SafeRichHandler(console=err, show_path=False, markup=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if chosen == "json" else PlainFormatter())
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def print_json(data: Any) -> None:
    """JSON with every unsafe character as a \\u escape (json.dumps leaves DEL, C1 controls and bidi
    overrides raw); it parses to the same values."""
    sys.stdout.write(printable(json.dumps(data, ensure_ascii=False, default=str)) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    """The one error line (and its hint) a failed command leaves on stderr: red at a terminal, plain in
    a journal, an error event with --log-format json."""
    from rich.markup import escape

    if _chosen["format"] == "json" or not err.is_terminal:
        err.print(f"error: {message}")
    else:
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
