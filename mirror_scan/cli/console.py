"""Output plumbing: results to stdout, logs and progress to stderr (so `--json` output stays clean).

A command's streams are given to it by whoever runs it (`cli.main.run(argv, io)`, trash-cli's habit): the
process's own for `mirror-scan`, a test's buffers for the tests that only check what a command says, so
those run in-process. `out`, `err`, `print_json`, `confirm` and the log handler write to the streams of the
run in progress."""

from __future__ import annotations

import contextlib
import datetime as dt
import io as _io
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.logging import RichHandler

from mirror_scan.logs import NOTICE
from mirror_scan.redact import scrub_known
from mirror_scan.text import one_line, printable


class SafeConsole(Console):
    """Every string it renders (printed text and table cells alike go through render_str) has its
    terminal control sequences made visible: names and titles come from uploaders and other instances; and
    every known secret replaced (a peer may echo one in a message)."""

    def render_str(self, text: str, **kwargs):  # noqa: ANN003, ANN201
        return super().render_str(printable(scrub_known(text)), **kwargs)


class SafeRichHandler(RichHandler):
    """Log lines with control characters and newlines escaped: a file name never forges a log line."""

    def render_message(self, record: logging.LogRecord, message: str):  # noqa: ANN201
        return super().render_message(record, one_line(scrub_known(message)))


LOG_FORMATS = ("auto", "text", "json")
# syslog priorities: journald reads a "<N>" prefix on a service's stderr as the line's level
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, NOTICE: 5, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class PlainFormatter(logging.Formatter):
    """One line per event, never wrapped: `warning: mirror_scan.store.quarantine: ...`, with the syslog
    priority first under journald (JOURNAL_STREAM set)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>" if os.environ.get("JOURNAL_STREAM") else ""
        return f"{prefix}{record.levelname.lower()}: {record.name}: {one_line(scrub_known(record.getMessage()))}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, priority, logger, message (every unsafe character escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "priority": PRIORITY.get(record.levelno, 6),
            "logger": record.name,
            "message": scrub_known(record.getMessage()),
        }
        return printable(json.dumps(event, ensure_ascii=False))


class StderrConsole(SafeConsole):
    """Notes and progress for people. Not at a terminal, a note is one line however long (a journal
    splits wrapped lines into separate entries); with --log-format json, each note is a JSON event like
    the log lines, and in-place progress (end="") is left out."""

    def __init__(self, io: Io, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.io = io

    def print(self, *objects, **kwargs):  # noqa: ANN002, ANN003, ANN201
        if self.io.log_format == "json" and all(isinstance(o, str) for o in objects):
            if kwargs.get("end") == "":
                return None
            text = " ".join(objects).strip("\r")
            level = logging.INFO
            if text.startswith("error: "):
                text, level = text.removeprefix("error: "), logging.ERROR
            record = logging.LogRecord("mirror_scan", level, "", 0, text, None, None)
            self.io.stderr.write(JsonFormatter().format(record) + "\n")
            self.io.stderr.flush()
            return None
        return super().print(*objects, **kwargs)


class Io:
    """What a command reads and writes: its results (stdout), its notes, progress and logs (stderr), and
    the answers to its questions (stdin); the log format and verbosity chosen for the run."""

    def __init__(self, stdout: TextIO, stderr: TextIO, stdin: TextIO, columns: int | None = None) -> None:
        self.stdout, self.stderr, self.stdin = stdout, stderr, stdin
        self.log_format, self.verbose = "auto", 0
        self.out = SafeConsole(file=stdout, soft_wrap=True, highlight=False, markup=False, width=columns)
        self.err = StderrConsole(
            self, file=stderr, highlight=False, markup=False, soft_wrap=not _isatty(stderr), width=columns
        )

    @classmethod
    def process(cls) -> Io:
        return cls(sys.stdout, sys.stderr, sys.stdin)

    @classmethod
    def buffers(cls, stdin: str = "", columns: int = 200) -> Io:
        """In-memory streams (a test's): read them back with `said()`."""
        return cls(_io.StringIO(), _io.StringIO(), _io.StringIO(stdin), columns=columns)

    def said(self) -> tuple[str, str]:
        return self.stdout.getvalue(), self.stderr.getvalue()  # type: ignore[attr-defined]

    @property
    def interactive(self) -> bool:
        """Someone is there to answer a question (stdin is a terminal)."""
        return _isatty(self.stdin)

    def confirm(self, question: str, default: bool = False) -> bool:
        """A yes/no question answered on stdin (typer's, while the run's streams are the process's own);
        no answer at all (end of input) is NoAnswer, which says so (exit 1, as for "no")."""
        import typer

        from mirror_scan.errors import NoAnswer

        with using(self) if current() is not self else contextlib.nullcontext():
            try:
                return typer.confirm(question, default=default)
            except typer.Abort:  # end of input: no terminal, nothing piped in
                raise NoAnswer(
                    "the question above got no answer: standard input ended"
                    + ("" if self.interactive else " (it is not a terminal)"),
                    hint="answer it at a terminal, or pass --yes (-y) to confirm from a script",
                ) from None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_current: Io | None = None  # the run in progress (threads of a command print to it too)
_process: tuple[tuple[int, int, int], Io] | None = None


def current() -> Io:
    """The streams of the run in progress; outside a run, the process's own (as they are now)."""
    global _process
    if _current is not None:
        return _current
    streams = (id(sys.stdout), id(sys.stderr), id(sys.stdin))
    if _process is None or _process[0] != streams:
        _process = (streams, Io.process())
    return _process[1]


@contextlib.contextmanager
def using(io: Io) -> Iterator[Io]:
    """Run a command with these streams: ours and whatever else writes to sys.stdout or sys.stderr (click's
    help and usage errors), and the root logger as it was afterwards."""
    global _current
    import signal
    import threading

    saved = _current, sys.stdin, sys.stdout, sys.stderr
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    main = threading.current_thread() is threading.main_thread()
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    _current = io
    sys.stdin, sys.stdout, sys.stderr = io.stdin, io.stdout, io.stderr
    try:
        yield io
    finally:
        _current, sys.stdin, sys.stdout, sys.stderr = saved
        root.handlers[:] = handlers
        root.setLevel(level)
        for sig, handler in signals.items():  # a daemon command's stop handlers end with it
            signal.signal(sig, handler)


class _Current:
    """`out` and `err` as the command modules import them: the consoles of the run in progress."""

    def __init__(self, which: str) -> None:
        self._which = which

    def __getattr__(self, name: str) -> Any:
        return getattr(getattr(current(), self._which), name)

    def __enter__(self) -> Any:  # `with err:` (rich's Live and Progress enter their console)
        return getattr(current(), self._which).__enter__()

    def __exit__(self, *exc: object) -> None:
        getattr(current(), self._which).__exit__(*exc)


out: SafeConsole = _Current("out")  # type: ignore[assignment]
err: StderrConsole = _Current("err")  # type: ignore[assignment]


def confirm(question: str, default: bool = False) -> bool:
    return current().confirm(question, default)


def interactive() -> bool:
    return current().interactive


def setup_logging(
    verbose: int | None = None, quiet: bool = False, fmt: str | None = None, events: bool = False
) -> None:
    """verbose/fmt: from the root options (kept for later calls); quiet: warnings only; events: a service
    (watch, serve) logs each event that matters (quarantined, error, restored, removal pending ...) at INFO
    without -v. Format auto: rich at a terminal, plain lines otherwise; text: plain lines; json."""
    io = current()
    if verbose is not None:
        io.verbose = verbose
    if fmt is not None:
        if fmt not in LOG_FORMATS:
            from mirror_scan.errors import UsageError

            raise UsageError(f"--log-format {fmt!r} is not known", hint="auto, text or json")
        io.log_format = fmt
    level = logging.DEBUG if io.verbose > 1 else logging.INFO if io.verbose or events else logging.WARNING
    if quiet:
        level = logging.WARNING
    if io.log_format == "auto" and io.err.is_terminal:
        handler: logging.Handler = SafeRichHandler(console=io.err, show_path=False, markup=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(io.stderr)
        handler.setFormatter(JsonFormatter() if io.log_format == "json" else PlainFormatter())
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def print_json(data: Any) -> None:
    """JSON with every unsafe character as a \\u escape (json.dumps leaves DEL, C1 controls and bidi
    overrides raw); it parses to the same values."""
    stdout = current().stdout
    stdout.write(printable(json.dumps(data, ensure_ascii=False, default=str)) + "\n")
    stdout.flush()


def print_error(message: str) -> None:
    """The one error line (and its hint) a failed command leaves on stderr: red at a terminal, plain in
    a journal, an error event with --log-format json."""
    from rich.markup import escape

    io = current()
    if io.log_format == "json" or not io.err.is_terminal:
        io.err.print(f"error: {message}")
    else:
        io.err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
