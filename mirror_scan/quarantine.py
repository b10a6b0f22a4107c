"""The quarantine: flagged files kept as evidence, privately, and a way back.

On disk, one directory per item: `items/<id>/data` (the bytes, no extension, so nothing opens them by
accident) and `items/<id>/meta.json` (where it came from, why, and its state). Directories are 0700
and files 0600 from the moment they are created. The state database indexes the items, but the
quarantine describes itself: `reindex` rebuilds the index from the metadata files.

Every move is a small state machine journalled in the `moves` table, each step committed durably
before the next file operation:

    quarantine: intent -> copied (temp written, fsynced, re-read and verified) -> placed (metadata
                written, renamed into place, directory fsynced) -> [upstream_removed] -> local_removed -> done
    restore:    intent -> copied (temp beside the target, fsynced, verified) -> placed (hard-linked to
                the target: never overwrites) -> [upstream_restored] -> done (allowlisted)

`recover()` runs at the start of every command that writes state: a move stopped before `placed` is
rolled back (its temp removed; the original was never touched), one stopped after is finished. The
last copy of a file is never deleted: the original is removed only after the quarantined bytes are
verified, and only if it still holds the bytes that were flagged.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import fsync_dir
from .errors import MirrorScanError
from .hashing import CHUNK, sha256_bytes, sha256_file
from .paths import UnsafePath, check_relative, contained_target
from .state import Ledger, display_path

log = logging.getLogger(__name__)

META_FORMAT = "mirror-scan-quarantine-item"
META_VERSION = 1
DATA, META = "data", "meta.json"
TMP_DATA, TMP_META = ".data.tmp", ".meta.json.tmp"
RESTORE_TMP_SUFFIX = ".mirror-scan-restore.tmp"


def keys_to_exclude(db) -> list[str]:
    """Keys of items quarantined and not restored (relative to the mirror root), from any connection."""
    rows = db.execute(
        "SELECT original, mirror_root, key FROM quarantine WHERE state NOT IN ('restored', 'rolled_back')"
    ).fetchall()
    # Uploads rejected at validation have neither key nor original path.
    return [key if key else os.fsdecode(os.path.relpath(orig, root)) for orig, root, key in rows if key or orig]


class QuarantineError(MirrorScanError):
    """A quarantine operation that cannot be done as asked."""


def _checkpoint(step: str) -> None:
    """Fault injection for the crash tests: MIRROR_SCAN_KILL_AT=<kind>:<step> kills the process with
    SIGKILL right after that step is committed, exactly like a power cut or an OOM kill would."""
    if os.environ.get("MIRROR_SCAN_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _new_item_id(sha256: str) -> str:
    """Sortable by time, recognisable by content, unique by a random suffix."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{sha256[:12]}-{secrets.token_hex(2)}"


def _item_meta(item_id: str, sha256: str, size: int, first_event: str, **fields: Any) -> dict[str, Any]:
    """The metadata every quarantine item carries; callers add where it came from and why."""
    return {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "id": item_id,
        "state": "quarantined",
        "sha256": sha256,
        "size": size,
        "quarantined_at": _now_iso(),
        "history": [{"state": first_event, "at": _now_iso()}],
        **fields,
    }


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_private(source_fd: int, target: Path) -> str:
    """Copy from an open file into a new 0600 file, fsync it, return the sha256 of what was written."""
    import hashlib

    digest = hashlib.sha256()
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        while chunk := os.read(source_fd, CHUNK):
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
        os.fsync(out)
    finally:
        os.close(out)
    return digest.hexdigest()


@dataclass
class Upstream:
    """Remote object operations. Both are idempotent: removing a missing object is success, and
    restoring writes the same bytes to the same key and verifies them."""

    remote: str
    remove: Callable[[str], str]  # key -> note ("deleted upstream", "already gone upstream")
    restore: Callable[[Path, str], None]  # local file, key

    @classmethod
    def rclone(cls, remote: str, rclone) -> Upstream:
        def restore(local: Path, key: str) -> None:
            rclone.put_object(remote, local, key)
            if sha256_bytes(rclone.read_object(remote, key)) != sha256_file(local):
                raise QuarantineError(f"upstream copy of {key} did not verify after the upload")

        return cls(remote=remote, remove=lambda key: rclone.delete_object(remote, key), restore=restore)


class Quarantine:
    def __init__(self, root: Path, ledger: Ledger, upstream: Upstream | None = None) -> None:
        self.root = Path(root)
        self.items = self.root / "items"
        self.ledger = ledger
        self.upstream = upstream
        self._upstream_down: str | None = None  # after one failure, this process stops calling the remote
        for directory in (self.root, self.items):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(directory.stat().st_mode) != 0o700:
                directory.chmod(0o700)

    # ------------------------------------------------------------------ journal

    def _step(self, move_id: int, step: str, kind: str, note: str | None = None) -> None:
        self.ledger.begin()
        self.ledger.db.execute(
            "UPDATE moves SET step=?, updated=?, note=coalesce(?, note) WHERE id=?", (step, time.time(), note, move_id)
        )
        self.ledger.commit()
        _checkpoint(f"{kind}:{step}")

    def _item_state(self, item_id: str, state: str) -> None:
        self.ledger.begin()
        self.ledger.db.execute("UPDATE quarantine SET state=?, updated=? WHERE id=?", (state, time.time(), item_id))

    def _write_meta(self, item_dir: Path, meta: dict[str, Any]) -> None:
        tmp = item_dir / TMP_META
        tmp.unlink(missing_ok=True)
        _write_private(tmp, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        os.replace(tmp, item_dir / META)
        fsync_dir(item_dir)

    def read_meta(self, item_id: str) -> dict[str, Any]:
        path = self.items / item_id / META
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise QuarantineError(
                f"quarantine item {item_id} has no metadata file",
                hint="run `mirror-scan quarantine list` to see the items",
            ) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise QuarantineError(f"metadata of quarantine item {item_id} cannot be read: {err}") from None

    # ------------------------------------------------------------------ quarantine

    def quarantine(self, source: bytes, mirror_root: bytes, sha256: str, evidence: dict[str, Any]) -> tuple[str, str]:
        """Move `source` (under `mirror_root`) into quarantine if it still holds the bytes `sha256`.
        Returns (item id, state: 'quarantined' or 'upstream_pending'). Raises QuarantineError (nothing
        moved) if it cannot be done safely."""
        rel = os.path.relpath(source, mirror_root)
        check_relative(rel if isinstance(rel, bytes) else os.fsencode(rel))
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise QuarantineError(f"cannot open {display_path(source)}: {err.strerror}") from None
        try:
            st = os.fstat(fd)
            item_id = _new_item_id(sha256)
            item_dir = self.items / item_id
            now = time.time()
            key = os.fsdecode(rel) if self.upstream else None
            self.ledger.begin()
            self.ledger.db.execute(
                "INSERT INTO quarantine (id, dir, sha256, size, original, mirror_root, remote, key, state, reason, "
                "created, updated) VALUES (?,?,?,?,?,?,?,?,'quarantining',?,?,?)",
                (
                    item_id,
                    os.fsencode(item_dir),
                    sha256,
                    st.st_size,
                    source,
                    mirror_root,
                    self.upstream.remote if self.upstream else None,
                    key,
                    json.dumps(evidence.get("verdict")),
                    now,
                    now,
                ),
            )
            move_id = self.ledger.db.execute(
                "INSERT INTO moves (item, kind, step, started, updated) VALUES (?, 'quarantine', 'intent', ?, ?)",
                (item_id, now, now),
            ).lastrowid
            self.ledger.commit()
            _checkpoint("quarantine:intent")

            item_dir.mkdir(mode=0o700)
            fsync_dir(self.items)
            written = _copy_private(fd, item_dir / TMP_DATA)
        finally:
            os.close(fd)
        if written != sha256 or sha256_file(item_dir / TMP_DATA) != sha256:
            self._rollback_quarantine(item_id, item_dir, move_id, "the file changed since it was scanned")
            raise QuarantineError(
                f"{display_path(source)} changed since it was scanned; not quarantined", hint="scan it again"
            )
        self._step(move_id, "copied", "quarantine")

        meta = _item_meta(
            item_id,
            sha256,
            st.st_size,
            "quarantined",
            mtime_ns=st.st_mtime_ns,
            mode=stat.S_IMODE(st.st_mode),
            original=display_path(os.fsencode(rel)),
            original_b64=_b64(os.fsencode(rel)),
            mirror_root=display_path(mirror_root),
            mirror_root_b64=_b64(mirror_root),
            remote=self.upstream.remote if self.upstream else None,
            key=key,
            **evidence,
        )
        self._write_meta(item_dir, meta)
        os.rename(item_dir / TMP_DATA, item_dir / DATA)
        fsync_dir(item_dir)
        self._step(move_id, "placed", "quarantine")
        return item_id, self._finish_quarantine(item_id, move_id, "placed")

    def keep_upload(self, data: bytes, sha256: str, evidence: dict[str, Any]) -> str:
        """Keep the bytes of an upload that the validator rejected (pict-rs deletes them) as evidence.
        Same entry format; there is no original path, so restoring it means allowlisting its sha256."""
        if sha256_bytes(data) != sha256:
            raise QuarantineError("upload bytes do not match their sha256")
        item_id = _new_item_id(sha256)
        item_dir = self.items / item_id
        item_dir.mkdir(mode=0o700)
        try:
            _write_private(item_dir / TMP_DATA, data)
            if sha256_file(item_dir / TMP_DATA) != sha256:
                raise QuarantineError("the kept upload did not verify")
            meta = _item_meta(
                item_id,
                sha256,
                len(data),
                "rejected at upload",
                origin="upload",
                original="",
                original_b64="",
                mirror_root="",
                mirror_root_b64="",
                remote=None,
                key=None,
                **evidence,
            )
            self._write_meta(item_dir, meta)
            os.rename(item_dir / TMP_DATA, item_dir / DATA)
            fsync_dir(item_dir)
            fsync_dir(self.items)
        except BaseException:
            for name in (TMP_DATA, TMP_META, META, DATA):
                (item_dir / name).unlink(missing_ok=True)
            item_dir.rmdir()
            raise
        self.ledger.begin()
        self._ensure_index_row(meta)
        self.ledger.commit()
        return item_id

    def _finish_quarantine(self, item_id: str, move_id: int, step: str) -> str:
        """Finish a placed move: upstream removal, then local removal. Returns the item's state."""
        source, sha256, remote, key = self.ledger.db.execute(
            "SELECT original, sha256, remote, key FROM quarantine WHERE id=?", (item_id,)
        ).fetchone()
        if step == "placed":
            if remote and key:
                if not self._remove_upstream(item_id, remote, key):
                    # Bytes are verified in the quarantine; the mirror file stays until upstream is done.
                    # The move waits at 'placed' and every later command start retries it.
                    self._item_state(item_id, "upstream_pending")
                    self.ledger.db.execute(
                        "UPDATE files SET action='upstream pending', acted_at=? WHERE path=?", (time.time(), source)
                    )
                    self.ledger.commit()
                    return "upstream_pending"
                self._step(move_id, "upstream_removed", "quarantine")
            step = "upstream_removed"
        if step == "upstream_removed":
            self._remove_original(source, sha256)
            self._step(move_id, "local_removed", "quarantine")
        self._item_state(item_id, "quarantined")
        self.ledger.db.execute("UPDATE files SET action='quarantined', acted_at=? WHERE path=?", (time.time(), source))
        self._step(move_id, "done", "quarantine")
        return "quarantined"

    def _remove_upstream(self, item_id: str, remote: str, key: str) -> bool:
        """Delete the object upstream; False (item left 'upstream pending') when it cannot be done now."""
        if self.upstream is None or self.upstream.remote != remote:
            log.warning(
                "quarantine item %s: upstream removal from %s pending (run with --remote %s)", item_id, remote, remote
            )
            return False
        if self._upstream_down:
            return False
        try:
            note = self.upstream.remove(key)
        except MirrorScanError as err:
            # Circuit breaker: one failure (network down, 403, 5xx) leaves every further item of this run
            # pending at once instead of hammering a remote that is down or refuses us.
            self._upstream_down = str(err)
            log.warning("upstream removal pending (retried at the next start): %s", err)
            return False
        log.info("quarantine item %s: %s", item_id, note)
        return True

    def excluded_keys(self) -> list[str]:
        """Keys a pull must not bring back: everything quarantined and not restored."""
        return keys_to_exclude(self.ledger.db)

    def _remove_original(self, source: bytes, sha256: str) -> None:
        """Unlink the original only if it still holds the quarantined bytes (never a newer file)."""
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            log.warning("%s is no longer a regular file; left in place", display_path(source))
            return
        if sha256_file(source) != sha256:
            log.warning("%s changed after it was quarantined; the new file is left in place", display_path(source))
            return
        os.unlink(source)
        fsync_dir(Path(os.fsdecode(os.path.dirname(source))))

    def _rollback_quarantine(self, item_id: str, item_dir: Path, move_id: int, why: str) -> None:
        for name in (TMP_DATA, TMP_META, META, DATA):
            (item_dir / name).unlink(missing_ok=True)
        if item_dir.exists():
            item_dir.rmdir()
            fsync_dir(self.items)
        self.ledger.begin()
        self.ledger.db.execute("DELETE FROM quarantine WHERE id=?", (item_id,))
        self._step(move_id, "rolled_back", "quarantine", note=why)

    # ------------------------------------------------------------------ restore

    def restore(self, item_id: str, to: Path | None = None, upstream: bool = True) -> bytes:
        """Put the item's bytes back, byte-identical, at its original path (or `to`), and allowlist them."""
        meta = self.read_meta(item_id)
        row = self.ledger.db.execute("SELECT state FROM quarantine WHERE id=?", (item_id,)).fetchone()
        state = row[0] if row else meta.get("state")
        if state not in ("quarantined", "upstream_pending"):
            raise QuarantineError(f"item {item_id} is {state}, not quarantined")
        item_dir = self.items / item_id
        if meta.get("origin") == "upload":
            return self._release_upload(item_id, meta)
        if sha256_file(item_dir / DATA) != meta["sha256"]:
            raise QuarantineError(
                f"item {item_id}: the quarantined bytes do not match their recorded sha256 (tampered or damaged); "
                "refusing to restore",
                hint="compare with your backups; `quarantine show` prints the recorded metadata",
            )
        if to is not None:
            target = os.fsencode(os.path.abspath(to))
        else:
            try:
                root = _unb64(meta["mirror_root_b64"])
                target = contained_target(root, _unb64(meta["original_b64"]))
            except (KeyError, ValueError) as err:
                raise QuarantineError(f"item {item_id}: metadata has no usable original path ({err})") from None
            except UnsafePath as err:
                raise QuarantineError(f"item {item_id}: {err}", hint="restore it elsewhere with --to PATH") from None
        if os.path.lexists(target):
            if os.path.isfile(target) and not os.path.islink(target) and sha256_file(target) == meta["sha256"]:
                log.info("%s already holds these bytes", display_path(target))
            else:
                raise QuarantineError(
                    f"{display_path(target)} already exists and holds other content; not overwritten",
                    hint="restore to another place with --to PATH",
                )
        now = time.time()
        self.ledger.begin()
        self._ensure_index_row(meta)
        move_id = self.ledger.db.execute(
            "INSERT INTO moves (item, kind, step, target, started, updated) VALUES (?, 'restore', 'intent', ?, ?, ?)",
            (item_id, target, now, now),
        ).lastrowid
        self._item_state(item_id, "restoring")
        self.ledger.commit()
        _checkpoint("restore:intent")
        if not os.path.lexists(target):
            tmp = target + RESTORE_TMP_SUFFIX.encode()
            with open(item_dir / DATA, "rb") as handle:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, meta.get("mode", 0o644) & 0o777)
                try:
                    shutil.copyfileobj(handle, os.fdopen(os.dup(fd), "wb"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if sha256_file(tmp) != meta["sha256"]:
                os.unlink(tmp)
                raise QuarantineError(f"copy to {display_path(target)} did not verify; nothing restored")
            os.utime(tmp, ns=(meta.get("mtime_ns", time.time_ns()), meta.get("mtime_ns", time.time_ns())))
            self._step(move_id, "copied", "restore")
            os.link(tmp, target)  # fails if anything appeared at the target meanwhile: never overwrites
            os.unlink(tmp)
            fsync_dir(Path(os.fsdecode(os.path.dirname(target))))
        self._step(move_id, "placed", "restore")
        self._finish_restore(item_id, move_id, "placed", upstream)
        return target

    def _release_upload(self, item_id: str, meta: dict[str, Any]) -> bytes:
        """An upload rejected by the validator has no place to go back to: restoring it allowlists its
        sha256, so the uploader can upload it again and it is accepted."""
        self.ledger.allow(meta["sha256"], note=f"released upload-time rejection {item_id}")
        meta["state"] = "restored"
        meta.setdefault("history", []).append({"state": "released (allowlisted)", "at": _now_iso()})
        self._write_meta(self.items / item_id, meta)
        self.ledger.begin()
        self._item_state(item_id, "restored")
        self.ledger.commit()
        return b"(allowlisted: the upload can be made again)"

    def _finish_restore(self, item_id: str, move_id: int, step: str, upstream: bool = True) -> None:
        meta = self.read_meta(item_id)
        if step == "placed":
            if upstream and meta.get("key") and meta.get("remote"):
                if self.upstream is None or self.upstream.remote != meta["remote"]:
                    raise QuarantineError(
                        f"item {item_id} came from {meta['remote']}; "
                        f"restoring it there needs --remote {meta['remote']}",
                        hint="or restore locally only with --no-upstream",
                    )
                self.upstream.restore(self.items / item_id / DATA, meta["key"])
                self._step(move_id, "upstream_restored", "restore")
        self.ledger.allow(meta["sha256"], note=f"restored from quarantine item {item_id}")
        meta["state"] = "restored"
        meta.setdefault("history", []).append({"state": "restored", "at": _now_iso()})
        self._write_meta(self.items / item_id, meta)
        self._item_state(item_id, "restored")
        self.ledger.db.execute(
            "UPDATE files SET action='restored', acted_at=? WHERE sha256=? AND action='quarantined'",
            (time.time(), meta["sha256"]),
        )
        self._step(move_id, "done", "restore")

    # ------------------------------------------------------------------ recovery

    def pending_moves(self) -> list[tuple[int, str, str, str, bytes | None]]:
        return list(
            self.ledger.db.execute(
                "SELECT id, item, kind, step, target FROM moves WHERE step NOT IN ('done', 'rolled_back') ORDER BY id"
            )
        )

    def recover(self) -> list[str]:
        """Finish or roll back every unfinished move; returns one line per move handled."""
        notes = []
        for move_id, item_id, kind, step, target in self.pending_moves():
            item_dir = self.items / item_id
            if kind == "quarantine":
                notes.append(self._recover_quarantine(move_id, item_id, item_dir, step))
            else:
                notes.append(self._recover_restore(move_id, item_id, item_dir, step, target))
        self._sweep_temp_files()
        self.ledger.commit()
        return notes

    def _recover_quarantine(self, move_id: int, item_id: str, item_dir: Path, step: str) -> str:
        row = self.ledger.db.execute("SELECT original, sha256 FROM quarantine WHERE id=?", (item_id,)).fetchone()
        if row is None:
            self._step(move_id, "rolled_back", "recover", note="no index row")
            return f"{item_id}: nothing to recover"
        source, sha256 = row
        if step in ("intent", "copied"):
            original_ok = os.path.isfile(source) and sha256_file(source) == sha256
            placed_ok = (item_dir / DATA).is_file() and sha256_file(item_dir / DATA) == sha256
            if original_ok or not placed_ok:
                self._rollback_quarantine(item_id, item_dir, move_id, f"interrupted at {step}; rolled back")
                return f"{item_id}: quarantine interrupted at '{step}', rolled back (original untouched)"
            step = "placed"  # the original is gone but verified bytes are placed: never delete the last copy
        if step == "placed" and (item_dir / DATA).is_file() and sha256_file(item_dir / DATA) != sha256:
            self._item_state(item_id, "damaged")
            self._step(move_id, "rolled_back", "recover", note="quarantined bytes do not verify; original kept")
            return f"{item_id}: quarantined bytes do not verify; original left in place"
        state = self._finish_quarantine(item_id, move_id, step)
        if state == "upstream_pending":
            return f"{item_id}: upstream removal still pending (retried at the next start)"
        return f"{item_id}: quarantine finished (was at '{step}')"

    def _recover_restore(self, move_id: int, item_id: str, item_dir: Path, step: str, target: bytes) -> str:
        meta = self.read_meta(item_id)
        tmp = target + RESTORE_TMP_SUFFIX.encode()
        linked = os.path.isfile(target) and sha256_file(target) == meta["sha256"]
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if step in ("intent", "copied") and not linked:
            self._item_state(item_id, meta.get("state", "quarantined"))
            self._step(move_id, "rolled_back", "recover", note=f"interrupted at {step}")
            return f"{item_id}: restore interrupted at '{step}', rolled back (still quarantined)"
        self._finish_restore(item_id, move_id, "placed" if step in ("intent", "copied") else step)
        return f"{item_id}: restore interrupted at '{step}', finished"

    def _sweep_temp_files(self) -> None:
        """Temp files of moves that no longer exist (e.g. a state database restored from backup)."""
        active = {item for _, item, *_ in self.pending_moves()}
        for item_dir in self.items.iterdir():
            if item_dir.name in active:
                continue
            for name in (TMP_DATA, TMP_META):
                if (item_dir / name).exists():
                    if not (item_dir / DATA).exists() and not (item_dir / META).exists():
                        (item_dir / name).unlink()
                        log.info("removed leftover %s in %s", name, item_dir.name)
            if not any(item_dir.iterdir()):
                item_dir.rmdir()

    # ------------------------------------------------------------------ index

    def _ensure_index_row(self, meta: dict[str, Any]) -> None:
        self.ledger.db.execute(
            "INSERT OR IGNORE INTO quarantine (id, dir, sha256, size, original, mirror_root, remote, key, state, "
            "reason, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                meta["id"],
                os.fsencode(self.items / meta["id"]),
                meta["sha256"],
                meta["size"],
                os.path.join(_unb64(meta["mirror_root_b64"]), _unb64(meta["original_b64"]))
                if meta["original_b64"]
                else b"",
                _unb64(meta["mirror_root_b64"]),
                meta.get("remote"),
                meta.get("key"),
                meta["state"],
                json.dumps(meta.get("verdict")),
                dt.datetime.fromisoformat(meta["quarantined_at"]).timestamp(),
                time.time(),
            ),
        )

    def reindex(self) -> tuple[int, list[str]]:
        """Rebuild the index from the metadata files (after losing the state database)."""
        count, problems = 0, []
        self.ledger.begin()
        for item_dir in sorted(self.items.iterdir()):
            try:
                meta = self.read_meta(item_dir.name)
                if meta.get("format") != META_FORMAT:
                    raise QuarantineError("not a mirror-scan quarantine item")
                self.ledger.db.execute("DELETE FROM quarantine WHERE id=?", (meta["id"],))
                self._ensure_index_row(meta)
                count += 1
            except (MirrorScanError, KeyError, ValueError) as err:
                problems.append(f"{item_dir.name}: {err}")
        self.ledger.commit()
        return count, problems

    def entries(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        rows = self.ledger.db.execute(
            "SELECT id, created, original, state, reason, sha256, size FROM quarantine WHERE created >= ? "
            "ORDER BY created, id",
            (since or 0,),
        )
        for item_id, created, original, state, reason, sha256, size in rows:
            yield {
                "id": item_id,
                "quarantined_at": dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="seconds"),
                "original": display_path(original) or "(rejected upload)",
                "state": state,
                "reason": json.loads(reason) if reason else None,
                "sha256": sha256,
                "size": size,
            }

    def record_pictrs_purge(self, item_id: str, alias: str, note: str) -> None:
        """Write down what was purged from pict-rs (irreversible), in the item's own metadata."""
        meta = self.read_meta(item_id)
        meta.setdefault("pictrs_purged", []).append({"alias": alias, "result": note, "at": _now_iso()})
        meta.setdefault("history", []).append({"state": f"pict-rs purge of {alias}: {note}", "at": _now_iso()})
        self._write_meta(self.items / item_id, meta)

    def purge(self, item_id: str) -> None:
        """Delete an item's bytes permanently; keep a tombstone (metadata, state 'purged')."""
        meta = self.read_meta(item_id)
        (self.items / item_id / DATA).unlink(missing_ok=True)
        meta["state"] = "purged"
        meta.setdefault("history", []).append({"state": "purged", "at": _now_iso()})
        self._write_meta(self.items / item_id, meta)
        self.ledger.begin()
        self._ensure_index_row(meta)
        self._item_state(item_id, "purged")
        self.ledger.commit()
