"""The quarantine move: a flagged file (or an object scanned in its bucket, or an upload the validator
rejected) into the quarantine, journalled so that a `kill -9` at any step is finished or rolled back by
recovery, and the last copy of the bytes is never deleted:

    intent -> copied (temp written, fsynced, re-read and verified) -> placed (metadata written, renamed
    into place, directory fsynced) -> [upstream_removed] -> local_removed -> done

The original is removed only after the quarantined bytes are verified, and only if it still holds the
bytes that were flagged. The item's state changes through the lifecycle (lifecycle.py), its steps and
metadata through the journal (journal.py)."""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any

from mirror_scan.atomic import fsync_dir
from mirror_scan.errors import MirrorScanError
from mirror_scan.faults import checkpoint
from mirror_scan.hashing import sha256_bytes
from mirror_scan.kinds import ItemEvent, ItemState, MoveKind, Step
from mirror_scan.store.companions import COMPANIONS
from mirror_scan.store.content import SEALED_DATA
from mirror_scan.store.items import (
    DATA,
    META,
    NO_LOCAL_ORIGINAL,
    TMP_DATA,
    TMP_META,
    ItemBusy,
    QuarantineError,
    b64,
    item_meta,
    item_origin,
    new_item_id,
)
from mirror_scan.store.journal import Journal
from mirror_scan.store.lifecycle import Lifecycle
from mirror_scan.store.paths import UnsafePath, reach, relative_to
from mirror_scan.store.rows import ItemRow, display_path
from mirror_scan.store.upload_objects import UploadObjects, remove_if_holds
from mirror_scan.store.upstream import Upstream, Upstreams, UpstreamUnavailable

log = logging.getLogger(__name__)

# An object seen later joins an item still held: with its move while that runs, by a move of its own after.
TAKING_STATES = (ItemState.QUARANTINING, ItemState.UPSTREAM_PENDING, ItemState.QUARANTINED)


@dataclass(frozen=True)
class Moved:
    """What a quarantine move did: the item that holds the bytes, and its state (quarantined, or
    upstream_pending while the removal upstream waits)."""

    item_id: str
    state: ItemState


class Mover:
    def __init__(self, journal: Journal, lifecycle: Lifecycle, upstreams: Upstreams, objects: UploadObjects) -> None:
        self.journal = journal
        self.lifecycle = lifecycle
        self.ledger = journal.ledger
        self.upstreams = upstreams
        self.objects = objects  # the upload's other objects (variants, motion still): its companions

    @property
    def upstream(self) -> Upstream | None:
        """The remote new quarantine moves remove from (--remote), if any."""
        return self.upstreams.get(self.upstreams.default) if self.upstreams.default else None

    # ------------------------------------------------------------------ a mirror file

    def quarantine(self, source: bytes, mirror_root: bytes, sha256: str, evidence: dict[str, Any]) -> Moved:
        """Move `source` (under `mirror_root`) into quarantine if it still holds the bytes `sha256`.
        Raises QuarantineError (nothing moved) if it cannot be done safely. A copy of an item already
        quarantined from this very path (a pull brought it back) is removed again under that item, not made
        into a second one."""
        returned = self.drop_returned_copy(source, mirror_root, sha256)
        if returned is not None:
            return Moved(returned, ItemState.QUARANTINED)
        taken = self.take_companion(source, mirror_root)  # a thumbnail of an upload held already
        if taken is not None:
            return Moved(taken, ItemState(self.ledger.item(taken).state))  # type: ignore[union-attr]
        return self._quarantine_new(source, mirror_root, sha256, evidence)

    def take_back_returned(
        self, source: bytes, mirror_root: bytes, sha256: str, evidence: dict[str, Any]
    ) -> Moved | None:
        """A file quarantined from this path before, here again with the same bytes (the ledger kept the
        earlier action): a copy that came back, never left public. When the remote new moves remove from
        (--remote) holds those bytes at the item's key again (uploaded again there), the copy is moved as a
        new item, so the object leaves the bucket again (retried while it cannot); otherwise the copy is
        removed under its item (drop_returned_copy). Only while that item is quarantined, checked under its
        lock: a restored item's file is meant to be here, and a decision made before its restore (and its
        allowlisting) is not acted on. None when nothing was done."""
        item_id = self.ledger.latest_item_for(source)
        row = self.ledger.item(item_id) if item_id else None
        if row is None or row.mirror_root != mirror_root or row.sha256 != sha256:
            return None
        upstream = self.upstream
        if upstream is None or not row.key or row.remote != upstream.remote:
            dropped = self.drop_returned_copy(source, mirror_root, sha256)
            return None if dropped is None else Moved(dropped, ItemState.QUARANTINED)
        try:
            back = upstream.holds(row.key, row.sha256, self.journal.content.md5(row))
        except MirrorScanError:
            back = True  # the bucket cannot say: a move of its own settles it (upstream pending while it cannot)
        if not back:  # gone (or other bytes there: another object, pulled and scanned as such)
            dropped = self.drop_returned_copy(source, mirror_root, sha256)
            return None if dropped is None else Moved(dropped, ItemState.QUARANTINED)
        try:
            with self.journal.item_lock(row.id, wait_s=30.0):  # no restore of that item begins meanwhile
                current = self.ledger.item(row.id)
                if current is None or current.state != ItemState.QUARANTINED:
                    return None
                return self._quarantine_new(source, mirror_root, sha256, evidence)
        except ItemBusy:
            return None  # its item is being moved: the next scan comes back to it

    def _quarantine_new(self, source: bytes, mirror_root: bytes, sha256: str, evidence: dict[str, Any]) -> Moved:
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
            upload, _ = self.objects.look_up(os.fsdecode(rel))  # before any lock: a database is asked
            item_id = new_item_id(sha256)
            with self.journal.item_lock(item_id):
                return self._quarantine_locked(fd, st, item_id, source, mirror_root, rel, sha256, evidence, upload)
        finally:
            os.close(fd)

    def _quarantine_locked(self, fd, st, item_id, source, mirror_root, rel, sha256, evidence, upload) -> Moved:
        item_dir = self.journal.item_dir(item_id)
        upstream = self.upstream
        key = os.fsdecode(rel) if upstream else None
        self.ledger.begin()
        owner = self.ledger.active_item_for(source)
        if owner is not None:
            self.ledger.commit()
            raise QuarantineError(f"{display_path(source)} is already being moved (quarantine item {owner})")
        remote = upstream.remote if upstream else None
        move_id = self._intent(item_id, sha256, st.st_size, source, mirror_root, remote, key, evidence, upload)

        item_dir.mkdir(mode=0o700)
        fsync_dir(self.journal.items)
        written = self.journal.content.write(fd, None, item_dir / TMP_DATA)  # sealed when seal_to is set
        if written.sha256 != sha256 or not self.journal.content.written_ok(item_dir / TMP_DATA, written):
            self.rollback(item_id, move_id, "the file changed since it was scanned")
            raise QuarantineError(
                f"{display_path(source)} changed since it was scanned; not quarantined", hint="scan it again"
            )
        with self.ledger.transaction():
            self.journal.content.record(item_id, written)
        self._copied(item_id, move_id)
        meta = item_meta(
            item_id,
            sha256,
            st.st_size,
            ItemState.QUARANTINING,
            mtime_ns=st.st_mtime_ns,
            mode=stat.S_IMODE(st.st_mode),
            original=display_path(os.fsencode(rel)),
            original_b64=b64(os.fsencode(rel)),
            mirror_root=display_path(mirror_root),
            mirror_root_b64=b64(mirror_root),
            remote=remote,
            key=key,
            **evidence,
        )
        return self._place(item_id, move_id, meta)

    # ------------------------------------------------------------------ an object scanned in its bucket

    def quarantine_object(self, remote: str, key: str, sha256: str, evidence: dict[str, Any]) -> Moved:
        """Quarantine an object that has no mirror copy (scanned in its bucket): read it from the remote
        into the item, verify it holds the bytes that were scanned, then remove it upstream. The same
        journal as a mirrored file (intent -> copied -> placed -> upstream_removed -> done); there is no
        local original."""
        if not key or "\x00" in key:  # any other key is an S3 key: it names no local path
            raise QuarantineError(f"{remote}: {key!r} is not an object key")
        upstream = self.upstreams.get(remote, direct=True)
        upload, _ = self.objects.look_up(key)  # what it could not answer now is asked again (`settle`)
        item_id = new_item_id(sha256)
        with self.journal.item_lock(item_id):
            return self._quarantine_object_locked(upstream, remote, key, sha256, evidence, item_id, upload)

    def take_back_returned_object(self, remote: str, key: str, sha256: str, evidence: dict[str, Any]) -> Moved | None:
        """An object scanned in its bucket, quarantined from its key before and listed there again with the
        same bytes (uploaded again): quarantined as a new item, only while the earlier item is quarantined,
        checked under its lock (a restored object is meant to be there). None when nothing was done."""
        item_id = self.ledger.latest_item_for_object(remote, key)
        if item_id is None:
            return None
        try:
            with self.journal.item_lock(item_id, wait_s=30.0):
                row = self.ledger.item(item_id)
                if row is None or row.state != ItemState.QUARANTINED or row.sha256 != sha256:
                    return None
                return self.quarantine_object(remote, key, sha256, evidence)
        except ItemBusy:
            return None  # its item is being moved: the next scan comes back to it

    def _quarantine_object_locked(self, upstream, remote, key, sha256, evidence, item_id, upload) -> Moved:
        item_dir = self.journal.item_dir(item_id)
        self.ledger.begin()
        owner = self.ledger.active_item_for_object(remote, key)
        if owner is not None:
            self.ledger.commit()
            raise QuarantineError(f"{remote}/{key} is already being moved (quarantine item {owner})")
        move_id = self._intent(item_id, sha256, 0, b"", b"", remote, key, evidence, upload)

        item_dir.mkdir(mode=0o700)
        fsync_dir(self.journal.items)
        try:
            data = upstream.read(key)
        except MirrorScanError as err:
            self.rollback(item_id, move_id, "the object could not be read")
            raise QuarantineError(f"{remote}/{key} could not be read: {str(err).splitlines()[0]}") from None
        written = self.journal.content.write(None, data, item_dir / TMP_DATA)
        if written.sha256 != sha256 or not self.journal.content.written_ok(item_dir / TMP_DATA, written):
            self.rollback(item_id, move_id, "the object changed since it was scanned")
            raise QuarantineError(f"{remote}/{key} changed since it was scanned; not quarantined", hint="scan it again")
        with self.ledger.transaction():
            self.ledger.set_item_size(item_id, len(data))
            self.journal.content.record(item_id, written)
        self._copied(item_id, move_id)
        meta = item_meta(
            item_id,
            sha256,
            len(data),
            ItemState.QUARANTINING,
            origin="bucket",
            **NO_LOCAL_ORIGINAL,
            remote=remote,
            key=key,
            **evidence,
        )
        return self._place(item_id, move_id, meta)

    # ------------------------------------------------------------------ the steps both share

    def _intent(self, item_id, sha256, size, original, mirror_root, remote, key, evidence, upload) -> int:
        """The item's index row, its move's intent, its attribution follow-up and the other objects of its
        upload (listed), in the caller's open transaction, committed together: the first durable step of a
        quarantine."""
        self.lifecycle.begin(
            {
                "id": item_id,
                "dir": os.fsencode(self.journal.item_dir(item_id)),
                "sha256": sha256,
                "size": size,
                "original": original,
                "mirror_root": mirror_root,
                "remote": remote,
                "key": key,
                "reason": _reason(evidence),
            },
            ItemEvent.QUARANTINE_BEGUN,
        )
        self.objects.record(item_id, upload, mirror_root, key or (os.fsdecode(relative_to(mirror_root, original))
                                                                 if original else None))  # fmt: skip
        move_id = self.ledger.start_move(item_id, MoveKind.QUARANTINE)
        self.ledger.commit()
        checkpoint("quarantine:intent")
        return move_id

    def _copied(self, item_id: str, move_id: int) -> None:
        """The original's bytes verified in the item: 'copied', then the companions recorded at the intent
        copied in too (a kill before 'placed' rolls all of it back)."""
        self.journal.step(move_id, Step.COPIED, "quarantine")
        self.objects.gather(self.ledger.item(item_id), look=False)  # type: ignore[arg-type]
        checkpoint("quarantine:companions")

    def _place(self, item_id: str, move_id: int, meta: dict[str, Any]) -> Moved:
        """Verified bytes (the temp file) become the item: metadata, rename, fsync, 'placed'; then finish."""
        item_dir = self.journal.item_dir(item_id)
        row = self.ledger.item(item_id)
        assert row is not None
        meta.update(_content_meta(row.md5, row.sealed_to, row.sealed_sha256))
        self.journal.write_meta(item_id, meta)
        os.rename(item_dir / TMP_DATA, self.journal.content.held_path(row))
        fsync_dir(item_dir)
        self.journal.step(move_id, Step.PLACED, "quarantine")
        return Moved(item_id, self.finish(item_id, move_id, Step.PLACED))

    def finish(self, item_id: str, move_id: int, step: str) -> ItemState:
        """Finish a placed move: every object of the upload removed upstream, then from the mirror. Objects
        pict-rs made since (a variant of the still present original) are taken into the item first. Returns
        the item's state."""
        row = self.ledger.item(item_id)
        assert row is not None
        if step == Step.PLACED:
            self.objects.gather(row)  # what it could not find or copy now is looked for later (`settle`)
            evidence = lambda: self._evidence_keys(row)  # noqa: E731
            if row.remote and row.key:
                self.objects.recheck(row)
                if not (self._remove_upstream(row) and self.objects.remove_upstream(row, evidence)):
                    # Bytes are verified in the quarantine; the mirror files stay until upstream is done.
                    # The move waits at 'placed'; the daemon retries it with backoff, every command at start.
                    if row.state != ItemState.UPSTREAM_PENDING:
                        self.lifecycle.apply(item_id, ItemEvent.UPSTREAM_WAITS)
                    return ItemState.UPSTREAM_PENDING
                self.journal.step(move_id, Step.UPSTREAM_REMOVED, "quarantine")
            step = Step.UPSTREAM_REMOVED
        if step == Step.UPSTREAM_REMOVED:
            self.remove_original(row)
            self.objects.remove_local(row)
            self.journal.step(move_id, Step.LOCAL_REMOVED, "quarantine")
        self.lifecycle.apply(item_id, ItemEvent.QUARANTINED, step=(move_id, Step.DONE, "quarantine"))
        return ItemState.QUARANTINED

    def settle(self, item_id: str) -> bool:
        """A quarantined item's companions still to find, copy or remove (pict-rs's repo or the bucket could
        not answer at its move), looked after under its lock; True when none is left."""
        with self.journal.item_lock(item_id):
            row = self.ledger.item(item_id)
            if row is None or row.state != ItemState.QUARANTINED:
                return True
            return self.objects.settle(row, lambda: self._evidence_keys(row))

    def rollback(self, item_id: str, move_id: int, why: str, kind: str = "quarantine") -> None:
        """A quarantine stopped before its bytes were safe: the temp files go, the item is forgotten (the
        original was never touched)."""
        item_dir = self.journal.item_dir(item_id)
        for name in (TMP_DATA, TMP_META, META, DATA, SEALED_DATA):
            (item_dir / name).unlink(missing_ok=True)
        companions = item_dir / COMPANIONS  # copies of the upload's other objects (never removed anywhere yet)
        if companions.is_dir():
            for copy in companions.iterdir():
                copy.unlink()
            companions.rmdir()
        if item_dir.exists():
            item_dir.rmdir()
            fsync_dir(self.journal.items)
        self.lifecycle.apply(item_id, ItemEvent.QUARANTINE_ROLLED_BACK, step=(move_id, Step.ROLLED_BACK, kind),
                             note=why)  # fmt: skip

    # ------------------------------------------------------------------ removals

    def _remove_upstream(self, row: ItemRow) -> bool:
        """Delete the object upstream; False (item left 'upstream pending') when it cannot be done now."""
        try:
            upstream = self.upstreams.get(row.remote, direct=item_origin(row) == "bucket")  # type: ignore[arg-type]
            md5 = self.journal.content.md5(row)
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
            with self.journal.item_lock(item_id, wait_s=30.0):
                row = self.ledger.item(item_id)
                if row is None or row.state != ItemState.QUARANTINED or not self.remove_original(row):
                    return None
        except ItemBusy:
            return None  # still being moved after 30 s: the next pull or scan comes back to it
        log.info("%s: a copy of quarantine item %s came back into the mirror; removed again", display_path(source),
                 item_id)  # fmt: skip
        return item_id

    def remove_original(self, row: ItemRow) -> bool:
        """Unlink the original only if it still holds the quarantined bytes (never a newer file), reached
        from the mirror root without following links (never a file outside the mirror). True if unlinked."""
        if not row.original:
            return False  # an object scanned in its bucket: no mirror copy
        try:
            rel = relative_to(row.mirror_root, row.original)
        except UnsafePath as err:
            log.warning("%s: %s; left in place", display_path(row.original), err)
            return False
        return remove_if_holds(row.mirror_root, rel, row.sha256)

    def original_holds(self, row: ItemRow) -> bool:
        """The original is still in the mirror (reached without following links) with the item's bytes."""
        try:
            with reach(row.mirror_root, relative_to(row.mirror_root, row.original)) as place:
                return place.sha256() == row.sha256
        except UnsafePath:
            return False

    # ------------------------------------------------------------------ an object of a held upload, seen later

    def take_companion(self, path: bytes, mirror_root: bytes) -> str | None:
        """A file that is an object of an upload held in quarantine (a variant pict-rs made of it, its still)
        is taken into that item, never scored as a stranger: copied and verified (from the bucket, what
        pict-rs serves), then removed upstream and from the mirror (a move of its own, `adopt`, when the item
        is done; with the item's own move while that runs). Returns the item's id when taken; None when it is
        not such an object, or when the file at that key holds other bytes than the item's (another file:
        scored as any other)."""
        try:
            key = os.fsdecode(relative_to(mirror_root, path))
        except UnsafePath:
            return None
        found = self.objects.held_companion(key)
        if found is None:
            return None
        item_id, record, role, variant = found
        try:
            with self.journal.item_lock(item_id, wait_s=30.0):
                row = self.ledger.item(item_id)
                if row is None or row.state not in TAKING_STATES or (row.original and row.mirror_root != mirror_root):
                    return None
                # Out of the bucket with the item already: only this mirror copy is to go.
                method = "local" if record is not None and record.state == "taken" else None
                with self.ledger.transaction():
                    self.objects.record_one(row, key, role, variant)
                    move_id = self.ledger.start_move(item_id, MoveKind.ADOPT, os.fsencode(key), method) \
                        if row.state == ItemState.QUARANTINED else None  # fmt: skip
                checkpoint("adopt:intent")
                self.finish_adopt(row, key, move_id, Step.INTENT)
                held = next((o for o in self.ledger.objects.of(item_id) if o.key == key), None)
                if held is None or held.sha256 is None or not self._is_gone_or_held(row, key, held.sha256, move_id):
                    return None  # other bytes than the item's at that key: a file of its own, scored
                self.journal.note(item_id, f"took its {variant or role} {key} into the item (seen in the mirror)")
        except ItemBusy:
            return None  # being moved right now: the next scan or pull comes back to it
        log.info("%s: an object of the upload held as quarantine item %s (%s); taken into it", display_path(path),
                 item_id, variant or role)  # fmt: skip
        return item_id

    @staticmethod
    def _is_gone_or_held(row: ItemRow, key: str, sha256: str, move_id: int | None) -> bool:
        """The mirror file at `key` left with the item (removed), or holds the item's bytes and leaves with it
        (the item's own move, or a removal upstream that waits)."""
        try:
            with reach(row.mirror_root, os.fsencode(key)) as place:
                there = place.sha256()
        except UnsafePath:
            return False
        return there is None or there == sha256

    def finish_adopt(self, row: ItemRow, key: str, move_id: int | None, step: str) -> None:
        """Copy in (a companion missing before, back now, too), then (for a finished item: move_id) remove
        upstream and from the mirror; each part is idempotent, so recovery finishes an interrupted one from
        its step."""
        obj = next((o for o in self.ledger.objects.of(row.id) if o.key == key), None)
        if obj is not None and obj.state in ("listed", "missing"):
            self.objects.copy_in(row, obj)
        if move_id is None:  # the item's own move removes it with the rest
            return
        if step in (Step.INTENT, Step.COPIED):
            self.journal.step(move_id, Step.COPIED, "adopt")
            move = self.ledger.move(move_id)
            local_only = move is not None and move.method == "local"
            if not local_only and not self.objects.remove_upstream(row, lambda: self._evidence_keys(row), {key}):
                return  # retried by recovery, as a pending removal is
            self.journal.step(move_id, Step.UPSTREAM_REMOVED, "adopt")
            step = Step.UPSTREAM_REMOVED
        if step == Step.UPSTREAM_REMOVED:
            if obj is not None and obj.state == "taken" and obj.sha256 and row.original:
                remove_if_holds(row.mirror_root, key, obj.sha256)  # a copy of one the item holds already
            self.objects.remove_local(row, {key})
            self.journal.step(move_id, Step.LOCAL_REMOVED, "adopt")
        self.journal.step(move_id, Step.DONE, "adopt")

    # ------------------------------------------------------------------ an upload the validator rejected

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
        item_id = new_item_id(sha256)
        item_dir = self.journal.item_dir(item_id)
        with self.journal.item_lock(item_id):
            item_dir.mkdir(mode=0o700)
            try:
                written = self.journal.content.write(None, data, item_dir / TMP_DATA)
                if written.sha256 != sha256 or not self.journal.content.written_ok(item_dir / TMP_DATA, written):
                    raise QuarantineError("the kept upload did not verify")
                content = {"md5": written.md5, "sealed_to": written.sealed_to, "sealed_sha256": written.sealed_sha256}
                meta = item_meta(
                    item_id,
                    sha256,
                    len(data),
                    ItemState.QUARANTINED,
                    origin="upload",
                    **NO_LOCAL_ORIGINAL,
                    remote=None,
                    key=None,
                    **evidence,
                    **_content_meta(**content),
                )
                self.journal.write_meta(item_id, meta)
                os.rename(item_dir / TMP_DATA, item_dir / self.journal.content.final_name(written, DATA))
                fsync_dir(item_dir)
                fsync_dir(self.journal.items)
            except BaseException:
                for name in (TMP_DATA, TMP_META, META, DATA, SEALED_DATA):
                    (item_dir / name).unlink(missing_ok=True)
                item_dir.rmdir()
                raise
            with self.ledger.transaction():
                fields = {"id": item_id, "dir": os.fsencode(item_dir), "sha256": sha256, "size": len(data),
                          "original": b"", "mirror_root": b"", "remote": None, "key": None,
                          "reason": _reason(evidence), **content}  # fmt: skip
                self.lifecycle.begin(fields, ItemEvent.UPLOAD_KEPT)
            self.journal.sync_meta(item_id)
        return item_id


def _content_meta(md5: str | None, sealed_to: str | None, sealed_sha256: str | None) -> dict[str, Any]:
    """What meta.json says of how the item holds its bytes (journal.sync_meta keeps it in step)."""
    fields: dict[str, Any] = {"md5": md5} if md5 else {}
    if sealed_to:
        fields["sealed"] = {"to": sealed_to, "sha256": sealed_sha256}
    return fields


def _reason(evidence: dict[str, Any]) -> str:
    return json.dumps(evidence.get("verdict"))
