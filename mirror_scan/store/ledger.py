"""The state ledger: one SQLite database (WAL) per installation. SQL lives here and in its vocabularies
(list_tables.py: hash lists; followup_tables.py: the follow-up journal), nowhere else; schema.py holds
the tables, rows.py the named rows.

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
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mirror_scan.errors import MirrorScanError, UsageError
from mirror_scan.kinds import (
    HELD_STATES,
    MOVING_STATES,
    FileStatus,
    FileVerdict,
    MoveKind,
    Step,
)
from mirror_scan.store.followup_tables import FollowupTables
from mirror_scan.store.history_tables import HistoryTables
from mirror_scan.store.integrity import (
    StateBusy,
    StateDamaged,
    check_header,
    check_pages_once,
    is_busy,
    open_private,
)
from mirror_scan.store.list_tables import ListTables
from mirror_scan.store.object_tables import ObjectTables
from mirror_scan.store.result_tables import ResultTables
from mirror_scan.store.review_tables import ReviewTables
from mirror_scan.store.rows import (
    FILE_COLUMNS,
    ITEM_COLUMNS,
    MOVE_COLUMNS,
    FileRow,
    FileSignature,
    ItemRow,
    MoveRow,
    Unacted,
)
from mirror_scan.store.schema import (
    BUSY_TIMEOUT_MS,
    DATA_MIGRATIONS,
    DECIDED_SQL,
    FINISHED_SQL,
    MIGRATIONS,
    MOVING_SQL,
    SCHEMA,
    SCHEMA_VERSION,
)


class Ledger:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if self.path.is_dir():
            raise UsageError(
                f"state database {self.path} is a directory", hint=f"point --state at a file, e.g. {self.path}/state.db"
            )
        self._local = threading.local()
        self._in_tx = False
        self._after_commit: list[Callable[[], None]] = []
        self.results = ResultTables(self)  # what the model said of some bytes, prompt sets, rescoring
        self.lists = ListTables(self)  # hash lists, picture hashes, subscriptions, pushes
        self.follow_ups = FollowupTables(self)  # the follow-up journal and attributions
        self.reviews = ReviewTables(self)  # decisions (who restored, confirmed, banned) and console people
        self.history = HistoryTables(self)  # what happened to each quarantine item, line by line
        self.objects = ObjectTables(self)  # each item's companions (variants, motion stills) and pict-rs hash
        check_header(self.path)
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
                check_pages_once(self.path, self.db)
                self._refuse_older()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                open_private(self.path)
                self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self.db.execute("PRAGMA cell_size_check=ON")  # some damage is caught as pages are read
                self.db.execute("PRAGMA journal_mode=WAL")
                # FULL: every commit (one per inference batch, one per quarantine step) survives a power cut.
                self.db.execute("PRAGMA synchronous=FULL")
                check_pages_once(self.path, self.db)  # before this process writes anything
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

    def _refuse_older(self) -> None:
        """A reader never migrates: a database an older mirror-scan wrote lacks columns its queries name,
        which is said as such, with the command that upgrades it (any writer does, at its start)."""
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:
            return  # no meta table: an empty file, read as an empty ledger
        if row is not None and int(row[0]) < SCHEMA_VERSION:
            raise MirrorScanError(
                f"state database {self.path} was written by an older mirror-scan (schema {row[0]}, now "
                f"{SCHEMA_VERSION}); reading commands do not upgrade it",
                hint=f"`mirror-scan state recover --state {self.path}` upgrades it in place (so does the watch "
                "daemon when it starts)",
            )

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
        waiting, self._after_commit = self._after_commit, []
        for then in waiting:
            try:
                then()
            except Exception:  # noqa: BLE001 - what follows a commit never undoes it nor fails its caller
                logging.getLogger(__name__).exception("after a commit of %s", self.path)

    def rollback(self) -> None:
        if self._in_tx:
            self.db.execute("ROLLBACK")
            self._in_tx = False
        self._after_commit = []

    def after_commit(self, then: Callable[[], None]) -> None:
        """Run `then` once the open transaction commits (never if it rolls back): what follows from a
        commit, such as an item's metadata file catching up with its new state."""
        self.begin()
        self._after_commit.append(then)

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
        row = self.db.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE path=?", (key,)).fetchone()  # noqa: S608
        return None if row is None else FileRow(*row)

    def file_signature(self, key: bytes, conn: sqlite3.Connection | None = None) -> FileSignature | None:
        """For the reconciliation walk, on any connection."""
        row = (
            (conn or self.db)
            .execute(
                "SELECT size, mtime_ns, status, scanned_at, error_count, "
                "coalesce(verdict='flagged' AND action IS NULL, 0) FROM files WHERE path=?",
                (key,),
            )
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
    ) -> tuple[str | None, bytes | None]:
        """The file's row, decided afresh; returns the action it keeps (one taken on these very bytes by an
        earlier run: a file whose bytes changed is considered anew) and its mirror root as recorded."""
        now = time.time()
        self.begin()
        kept = self.db.execute(
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
                 acted_at=CASE WHEN files.sha256 IS excluded.sha256 THEN files.acted_at END
               RETURNING action, root""",
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
        ).fetchone()
        return (kept[0], kept[1]) if kept else (None, root)

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
            "SELECT path, sha256, reason, root, model_id, policy_id, severity FROM files "
            "WHERE verdict='flagged' AND action IS NULL "
            "AND origin IS ? ORDER BY path",
            (origin,),
        )
        yield from (Unacted(*row) for row in cursor.fetchall())

    def file_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM files").fetchone()[0])

    def summary_counts(self) -> dict[str, int]:
        """What the ledger holds, for `status` when no daemon runs: files, flagged, errors, items by state."""
        files, flagged, errors = self.db.execute(
            f"SELECT count(*), total(verdict='{FileVerdict.FLAGGED.value}'), total(status='{FileStatus.ERROR.value}') "
            "FROM files"  # noqa: S608
        ).fetchone()
        counts = {"files": int(files), "flagged": int(flagged), "errors": int(errors)}
        for state, count in self.db.execute("SELECT state, count(*) FROM quarantine GROUP BY state"):
            counts[f"items_{state}"] = int(count)
        return counts

    def items_in_the_clear(self) -> int:
        """Items that hold bytes, not sealed (`quarantine seal` seals them)."""
        row = self.db.execute("SELECT count(*) FROM quarantine WHERE sealed_to IS NULL AND state IN "
                              "('quarantined', 'upstream_pending', 'restored')").fetchone()  # fmt: skip
        return int(row[0])

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

    # ---------------------------------------------------------------- allowlist

    def allowlisted(self, sha256: str | None, conn: sqlite3.Connection | None = None) -> bool:
        """Allowlisted bytes, and bytes being restored right now, an upload's other objects included (a restore
        allowlists them when it finishes; until then a running daemon must not take the files it is putting
        back for new uploads)."""
        if sha256 is None:
            return False
        return (conn or self.db).execute(
            "SELECT 1 FROM allowlist WHERE sha256=?1 UNION ALL "
            "SELECT 1 FROM quarantine WHERE sha256=?1 AND state='restoring' UNION ALL "
            "SELECT 1 FROM item_objects o JOIN quarantine q ON q.id = o.item "
            "WHERE o.sha256=?1 AND o.state='held' AND q.state='restoring' LIMIT 1",
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

    def scored(self, sha256s: list[str]) -> set[str]:
        """Those of these bytes the scanner has scored (a file of them scored, or a score reused for them)."""
        if not sha256s:
            return set()
        marks = ",".join("?" * len(sha256s))
        return {sha for (sha,) in self.db.execute(
            f"SELECT DISTINCT sha256 FROM files WHERE status IN ('scored', 'reused') AND sha256 IN ({marks})",  # noqa: S608
            sha256s)}  # fmt: skip

    def disallow(self, sha256: str) -> bool:
        with self.transaction():
            removed = self.db.execute("DELETE FROM allowlist WHERE sha256=?", (sha256,)).rowcount
        return bool(removed)

    def allowlist(self) -> list[tuple[str, float, str]]:
        return list(self.db.execute("SELECT sha256, added, note FROM allowlist ORDER BY added"))

    # ---------------------------------------------------------------- quarantine index

    def item(self, item_id: str) -> ItemRow | None:
        row = self.db.execute(f"SELECT {ITEM_COLUMNS} FROM quarantine WHERE id=?", (item_id,)).fetchone()  # noqa: S608
        return None if row is None else ItemRow(*row)

    def items(self, since: float | None = None, states: tuple[str, ...] | None = None) -> list[ItemRow]:
        sql = f"SELECT {ITEM_COLUMNS} FROM quarantine WHERE created >= ?"  # noqa: S608
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

    def latest_item_for_object(self, remote: str, key: str) -> str | None:
        """The newest item taken from this object (scanned in its bucket), or None."""
        row = self.db.execute(
            "SELECT id FROM quarantine WHERE remote=? AND key=? AND original=x'' ORDER BY created DESC LIMIT 1",
            (remote, key),
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
            "reason, created, updated, seen_count, last_seen, md5, sealed_to, sealed_sha256) "
            "VALUES (:id, :dir, :sha256, :size, :original, :mirror_root, :remote, :key, :state, :reason, "
            ":created, :updated, :seen_count, :last_seen, :md5, :sealed_to, :sealed_sha256)",
            {"seen_count": 1, "last_seen": None, "md5": None, "sealed_to": None, "sealed_sha256": None, **row},
        )

    def delete_item(self, item_id: str) -> None:
        self.begin()
        self.db.execute("DELETE FROM quarantine WHERE id=?", (item_id,))
        self.db.execute("DELETE FROM followups WHERE item=?", (item_id,))
        self.db.execute("DELETE FROM attributions WHERE item=?", (item_id,))
        self.db.execute("DELETE FROM item_history WHERE item=?", (item_id,))
        self.db.execute("DELETE FROM item_objects WHERE item=?", (item_id,))

    # ---------------------------------------------------------------- items and mirrors

    def set_item_size(self, item_id: str, size: int) -> None:
        self.begin()
        self.db.execute("UPDATE quarantine SET size=? WHERE id=?", (size, item_id))

    def set_item_content(self, item_id: str, md5: str, sealed_to: str | None, sealed_sha256: str | None) -> None:
        """How the item holds its bytes: their md5, and (sealed) the recipient and data.age's sha256."""
        self.begin()
        self.db.execute("UPDATE quarantine SET md5=?, sealed_to=?, sealed_sha256=? WHERE id=?",
                        (md5, sealed_to, sealed_sha256, item_id))  # fmt: skip
        self.history.mark_behind(item_id)

    def set_item_state(self, item_id: str, state: str) -> None:
        self.begin()
        self.db.execute("UPDATE quarantine SET state=?, updated=? WHERE id=?", (str(state), time.time(), item_id))

    def excluded_keys(self, remote: str, mirror_root: bytes, conn: sqlite3.Connection | None = None) -> list[str]:
        """Keys a pull of `remote` into `mirror_root` must not bring back: the objects still in the bucket
        of items being moved from that remote (quarantining, upstream pending, restoring: the item's key and
        its companions not yet out), and every item held and not restored that came from that mirror with no
        remote (its bucket object was never removed: its path there). What is at the key of an item that
        left the bucket is new (other bytes stored there since, or the same bytes again): it is pulled and
        scanned like any file. An object of the same key in another bucket is another object, and is pulled."""
        remote = remote.rstrip("/")
        db = conn or self.db
        held = ",".join("?" * len(HELD_STATES))
        moving = ",".join("?" * len(MOVING_STATES))
        rows = db.execute(
            f"SELECT id, original, mirror_root, key FROM quarantine WHERE "  # noqa: S608
            f"(remote = ? AND key IS NOT NULL AND state IN ({moving})) "
            f"OR (remote IS NULL AND mirror_root = ? AND original != x'' AND state IN ({held}))",
            (remote, *MOVING_STATES, mirror_root, *HELD_STATES),
        ).fetchall()
        keys = [key if key else os.fsdecode(os.path.relpath(orig, root)) for _, orig, root, key in rows]
        items = [item for item, *_ in rows]
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            keys += [k for (k,) in db.execute(  # those not out of the bucket yet (a taken key holds new bytes)
                f"SELECT key FROM item_objects WHERE state IN ('listed', 'held') "  # noqa: S608
                f"AND item IN ({','.join('?' * len(chunk))})", chunk)]  # fmt: skip
        return keys

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

    def unacted_count(self) -> int:
        """Flagged files no action was taken on (a dry run's, or a move a kill rolled back): unfinished work
        the next scan, the daemon's walk or `apply` acts on."""
        return int(
            self.db.execute("SELECT count(*) FROM files WHERE verdict='flagged' AND action IS NULL").fetchone()[0]
        )

    # ---------------------------------------------------------------- move journal

    def start_move(
        self,
        item_id: str,
        kind: MoveKind,
        target: bytes | None = None,
        method: str | None = None,
        decided_by: str | None = None,
    ) -> int:
        """decided_by: who asked for it (JSON), so that a move recovery finishes records the decision too."""
        now = time.time()
        self.begin()
        return int(
            self.db.execute(
                "INSERT INTO moves (item, kind, step, target, started, updated, method, decided_by) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (item_id, str(kind), str(Step.INTENT), target, now, now, method, decided_by),
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
        row = self.db.execute(f"SELECT {MOVE_COLUMNS} FROM moves WHERE id=?", (move_id,)).fetchone()  # noqa: S608
        return None if row is None else MoveRow(*row)

    def unfinished_moves(self, item_id: str | None = None) -> list[MoveRow]:
        sql = f"SELECT {MOVE_COLUMNS} FROM moves WHERE step NOT IN {FINISHED_SQL}"  # noqa: S608
        params: tuple = ()
        if item_id is not None:
            sql += " AND item=?"
            params = (item_id,)
        return [MoveRow(*r) for r in self.db.execute(sql + " ORDER BY id", params)]

    def moves_of(self, item_id: str) -> list[MoveRow]:
        """Every move of an item, oldest first (its quarantine, restores)."""
        rows = self.db.execute(f"SELECT {MOVE_COLUMNS} FROM moves WHERE item=? ORDER BY id", (item_id,))  # noqa: S608
        return [MoveRow(*r) for r in rows]

    def file_times(self, key: bytes) -> tuple[float, float | None] | None:
        """(first seen, decided at) of a path or object key, None when the ledger has no row for it."""
        row = self.db.execute("SELECT first_seen, decided_at FROM files WHERE path=?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def last_move_id(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(id), 0) FROM moves").fetchone()[0])

    def finished_restores_since(
        self, after_id: int, conn: sqlite3.Connection | None = None
    ) -> list[tuple[int, str, bytes | None, float]]:
        """(move id, item, target, seconds from intent to done) of the restores begun after a move id and
        finished, in the order they began."""
        return [
            (int(r[0]), str(r[1]), None if r[2] is None else bytes(r[2]), float(r[3]))
            for r in (conn or self.db).execute(
                "SELECT id, item, target, updated - started FROM moves WHERE kind='restore' AND step='done' AND id > ? "
                "ORDER BY id",
                (after_id,),
            )
        ]
