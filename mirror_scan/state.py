"""The state ledger: one SQLite database (WAL) per installation.

`files` holds one row per path (stored as raw bytes, so non-UTF-8 names round-trip) with its size,
mtime, sha256, status, verdict and why. `results` holds what the model said about some bytes, once per
(sha256, model): similarities against the bundle's concept prompts (float32 [frames, P]) and the
image embeddings (float16 [frames, D]), so copies are never re-inferred and a new policy can be
applied without reading an image. One writer (the process holding the lock); any number of readers.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MirrorScanError

SCHEMA_VERSION = 1
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


class StateLocked(MirrorScanError):
    """Another mirror-scan process is writing to this state database."""


class Ledger:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock_fd: int | None = None
        if readonly:
            if not self.path.exists():
                raise MirrorScanError(f"state database {self.path} does not exist", hint="run `mirror-scan scan` first")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit (one per inference batch, one per quarantine step) survives a power cut.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            self._check_schema()
        self.db.execute("PRAGMA busy_timeout=10000")
        self._in_tx = False

    # ---------------------------------------------------------------- lifecycle

    def _check_schema(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise MirrorScanError(
                f"state database {self.path} was written by a newer mirror-scan (schema {row[0]})",
                hint="upgrade mirror-scan, or point --state at another file",
            )

    def lock(self) -> None:
        """Take the single-writer lock (scan, apply, rescore, watch); refuse if another process has it."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(
                f"state database {self.path} is in use by another mirror-scan process",
                hint="wait for it to finish, or stop the watch daemon first",
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        self.commit()
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def begin(self) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def reader(self) -> sqlite3.Connection:
        """A read-only connection for the calling thread (decode workers look up hashes)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    # ---------------------------------------------------------------- files

    def file_state(self, key: bytes) -> tuple | None:
        """(size, mtime_ns, model_id, status, sha256, verdict, reason, format, action, result_id, policy_id,
        severity) or None."""
        return self.db.execute(
            "SELECT size, mtime_ns, model_id, status, sha256, verdict, reason, format, action, result_id, policy_id, "
            "severity FROM files WHERE path=?",
            (key,),
        ).fetchone()

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
    ) -> None:
        now = time.time()
        self.begin()
        self.db.execute(
            """INSERT INTO files (path, root, size, mtime_ns, sha256, status, verdict, reason, result_id, model_id,
                                  policy_id, severity, format, first_seen, scanned_at, decided_at)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(path) DO UPDATE SET root=excluded.root, size=excluded.size, mtime_ns=excluded.mtime_ns,
                 sha256=excluded.sha256, status=excluded.status, verdict=excluded.verdict,
                 reason=excluded.reason, result_id=excluded.result_id, model_id=excluded.model_id,
                 policy_id=excluded.policy_id, severity=excluded.severity, format=excluded.format,
                 scanned_at=excluded.scanned_at, decided_at=excluded.decided_at,
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
            ),
        )

    def mark_action(self, key: bytes, action: str) -> None:
        self.begin()
        self.db.execute("UPDATE files SET action=?, acted_at=? WHERE path=?", (action, time.time(), key))

    def flagged_unacted(self) -> Iterator[tuple[bytes, str | None, str | None, bytes | None]]:
        cursor = self.db.execute(
            "SELECT path, sha256, reason, root FROM files WHERE verdict='flagged' AND action IS NULL ORDER BY path"
        )
        yield from cursor

    def count(self, where: str = "1", params: tuple = ()) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM files WHERE {where}", params).fetchone()[0])  # noqa: S608

    def iter_files(self, where: str = "1", params: tuple = ()) -> Iterator[sqlite3.Row]:
        cursor = self.db.cursor()
        cursor.row_factory = sqlite3.Row
        yield from cursor.execute(f"SELECT * FROM files WHERE {where} ORDER BY path", params)  # noqa: S608

    # ---------------------------------------------------------------- results

    def ensure_prompt_set(self, prompts: tuple[str, ...]) -> str:
        import hashlib

        text = json.dumps(list(prompts), ensure_ascii=False)
        set_id = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.begin()
        self.db.execute("INSERT OR IGNORE INTO prompt_sets VALUES (?, ?)", (set_id, text))
        return set_id

    def prompt_set(self, set_id: str) -> tuple[str, ...]:
        row = self.db.execute("SELECT prompts FROM prompt_sets WHERE id=?", (set_id,)).fetchone()
        return tuple(json.loads(row[0]))

    def result_id_for(self, sha256: str, model_id: str, conn: sqlite3.Connection | None = None) -> int | None:
        row = (
            (conn or self.db)
            .execute("SELECT id FROM results WHERE sha256=? AND model_id=?", (sha256, model_id))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def put_result(self, sha256: str, model_id: str, prompt_set: str, sims: np.ndarray, embedding: np.ndarray) -> int:
        self.begin()
        self.db.execute(
            "INSERT OR IGNORE INTO results (sha256, model_id, frames, prompt_set, sims, embedding, created) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                sha256,
                model_id,
                int(sims.shape[0]),
                prompt_set,
                np.ascontiguousarray(sims, np.float32).tobytes(),
                np.ascontiguousarray(embedding, np.float16).tobytes(),
                time.time(),
            ),
        )
        return self.result_id_for(sha256, model_id)  # type: ignore[return-value]

    def get_result(self, result_id: int) -> StoredResult:
        row = self.db.execute(
            "SELECT id, frames, prompt_set, sims, embedding FROM results WHERE id=?", (result_id,)
        ).fetchone()
        frames = int(row[1])
        return StoredResult(
            id=int(row[0]),
            frames=frames,
            prompt_set=row[2],
            sims=np.frombuffer(row[3], dtype=np.float32).reshape(frames, -1),
            embedding=np.frombuffer(row[4], dtype=np.float16).reshape(frames, -1),
        )

    # ---------------------------------------------------------------- allowlist

    def allowlisted(self, sha256: str | None, conn: sqlite3.Connection | None = None) -> bool:
        if sha256 is None:
            return False
        return (conn or self.db).execute("SELECT 1 FROM allowlist WHERE sha256=?", (sha256,)).fetchone() is not None

    def allow(self, sha256: str, note: str = "") -> None:
        """Allowlist bytes: recorded verdicts for them become clean at once, and no later decision flags them."""
        self.begin()
        self.db.execute("INSERT OR IGNORE INTO allowlist VALUES (?, ?, ?)", (sha256, time.time(), note))
        self.db.execute(
            """UPDATE files SET verdict='clean', reason=json_object('allowlisted', json('true')), decided_at=?
               WHERE sha256=? AND verdict='flagged'""",
            (time.time(), sha256),
        )
        self.commit()

    def disallow(self, sha256: str) -> bool:
        self.begin()
        removed = self.db.execute("DELETE FROM allowlist WHERE sha256=?", (sha256,)).rowcount
        self.commit()
        return bool(removed)

    def allowlist(self) -> list[tuple[str, float, str]]:
        return list(self.db.execute("SELECT sha256, added, note FROM allowlist ORDER BY added"))
