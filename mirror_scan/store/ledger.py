"""The state ledger: one SQLite database (WAL) per installation, and the only module with SQL in it.

`files` holds one row per path (stored as raw bytes, so non-UTF-8 names round-trip) with its size,
mtime, sha256, status, verdict and why. `results` holds what the model said about some bytes, once per
(sha256, model): similarities against the bundle's concept prompts (float32 [frames, P]) and the
image embeddings (float16 [frames, D]), so copies are never re-inferred and a new policy can be
applied without reading an image. `quarantine` indexes the evidence store and `moves` journals its
multi-step moves.

Concurrency: any number of processes may write (the watch daemon, the validator, `quarantine restore`
from another shell): SQLite serialises writers, every write transaction starts IMMEDIATE (it takes
the write lock at once, so two writers never deadlock upgrading a read), and writers keep their
transactions short. Readers (`report`, `quarantine list`) open the file read-only and never wait.
Which process owns a quarantine move is decided by item locks in the quarantine (see quarantine.py),
not here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mirror_scan.errors import MirrorScanError
from mirror_scan.kinds import (
    DECIDED_STATUSES,
    EXPORTED_STATES,
    FINISHED_STEPS,
    HELD_STATES,
    MOVING_STATES,
    FileStatus,
    FileVerdict,
    MoveKind,
    Step,
)

SCHEMA_VERSION = 6
# A writer waits this long for another writer's transaction. Transactions last milliseconds (none is ever
# held across a subprocess, a network call or a wait for work), so running out of it means something
# is wrong with another process, and is reported as "busy", never as damage.
BUSY_TIMEOUT_MS = 15_000
# Every process checks the pages of the database once before using it (SQLite's quick_check reads the
# whole file, about 1 GB/s): in full up to this size, above it the small tables that hold the quarantine
# index, the allowlist and the move journal (the daemon checks the whole file once a day).
FULL_PAGE_CHECK_MAX_BYTES = 2 << 30
CRITICAL_TABLES = ("meta", "quarantine", "moves", "allowlist", "followups", "hash_lists", "attributions")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompt_sets (id TEXT PRIMARY KEY, prompts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    model_id TEXT NOT NULL,
    frames INTEGER NOT NULL,
    prompt_set TEXT NOT NULL REFERENCES prompt_sets(id),
    sims BLOB NOT NULL,
    embedding BLOB NOT NULL,
    created REAL NOT NULL,
    UNIQUE (sha256, model_id)
);
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    root BLOB,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    status TEXT NOT NULL,
    verdict TEXT,
    reason TEXT,
    result_id INTEGER REFERENCES results(id),
    model_id TEXT,
    policy_id TEXT,
    severity REAL,
    format TEXT,
    first_seen REAL NOT NULL,
    scanned_at REAL,
    decided_at REAL,
    action TEXT,
    acted_at REAL
);
CREATE INDEX IF NOT EXISTS files_verdict ON files (verdict);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE TABLE IF NOT EXISTS picture_hashes (
    sha256 TEXT NOT NULL,
    frame INTEGER NOT NULL,
    md5 TEXT,
    pdq TEXT,
    quality INTEGER,
    variants TEXT,
    PRIMARY KEY (sha256, frame)
);
CREATE TABLE IF NOT EXISTS video_hashes (
    sha256 TEXT NOT NULL,
    idx INTEGER NOT NULL,
    pdq TEXT NOT NULL,
    quality INTEGER NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (sha256, idx)
);
CREATE TABLE IF NOT EXISTS hash_lists (
    name TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    imported REAL NOT NULL,
    source TEXT,
    entries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hash_list_entries (
    list TEXT NOT NULL REFERENCES hash_lists(name),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    note TEXT,
    source TEXT
);
CREATE INDEX IF NOT EXISTS hash_list_entries_list ON hash_list_entries (list);
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    api TEXT NOT NULL,
    config TEXT NOT NULL,
    action TEXT NOT NULL,
    checkpoint TEXT,
    state TEXT,
    fetched REAL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS hash_pushes (
    target TEXT NOT NULL,
    value TEXT NOT NULL,
    content_id TEXT,
    pushed REAL NOT NULL,
    PRIMARY KEY (target, value)
);
CREATE TABLE IF NOT EXISTS allowlist (sha256 TEXT PRIMARY KEY, added REAL NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    dir BLOB NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    original BLOB NOT NULL,
    mirror_root BLOB NOT NULL,
    remote TEXT,
    key TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_sha256 ON quarantine (sha256);
CREATE INDEX IF NOT EXISTS quarantine_original ON quarantine (original);
CREATE TABLE IF NOT EXISTS attributions (item TEXT PRIMARY KEY, data TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS followups (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    plan INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    result TEXT,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (item, action, target)
);
CREATE INDEX IF NOT EXISTS followups_due ON followups (state, next_try);
CREATE TABLE IF NOT EXISTS mirrors (root BLOB PRIMARY KEY, remote TEXT NOT NULL, recorded REAL NOT NULL,
                                    by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS moves (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL,
    kind TEXT NOT NULL,
    step TEXT NOT NULL,
    target BLOB,
    started REAL NOT NULL,
    updated REAL NOT NULL,
    note TEXT
);
"""

# Columns added after schema 1, added in place to older databases (ALTER TABLE ... ADD COLUMN).
MIGRATIONS = {
    "quarantine": {"seen_count": "INTEGER NOT NULL DEFAULT 1", "last_seen": "REAL"},
    "moves": {"method": "TEXT"},
    # schema 3: what the decode said about the bytes (row labels, notes such as "partial", caps hit)
    "results": {"detail": "TEXT", "partial": "INTEGER NOT NULL DEFAULT 0"},
    # schema 4: objects scanned in their bucket (`bucket scan`): origin 'bucket', path NAME:bucket/key
    "files": {"error_count": "INTEGER NOT NULL DEFAULT 0", "etag": "TEXT", "origin": "TEXT"},
    # schema 5: each frame's 8 rotations and mirror images (space-separated PDQ), so a decision from the
    # ledger (rescore, a copy, a list imported later) matches lists exactly as the scan did
    "picture_hashes": {"variants": "TEXT"},
}

# Data migrations, run once when a database older than the key is opened.
DATA_MIGRATIONS = {
    # schema 6: one spelling for "upstream pending" (files.action had a space, quarantine.state an underscore)
    6: "UPDATE files SET action='upstream_pending' WHERE action='upstream pending'",
}


def _sql_list(values: tuple[StrEnum, ...]) -> str:
    """An SQL list of fixed enum values (never user text): the states are spelled once, here."""
    return "(" + ", ".join(f"'{value.value}'" for value in values) + ")"


DECIDED_SQL = _sql_list(DECIDED_STATUSES)
EXPORTED_SQL = _sql_list(EXPORTED_STATES)
MOVING_SQL = _sql_list(MOVING_STATES)
FINISHED_SQL = _sql_list(FINISHED_STEPS)


def path_key(path: str | os.PathLike) -> bytes:
    return os.fsencode(path)


def display_path(key: bytes) -> str:
    """Printable form of a stored path: undecodable bytes become \\x escapes."""
    return key.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class StoredResult:
    id: int
    frames: int
    prompt_set: str
    sims: np.ndarray  # float32 [frames, P]
    embedding: np.ndarray  # float16 [frames, D]
    detail: dict | None = None  # the decode's row labels and notes


@dataclass(frozen=True)
class FileRow:
    """What the ledger knows about one path."""

    path: bytes
    root: bytes | None
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    status: str
    verdict: str | None
    reason: str | None
    result_id: int | None
    model_id: str | None
    policy_id: str | None
    severity: float | None
    format: str | None
    scanned_at: float | None
    action: str | None
    error_count: int
    etag: str | None = None
    origin: str | None = None


@dataclass(frozen=True)
class ItemRow:
    """One quarantine item as the ledger (the authority) records it."""

    id: str
    dir: bytes
    sha256: str
    size: int
    original: bytes  # absolute path of the original (b"" for uploads rejected at validation)
    mirror_root: bytes
    remote: str | None
    key: str | None
    state: str
    reason: str | None
    created: float
    updated: float
    seen_count: int
    last_seen: float | None


@dataclass(frozen=True)
class FollowupRow:
    id: int
    item: str
    action: str
    target: str
    state: str  # pending, done, refused, cancelled, dry_run, skipped (Lemmy would refuse it: error says why)
    plan: int
    attempts: int
    next_try: float
    result: str | None
    error: str | None
    created: float
    updated: float


_FOLLOWUP_COLUMNS = "id, item, action, target, state, plan, attempts, next_try, result, error, created, updated"


class FileSignature(NamedTuple):
    """What the reconciliation walk compares with the disk."""

    size: int | None
    mtime_ns: int | None
    status: str
    scanned_at: float | None
    error_count: int


class ActContext(NamedTuple):
    """A flagged file's decision, as the actor needs it to quarantine the file."""

    root: bytes | None
    sha256: str | None
    reason: str | None
    model_id: str | None
    policy_id: str | None
    severity: float | None


class Unacted(NamedTuple):
    path: bytes
    sha256: str | None
    reason: str | None
    root: bytes | None


@dataclass(frozen=True)
class RescoreRow:
    """A decided file with its stored result, as `rescore` reads it."""

    rowid: int
    verdict: str | None
    sha256: str
    frames: int
    prompt_set: str
    sims: bytes
    embedding: bytes | None
    policy_id: str | None
    severity: float | None
    detail: str | None
    decided_at: float | None
    mentions_list: int  # the stored reason names a hash list (a list decided it, or a review match)


@dataclass(frozen=True)
class MoveRow:
    id: int
    item: str
    kind: str
    step: str
    target: bytes | None
    started: float
    updated: float
    note: str | None
    method: str | None


_FILE_COLUMNS = ", ".join(f.name for f in FileRow.__dataclass_fields__.values())
_ITEM_COLUMNS = ", ".join(f.name for f in ItemRow.__dataclass_fields__.values())
_MOVE_COLUMNS = ", ".join(f.name for f in MoveRow.__dataclass_fields__.values())


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


def _open_private(path: Path) -> None:
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


def _check_header(path: Path) -> None:
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


def _check_pages_once(path: Path, db: sqlite3.Connection) -> None:
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


class Ledger:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        self._in_tx = False
        _check_header(self.path)
        try:
            if readonly and not self.path.exists():
                # Nothing recorded yet: reads see an empty ledger, and nothing is created on disk.
                self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                self._create_schema()
            elif readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
                self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self.db.execute("PRAGMA cell_size_check=ON")
                self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                _check_pages_once(self.path, self.db)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _open_private(self.path)
                self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self.db.execute("PRAGMA cell_size_check=ON")  # some damage is caught as pages are read
                self.db.execute("PRAGMA journal_mode=WAL")
                # FULL: every commit (one per inference batch, one per quarantine step) survives a power cut.
                self.db.execute("PRAGMA synchronous=FULL")
                _check_pages_once(self.path, self.db)  # before this process writes anything
                with self.transaction():  # one writer creates or migrates; others wait for it
                    self._create_schema()
        except sqlite3.DatabaseError as err:
            with contextlib.suppress(Exception):
                self.db.close()
            if is_busy(err):
                raise StateBusy(self.path) from None
            raise StateDamaged(self.path, str(err)) from None
        except StateDamaged:
            self.db.close()
            raise

    # ---------------------------------------------------------------- lifecycle

    def _create_schema(self) -> None:
        """Statement by statement (executescript would commit the caller's transaction), then migrate."""
        for statement in filter(str.strip, SCHEMA.split(";")):
            self.db.execute(statement)
        self._migrate()

    def _migrate(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise MirrorScanError(
                f"state database {self.path} was written by a newer mirror-scan (schema {row[0]})",
                hint="upgrade mirror-scan, or point --state at another file",
            )
        old_version = int(row[0]) if row is not None else SCHEMA_VERSION
        for table, columns in MIGRATIONS.items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        for version, statement in sorted(DATA_MIGRATIONS.items()):
            if old_version < version:
                self.db.execute(statement)
        self.db.execute(
            "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(SCHEMA_VERSION),),
        )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.commit()
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def begin(self) -> None:
        """Open a write transaction if none is open: IMMEDIATE, so it holds the write lock from the start."""
        if not self._in_tx:
            self.db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def rollback(self) -> None:
        if self._in_tx:
            self.db.execute("ROLLBACK")
            self._in_tx = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One explicit write transaction: committed on success, rolled back on any exception."""
        outer = self._in_tx
        self.begin()
        try:
            yield
        except BaseException:
            if not outer:
                self.rollback()
            raise
        if not outer:
            self.commit()

    def reader(self) -> sqlite3.Connection:
        """A read-only connection for the calling thread (decode workers look up hashes)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._local.conn = conn
        return conn

    def check(self) -> list[str]:
        """SQLite's own integrity check plus the expected tables; an empty list means healthy."""
        problems = [r[0] for r in self.db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        problems += [f"table {t} is missing" for t in ("files", "results", "quarantine", "moves") if t not in tables]
        return problems

    # ---------------------------------------------------------------- files

    def file_row(self, key: bytes) -> FileRow | None:
        row = self.db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE path=?", (key,)).fetchone()  # noqa: S608
        return None if row is None else FileRow(*row)

    def file_signature(self, key: bytes, conn: sqlite3.Connection | None = None) -> FileSignature | None:
        """For the reconciliation walk, on any connection."""
        row = (
            (conn or self.db)
            .execute("SELECT size, mtime_ns, status, scanned_at, error_count FROM files WHERE path=?", (key,))
            .fetchone()
        )
        return None if row is None else FileSignature(*row)

    def record_file(
        self,
        key: bytes,
        *,
        root: bytes | None = None,
        size: int | None,
        mtime_ns: int | None,
        sha256: str | None,
        status: str,
        verdict: str | None = None,
        reason: str | None = None,
        result_id: int | None = None,
        model_id: str | None = None,
        policy_id: str | None = None,
        severity: float | None = None,
        fmt: str | None = None,
        etag: str | None = None,
        origin: str | None = None,
    ) -> None:
        now = time.time()
        self.begin()
        self.db.execute(
            """INSERT INTO files (path, root, size, mtime_ns, sha256, status, verdict, reason, result_id, model_id,
                                  policy_id, severity, format, first_seen, scanned_at, decided_at, error_count,
                                  etag, origin)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(path) DO UPDATE SET root=coalesce(excluded.root, files.root), size=excluded.size,
                 mtime_ns=excluded.mtime_ns, etag=excluded.etag, origin=coalesce(excluded.origin, files.origin),
                 sha256=excluded.sha256, status=excluded.status, verdict=excluded.verdict,
                 reason=excluded.reason, result_id=excluded.result_id, model_id=excluded.model_id,
                 policy_id=excluded.policy_id, severity=excluded.severity, format=excluded.format,
                 scanned_at=excluded.scanned_at, decided_at=excluded.decided_at,
                 error_count=CASE WHEN excluded.status='error' THEN files.error_count + 1 ELSE 0 END,
                 action=CASE WHEN files.sha256 IS excluded.sha256 THEN files.action END,
                 acted_at=CASE WHEN files.sha256 IS excluded.sha256 THEN files.acted_at END""",
            (
                key,
                root,
                size,
                mtime_ns,
                sha256,
                status,
                verdict,
                reason,
                result_id,
                model_id,
                policy_id,
                severity,
                fmt,
                now,
                now,
                now if verdict else None,
                1 if status == FileStatus.ERROR else 0,
                etag,
                origin,
            ),
        )

    def mark_action(self, key: bytes, action: str | None) -> None:
        self.begin()
        self.db.execute("UPDATE files SET action=?, acted_at=? WHERE path=?", (action, time.time(), key))

    def mark_action_by_sha(self, sha256: str, action: str, only_if: str) -> None:
        self.begin()
        self.db.execute(
            "UPDATE files SET action=?, acted_at=? WHERE sha256=? AND action=?", (action, time.time(), sha256, only_if)
        )

    def flagged_unacted(self, origin: str | None = None) -> Iterator[Unacted]:
        """Flagged and not acted on: mirrored files (origin None) or objects scanned in their bucket."""
        cursor = self.db.execute(
            "SELECT path, sha256, reason, root FROM files WHERE verdict='flagged' AND action IS NULL "
            "AND origin IS ? ORDER BY path",
            (origin,),
        )
        yield from (Unacted(*row) for row in cursor.fetchall())

    def act_context(self, key: bytes) -> ActContext | None:
        row = self.db.execute(
            "SELECT root, sha256, reason, model_id, policy_id, severity FROM files WHERE path=?", (key,)
        ).fetchone()
        return None if row is None else ActContext(*row)

    def file_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM files").fetchone()[0])

    def report_rows(self, flagged: bool = False, errors: bool = False) -> Iterator[sqlite3.Row]:
        """Files for a report, by path: every file; or those flagged, and/or those a person should look at
        (not scanned, or scored on the part of them that decoded)."""
        clauses = []
        if flagged:
            clauses.append(f"verdict='{FileVerdict.FLAGGED.value}'")
        if errors:
            clauses.append(
                f"status='{FileStatus.ERROR.value}' OR result_id IN (SELECT id FROM results WHERE partial=1)"
            )
        where = " OR ".join(clauses) or "1"
        cursor = self.db.cursor()
        cursor.row_factory = sqlite3.Row
        yield from cursor.execute(f"SELECT * FROM files WHERE {where} ORDER BY path")  # noqa: S608

    # ---------------------------------------------------------------- results

    def ensure_prompt_set(self, prompts: tuple[str, ...]) -> str:
        text = json.dumps(list(prompts), ensure_ascii=False)
        set_id = hashlib.sha256(text.encode()).hexdigest()[:16]
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO prompt_sets VALUES (?, ?)", (set_id, text))
        return set_id

    def prompt_set(self, set_id: str) -> tuple[str, ...]:
        row = self.db.execute("SELECT prompts FROM prompt_sets WHERE id=?", (set_id,)).fetchone()
        return tuple(json.loads(row[0]))

    def prompt_set_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT prompt_set FROM results")]

    def result_id_for(self, sha256: str, model_id: str, conn: sqlite3.Connection | None = None) -> int | None:
        row = (
            (conn or self.db)
            .execute("SELECT id FROM results WHERE sha256=? AND model_id=?", (sha256, model_id))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def put_result(
        self,
        sha256: str,
        model_id: str,
        prompt_set: str,
        sims: np.ndarray,
        embedding: np.ndarray,
        detail: dict | None = None,
    ) -> int:
        self.begin()
        self.db.execute(
            "INSERT OR IGNORE INTO results (sha256, model_id, frames, prompt_set, sims, embedding, created, detail, "
            "partial) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                sha256,
                model_id,
                int(sims.shape[0]),
                prompt_set,
                np.ascontiguousarray(sims, np.float32).tobytes(),
                np.ascontiguousarray(embedding, np.float16).tobytes(),
                time.time(),
                json.dumps(detail, ensure_ascii=False, separators=(",", ":")) if detail else None,
                int(bool(detail and detail.get("partial"))),
            ),
        )
        return self.result_id_for(sha256, model_id)  # type: ignore[return-value]

    def get_result(self, result_id: int) -> StoredResult:
        row = self.db.execute(
            "SELECT id, frames, prompt_set, sims, embedding, detail FROM results WHERE id=?", (result_id,)
        ).fetchone()
        frames = int(row[1])
        return StoredResult(
            id=int(row[0]),
            frames=frames,
            prompt_set=row[2],
            sims=np.frombuffer(row[3], dtype=np.float32).reshape(frames, -1),
            embedding=np.frombuffer(row[4], dtype=np.float16).reshape(frames, -1),
            detail=json.loads(row[5]) if row[5] else None,
        )

    def count_decided(self) -> int:
        return int(
            self.db.execute(
                f"SELECT count(*) FROM files WHERE status IN {DECIDED_SQL} AND result_id IS NOT NULL"  # noqa: S608
            ).fetchone()[0]
        )

    def rescore_rows(self, embedding_sets: list[str]) -> sqlite3.Cursor:
        """Every decided file joined with its stored result, grouped by prompt set (for `rescore`), as
        RescoreRow (embeddings only for the prompt sets named)."""
        placeholders = ",".join("?" * len(embedding_sets)) or "NULL"
        cursor = self.db.cursor()
        cursor.row_factory = lambda _cursor, row: RescoreRow(*row)
        return cursor.execute(
            f"""SELECT f.rowid, f.verdict, f.sha256, r.frames, r.prompt_set, r.sims,
                       CASE WHEN r.prompt_set IN ({placeholders}) THEN r.embedding END, f.policy_id, f.severity,
                       r.detail, f.decided_at, instr(coalesce(f.reason, ''), '"hash_list') > 0
                FROM files f JOIN results r ON r.id = f.result_id
                WHERE f.status IN {DECIDED_SQL} ORDER BY r.prompt_set, f.rowid""",  # noqa: S608
            embedding_sets,
        )

    def apply_rescore(self, updates: list[tuple[str, str | None, float, int]]) -> None:
        """New verdicts by rowid. A verdict that changes also forgets any action taken under the old one,
        so `apply` sees it afresh."""
        with self.transaction():
            self.db.executemany(
                """UPDATE files SET action = CASE WHEN verdict IS ?1 THEN action END,
                                    acted_at = CASE WHEN verdict IS ?1 THEN acted_at END,
                                    verdict=?1, reason=?2, decided_at=?3 WHERE rowid=?4""",
                updates,
            )

    def stamp_decisions(self, policy_id: str, severity: float) -> None:
        """Every decided file was decided now, under this policy and severity (rescore)."""
        with self.transaction():
            self.db.execute(
                f"UPDATE files SET policy_id=?, severity=?, decided_at=? WHERE status IN {DECIDED_SQL}",  # noqa: S608
                (policy_id, severity, time.time()),
            )

    # ---------------------------------------------------------------- hashes and hash lists

    def put_picture_hashes(
        self,
        sha256: str,
        md5: str | None,
        pdq: list[tuple[str, int]] | None,
        variants: list[str] | None = None,
        video: list[tuple[str, int, float]] | None = None,
    ) -> None:
        """md5 of the bytes, the PDQ of each scored frame with its 8 rotations and mirror images (frame -1
        holds the md5 alone when no frame could be hashed), and a video's vPDQ (a PDQ per second)."""
        if video:
            self.begin()
            self.db.executemany(
                "INSERT OR REPLACE INTO video_hashes VALUES (?,?,?,?,?)",
                [(sha256, i, h, q, t) for i, (h, q, t) in enumerate(video)],
            )
        pdq, variants = pdq or [], variants or []
        per_frame = len(variants) == 8 * len(pdq)
        rows = [
            (sha256, i, md5, h, q, " ".join(variants[8 * i : 8 * i + 8]) if per_frame else None)
            for i, (h, q) in enumerate(pdq)
        ] or [(sha256, -1, md5, None, None, None)]
        self.begin()
        self.db.executemany(
            "INSERT OR REPLACE INTO picture_hashes (sha256, frame, md5, pdq, quality, variants) VALUES (?,?,?,?,?,?)",
            rows,
        )

    def picture_hashes(self, sha256: str) -> tuple[str | None, list[tuple[str, int]], list[str] | None]:
        """(md5, [(pdq, quality)] per frame, every frame's 8 variants in frame order or None if not kept)."""
        rows = self.db.execute(
            "SELECT md5, pdq, quality, variants FROM picture_hashes WHERE sha256=? ORDER BY frame", (sha256,)
        ).fetchall()
        md5 = next((r[0] for r in rows if r[0]), None)
        frames = [r for r in rows if r[1]]
        variants = [v for r in frames for v in (r[3] or "").split()]
        return md5, [(r[1], int(r[2])) for r in frames], variants if len(variants) == 8 * len(frames) else None

    def video_hashes(self, sha256: str) -> list[tuple[str, int, float]]:
        return [
            (r[0], int(r[1]), float(r[2]))
            for r in self.db.execute("SELECT pdq, quality, ts FROM video_hashes WHERE sha256=? ORDER BY idx", (sha256,))
        ]

    def quarantined_pictures(self, since: float | None = None) -> list[dict]:
        """What a hash export shares: every item in quarantine that was not restored, one dict per distinct
        picture (sha256, md5, its frames' PDQ with quality, its vPDQ, whether it is a video)."""
        shas = [
            r[0]
            for r in self.db.execute(
                f"SELECT sha256 FROM quarantine WHERE state IN {EXPORTED_SQL} "  # noqa: S608
                "AND created >= ? GROUP BY sha256 ORDER BY min(created)",
                (since or 0.0,),
            )
        ]
        pictures = []
        for sha256 in shas:
            md5, pdqs, _ = self.picture_hashes(sha256)
            fmt = self.db.execute(
                "SELECT format FROM files WHERE sha256=? AND format IS NOT NULL LIMIT 1", (sha256,)
            ).fetchone()
            pictures.append(
                {
                    "sha256": sha256,
                    "md5": md5,
                    "pdq": pdqs,
                    "vpdq": self.video_hashes(sha256),
                    "video": bool(fmt and fmt[0] in ("mp4", "webm")),
                }  # fmt: skip
            )
        return pictures

    def hash_list_entries(self) -> Iterator[tuple[str, str, str, str, str | None]]:
        """(list, action, kind, value, note) of every imported list, streamed to the matcher."""
        yield from self.db.execute(
            "SELECT e.list, l.action, e.kind, e.value, e.note FROM hash_list_entries e "
            "JOIN hash_lists l ON l.name = e.list"
        )

    def hash_lists_changed_at(self) -> float:
        """When a list was last imported or removed (verdicts decided before then may match differently)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='hash_lists_changed'").fetchone()
        imported = self.db.execute("SELECT max(imported) FROM hash_lists").fetchone()[0]
        return max(float(row[0]) if row else 0.0, imported or 0.0)

    def hash_lists_version(self) -> tuple:
        """Changes whenever a list is imported, replaced or removed: long-running matchers reload on it."""
        return tuple(self.db.execute("SELECT count(*), max(imported), total(entries) FROM hash_lists").fetchone())

    def replace_hash_list(self, name: str, action: str, source: str, entries: list[tuple[str, str, str, str]]) -> None:
        """A list's entries replaced in one step (a subscription's fetch): never a moment without them."""
        with self.transaction():
            self.remove_hash_list(name)
            self.import_hash_list(name, action, source, entries)

    # ---------------------------------------------------------------- subscriptions and pushes

    def subscriptions(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT name, api, config, action, checkpoint, state, fetched, note FROM subscriptions ORDER BY name"
        ).fetchall()
        keys = ("name", "api", "config", "action", "checkpoint", "state", "fetched", "note")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def put_subscription(self, name: str, api: str, config: str, action: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO subscriptions (name, api, config, action) VALUES (?, ?, ?, ?)", (name, api, config, action)
            )

    def remove_subscription(self, name: str) -> int:
        with self.transaction():
            return self.db.execute("DELETE FROM subscriptions WHERE name=?", (name,)).rowcount

    def save_fetch(self, name: str, checkpoint: str | None, state: str | None, note: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE subscriptions SET checkpoint=?, state=?, fetched=?, note=? WHERE name=?",
                (checkpoint, state, time.time(), note, name),
            )

    def pushed(self, target: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT value FROM hash_pushes WHERE target=?", (target,))}

    def record_push(self, target: str, value: str, content_id: str | None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO hash_pushes VALUES (?, ?, ?, ?)", (target, value, content_id, time.time())
            )

    def has_hash_list(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM hash_lists WHERE name=?", (name,)).fetchone() is not None

    def hash_list_rows(self, name: str) -> list[tuple]:
        """(type, hash, note, source) of one list, in import order."""
        return self.db.execute(
            "SELECT kind, value, note, source FROM hash_list_entries WHERE list=? ORDER BY rowid", (name,)
        ).fetchall()

    def files_lacking_hashes(self) -> Iterator[tuple[str, bytes]]:
        """(sha256, path) of scored files whose pictures have no stored hashes (scanned before they were kept),
        or hashes of the old way (before schema 5: taken from the rotated, reduced view, no variants kept)."""
        for sha256, path in self.db.execute(
            f"SELECT sha256, path FROM files WHERE status IN {DECIDED_SQL} AND sha256 IS NOT NULL "  # noqa: S608
            "AND sha256 NOT IN (SELECT sha256 FROM picture_hashes WHERE pdq IS NULL OR variants IS NOT NULL)"
        ).fetchall():
            yield sha256, bytes(path)

    def hash_lists(self) -> list[tuple]:
        return self.db.execute(
            "SELECT name, action, imported, source, entries FROM hash_lists ORDER BY name"
        ).fetchall()

    def import_hash_list(self, name: str, action: str, source: str, entries: list[tuple[str, str, str, str]]) -> None:
        """All or nothing: entries (kind, value, note, source) replace nothing; a list of that name must not
        exist (the caller removes it first to replace it)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO hash_lists VALUES (?,?,?,?,?)", (name, action, time.time(), source, len(entries))
            )
            self.db.executemany(
                "INSERT INTO hash_list_entries VALUES (?,?,?,?,?)", [(name, *entry) for entry in entries]
            )

    def remove_hash_list(self, name: str) -> int:
        with self.transaction():
            self.db.execute(
                "INSERT INTO meta VALUES ('hash_lists_changed', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(time.time()),),
            )
            self.db.execute("DELETE FROM hash_list_entries WHERE list=?", (name,))
            return self.db.execute("DELETE FROM hash_lists WHERE name=?", (name,)).rowcount

    # ---------------------------------------------------------------- allowlist

    def allowlisted(self, sha256: str | None, conn: sqlite3.Connection | None = None) -> bool:
        """Allowlisted bytes, and bytes being restored right now (a restore allowlists them when it finishes;
        until then a running daemon must not take the file it is putting back for a new upload)."""
        if sha256 is None:
            return False
        return (conn or self.db).execute(
            "SELECT 1 FROM allowlist WHERE sha256=?1 UNION ALL "
            "SELECT 1 FROM quarantine WHERE sha256=?1 AND state='restoring' LIMIT 1",
            (sha256,),
        ).fetchone() is not None

    def allow(self, sha256: str, note: str = "") -> None:
        """Allowlist bytes: recorded verdicts for them become clean at once, and no later decision flags them."""
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO allowlist VALUES (?, ?, ?)", (sha256, time.time(), note))
            self.db.execute(
                """UPDATE files SET verdict='clean', reason=json_object('allowlisted', json('true')), decided_at=?
                   WHERE sha256=? AND verdict='flagged'""",
                (time.time(), sha256),
            )

    def disallow(self, sha256: str) -> bool:
        with self.transaction():
            removed = self.db.execute("DELETE FROM allowlist WHERE sha256=?", (sha256,)).rowcount
        return bool(removed)

    def allowlist(self) -> list[tuple[str, float, str]]:
        return list(self.db.execute("SELECT sha256, added, note FROM allowlist ORDER BY added"))

    # ---------------------------------------------------------------- quarantine index

    def item(self, item_id: str) -> ItemRow | None:
        row = self.db.execute(f"SELECT {_ITEM_COLUMNS} FROM quarantine WHERE id=?", (item_id,)).fetchone()  # noqa: S608
        return None if row is None else ItemRow(*row)

    def items(self, since: float | None = None, states: tuple[str, ...] | None = None) -> list[ItemRow]:
        sql = f"SELECT {_ITEM_COLUMNS} FROM quarantine WHERE created >= ?"  # noqa: S608
        params: list = [since or 0]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params += list(states)
        return [ItemRow(*r) for r in self.db.execute(sql + " ORDER BY created, id", params)]

    def active_item_for(self, original: bytes) -> str | None:
        """An item that is taking or holding this path right now (another process may be moving it)."""
        row = self.db.execute(
            f"SELECT id FROM quarantine WHERE original=? AND state IN {MOVING_SQL}",  # noqa: S608
            (original,),
        ).fetchone()
        return None if row is None else row[0]

    def latest_item_for(self, original: bytes) -> str | None:
        row = self.db.execute(
            "SELECT id FROM quarantine WHERE original=? ORDER BY created DESC LIMIT 1", (original,)
        ).fetchone()
        return None if row is None else row[0]

    def active_item_for_object(self, remote: str, key: str) -> str | None:
        """An item taking or holding this object right now (objects scanned in their bucket)."""
        row = self.db.execute(
            f"SELECT id FROM quarantine WHERE remote=? AND key=? AND original=x'' AND state IN {MOVING_SQL}",  # noqa: S608
            (remote, key),
        ).fetchone()
        return None if row is None else row[0]

    def upload_item_for(self, sha256: str) -> str | None:
        """The item holding an upload rejected at validation with these bytes (one item per sha256)."""
        row = self.db.execute(
            "SELECT id FROM quarantine WHERE sha256=? AND original=x'' AND key IS NULL "
            "AND state IN ('quarantined', 'purged') ORDER BY created LIMIT 1",
            (sha256,),
        ).fetchone()
        return None if row is None else row[0]

    def count_upload_seen(self, item_id: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE quarantine SET seen_count = seen_count + 1, last_seen=? WHERE id=?", (time.time(), item_id)
            )

    def insert_item(self, row: dict) -> None:
        """A new item's index row; never replaces what the ledger already records."""
        self.begin()
        self.db.execute(
            "INSERT OR IGNORE INTO quarantine (id, dir, sha256, size, original, mirror_root, remote, key, state, "
            "reason, created, updated, seen_count, last_seen) "
            "VALUES (:id, :dir, :sha256, :size, :original, :mirror_root, :remote, :key, :state, :reason, "
            ":created, :updated, :seen_count, :last_seen)",
            {"seen_count": 1, "last_seen": None, **row},
        )

    def delete_item(self, item_id: str) -> None:
        self.begin()
        self.db.execute("DELETE FROM quarantine WHERE id=?", (item_id,))
        self.db.execute("DELETE FROM followups WHERE item=?", (item_id,))
        self.db.execute("DELETE FROM attributions WHERE item=?", (item_id,))

    # ---------------------------------------------------------------- follow-ups (attribution, moderation)

    def add_followup(
        self,
        item_id: str,
        action: str,
        target: str = "",
        *,
        plan: bool = False,
        state: str = "pending",
        error: str | None = None,
    ) -> None:
        """Inside the caller's transaction (the quarantine or restore that causes it); once per
        (item, action, target). state 'skipped' (with why, in error): an action Lemmy would refuse."""
        self.begin()
        now = time.time()
        self.db.execute(
            "INSERT OR IGNORE INTO followups (item, action, target, state, plan, next_try, error, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, action, target, state, int(plan), now, error, now, now),
        )

    def followups(self, item_id: str) -> list[FollowupRow]:
        rows = self.db.execute(
            f"SELECT {_FOLLOWUP_COLUMNS} FROM followups WHERE item=? ORDER BY id",
            (item_id,),  # noqa: S608
        )
        return [FollowupRow(*r) for r in rows]

    def due_followups(self, now: float, limit: int = 100) -> list[FollowupRow]:
        rows = self.db.execute(
            f"SELECT {_FOLLOWUP_COLUMNS} FROM followups WHERE state='pending' AND next_try <= ? "  # noqa: S608
            "ORDER BY next_try, id LIMIT ?",
            (now, limit),
        )
        return [FollowupRow(*r) for r in rows]

    def followup(self, followup_id: int) -> FollowupRow | None:
        row = self.db.execute(
            f"SELECT {_FOLLOWUP_COLUMNS} FROM followups WHERE id=?",
            (followup_id,),  # noqa: S608
        ).fetchone()
        return None if row is None else FollowupRow(*row)

    def pending_followup_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM followups WHERE state='pending'").fetchone()[0])

    def finish_followup(
        self,
        followup_id: int,
        state: str,
        *,
        result: str | None = None,
        error: str | None = None,
        next_try: float | None = None,
        attempted: bool = True,
    ) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE followups SET state=?, result=coalesce(?, result), error=?, attempts=attempts+?, "
                "next_try=coalesce(?, next_try), updated=? WHERE id=?",
                (state, result, error, int(attempted), next_try, time.time(), followup_id),
            )

    def retry_followups(self, item_id: str | None = None, refused: bool = True) -> int:
        """Make pending (and, with refused=True, refused) follow-ups due now; returns how many."""
        states = ("pending", "refused") if refused else ("pending",)
        sql = (
            "UPDATE followups SET state='pending', next_try=?, updated=? "
            f"WHERE state IN ({','.join('?' * len(states))})"
        )
        params: list = [time.time(), time.time(), *states]
        if item_id is not None:
            sql += " AND item=?"
            params.append(item_id)
        with self.transaction():
            return self.db.execute(sql, params).rowcount

    def put_attribution(self, item_id: str, data: dict) -> None:
        self.begin()
        self.db.execute(
            "INSERT INTO attributions VALUES (?, ?, ?) ON CONFLICT(item) DO UPDATE SET data=excluded.data, "
            "updated=excluded.updated",
            (item_id, json.dumps(data, ensure_ascii=False), time.time()),
        )

    def attribution(self, item_id: str) -> dict | None:
        row = self.db.execute("SELECT data FROM attributions WHERE item=?", (item_id,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return None

    def cancel_followups(self, item_id: str, why: str) -> list[tuple[str, str, str | None]]:
        """Cancel an item's follow-ups not done yet (attribution stays); returns (action, target, result)
        of those that were done, for the caller to plan their undo (followups.plan_undo)."""
        self.begin()
        self.db.execute(
            "UPDATE followups SET state='cancelled', updated=?, error=? "
            "WHERE item=? AND state IN ('pending', 'dry_run') AND action != 'attribute'",
            (time.time(), why, item_id),
        )
        return self.db.execute(
            "SELECT action, target, result FROM followups WHERE item=? AND state='done'", (item_id,)
        ).fetchall()

    def set_item_size(self, item_id: str, size: int) -> None:
        self.begin()
        self.db.execute("UPDATE quarantine SET size=? WHERE id=?", (size, item_id))

    def set_item_state(self, item_id: str, state: str) -> None:
        self.begin()
        self.db.execute("UPDATE quarantine SET state=?, updated=? WHERE id=?", (str(state), time.time(), item_id))

    def excluded_keys(self, remote: str, mirror_root: bytes, conn: sqlite3.Connection | None = None) -> list[str]:
        """Keys a pull of `remote` into `mirror_root` must not bring back: every item held and not restored
        that came from that remote (its key), or from that mirror with no remote (its path there). An
        object of the same key in another bucket is another object, and is pulled."""
        remote = remote.rstrip("/")
        rows = (
            (conn or self.db)
            .execute(
                "SELECT original, mirror_root, key FROM quarantine WHERE state IN (?, ?, ?, ?) "
                "AND ((remote = ? AND key IS NOT NULL) OR (remote IS NULL AND mirror_root = ? AND original != x''))",
                (*HELD_STATES, remote, mirror_root),
            )
            .fetchall()
        )
        return [key if key else os.fsdecode(os.path.relpath(orig, root)) for orig, root, key in rows]

    def mirror_remote(self, root: bytes) -> tuple[str, float, str] | None:
        """(remote, when, by which command) this mirror was first tied to, or None."""
        row = self.db.execute("SELECT remote, recorded, by FROM mirrors WHERE root=?", (root,)).fetchone()
        return None if row is None else (row[0], float(row[1]), row[2])

    def bind_mirror(self, root: bytes, remote: str, by: str) -> tuple[str, float, str]:
        """Tie the mirror to a remote once (the first pull or scan with --remote); returns the binding."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO mirrors VALUES (?, ?, ?, ?)", (root, remote.rstrip("/"), time.time(), by)
            )
        return self.mirror_remote(root)  # type: ignore[return-value]

    def rebind_mirror(self, root: bytes, remote: str, by: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO mirrors VALUES (?, ?, ?, ?) ON CONFLICT(root) DO UPDATE SET remote=excluded.remote, "
                "recorded=excluded.recorded, by=excluded.by",
                (root, remote.rstrip("/"), time.time(), by),
            )

    def mirror_sample(self, root: bytes, besides: bytes, limit: int = 5) -> list[bytes]:
        """Paths of a few other files of this mirror that are still there (scored, not acted on): their keys
        prove a remote is the bucket the mirror came from."""
        return [
            bytes(r[0])
            for r in self.db.execute(
                "SELECT path FROM files WHERE root=? AND path != ? AND action IS NULL AND origin IS NULL "
                f"AND status IN {DECIDED_SQL} ORDER BY random() LIMIT ?",  # noqa: S608
                (root, besides, limit),
            )
        ]

    def upstream_pending_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM quarantine WHERE state='upstream_pending'").fetchone()[0])

    # ---------------------------------------------------------------- move journal

    def start_move(self, item_id: str, kind: MoveKind, target: bytes | None = None, method: str | None = None) -> int:
        now = time.time()
        self.begin()
        return int(
            self.db.execute(
                "INSERT INTO moves (item, kind, step, target, started, updated, method) VALUES (?,?,?,?,?,?,?)",
                (item_id, str(kind), str(Step.INTENT), target, now, now, method),
            ).lastrowid
        )

    def set_step(self, move_id: int, step: Step, note: str | None = None) -> None:
        self.begin()
        self.db.execute(
            "UPDATE moves SET step=?, updated=?, note=coalesce(?, note) WHERE id=?",
            (str(step), time.time(), note, move_id),
        )

    def set_move_method(self, move_id: int, method: str) -> None:
        self.begin()
        self.db.execute("UPDATE moves SET method=? WHERE id=?", (method, move_id))

    def move(self, move_id: int) -> MoveRow | None:
        row = self.db.execute(f"SELECT {_MOVE_COLUMNS} FROM moves WHERE id=?", (move_id,)).fetchone()  # noqa: S608
        return None if row is None else MoveRow(*row)

    def unfinished_moves(self, item_id: str | None = None) -> list[MoveRow]:
        sql = f"SELECT {_MOVE_COLUMNS} FROM moves WHERE step NOT IN {FINISHED_SQL}"  # noqa: S608
        params: tuple = ()
        if item_id is not None:
            sql += " AND item=?"
            params = (item_id,)
        return [MoveRow(*r) for r in self.db.execute(sql + " ORDER BY id", params)]

    def last_move_id(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(id), 0) FROM moves").fetchone()[0])

    def finished_restores_since(self, after_id: int, conn: sqlite3.Connection | None = None) -> list[tuple[int, float]]:
        """(move id, seconds from intent to done) of restores finished since a move id (restore latency)."""
        return list(
            (conn or self.db).execute(
                "SELECT id, updated - started FROM moves WHERE kind='restore' AND step='done' AND id > ? ORDER BY id",
                (after_id,),
            )
        )
