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

import contextlib
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mirror_scan.atomic import fsync_dir
from mirror_scan.errors import MirrorScanError
from mirror_scan.faults import checkpoint
from mirror_scan.hashing import md5_file, sha256_bytes, sha256_file
from mirror_scan.kinds import FileAction, ItemState, MoveKind, Step
from mirror_scan.store.item_index import ItemIndex
from mirror_scan.store.items import (
    DATA,
    META,
    NO_LOCAL_ORIGINAL,
    TMP_DATA,
    TMP_META,
    ItemBusy,
    QuarantineError,
    _b64,
    _check_item_id,
    _copy_to_new,
    _item_meta,
    _new_item_id,
    _now_iso,
    _write_private,
    file_key,
    item_origin,
)
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.paths import (
    MissingParent,
    UnsafePath,
    reach,
    relative_to,
)
from mirror_scan.store.recovery import Recovery
from mirror_scan.store.restore import Restores
from mirror_scan.store.rows import ItemRow, display_path
from mirror_scan.store.upstream import Upstream, Upstreams, UpstreamUnavailable

log = logging.getLogger(__name__)


class Quarantine(Restores, Recovery, ItemIndex):
    """The evidence store: quarantine moves here; restore (restore.py), recovery (recovery.py) and the
    index (item_index.py) are its other halves."""

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
