"""Is the state database whole? Header and page checks before a process uses it, and the two errors a
command reports: damaged (named, left alone for a person) and busy (another writer holds it: retry)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from mirror_scan.errors import MirrorScanError
from mirror_scan.store.schema import BUSY_TIMEOUT_MS, CRITICAL_TABLES, FULL_PAGE_CHECK_MAX_BYTES


class StateDamaged(MirrorScanError):
    """The state database cannot be read: truncated, overwritten, or not a database."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"state database {path} is damaged ({problem}); nothing was changed",
            hint=f"check it with `mirror-scan state check --state {path}`; to start afresh, "
            f"`mirror-scan state rebuild --state {path}` rebuilds it from the quarantine's metadata "
            "(the next scan re-reads every file)",
        )


class StateBusy(MirrorScanError):
    """Another process held the state database's write lock for longer than a writer waits."""

    exit_code = 75  # EX_TEMPFAIL: try again

    def __init__(self, path: Path | str) -> None:
        super().__init__(
            f"state database {path} is busy: another mirror-scan process kept it locked for over "
            f"{BUSY_TIMEOUT_MS // 1000} s; nothing was changed",
            hint="try again in a moment; the database itself is fine (if it stays busy, see which "
            "mirror-scan processes run: `mirror-scan status`)",
        )


def is_busy(error: BaseException) -> bool:
    """SQLite's 'database is locked' / 'database is busy': a wait that ran out, not damage."""
    return isinstance(error, sqlite3.OperationalError) and any(
        word in str(error).lower() for word in ("database is locked", "database is busy", "database table is locked")
    )


def open_private(path: Path) -> None:
    """Create the database file 0600 whatever the umask: it holds paths, hashes and reasons. SQLite gives
    its -wal and -shm files the database file's mode."""
    if not path.exists():
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


_HEADER_CHECKED: set[str] = set()
_HEADER_LOCK = threading.Lock()


def check_header(path: Path) -> None:
    """Cheap checks before SQLite opens an existing file (it would treat a short file as an empty database
    and write a fresh schema over the evidence): the magic, whole pages, and the page count the header
    records. A full check is `mirror-scan state check`.

    Once per process and file, before this process has any connection to it: closing any descriptor of
    the database file drops every POSIX lock the process holds on it (SQLite's own among them), after
    which another process would take itself for the last user and checkpoint and remove the WAL under
    our connections."""
    key = os.path.realpath(path)
    with _HEADER_LOCK:
        if key in _HEADER_CHECKED:
            return
        _read_header_checks(path)
        _HEADER_CHECKED.add(key)


_PAGES_CHECKED: set[str] = set()


def check_pages_once(path: Path, db: sqlite3.Connection) -> None:
    """Damage inside pages (an intact header over garbage) is found by SQLite only where a read happens
    to touch it, and a write beside it would go on as if nothing were wrong: check before first use."""
    if str(path) == ":memory:" or not path.exists():
        return
    key = os.path.realpath(path)
    with _HEADER_LOCK:
        if key in _PAGES_CHECKED:
            return
    problems = page_problems(db, full=path.stat().st_size <= FULL_PAGE_CHECK_MAX_BYTES)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StateDamaged(path, f"malformed: {problems[0]}{more}")
    with _HEADER_LOCK:
        _PAGES_CHECKED.add(key)


def page_problems(db: sqlite3.Connection, full: bool = True) -> list[str]:
    """SQLite's quick_check of the whole file, or of the small tables that matter most."""
    try:
        if full:
            rows = db.execute("PRAGMA quick_check").fetchall()
        else:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            rows = [r for t in CRITICAL_TABLES if t in tables for r in db.execute(f"PRAGMA quick_check({t})")]
    except sqlite3.DatabaseError as err:
        if is_busy(err):
            return []
        return [str(err)]
    return [r[0] for r in rows if r[0] != "ok"]


def _read_header_checks(path: Path) -> None:
    try:
        size = path.stat().st_size
        if size == 0:
            return
        with open(path, "rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise StateDamaged(path, "not an SQLite database, or its header is cut off")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or size % page_size:
        raise StateDamaged(path, f"truncated: {size:,} bytes is not a whole number of {page_size}-byte pages")
    change_counter, pages, valid_for = (int.from_bytes(header[o : o + 4], "big") for o in (24, 28, 92))
    if change_counter == valid_for and pages * page_size > size:
        raise StateDamaged(path, f"truncated: the header records {pages:,} pages, the file holds {size // page_size:,}")
