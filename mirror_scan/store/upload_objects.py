"""The companions of quarantine items (store/companions.py): found through pict-rs's repo, copied into the
item and verified before any of them leaves, removed from the bucket and the mirror with the original,
and put back with it. The mover, the restorer and recovery call these at their steps, so a companion
follows the item's journal: nothing of an upload is removed before all of it is safe in the item."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from pathlib import Path

from mirror_scan.atomic import fsync_dir
from mirror_scan.errors import MirrorScanError
from mirror_scan.store.companions import COMPANIONS, Companion, ItemObject, Upload, UploadSource
from mirror_scan.store.items import (
    LINK_UNSUPPORTED,
    PictrsSilent,
    QuarantineError,
    copy_to_new,
    item_origin,
    restore_tmp_name,
)
from mirror_scan.store.journal import Journal
from mirror_scan.store.paths import MissingParent, Place, UnsafePath, reach, relative_to
from mirror_scan.store.rows import ItemRow
from mirror_scan.store.sealing import Written
from mirror_scan.store.upstream import Upstream, UpstreamError, Upstreams, UpstreamUnavailable

log = logging.getLogger(__name__)

HELD_INDEX_TTL_S = 10.0  # how long the keys of held uploads are trusted before pict-rs's repo is asked again
LOOK_AGAIN_S = 60.0  # an item whose upload's objects could not be listed or copied is tried again after this


def pictrs_key(row: ItemRow) -> str | None:
    """The key pict-rs knows the item's original by: its key in the bucket, or its path under the mirror
    root (a filesystem store mirrored as it is); None for an upload rejected at validation."""
    if row.key:
        return row.key
    if row.original:
        return os.fsdecode(relative_to(row.mirror_root, row.original))
    return None


class UploadObjects:
    def __init__(self, journal: Journal, upstreams: Upstreams, source: UploadSource | None = None) -> None:
        self.journal = journal
        self.ledger = journal.ledger
        self.upstreams = upstreams
        self.source = source
        self._held_index: tuple[float, dict[str, tuple[str, object]]] = (0.0, {})
        self._asked: dict[str, float] = {}  # item -> when its upload's objects could last not be found

    # ------------------------------------------------------------------ finding them

    def look_up(self, key: str | None) -> tuple[Upload | None, bool]:
        """(the upload of a key in pict-rs's repo, answered): answered is False when a repo is configured and
        could not answer now (the item keeps looking: `settle`)."""
        if self.source is None or not key:
            return None, True
        self.ledger.commit()  # never hold the ledger's write lock while another database answers
        try:
            return self.source.upload_of(key), True
        except MirrorScanError as err:
            log.warning("pict-rs's repo cannot say which objects belong with %s now: %s", key, str(err).splitlines()[0])
            return None, False

    def record(self, row_id: str, upload: Upload | None, mirror_root: bytes, flagged: str | None) -> list[str]:
        """The upload's hash and companions on the item's record (state listed), in the caller's open
        transaction; returns the keys new to it. Every object of the upload but the flagged one: when a
        thumbnail was flagged, its original and the other variants are the companions."""
        if upload is None:
            return []
        self.ledger.objects.set_hash(row_id, upload.hash, list(upload.aliases))
        added = []
        objects = [Companion(upload.identifier, "original"), *upload.companions]
        for companion in (c for c in objects if c.key != flagged):
            path = os.path.join(mirror_root, os.fsencode(companion.key)) if mirror_root else b""
            if self.ledger.objects.add(row_id, companion.key, companion.role, companion.variant, path):
                added.append(companion.key)
        return added

    def record_one(self, row: ItemRow, key: str, role: str, variant: str | None) -> None:
        """One companion seen arriving, in the caller's open transaction."""
        path = os.path.join(row.mirror_root, os.fsencode(key)) if row.original else b""
        self.ledger.objects.add(row.id, key, role, variant, path)

    def gather(self, row: ItemRow, look: bool = True) -> bool:
        """Every companion the repo knows now (look=False: those recorded already), recorded, and every listed
        one copied into the item; the caller holds the item's lock. True when the item holds all of the
        upload pict-rs records (each held, or missing from the bucket and the mirror); False when the repo
        or the bucket could not answer now: the item is marked to keep looking (`settle`), and what it holds
        already leaves meanwhile (the flagged original never waits for its thumbnails)."""
        complete = True
        if look:
            upload, complete = self.look_up(pictrs_key(row))
            if upload is not None:
                with self.ledger.transaction():
                    added = self.record(row.id, upload, row.mirror_root if row.original else b"", pictrs_key(row))
                if added:
                    log.info("quarantine item %s: %d more object(s) of its upload found: %s", row.id, len(added),
                             ", ".join(added))  # fmt: skip
        for obj in self.ledger.objects.of(row.id):
            if obj.state != "listed":
                continue
            try:
                self.copy_in(row, obj)
            except (MirrorScanError, OSError) as err:
                log.warning("quarantine item %s: %s not copied in yet: %s", row.id, obj.key, str(err).splitlines()[0])
                complete = False
        if look or not complete:
            with self.ledger.transaction():
                self.ledger.objects.set_pending(row.id, not complete)
        if not complete:
            self._asked[row.id] = time.monotonic()
        return complete

    # ------------------------------------------------------------------ into the item

    def data_path(self, item_id: str, sha256: str) -> Path:
        return self.journal.item_dir(item_id) / COMPANIONS / sha256

    def copy_in(self, row: ItemRow, obj: ItemObject, source_fd: int | None = None) -> bool:
        """Copy a companion's bytes into the item, fsynced, re-read and verified, then recorded as held: from
        `source_fd` (a file seen arriving), else from the bucket when the item has one (what pict-rs serves:
        a stale mirror copy is never what is kept), else from its mirror copy. False (recorded as missing)
        when no copy of it exists anywhere."""
        folder = self.journal.item_dir(row.id) / COMPANIONS
        folder.mkdir(mode=0o700, exist_ok=True)
        for stray in folder.glob(".*.tmp"):  # a copy a dead process began (the caller holds the item's lock)
            stray.unlink(missing_ok=True)
        tmp = folder / f".{secrets.token_hex(4)}.tmp"
        try:
            written = self._write_from(row, obj, tmp, source_fd)
            if written is None:
                with self.ledger.transaction():
                    self.ledger.objects.missing(row.id, obj.key)
                log.warning("quarantine item %s: %s (%s) is in neither the mirror nor the bucket", row.id, obj.key,
                            obj.variant or obj.role)  # fmt: skip
                return False
            sha256, size = written.sha256, written.size
            if not self.journal.content.written_ok(tmp, written):
                raise QuarantineError(f"the copy of {obj.key} did not verify")
            final = folder / self.journal.content.final_name(written, sha256)
            if final.exists():
                tmp.unlink()
            else:
                os.rename(tmp, final)
            fsync_dir(folder)
        finally:
            tmp.unlink(missing_ok=True)
        with self.ledger.transaction():
            self.ledger.objects.held(row.id, obj.key, sha256, size, written.md5, written.sealed_sha256)
        return True

    def _write_from(self, row: ItemRow, obj: ItemObject, tmp: Path, source_fd: int | None) -> Written | None:
        """The companion's bytes written to `tmp` (sealed when the quarantine seals), or None when no copy of
        it is anywhere."""
        content = self.journal.content
        if source_fd is not None:
            return content.write(source_fd, None, tmp)
        upstream = self._upstream(row)
        if upstream is not None:
            data = upstream.read_if_there(obj.key)
            if data is not None:
                return content.write(None, data, tmp)
            return None  # not in the bucket: a mirror copy of it would be one pict-rs no longer serves
        fd = self._open_mirror_copy(row.mirror_root, obj.key) if obj.path else None
        if fd is None:
            return None
        try:
            return content.write(fd, None, tmp)
        finally:
            os.close(fd)

    def _open_mirror_copy(self, root: bytes, key: str) -> int | None:
        """A descriptor on the mirror's regular file at root/key (reached without following links), or None."""
        try:
            with self._place(root, key) as place:
                st = place.lstat()
                if st is None or not stat.S_ISREG(st.st_mode):
                    return None
                return place.open(os.O_RDONLY | os.O_NONBLOCK)
        except (UnsafePath, OSError):
            return None

    # ------------------------------------------------------------------ out of the bucket and the mirror

    def recheck(self, row: ItemRow) -> None:
        """Before any object of the upload leaves the bucket: a held companion whose object holds other bytes
        now (pict-rs wrote it again since it was copied) is copied again, so what leaves the bucket is what
        the item keeps; the removal itself checks the bytes once more."""
        upstream = self._upstream(row)
        if upstream is None:
            return
        for obj in self.ledger.objects.of(row.id):
            if obj.state != "held":
                continue
            try:
                md5 = self.journal.content.object_md5(row, obj)
                if upstream.holds(obj.key, obj.sha256, md5) is not False:  # type: ignore[arg-type]
                    continue
                log.warning("quarantine item %s: %s holds other bytes than its copy in the item; copied again",
                            row.id, obj.key)  # fmt: skip
                with self.ledger.transaction():
                    self.ledger.objects.relist(row.id, obj.key)
                self.copy_in(row, obj)
            except (MirrorScanError, OSError) as err:
                log.warning("quarantine item %s: %s not checked now: %s", row.id, obj.key, str(err).splitlines()[0])

    def remove_upstream(self, row: ItemRow, evidence, keys: set[str] | None = None) -> bool:
        """Every held companion's object (or those of `keys`) removed upstream, each checked to hold the held
        bytes first; False when one cannot be removed now (the item waits as upstream pending)."""
        upstream = self._upstream(row)
        if upstream is None:
            return True
        for obj in self.ledger.objects.of(row.id):
            if obj.state != "held" or (keys is not None and obj.key not in keys):
                continue
            try:
                md5 = self.journal.content.object_md5(row, obj)
                note = upstream.remove(obj.key, obj.sha256, md5, evidence)  # type: ignore[arg-type]
            except UpstreamUnavailable:
                return False
            except MirrorScanError as err:
                log.warning("quarantine item %s: removing %s from %s waits: %s", row.id, obj.key, row.remote, err)
                return False
            log.info("quarantine item %s: %s (%s): %s", row.id, obj.key, obj.variant or obj.role, note)
        return True

    def remove_local(self, row: ItemRow, keys: set[str] | None = None, mark_taken: bool = True) -> None:
        """Each held companion's mirror copy (or those of `keys`) removed, if it still holds the held bytes;
        then they count as taken (out of the bucket and the mirror). mark_taken=False: a restore's own
        copies removed again (taken ones too), their state left as it is."""
        states = ("held",) if mark_taken else ("held", "taken")
        taken = []
        for obj in self.ledger.objects.of(row.id):
            if obj.state in states and obj.sha256 and (keys is None or obj.key in keys):
                if obj.path:
                    remove_if_holds(row.mirror_root, obj.key, obj.sha256)
                taken.append(obj.key)
        if taken and mark_taken:
            with self.ledger.transaction():
                self.ledger.objects.taken(row.id, taken)

    def settle(self, row: ItemRow, evidence) -> bool:
        """For an item done with its own move (quarantined): what pict-rs's repo could not list, or the bucket
        could not give, at the time is looked for again (at most every LOOK_AGAIN_S), copied in and removed;
        a companion held but not yet taken leaves. The caller holds the item's lock. True when settled."""
        pending = self.ledger.objects.pending(row.id)
        if pending and time.monotonic() - self._asked.get(row.id, 0.0) < LOOK_AGAIN_S:
            return False
        complete = self.gather(row, look=pending)
        self.recheck(row)
        if self.remove_upstream(row, evidence):
            self.remove_local(row)
        return complete and not any(o.state in ("listed", "held") for o in self.ledger.objects.of(row.id))

    # ------------------------------------------------------------------ back

    def restorable(self, row: ItemRow) -> list[ItemObject]:
        """The companions a restore puts back: those the item holds that pict-rs still records (one it
        forgot, a variant its retention cleaned, would be an orphan no record names). Raises when pict-rs's
        repo cannot answer now: a restore waits for its answer rather than guess."""
        held = [o for o in self.ledger.objects.of(row.id) if o.state in ("held", "taken")]
        if not held or self.source is None:
            return held
        self.ledger.commit()
        try:
            recorded = self.source.recorded([o.key for o in held])
        except MirrorScanError as err:
            raise PictrsSilent(
                f"item {row.id}: pict-rs cannot say now which objects of the upload it still records "
                f"({str(err).splitlines()[0]}); nothing was put back",
                hint="try again when pict-rs answers; `--to PATH` takes a copy meanwhile",
            ) from None
        if recorded is None:
            return held  # only pict-rs's API is there: it cannot tell (said by `status` and the README)
        for obj in held:
            if obj.key not in recorded:
                log.info("quarantine item %s: %s is not put back: pict-rs no longer records it", row.id, obj.key)
        return [o for o in held if o.key in recorded]

    def place_local(self, row: ItemRow, objects: list[ItemObject]) -> list[ItemObject]:
        """Each of these back at its mirror path (a temp beside it, verified, hard-linked: never over another
        file); idempotent, so a restore's recovery simply runs it again. Returns those back (or there with
        these bytes already): one whose mirror path holds other bytes stays in the item, upstream too (the
        bucket and the mirror would disagree, and a pull never replaces the mirror's file: what the bucket
        served would never be scanned)."""
        if not row.original:
            return objects
        back = []
        for obj in objects:
            try:
                with self._place(row.mirror_root, obj.key, create_parents=True) as place:
                    if _place_verified(self.data_path(row.id, obj.sha256), place, obj.sha256):  # type: ignore[arg-type]
                        back.append(obj)
            except UnsafePath as err:
                log.warning("quarantine item %s: %s not put back in the mirror: %s", row.id, obj.key, err)
        return back

    def restore_upstream(self, row: ItemRow, upstream: Upstream, objects: list[ItemObject]) -> set[str]:
        """Each of these back in the bucket, unless it is there already; one whose key holds other bytes now
        (pict-rs made that variant again) is left as it is, and said. Returns the keys skipped."""
        skipped = set()
        for obj in objects:
            try:
                upstream.restore(self.data_path(row.id, obj.sha256), obj.key)  # type: ignore[arg-type]
            except UpstreamError as err:
                if err.kind != "mismatch":
                    raise
                log.warning("quarantine item %s: %s not put back: %s", row.id, obj.key, str(err).splitlines()[0])
                skipped.add(obj.key)
        return skipped

    # ------------------------------------------------------------------ seen arriving

    def held_companion(self, key: str) -> tuple[str, ItemObject | None, str, str | None] | None:
        """(item, its record of the object or None, role, variant) when `key` is an object of an upload held
        in quarantine: recorded with an item, or known to pict-rs's repo as an object of a held item's hash
        (asked again at most every HELD_INDEX_TTL_S, and once more for a key it does not know)."""
        item = self.ledger.objects.item_holding(key)
        if item is not None:
            found = next((o for o in self.ledger.objects.of(item) if o.key == key), None)
            return (item, found, found.role, found.variant) if found else None
        if self.source is None:
            return None
        made, index = self._held_index
        if key not in index and time.monotonic() - made > HELD_INDEX_TTL_S:
            held = self.ledger.objects.held_hashes()
            index = {}
            if held:
                self.ledger.commit()  # never hold the ledger's write lock while another database answers
                try:
                    for upload in self.source.uploads_of(list(held)):
                        for companion in (Companion(upload.identifier, "original"), *upload.companions):
                            index[companion.key] = (held[upload.hash], companion)
                except MirrorScanError as err:
                    log.warning("pict-rs's repo cannot list the held uploads' objects now: %s", err)
            self._held_index = (time.monotonic(), index)
        hit = index.get(key)
        if hit is None:
            return None
        item_id, companion = hit
        row = self.ledger.item(item_id)
        if row is None or pictrs_key(row) == key:
            return None  # the item's own key: what is there now is a file of its own (or a copy of the item's)
        return item_id, None, companion.role, companion.variant  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ helpers

    def _upstream(self, row: ItemRow) -> Upstream | None:
        if not (row.remote and (row.key or item_origin(row) == "bucket")):
            return None
        return self.upstreams.get(row.remote, direct=item_origin(row) == "bucket")

    @staticmethod
    def _place(root: bytes, key: str, create_parents: bool = False) -> Place:
        return reach(root, os.fsencode(key), create_parents=create_parents)


def remove_if_holds(root: bytes, key: str | bytes, sha256: str) -> bool:
    """Unlink root/key only if it is a regular file holding these bytes (never a newer file), reached from
    the root without following links (never a file outside it). True if unlinked."""
    rel = key if isinstance(key, bytes) else os.fsencode(key)
    try:
        place = reach(root, rel)
    except MissingParent:
        return False
    except UnsafePath as err:
        log.warning("%s: %s; left in place", os.fsdecode(rel), err)
        return False
    with place:
        st = place.lstat()
        if st is None:
            return False
        if not stat.S_ISREG(st.st_mode):
            log.warning("%s is no longer a regular file; left in place", os.fsdecode(place.path))
            return False
        if place.sha256() != sha256:
            log.warning("%s changed after it was quarantined; the new file is left in place", os.fsdecode(place.path))
            return False
        now = place.lstat()
        if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            log.warning("%s was replaced while it was checked; the new file is left in place", os.fsdecode(place.path))
            return False
        place.unlink()
        place.fsync_dir()
        return True


def _place_verified(source: Path, place: Place, sha256: str) -> bool:
    """Put these bytes at the place unless it holds them already: a temp beside it (a .partial name that
    discovery and pulls ignore), verified, then hard-linked (fails on any file there: never overwrites), or
    where the filesystem has no hard links, written with O_EXCL and verified. Another file there is left
    as it is, and said. True when the place holds these bytes afterwards."""
    tmp = restore_tmp_name(place.name)
    if place.exists(tmp):
        place.unlink(tmp)  # ours, from an interrupted restore
    if place.exists():
        if place.sha256() != sha256:
            log.warning("%s holds other content; the companion is not put back", os.fsdecode(place.path))
            return False
        return True
    for name in (tmp, place.name):
        fd_in = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            copy_to_new(fd_in, name, 0o644, dir_fd=place.dirfd)
        finally:
            os.close(fd_in)
        if place.sha256(name) != sha256:
            place.unlink(name)
            raise QuarantineError(f"the copy to {os.fsdecode(place.path)} did not verify; not put back")
        if name == place.name:  # written directly (no hard links here)
            place.fsync_dir()
            return True
        try:
            os.link(tmp, place.name, src_dir_fd=place.dirfd, dst_dir_fd=place.dirfd, follow_symlinks=False)
        except OSError as err:
            place.unlink(tmp)
            if err.errno in LINK_UNSUPPORTED:
                continue  # write the name itself
            raise QuarantineError(f"cannot put back {os.fsdecode(place.path)}: {err.strerror}") from None
        place.unlink(tmp)
        place.fsync_dir()
        return True
    return False
