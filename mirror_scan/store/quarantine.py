"""The quarantine: flagged files kept as evidence, privately, and a way back.

On disk, one directory per item: `items/<id>/data` (the bytes, no extension, so nothing opens them by
accident) and `items/<id>/meta.json` (where it came from, why, and its state). Directories are 0700
and files 0600 from the moment they are created. The ledger is the authority on every item; the
metadata file describes the item for people and for `reindex` (rebuilding a lost ledger), and a
restore whose metadata disagrees with the ledger is refused.

Every move is a small state machine journalled in the ledger's `moves` table, each step committed
durably before the next file operation:

    quarantine: intent -> copied (temp written, fsynced, re-read and verified) -> placed (metadata
                written, renamed into place, directory fsynced) -> [upstream_removed] -> local_removed -> done
    restore:    intent -> copied (temp beside the target, fsynced, verified) -> placed (hard-linked to
                the target: never overwrites) -> [upstream_restored] -> done (allowlisted)
                On filesystems without hard links (FUSE mounts such as `rclone mount`, SMB) the restore
                writes the target itself with O_EXCL (never overwrites, no temp name that a mount would
                upload), fsyncs and verifies it: intent -> placed.

Several processes share one quarantine (the watch daemon, the validator, `quarantine restore` from a
shell). A process working on an item holds that item's lock (`locks/<id>`, flock) for the whole move;
the kernel releases it when the process dies, however it dies. `recover()` only touches moves whose
item lock it can take, so it never rolls back a move a live process owns, and it finishes or rolls
back every move whose owner is dead: a move stopped before `placed` is rolled back (its temp removed;
the original was never touched), one stopped after is finished. The last copy of a file is never
deleted: the original is removed only after the quarantined bytes are verified, and only if it still
holds the bytes that were flagged.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mirror_scan.atomic import fsync_dir
from mirror_scan.errors import MirrorScanError
from mirror_scan.faults import checkpoint
from mirror_scan.hashing import CHUNK, md5_file, sha256_bytes, sha256_file
from mirror_scan.kinds import HELD_STATES, RESTORABLE_STATES, FileAction, ItemState, MoveKind, Step
from mirror_scan.store.followups import plan_undo
from mirror_scan.store.fsinfo import filesystem_type, is_remote_or_fuse
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.paths import (
    MissingParent,
    Place,
    UnsafePath,
    check_operator_target,
    check_relative,
    reach,
    relative_to,
)
from mirror_scan.store.rows import ItemRow, MoveRow, display_path
from mirror_scan.store.upstream import Upstream, Upstreams, UpstreamUnavailable

log = logging.getLogger(__name__)

META_FORMAT = "mirror-scan-quarantine-item"
META_VERSION = 1
DATA, META = "data", "meta.json"
TMP_DATA, TMP_META = ".data.tmp", ".meta.json.tmp"
# The restore's temp file beside the target: a dot name ending in .partial, which discovery, the watch
# daemon and pulls all ignore (rclone's own in-progress suffix).
RESTORE_TMP_SUFFIX = ".mirror-scan-restore.partial"
NO_UPSTREAM = ";no-upstream"  # recorded with a restore's method: recovery must not put it back upstream either
# Items with no file in the mirror (uploads rejected at validation, objects scanned in their bucket).
NO_LOCAL_ORIGINAL = {"original": "", "original_b64": "", "mirror_root": "", "mirror_root_b64": ""}
LINK_UNSUPPORTED = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV)


class QuarantineError(MirrorScanError):
    """A quarantine operation that cannot be done as asked."""


class UpstreamRestorePending(QuarantineError):
    """The file is back in the mirror; putting the object back upstream failed and is retried."""


class ItemBusy(QuarantineError):
    """Another live process is working on this item."""


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
        "state": str(ItemState.QUARANTINED),
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


def _copy_to_new(source_fd: int, target: bytes | Path, mode: int, dir_fd: int | None = None) -> str:
    """Copy from an open file into a new file (O_EXCL: never an existing one), fsync it, return the sha256
    of what was written."""
    import hashlib

    digest = hashlib.sha256()
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
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


def _is_prefix_of(place: Place, source: Path) -> bool:
    """True if the file at the place holds a leading part (possibly all) of `source`'s bytes: what an
    interrupted O_EXCL write of ours leaves behind."""
    try:
        fd = place.open(os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        with open(fd, "rb", buffering=0, closefd=False) as partial, open(source, "rb", buffering=0) as full:
            while chunk := partial.read(CHUNK):
                if full.read(len(chunk)) != chunk:
                    return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def restore_method(directory: bytes) -> str:
    """'link' (temp beside the target, then a hard link: atomic and never overwrites) where the filesystem
    has hard links; 'direct' (O_EXCL write of the target itself) on FUSE and network filesystems, where
    a temp name would be uploaded as a new object by `rclone mount`."""
    return "direct" if is_remote_or_fuse(filesystem_type(directory)) else "link"


class Quarantine:
    def __init__(self, root: Path, ledger: Ledger, upstreams: Upstreams | None = None) -> None:
        self.root = Path(root)
        self.items = self.root / "items"
        self.locks = self.root / "locks"
        self.ledger = ledger
        self.upstreams = upstreams or Upstreams()
        # Attribution (and the moderation actions it plans) is queued with each new item, in the same
        # transaction, when a pict-rs or Lemmy source is configured (see followups.py).
        self.follow_up = False
        if ledger.readonly:
            return
        for directory in (self.root, self.items, self.locks):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(directory.stat().st_mode) != 0o700:
                directory.chmod(0o700)

    @property
    def upstream(self) -> Upstream | None:
        """The remote new quarantine moves remove from (--remote), if any."""
        return self.upstreams.get(self.upstreams.default) if self.upstreams.default else None

    # ------------------------------------------------------------------ item locks

    @contextlib.contextmanager
    def item_lock(self, item_id: str, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the item's lock: exclusive between processes and threads (one open file description each),
        released by the kernel when the holder dies. ItemBusy if it is not free within wait_s."""
        _check_item_id(item_id)
        fd = os.open(self.locks / item_id, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ItemBusy(
                            f"quarantine item {item_id} is being changed by another mirror-scan process right now",
                            hint="try again in a moment",
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ journal

    def _step(self, move_id: int, step: Step, kind: str, note: str | None = None) -> None:
        self.ledger.set_step(move_id, step, note)
        self.ledger.commit()
        checkpoint(f"{kind}:{step}")

    def _write_meta(self, item_dir: Path, meta: dict[str, Any]) -> None:
        tmp = item_dir / TMP_META
        tmp.unlink(missing_ok=True)
        _write_private(tmp, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        os.replace(tmp, item_dir / META)
        fsync_dir(item_dir)

    def _note_in_meta(self, item_id: str, state: str | None, event: str, **fields: Any) -> None:
        """Keep the item's self-description in step with the ledger (for people and `reindex`)."""
        try:
            meta = self.read_meta(item_id)
        except QuarantineError as err:
            log.warning("%s", err)
            return
        if state is not None:
            meta["state"] = str(state)
        meta.update(fields)
        meta.setdefault("history", []).append({"state": event, "at": _now_iso()})
        self._write_meta(self.items / item_id, meta)

    def note_held(self, item_id: str, event: str, **fields: Any) -> None:
        """Add an event (and fields) to the item's metadata; the caller holds the item's lock."""
        self._note_in_meta(item_id, None, event, **fields)

    def read_meta(self, item_id: str) -> dict[str, Any]:
        _check_item_id(item_id)
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
        moved) if it cannot be done safely. A copy of an item already quarantined from this very path (a
        pull brought it back) is removed again under that item, not made into a second one."""
        returned = self.drop_returned_copy(source, mirror_root, sha256)
        if returned is not None:
            return returned, str(ItemState.QUARANTINED)
        try:
            rel = relative_to(mirror_root, source)
            with reach(mirror_root, rel) as place:
                # Reached without following links (a directory swapped for a symlink is refused), and
                # O_NONBLOCK: a FIFO swapped in for the file never blocks the open; fstat below refuses it.
                fd = place.open(os.O_RDONLY | os.O_NONBLOCK)
        except UnsafePath as err:
            raise QuarantineError(f"{display_path(source)}: {err}; not quarantined") from None
        except OSError as err:
            raise QuarantineError(f"cannot open {display_path(source)}: {err.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise QuarantineError(f"{display_path(source)} is no longer a regular file; not quarantined")
            item_id = _new_item_id(sha256)
            with self.item_lock(item_id):
                return self._quarantine_locked(fd, st, item_id, source, mirror_root, rel, sha256, evidence)
        finally:
            os.close(fd)

    def _quarantine_locked(self, fd, st, item_id, source, mirror_root, rel, sha256, evidence) -> tuple[str, str]:
        item_dir = self.items / item_id
        upstream = self.upstream
        key = os.fsdecode(rel) if upstream else None
        self.ledger.begin()
        owner = self.ledger.active_item_for(source)
        if owner is not None:
            self.ledger.commit()
            raise QuarantineError(f"{display_path(source)} is already being moved (quarantine item {owner})")
        move_id = self._intent(
            item_id, sha256, st.st_size, source, mirror_root, upstream.remote if upstream else None, key, evidence
        )

        item_dir.mkdir(mode=0o700)
        fsync_dir(self.items)
        written = _copy_to_new(fd, item_dir / TMP_DATA, 0o600)
        if written != sha256 or sha256_file(item_dir / TMP_DATA) != sha256:
            self._rollback_quarantine(item_id, item_dir, move_id, "the file changed since it was scanned")
            raise QuarantineError(
                f"{display_path(source)} changed since it was scanned; not quarantined", hint="scan it again"
            )
        self._step(move_id, Step.COPIED, "quarantine")

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
            remote=upstream.remote if upstream else None,
            key=key,
            **evidence,
        )
        return item_id, self._place(item_id, item_dir, move_id, meta)

    def quarantine_object(self, remote: str, key: str, sha256: str, evidence: dict[str, Any]) -> tuple[str, str]:
        """Quarantine an object that has no mirror copy (scanned in its bucket): read it from the remote
        into the item, verify it holds the bytes that were scanned, then remove it upstream. The same
        journal as a mirrored file (intent -> copied -> placed -> upstream_removed -> done); there is no
        local original. Returns (item id, state)."""
        if not key or "\x00" in key:  # any other key is an S3 key: it names no local path
            raise QuarantineError(f"{remote}: {key!r} is not an object key")
        upstream = self.upstreams.get(remote, direct=True)
        item_id = _new_item_id(sha256)
        with self.item_lock(item_id):
            return self._quarantine_object_locked(upstream, remote, key, sha256, evidence, item_id)

    def _quarantine_object_locked(self, upstream, remote, key, sha256, evidence, item_id) -> tuple[str, str]:
        item_dir = self.items / item_id
        self.ledger.begin()
        owner = self.ledger.active_item_for_object(remote, key)
        if owner is not None:
            self.ledger.commit()
            raise QuarantineError(f"{remote}/{key} is already being moved (quarantine item {owner})")
        move_id = self._intent(item_id, sha256, 0, b"", b"", remote, key, evidence)

        item_dir.mkdir(mode=0o700)
        fsync_dir(self.items)
        try:
            data = upstream.read(key)
        except MirrorScanError as err:
            self._rollback_quarantine(item_id, item_dir, move_id, "the object could not be read")
            raise QuarantineError(f"{remote}/{key} could not be read: {str(err).splitlines()[0]}") from None
        _write_private(item_dir / TMP_DATA, data)
        if sha256_bytes(data) != sha256 or sha256_file(item_dir / TMP_DATA) != sha256:
            self._rollback_quarantine(item_id, item_dir, move_id, "the object changed since it was scanned")
            raise QuarantineError(f"{remote}/{key} changed since it was scanned; not quarantined", hint="scan it again")
        with self.ledger.transaction():
            self.ledger.set_item_size(item_id, len(data))
        self._step(move_id, Step.COPIED, "quarantine")
        meta = _item_meta(
            item_id,
            sha256,
            len(data),
            "quarantined",
            origin="bucket",
            **NO_LOCAL_ORIGINAL,
            remote=remote,
            key=key,
            **evidence,
        )
        return item_id, self._place(item_id, item_dir, move_id, meta)

    def _intent(self, item_id, sha256, size, original, mirror_root, remote, key, evidence) -> int:
        """The item's index row, its move's intent and its attribution follow-up, in the caller's open
        transaction, committed together: the first durable step of a quarantine."""
        now = time.time()
        self.ledger.insert_item(
            {
                "id": item_id,
                "dir": os.fsencode(self.items / item_id),
                "sha256": sha256,
                "size": size,
                "original": original,
                "mirror_root": mirror_root,
                "remote": remote,
                "key": key,
                "state": str(ItemState.QUARANTINING),
                "reason": json.dumps(evidence.get("verdict")),
                "created": now,
                "updated": now,
            }
        )
        move_id = self.ledger.start_move(item_id, MoveKind.QUARANTINE)
        if self.follow_up:
            self.ledger.follow_ups.add_followup(item_id, "attribute", plan=True)
        self.ledger.commit()
        checkpoint("quarantine:intent")
        return move_id

    def _place(self, item_id: str, item_dir: Path, move_id: int, meta: dict[str, Any]) -> str:
        """Verified bytes (the temp file) become the item: metadata, rename, fsync, 'placed'; then finish."""
        self._write_meta(item_dir, meta)
        os.rename(item_dir / TMP_DATA, item_dir / DATA)
        fsync_dir(item_dir)
        self._step(move_id, Step.PLACED, "quarantine")
        return self._finish_quarantine(item_id, move_id, Step.PLACED)

    def keep_upload(self, data: bytes, sha256: str, evidence: dict[str, Any]) -> str:
        """Keep the bytes of an upload that the validator rejected (pict-rs deletes them) as evidence.
        One item per sha256: the same upload rejected again counts as seen again. There is no original
        path, so restoring it means allowlisting its sha256."""
        if sha256_bytes(data) != sha256:
            raise QuarantineError("upload bytes do not match their sha256")
        known = self.ledger.upload_item_for(sha256)
        if known is not None:
            self.ledger.count_upload_seen(known)
            return known
        item_id = _new_item_id(sha256)
        item_dir = self.items / item_id
        with self.item_lock(item_id):
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
                    **NO_LOCAL_ORIGINAL,
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
            with self.ledger.transaction():
                self._index(meta)
                if self.follow_up:
                    self.ledger.follow_ups.add_followup(item_id, "attribute", plan=True)
        return item_id

    def _finish_quarantine(self, item_id: str, move_id: int, step: str) -> str:
        """Finish a placed move: upstream removal, then local removal. Returns the item's state."""
        row = self.ledger.item(item_id)
        assert row is not None
        if step == Step.PLACED:
            if row.remote and row.key:
                if not self._remove_upstream(row):
                    # Bytes are verified in the quarantine; the mirror file stays until upstream is done.
                    # The move waits at 'placed'; the daemon retries it with backoff, every command at start.
                    self.ledger.set_item_state(item_id, ItemState.UPSTREAM_PENDING)
                    self.ledger.mark_action(file_key(row), FileAction.UPSTREAM_PENDING)
                    self.ledger.commit()
                    return str(ItemState.UPSTREAM_PENDING)
                self._step(move_id, Step.UPSTREAM_REMOVED, "quarantine")
            step = Step.UPSTREAM_REMOVED
        if step == Step.UPSTREAM_REMOVED:
            self._remove_original(row)
            self._step(move_id, Step.LOCAL_REMOVED, "quarantine")
        self.ledger.set_item_state(item_id, ItemState.QUARANTINED)
        self.ledger.mark_action(file_key(row), FileAction.QUARANTINED)
        self._step(move_id, Step.DONE, "quarantine")
        if row.state == ItemState.UPSTREAM_PENDING:
            self._note_in_meta(item_id, ItemState.QUARANTINED, "removed upstream (retried)")
        return str(ItemState.QUARANTINED)

    def _remove_upstream(self, row: ItemRow) -> bool:
        """Delete the object upstream; False (item left 'upstream pending') when it cannot be done now."""
        try:
            upstream = self.upstreams.get(row.remote, direct=item_origin(row) == "bucket")  # type: ignore[arg-type]
            md5 = md5_file(self.items / row.id / DATA)
            note = upstream.remove(row.key, row.sha256, md5, lambda: self._evidence_keys(row))  # type: ignore[arg-type]
        except UpstreamUnavailable:
            return False
        except MirrorScanError as err:
            log.warning("quarantine item %s: upstream removal from %s pending: %s", row.id, row.remote, err)
            return False
        log.info("quarantine item %s: %s", row.id, note)
        return True

    def _evidence_keys(self, row: ItemRow) -> list[str] | None:
        """Keys that prove the remote is the bucket the item came from, when its object is not there: for
        a mirrored file, a few other files of the mirror (still there, so still in their bucket); for an
        object scanned in its bucket, none is needed (it was read from there moments before)."""
        if not row.original:
            return None  # read from there when it was quarantined: being gone is being gone
        paths = self.ledger.mirror_sample(row.mirror_root, row.original)
        if len(paths) < 3:  # files the ledger does not know yet count too: they are in the mirror
            from mirror_scan.store.discover import Found, discover

            for found in discover([os.fsdecode(row.mirror_root)]):
                if isinstance(found, Found) and os.fsencode(found.path) not in (row.original, *paths):
                    paths.append(os.fsencode(found.path))
                    if len(paths) >= 5:
                        break
        return [os.fsdecode(os.path.relpath(path, row.mirror_root)) for path in paths]

    def drop_returned_copy(self, source: bytes, mirror_root: bytes, sha256: str | None = None) -> str | None:
        """A pull that listed the bucket while a quarantine was removing the object (upstream first, then
        the mirror copy) can write the object back into the mirror after both removals. Such a copy of an
        item quarantined from this path, with its bytes, is removed again, whatever a scan would now say
        of it: its bytes are in the item. Under the item's lock (a move still in progress finishes first);
        anything else (other bytes, a restored or pending item) is left to the scan. Returns the item id
        when a copy was removed."""
        item_id = self.ledger.latest_item_for(source)
        if item_id is None:
            return None
        row = self.ledger.item(item_id)
        if row is None or row.mirror_root != mirror_root or (sha256 is not None and row.sha256 != sha256):
            return None
        try:
            with self.item_lock(item_id, wait_s=30.0):
                row = self.ledger.item(item_id)
                if row is None or row.state != ItemState.QUARANTINED or not self._remove_original(row):
                    return None
        except ItemBusy:
            return None  # still being moved after 30 s: the next pull or scan comes back to it
        log.info("%s: a copy of quarantine item %s came back into the mirror; removed again", display_path(source),
                 item_id)  # fmt: skip
        return item_id

    def _remove_original(self, row: ItemRow) -> bool:
        """Unlink the original only if it still holds the quarantined bytes (never a newer file), reached
        from the mirror root without following links (never a file outside the mirror). True if unlinked."""
        source = row.original
        if not source:
            return False  # an object scanned in its bucket: no mirror copy
        try:
            place = reach(row.mirror_root, relative_to(row.mirror_root, source))
        except MissingParent:
            return False
        except UnsafePath as err:
            log.warning("%s: %s; left in place", display_path(source), err)
            return False
        with place:
            st = place.lstat()
            if st is None:
                return False
            if not stat.S_ISREG(st.st_mode):
                log.warning("%s is no longer a regular file; left in place", display_path(source))
                return False
            if place.sha256() != row.sha256:
                log.warning("%s changed after it was quarantined; the new file is left in place", display_path(source))
                return False
            now = place.lstat()
            if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                log.warning("%s was replaced while it was checked; the new file is left in place", display_path(source))
                return False
            place.unlink()
            place.fsync_dir()
            return True

    def _original_holds(self, row: ItemRow) -> bool:
        """The original is still in the mirror (reached without following links) with the item's bytes."""
        try:
            with reach(row.mirror_root, relative_to(row.mirror_root, row.original)) as place:
                return place.sha256() == row.sha256
        except UnsafePath:
            return False

    def _rollback_quarantine(self, item_id: str, item_dir: Path, move_id: int, why: str) -> None:
        for name in (TMP_DATA, TMP_META, META, DATA):
            (item_dir / name).unlink(missing_ok=True)
        if item_dir.exists():
            item_dir.rmdir()
            fsync_dir(self.items)
        self.ledger.delete_item(item_id)
        self._step(move_id, Step.ROLLED_BACK, "quarantine", note=why)

    # ------------------------------------------------------------------ restore

    def restore(self, item_id: str, to: Path | None = None, upstream: bool = True, wait_s: float = 5.0) -> bytes:
        """Put the item's bytes back, byte-identical, at its original path (or `to`), and allowlist them.
        Uses the remote the item recorded (it must be configured here) unless upstream=False."""
        with self.item_lock(item_id, wait_s=wait_s):
            return self._restore_locked(item_id, to, upstream)

    def _checked_item(self, item_id: str) -> tuple[ItemRow, dict[str, Any]]:
        """The ledger's row and the metadata file, which must agree: the ledger is the authority, and a
        metadata file that says otherwise (edited, replaced) refuses the action."""
        row = self.ledger.item(item_id)
        if row is None:
            raise QuarantineError(
                f"quarantine item {item_id} is not in the ledger",
                hint="see `mirror-scan quarantine list`; after losing the state database, `quarantine reindex` "
                "rebuilds the index from the metadata files (check them first)",
            )
        meta = self.read_meta(item_id)
        differing = meta_disagreement(row, meta)
        if differing:
            raise QuarantineError(
                f"item {item_id}: its metadata file disagrees with the ledger on {', '.join(differing)}; "
                "refusing to act on it",
                hint="the metadata file was edited or replaced: compare it with your backups; the ledger's "
                "record is the authority (`mirror-scan quarantine show` prints both)",
            )
        return row, meta

    def _restore_locked(self, item_id: str, to: Path | None, upstream: bool) -> bytes:
        row, meta = self._checked_item(item_id)
        if row.state not in RESTORABLE_STATES:
            raise QuarantineError(f"item {item_id} is {row.state}, not quarantined")
        item_dir = self.items / item_id
        if item_origin(row) == "upload":
            return self._release_upload(row)
        if item_origin(row) == "bucket" and to is None:
            return self._restore_object(row, item_dir, upstream)
        target_upstream = None
        if upstream and row.remote and row.key and to is None:
            target_upstream = self.upstreams.get(row.remote)  # refuses now if the remote is not configured
        if sha256_file(item_dir / DATA) != row.sha256:
            raise QuarantineError(
                f"item {item_id}: the quarantined bytes do not match their recorded sha256 (tampered or damaged); "
                "refusing to restore",
                hint="compare with your backups; `quarantine show` prints the recorded metadata",
            )
        try:
            place = self._target_place(row, to, create_parents=True)
        except UnsafePath as err:
            raise QuarantineError(f"item {item_id}: {err}", hint="restore it elsewhere with --to PATH") from None
        with place:
            return self._restore_at(row, meta, place, target_upstream)

    def _target_place(self, row: ItemRow, to: Path | bytes | None, create_parents: bool) -> Place:
        """Where a restore writes: the original path under the mirror root, or the operator's --to path;
        reached without following links either way."""
        if to is not None:
            target = check_operator_target(os.fsencode(os.path.abspath(to)))
            return reach(b"/", target.lstrip(b"/"), create_parents=False)
        return reach(row.mirror_root, relative_to(row.mirror_root, row.original), create_parents=create_parents)

    def _restore_at(self, row: ItemRow, meta: dict[str, Any], place: Place, target_upstream: Upstream | None) -> bytes:
        item_id, target = row.id, place.path
        if place.exists():
            if place.sha256() == row.sha256:
                log.info("%s already holds these bytes", display_path(target))
            else:
                raise QuarantineError(
                    f"{display_path(target)} already exists and holds other content; not overwritten",
                    hint="restore to another place with --to PATH",
                )
        method = restore_method(os.path.dirname(target))
        self.ledger.begin()
        # A removal still waiting upstream is superseded: the restore puts the object back either way.
        for move in self.ledger.unfinished_moves(item_id):
            self.ledger.set_step(move.id, Step.ROLLED_BACK, note="superseded by a restore")
        move_id = self.ledger.start_move(
            item_id, MoveKind.RESTORE, target, method + ("" if target_upstream else NO_UPSTREAM)
        )
        self.ledger.set_item_state(item_id, ItemState.RESTORING)
        self.ledger.commit()
        checkpoint("restore:intent")
        if not place.exists():
            if method == "link":
                method = self._restore_by_link(item_id, move_id, place, meta)
            if method == "direct":
                self._write_verified(item_id, place, place.name, meta)
                place.fsync_dir()
        self._step(move_id, Step.PLACED, "restore")
        try:
            self._finish_restore(item_id, move_id, Step.PLACED, target_upstream)
        except MirrorScanError as err:
            raise UpstreamRestorePending(
                f"{display_path(target)} is back in the mirror, but putting it back in {row.remote} failed: "
                f"{str(err).splitlines()[0]}",
                hint="nothing is lost: a running watch daemon retries it with backoff, and so does every "
                "mirror-scan command that writes state",
            ) from None
        return target

    def _restore_object(self, row: ItemRow, item_dir: Path, upstream_wanted: bool) -> bytes:
        """An object scanned in its bucket has no mirror copy: it goes back to its key (verified by reading
        it back), then its sha256 is allowlisted. intent -> placed (nothing local) -> upstream_restored -> done."""
        if not upstream_wanted:
            raise QuarantineError(
                f"item {row.id} came from the bucket and has no mirror copy",
                hint="restore it upstream (without --no-upstream), or a local copy with --to PATH",
            )
        if sha256_file(item_dir / DATA) != row.sha256:
            raise QuarantineError(f"item {row.id}: the quarantined bytes do not match their recorded sha256; refusing")
        upstream = self.upstreams.get(row.remote, direct=True)  # type: ignore[arg-type]
        self.ledger.begin()
        for move in self.ledger.unfinished_moves(row.id):
            self.ledger.set_step(move.id, Step.ROLLED_BACK, note="superseded by a restore")
        move_id = self.ledger.start_move(row.id, MoveKind.RESTORE, None, "bucket")
        self.ledger.set_item_state(row.id, ItemState.RESTORING)
        self.ledger.commit()
        checkpoint("restore:intent")
        self._step(move_id, Step.PLACED, "restore")
        try:
            self._finish_restore(row.id, move_id, Step.PLACED, upstream)
        except MirrorScanError as err:
            raise UpstreamRestorePending(
                f"putting {row.remote}/{row.key} back failed: {str(err).splitlines()[0]}",
                hint="nothing is lost: a running watch daemon retries it with backoff, and so does every "
                "mirror-scan command that writes state",
            ) from None
        return file_key(row)

    def _restore_by_link(self, item_id: str, move_id: int, place: Place, meta: dict[str, Any]) -> str:
        """Temp beside the target, verified, then hard-linked to the target (fails if anything appeared
        there: never overwrites). Returns 'direct' if the filesystem turns out to have no hard links."""
        tmp = restore_tmp_name(place.name)
        self._write_verified(item_id, place, tmp, meta)
        self._step(move_id, Step.COPIED, "restore")
        try:
            os.link(tmp, place.name, src_dir_fd=place.dirfd, dst_dir_fd=place.dirfd, follow_symlinks=False)
        except OSError as err:
            place.unlink(tmp)
            if err.errno in LINK_UNSUPPORTED:
                self.ledger.set_step(move_id, Step.INTENT, note="no hard links here: writing the target directly")
                method = self.ledger.move(move_id).method or "link"  # type: ignore[union-attr]
                self.ledger.set_move_method(move_id, method.replace("link", "direct", 1))
                self.ledger.commit()
                return "direct"
            raise QuarantineError(f"cannot place {display_path(place.path)}: {err.strerror}") from None
        place.unlink(tmp)
        place.fsync_dir()
        return "link"

    def _write_verified(self, item_id: str, place: Place, name: bytes, meta: dict[str, Any]) -> None:
        """O_EXCL write of `name` in the place's directory (never an existing file), fsynced, verified. A crash
        mid-write leaves a leading part of our bytes, which recovery recognises and removes."""
        source = os.open(self.items / item_id / DATA, os.O_RDONLY | os.O_CLOEXEC)
        try:
            written = _copy_to_new(source, name, meta.get("mode", 0o644) & 0o777, dir_fd=place.dirfd)
        finally:
            os.close(source)
        if written != meta["sha256"] or place.sha256(name) != meta["sha256"]:
            place.unlink(name)
            raise QuarantineError(f"copy to {display_path(place.path)} did not verify; nothing restored")
        mtime = meta.get("mtime_ns", time.time_ns())
        with contextlib.suppress(OSError):  # some mounts cannot set times; the bytes are what matters
            os.utime(name, ns=(mtime, mtime), dir_fd=place.dirfd, follow_symlinks=False)

    def _release_upload(self, row: ItemRow) -> bytes:
        """An upload rejected by the validator has no place to go back to: restoring it allowlists its
        sha256, so the uploader can upload it again and it is accepted."""
        self.ledger.allow(row.sha256, note=f"released upload-time rejection {row.id}")
        self._note_in_meta(row.id, ItemState.RESTORED, "released (allowlisted)")
        with self.ledger.transaction():
            self.ledger.set_item_state(row.id, ItemState.RESTORED)
            plan_undo(self.ledger, row.id)
        return b"(allowlisted: the upload can be made again)"

    def _finish_restore(self, item_id: str, move_id: int, step: str, upstream: Upstream | None) -> None:
        row = self.ledger.item(item_id)
        assert row is not None
        if step == Step.PLACED and upstream is not None and row.key:
            upstream.restore(self.items / item_id / DATA, row.key)
            self._step(move_id, Step.UPSTREAM_RESTORED, "restore")
        self.ledger.allow(row.sha256, note=f"restored from quarantine item {item_id}")
        self._note_in_meta(item_id, ItemState.RESTORED, "restored")
        self.ledger.set_item_state(item_id, ItemState.RESTORED)
        self.ledger.mark_action_by_sha(row.sha256, FileAction.RESTORED, only_if=FileAction.QUARANTINED)
        plan_undo(self.ledger, item_id)  # what moderation did is undone: same transaction as 'done'
        self._step(move_id, Step.DONE, "restore")

    # ------------------------------------------------------------------ recovery

    def pending_moves(self) -> list[MoveRow]:
        return self.ledger.unfinished_moves()

    def recover(self) -> list[str]:
        """Finish or roll back every unfinished move whose owner is gone (its item lock is free); moves a
        live process is working on are left to it. Returns one line per move handled."""
        notes = []
        for move in self.pending_moves():
            try:
                with self.item_lock(move.item):
                    current = self.ledger.move(move.id)
                    if current is None or current.step in (Step.DONE, Step.ROLLED_BACK):
                        continue  # finished by its owner since we listed it
                    notes.append(self._recover(current))
            except ItemBusy:
                continue
            except MirrorScanError as err:
                notes.append(f"{move.item}: {err}")
        self._sweep_temp_files()
        self.ledger.commit()
        return [n for n in notes if n]

    def _recover(self, move: MoveRow) -> str:
        item_dir = self.items / move.item
        if move.kind == MoveKind.QUARANTINE:
            return self._recover_quarantine(move.id, move.item, item_dir, move.step)
        return self._recover_restore(move, item_dir)

    def _recover_quarantine(self, move_id: int, item_id: str, item_dir: Path, step: str) -> str:
        row = self.ledger.item(item_id)
        if row is None:
            self._step(move_id, Step.ROLLED_BACK, "recover", note="no index row")
            return f"{item_id}: nothing to recover"
        sha256 = row.sha256
        if step in (Step.INTENT, Step.COPIED):
            original_ok = bool(row.original) and self._original_holds(row)
            placed_ok = (item_dir / DATA).is_file() and sha256_file(item_dir / DATA) == sha256
            if original_ok or not placed_ok:
                self._rollback_quarantine(item_id, item_dir, move_id, f"interrupted at {step}; rolled back")
                return f"{item_id}: quarantine interrupted at '{step}', rolled back (original untouched)"
            step = Step.PLACED  # the original is gone but verified bytes are placed: never delete the last copy
        if step == Step.PLACED and (item_dir / DATA).is_file() and sha256_file(item_dir / DATA) != sha256:
            self.ledger.set_item_state(item_id, ItemState.DAMAGED)
            self._step(move_id, Step.ROLLED_BACK, "recover", note="quarantined bytes do not verify; original kept")
            return f"{item_id}: quarantined bytes do not verify; original left in place"
        was = row.state
        state = self._finish_quarantine(item_id, move_id, step)
        if state == ItemState.UPSTREAM_PENDING:
            return "" if was == ItemState.UPSTREAM_PENDING else f"{item_id}: upstream removal pending (retried)"
        return f"{item_id}: quarantine finished (was at '{step}')"

    def _recover_restore(self, move: MoveRow, item_dir: Path) -> str:
        item_id, step, target = move.item, move.step, move.target
        row = self.ledger.item(item_id)
        if row is not None and move.method == "bucket":
            return self._recover_object_restore(move, row)
        if row is None or target is None:
            self._step(move.id, Step.ROLLED_BACK, "recover", note="no index row")
            return f"{item_id}: nothing to recover"
        try:
            place = self._target_place(row, None if target == row.original else target, create_parents=False)
        except MissingParent:
            place = None  # its directory is gone: nothing of ours can be there
        except UnsafePath as err:
            # A directory on the way was swapped for a link: never follow it, never call the restore done.
            log.warning("quarantine item %s: the restore target %s: %s", item_id, display_path(target), err)
            place = None
        with place or contextlib.nullcontext():
            placed = place is not None and self._clean_restore_leftovers(move, place, item_dir, row.sha256)
        if step in (Step.INTENT, Step.COPIED) and not placed:
            self.ledger.set_item_state(item_id, ItemState.QUARANTINED)
            self._step(move.id, Step.ROLLED_BACK, "recover", note=f"interrupted at {step}")
            return f"{item_id}: restore interrupted at '{step}', rolled back (still quarantined)"
        upstream = None
        wanted = NO_UPSTREAM not in (move.method or "")
        if wanted and row.remote and row.key and step != Step.UPSTREAM_RESTORED and target == row.original:
            upstream = self.upstreams.get(row.remote)
        try:
            self._finish_restore(
                item_id, move.id, Step.PLACED if step in (Step.INTENT, Step.COPIED) else step, upstream
            )
        except UpstreamUnavailable:
            return ""
        return f"{item_id}: restore interrupted at '{step}', finished"

    def _clean_restore_leftovers(self, move: MoveRow, place: Place, item_dir: Path, sha256: str) -> bool:
        """Remove an interrupted restore's temp file (and, for a direct write, its partial target); True if
        the target holds the item's bytes."""
        tmp = restore_tmp_name(place.name)
        if place.exists(tmp):
            place.unlink(tmp)
        if place.sha256() == sha256:
            return True
        if (move.method or "").startswith("direct") and place.exists() and _is_prefix_of(place, item_dir / DATA):
            place.unlink()  # our own interrupted O_EXCL write: never leave a partial object behind
            place.fsync_dir()
        return False

    def _recover_object_restore(self, move: MoveRow, row: ItemRow) -> str:
        if move.step == Step.INTENT:  # nothing was put back yet
            self.ledger.set_item_state(row.id, ItemState.QUARANTINED)
            self._step(move.id, Step.ROLLED_BACK, "recover", note="interrupted at intent")
            return f"{row.id}: restore interrupted at 'intent', rolled back (still quarantined)"
        upstream = self.upstreams.get(row.remote, direct=True) if move.step == Step.PLACED else None  # type: ignore[arg-type]
        try:
            self._finish_restore(row.id, move.id, move.step, upstream)
        except UpstreamUnavailable:
            return ""
        return f"{row.id}: restore interrupted at '{move.step}', finished"

    def _sweep_temp_files(self) -> None:
        """Temp files of moves that no longer exist (e.g. a state database restored from backup)."""
        active = {move.item for move in self.pending_moves()}
        for item_dir in self.items.iterdir():
            if item_dir.name in active:
                continue
            try:
                with self.item_lock(item_dir.name):
                    for name in (TMP_DATA, TMP_META):
                        if (item_dir / name).exists() and not (item_dir / DATA).exists():
                            if not (item_dir / META).exists():
                                (item_dir / name).unlink()
                                log.info("removed leftover %s in %s", name, item_dir.name)
                    if item_dir.exists() and not any(item_dir.iterdir()):
                        item_dir.rmdir()
            except (ItemBusy, UnsafePath):
                continue

    # ------------------------------------------------------------------ index

    def _index(self, meta: dict[str, Any]) -> None:
        self.ledger.insert_item(
            {
                "id": meta["id"],
                "dir": os.fsencode(self.items / meta["id"]),
                "sha256": meta["sha256"],
                "size": meta["size"],
                "original": os.path.join(_unb64(meta["mirror_root_b64"]), _unb64(meta["original_b64"]))
                if meta["original_b64"]
                else b"",
                "mirror_root": _unb64(meta["mirror_root_b64"]),
                "remote": meta.get("remote"),
                "key": meta.get("key"),
                "state": meta["state"],
                "reason": json.dumps(meta.get("verdict")),
                "created": dt.datetime.fromisoformat(meta["quarantined_at"]).timestamp(),
                "updated": time.time(),
            },
        )

    def reindex(self, mirror_root: bytes | None = None) -> tuple[int, list[str]]:
        """Rebuild the index from the metadata files after losing the state database. Items the ledger
        already knows are left as the ledger records them (it is the authority; a metadata file that
        disagrees is reported, never imported); a new item is imported only if it passes the checks a
        restore makes: a stored path inside its root, bytes that hash to the recorded sha256, a known
        state, and (with `mirror_root`) that root. Returns (items indexed, problems)."""
        count, problems = 0, []
        for item_dir in sorted(self.items.iterdir()):
            try:
                meta = self.read_meta(item_dir.name)
                if meta.get("format") != META_FORMAT or meta.get("id") != item_dir.name:
                    raise QuarantineError("not a mirror-scan quarantine item")
                known = self.ledger.item(item_dir.name)
                if known is not None:
                    differing = meta_disagreement(known, meta)
                    if differing:
                        problems.append(
                            f"{item_dir.name}: its metadata file disagrees with the ledger on "
                            f"{', '.join(differing)}; the ledger's record is kept"
                        )
                    elif (
                        isinstance(meta.get("attribution"), dict)
                        and self.ledger.follow_ups.attribution(known.id) is None
                    ):
                        with self.ledger.transaction():  # filled in where the ledger lost it, never replaced
                            self.ledger.follow_ups.put_attribution(known.id, meta["attribution"])
                    continue
                self._check_importable(item_dir, meta, mirror_root)
                with self.ledger.transaction():
                    self._index(meta)
                    if isinstance(meta.get("attribution"), dict):  # the item's own copy rebuilds the ledger's
                        self.ledger.follow_ups.put_attribution(meta["id"], meta["attribution"])
                count += 1
            except (MirrorScanError, KeyError, ValueError, TypeError) as err:
                problems.append(f"{item_dir.name}: {err}")
        return count, problems

    def _check_importable(self, item_dir: Path, meta: dict[str, Any], mirror_root: bytes | None) -> None:
        claims = _claims(meta)
        if meta.get("state") not in {str(s) for s in ItemState}:
            raise QuarantineError(f"unknown state {meta.get('state')!r}; not imported")
        if not isinstance(claims["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", claims["sha256"]):
            raise QuarantineError("no valid sha256; not imported")
        if claims["original"]:
            if not os.path.isabs(claims["mirror_root"]):
                raise QuarantineError("its mirror root is not an absolute path; not imported")
            check_relative(_unb64(meta["original_b64"]))
            if mirror_root is not None and os.path.realpath(claims["mirror_root"]) != os.path.realpath(mirror_root):
                raise QuarantineError(
                    f"it came from {display_path(claims['mirror_root'])}, not the mirror given; not imported"
                )
        if claims["key"] is not None:
            check_relative(os.fsencode(claims["key"]))
        data = item_dir / DATA
        if meta["state"] == ItemState.PURGED:
            if data.exists():
                raise QuarantineError("marked purged but its bytes are still there; not imported")
        elif not data.is_file() or sha256_file(data) != claims["sha256"]:
            raise QuarantineError("its bytes are missing or do not hash to its recorded sha256; not imported")

    def entries(self, since: float | None = None, states: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
        for row in self.ledger.items(since, states):
            yield {
                "id": row.id,
                "quarantined_at": dt.datetime.fromtimestamp(row.created, dt.UTC).isoformat(timespec="seconds"),
                "original": display_path(file_key(row)) or "(rejected upload)",
                "state": row.state,
                "reason": json.loads(row.reason) if row.reason else None,
                "sha256": row.sha256,
                "size": row.size,
                "remote": row.remote,
                "key": row.key,
                "seen_count": row.seen_count,
            }

    def record_pictrs_purge(self, item_id: str, alias: str, note: str) -> None:
        """Write down what was purged from pict-rs (irreversible), in the item's own metadata."""
        with self.item_lock(item_id, wait_s=5.0):
            meta = self.read_meta(item_id)
            meta.setdefault("pictrs_purged", []).append({"alias": alias, "result": note, "at": _now_iso()})
            meta.setdefault("history", []).append({"state": f"pict-rs purge of {alias}: {note}", "at": _now_iso()})
            self._write_meta(self.items / item_id, meta)

    def purge(self, item_id: str) -> None:
        """Delete an item's bytes permanently; keep a tombstone (metadata, state 'purged')."""
        with self.item_lock(item_id, wait_s=5.0):
            row = self.ledger.item(item_id)
            if row is None or row.state not in (*HELD_STATES, ItemState.RESTORED):
                raise QuarantineError(f"item {item_id} cannot be purged (it is {row.state if row else 'unknown'})")
            if row.state in (ItemState.QUARANTINING, ItemState.RESTORING):
                raise QuarantineError(f"item {item_id} is being moved right now; purge it afterwards")
            with self.ledger.transaction():
                for move in self.ledger.unfinished_moves(item_id):
                    # A removal pending upstream of a file the operator purges: the mirror file stays.
                    self.ledger.set_step(move.id, Step.ROLLED_BACK, note="superseded by a purge")
            (self.items / item_id / DATA).unlink(missing_ok=True)
            self._note_in_meta(item_id, ItemState.PURGED, "purged")
            with self.ledger.transaction():
                self.ledger.set_item_state(item_id, ItemState.PURGED)


def _claims(meta: dict[str, Any]) -> dict[str, Any]:
    """What a metadata file says about the facts the ledger also records (ValueError if unusable)."""
    try:
        root = _unb64(meta.get("mirror_root_b64", ""))
        original = _unb64(meta["original_b64"]) if meta.get("original_b64") else b""
        return {
            "id": meta.get("id"),
            "sha256": meta.get("sha256"),
            "size": meta.get("size"),
            "remote": meta.get("remote"),
            "key": meta.get("key"),
            "mirror_root": root,
            "original": os.path.join(root, original) if original else b"",
            "origin": meta.get("origin"),
        }
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"metadata is unusable ({err})") from None


def meta_disagreement(row: ItemRow, meta: dict[str, Any]) -> list[str]:
    """The facts on which an item's metadata file and the ledger (the authority) differ; every fact when
    the metadata cannot be read as such."""
    recorded = {
        "id": row.id,
        "sha256": row.sha256,
        "size": row.size,
        "remote": row.remote,
        "key": row.key,
        "mirror_root": row.mirror_root,
        "original": row.original,
        "origin": item_origin(row),
    }
    try:
        claimed = _claims(meta)
    except ValueError as err:
        return [str(err)]
    return [name for name in recorded if claimed[name] != recorded[name]]


def item_origin(row: ItemRow) -> str | None:
    """Where an item came from, by the ledger: None (a mirror file), "bucket" (an object scanned in its
    bucket: no local original, a key) or "upload" (rejected at validation: neither)."""
    if row.original:
        return None
    return "bucket" if row.key else "upload"


def file_key(row: ItemRow) -> bytes:
    """The ledger's file row of an item: its mirror path, or NAME:bucket/key for an object scanned in its
    bucket (which has no local original), or b"" for an upload rejected at validation."""
    if row.original:
        return row.original
    if row.remote and row.key:
        return f"{row.remote}/{row.key}".encode()
    return b""


def _check_item_id(item_id: str) -> None:
    """An item id names one directory under items/ (and one lock file): a single plain path component."""
    try:
        parts = check_relative(item_id.encode())
    except UnsafePath:
        parts = []
    if len(parts) != 1:
        raise QuarantineError(f"{item_id!r} is not a quarantine item id", hint="see `mirror-scan quarantine list`")


def restore_tmp_name(name: bytes) -> bytes:
    return b"." + name + RESTORE_TMP_SUFFIX.encode()
