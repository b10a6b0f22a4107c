"""Restoring a quarantine item: back to its place in the mirror (or a chosen folder) and upstream, by a
journalled move that survives kill -9 at any step (recovery.py finishes or rolls it back):

    intent -> copied (temp beside the target, fsynced, verified) -> placed (hard-linked to the target:
    never overwrites) -> [upstream_restored] -> done (allowlisted, moderation undone)

On filesystems without hard links (FUSE mounts such as `rclone mount`, SMB) the target itself is written
with O_EXCL (never overwrites, no temp name that a mount would upload), fsynced and verified:
intent -> placed. An object scanned in its bucket goes back to its key; an upload the validator rejected
is released (allowlisted). The decision that asked for the restore, if any, is recorded in the transaction
that finishes it."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from mirror_scan.errors import MirrorScanError
from mirror_scan.faults import checkpoint
from mirror_scan.hashing import sha256_bytes, sha256_file
from mirror_scan.kinds import ItemEvent, MoveKind, Step
from mirror_scan.logs import notice
from mirror_scan.store.items import (
    DATA,
    LINK_UNSUPPORTED,
    NO_UPSTREAM,
    PictrsSilent,
    QuarantineError,
    UpstreamRestorePending,
    copy_to_new,
    file_key,
    is_prefix_of,
    item_origin,
    meta_disagreement,
    restore_method,
    restore_tmp_name,
)
from mirror_scan.store.journal import Journal
from mirror_scan.store.lifecycle import By, Lifecycle
from mirror_scan.store.paths import Place, UnsafePath, check_operator_target, reach, relative_to
from mirror_scan.store.rows import ItemRow, MoveRow, display_path
from mirror_scan.store.upload_objects import UploadObjects, pictrs_key, remove_if_holds
from mirror_scan.store.upstream import Upstream, UpstreamError, Upstreams

log = logging.getLogger(__name__)


class UploadGone(QuarantineError):
    """pict-rs no longer records the item's upload: a restore would write orphans."""


class NotPutBack(QuarantineError):
    """The restore was undone before anything went upstream (the key holds other bytes, or pict-rs forgot
    the upload meanwhile): the item stays in quarantine, nothing of it is left in the mirror."""


PENDING_HINT = (
    "nothing is lost: a running watch daemon retries it with backoff, and so does every mirror-scan command "
    "that writes state"
)


class Restorer:
    def __init__(self, journal: Journal, lifecycle: Lifecycle, upstreams: Upstreams, objects: UploadObjects) -> None:
        self.journal = journal
        self.lifecycle = lifecycle
        self.ledger = journal.ledger
        self.upstreams = upstreams
        self.objects = objects  # the upload's other objects come back with it

    def restore(
        self,
        item_id: str,
        to: Path | None = None,
        upstream: bool = True,
        wait_s: float = 5.0,
        by: By | None = None,
        reimport: bool = False,
    ) -> bytes:
        """Put the item's bytes back, byte-identical, at its original path (or `to`), and allowlist them.
        Uses the remote the item recorded (it must be configured here) unless upstream=False. pict-rs is asked
        first: an upload it no longer records is not put back (its objects would be orphans no record names)
        unless `reimport`, which uploads it again through pict-rs under its aliases. `by`: who asked,
        recorded with the restore's last step."""
        with self.journal.item_lock(item_id, wait_s=wait_s):
            target = self._restore_locked(item_id, to, upstream, by, reimport)
        notice(log, "restored quarantine item %s to %s (sha256 allowlisted)", item_id, display_path(target))
        return target

    def checked_item(self, item_id: str) -> tuple[ItemRow, dict[str, Any]]:
        """The ledger's row and the metadata file, which must agree: the ledger is the authority, and a
        metadata file that says otherwise (edited, replaced) refuses the action."""
        row = self.ledger.item(item_id)
        if row is None:
            raise QuarantineError(
                f"quarantine item {item_id} is not in the ledger",
                hint="see `mirror-scan quarantine list`; after losing the state database, `quarantine reindex` "
                "rebuilds the index from the metadata files (check them first)",
            )
        meta = self.journal.read_meta(item_id)
        differing = meta_disagreement(row, meta)
        if differing:
            raise QuarantineError(
                f"item {item_id}: its metadata file disagrees with the ledger on {', '.join(differing)}; "
                "refusing to act on it",
                hint="the metadata file was edited or replaced: compare it with your backups; the ledger's "
                "record is the authority (`mirror-scan quarantine show` prints both)",
            )
        return row, meta

    def _restore_locked(self, item_id: str, to: Path | None, upstream: bool, by: By | None, reimport: bool) -> bytes:
        row, meta = self.checked_item(item_id)
        origin = item_origin(row)
        self.lifecycle.check(row, ItemEvent.RELEASED if origin == "upload" else ItemEvent.RESTORE_BEGUN)
        item_dir = self.journal.item_dir(item_id)
        if origin == "upload":
            self.lifecycle.apply(row.id, ItemEvent.RELEASED, by=by)
            return b"(allowlisted: the upload can be made again)"
        # A sealed item's plaintext under the plain names while its bytes go out (store/content.py).
        with self.journal.content.opened(row):
            return self._restore_opened(row, meta, item_dir, origin, to, upstream, by, reimport)

    def _restore_opened(self, row: ItemRow, meta: dict[str, Any], item_dir: Path, origin: str | None,
                        to: Path | None, upstream: bool, by: By | None, reimport: bool) -> bytes:  # fmt: skip
        item_id = row.id
        if to is None:  # back into pict-rs's store: only what pict-rs still records
            gone = self._gone_from_pictrs(row)
            if reimport:
                if gone is None:
                    raise QuarantineError(
                        f"item {item_id}: uploading again through pict-rs needs pict-rs's answer on whether it "
                        "still records the upload", hint="set [pictrs] url and api_key (or database_url)")  # fmt: skip
                if gone is False:
                    raise QuarantineError(
                        f"item {item_id}: pict-rs still serves this upload; nothing to upload again",
                        hint="restore it without --reimport",
                    )
                return self._reimport(row, item_dir, by)
            if gone:
                aliases = self.ledger.objects.aliases_of(row.id)
                raise UploadGone(
                    f"item {item_id}: pict-rs no longer records this upload (purged, pruned by prune_missing, or "
                    "removed with its user's content): its bytes put back would be objects no record names, never "
                    "served and never cleaned; the item stays in quarantine",
                    hint=(f"`mirror-scan quarantine restore {item_id} --reimport` uploads it again through pict-rs "
                          f"as {', '.join(aliases)}" if aliases else "no alias of it is known: it cannot be uploaded "
                          "again under its name; `--to PATH` takes a copy"),
                )  # fmt: skip
        if to is None:
            self.objects.restorable(row)  # pict-rs asked which companions it records: before any move begins
        if origin == "bucket" and to is None:
            return self._restore_object(row, item_dir, upstream, by)
        target_upstream = None
        if upstream and row.remote and row.key and to is None:
            target_upstream = self.upstreams.get(row.remote)  # refuses now if the remote is not configured
        self._verify_bytes(row, item_dir)
        try:
            place = self.target_place(row, to, create_parents=True)
        except UnsafePath as err:
            raise QuarantineError(f"item {item_id}: {err}", hint="restore it elsewhere with --to PATH") from None
        with place:
            return self._restore_at(row, meta, place, target_upstream, by)

    def _gone_from_pictrs(self, row: ItemRow) -> bool | None:
        """True when pict-rs says it no longer records the item's upload; None when nothing here can tell
        (pict-rs not configured). When it is configured and cannot answer now, the restore is refused: put
        back unasked, the bytes could be objects no record names."""
        source = self.objects.source
        key = pictrs_key(row)
        if source is None or key is None:
            return None
        self.ledger.commit()  # never hold the ledger's write lock while pict-rs answers
        try:
            served = source.served(key, self.ledger.objects.aliases_of(row.id))
        except MirrorScanError as err:
            raise PictrsSilent(
                f"item {row.id}: pict-rs cannot say now whether it still records the upload "
                f"({str(err).splitlines()[0]}); nothing was put back",
                hint="try again when pict-rs answers; `--to PATH` takes a copy meanwhile",
            ) from None
        return None if served is None else not served

    def _reimport(self, row: ItemRow, item_dir: Path, by: By | None) -> bytes:
        """The upload again through pict-rs (`/internal/import`), under each alias it had, so the URLs in
        Lemmy's posts work again: pict-rs stores it under new keys (the next pull brings them), and makes its
        variants again when they are asked for. intent -> upstream_restored -> done; an alias pict-rs could
        not take now leaves the move waiting (recovery imports the rest: `continue_reimport`)."""
        if not self.ledger.objects.aliases_of(row.id):
            raise QuarantineError(f"item {row.id}: no alias of its upload is known: it cannot be uploaded again "
                                  "under its name", hint="`--to PATH` takes a copy of its bytes")  # fmt: skip
        self._verify_bytes(row, item_dir)
        self.original_bytes(row)  # refused before any move when the upload's original is not held
        move_id = self._begin(row, None, "reimport", by)
        done = self.continue_reimport(row, move_id, by)
        if done is None:
            raise UpstreamRestorePending(
                f"item {row.id}: uploaded again under some of its aliases; pict-rs could not take the rest now",
                hint=PENDING_HINT,
            )
        return done.encode()

    def original_bytes(self, row: ItemRow) -> bytes:
        """The bytes of the upload's original: the item's own, or, when a variant of it was flagged (its
        original then a companion), the original the item holds (never a thumbnail under the upload's name)."""
        original = next((o for o in self.ledger.objects.of(row.id) if o.role == "original"), None)
        if original is None:
            return (self.journal.item_dir(row.id) / DATA).read_bytes()
        if original.state not in ("held", "taken") or not original.sha256:
            raise QuarantineError(
                f"item {row.id} holds a variant of the upload, and not its original: it cannot be uploaded "
                "again as the upload", hint="`--to PATH` takes a copy of what it holds")  # fmt: skip
        data = self.objects.data_path(row.id, original.sha256).read_bytes()
        if sha256_bytes(data) != original.sha256:
            raise QuarantineError(f"item {row.id}: its copy of the upload's original does not verify; refusing")
        return data

    def continue_reimport(self, row: ItemRow, move_id: int, by: By | None) -> str | None:
        """Upload the original again under each alias not already back: done (what pict-rs said) when every
        alias is back or held by another upload now (said; that URL shows the other one); rolled back
        (QuarantineError) when none went back; None while an alias pict-rs could not take now waits."""
        source = self.objects.source
        recorded = self.ledger.objects.hash_of(row.id)
        data = self.original_bytes(row)
        notes, others, waiting = [], [], []
        for alias in self.ledger.objects.aliases_of(row.id):
            if self._alias_known_ours(row, alias):
                notes.append(f"{alias} is back")
                continue
            try:
                notes.append(source.reimport(alias, data))  # type: ignore[union-attr]
                checkpoint("restore:alias")
                continue
            except MirrorScanError as err:
                why = str(err).splitlines()[0]
            try:
                holder = source.alias_hash(alias)  # type: ignore[union-attr]
            except MirrorScanError:
                holder = None
            if holder is not None and recorded is not None and holder != recorded:
                others.append(alias)  # another upload holds the name now: never claimed as ours
            else:
                waiting.append(f"{alias} ({why})")
        if waiting and notes:
            log.warning("quarantine item %s: not uploaded again under %s yet; retried", row.id, ", ".join(waiting))
            return None
        if not notes:
            self.lifecycle.apply(row.id, ItemEvent.RESTORE_ROLLED_BACK, step=(move_id, Step.ROLLED_BACK, "restore"),
                                 note="pict-rs did not take the upload again")  # fmt: skip
            said = waiting + [f"{a} (another upload holds it now)" for a in others]
            raise QuarantineError(f"item {row.id}: pict-rs took the upload under none of its aliases: "
                                  f"{'; '.join(said)}", hint="the item stays in quarantine")  # fmt: skip
        self.journal.step(move_id, Step.UPSTREAM_RESTORED, "restore")
        missed = f"not under {', '.join(others)}: another upload holds that name now" if others else None
        if missed:
            log.warning("quarantine item %s: uploaded again, %s", row.id, missed)
            notes.append(missed)
        self.lifecycle.apply(row.id, ItemEvent.RESTORED, by=by, step=(move_id, Step.DONE, "restore"), note=missed)
        return "; ".join(notes)

    def _alias_known_ours(self, row: ItemRow, alias: str) -> bool:
        try:
            return self.alias_is_ours(row, alias)
        except MirrorScanError:
            return False

    def alias_is_ours(self, row: ItemRow, alias: str) -> bool:
        """The alias names the item's upload in pict-rs now: by its repo, the hash it names is the item's (the
        same bytes hash the same); with only its API, the alias resolves. Raises when pict-rs cannot answer."""
        source = self.objects.source
        if source is None:
            return False
        recorded = self.ledger.objects.hash_of(row.id)
        self.ledger.commit()  # never hold the ledger's write lock while pict-rs answers
        if recorded is not None:
            return source.alias_hash(alias) == recorded
        return bool(source.served(None, [alias]))

    @staticmethod
    def _verify_bytes(row: ItemRow, item_dir: Path) -> None:
        try:
            held = sha256_file(item_dir / DATA)
        except OSError as err:
            raise QuarantineError(
                f"item {row.id}: its quarantined bytes cannot be read ({err.strerror}); refusing to restore",
                hint="`mirror-scan state check` lists the items whose bytes are missing",
            ) from None
        if held != row.sha256:
            raise QuarantineError(
                f"item {row.id}: the quarantined bytes do not match their recorded sha256 (tampered or damaged); "
                "refusing to restore",
                hint="compare with your backups; `quarantine show` prints the recorded metadata",
            )

    def target_place(self, row: ItemRow, to: Path | bytes | None, create_parents: bool) -> Place:
        """Where a restore writes: the original path under the mirror root, or the operator's --to path;
        reached without following links either way."""
        if to is not None:
            target = check_operator_target(os.fsencode(os.path.abspath(to)))
            return reach(b"/", target.lstrip(b"/"), create_parents=False)
        return reach(row.mirror_root, relative_to(row.mirror_root, row.original), create_parents=create_parents)

    def _begin(self, row: ItemRow, target: bytes | None, method: str, by: By | None) -> int:
        """The restore's intent: the item 'restoring' (a removal still waiting upstream is superseded: the
        restore puts the object back either way) and its move, with who asked for it (recovery records the
        decision when it finishes the move), committed together."""
        with self.ledger.transaction():
            self.lifecycle.apply(row.id, ItemEvent.RESTORE_BEGUN)
            move_id = self.ledger.start_move(row.id, MoveKind.RESTORE, target, method, by.as_json() if by else None)
        checkpoint("restore:intent")
        return move_id

    def _restore_at(
        self, row: ItemRow, meta: dict[str, Any], place: Place, target_upstream: Upstream | None, by: By | None
    ) -> bytes:
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
        move_id = self._begin(row, target, method + ("" if target_upstream else NO_UPSTREAM), by)
        if not place.exists():
            if method == "link":
                method = self._restore_by_link(item_id, move_id, place, meta)
            if method == "direct":
                self._write_verified(item_id, place, place.name, meta)
                place.fsync_dir()
        self.journal.step(move_id, Step.PLACED, "restore")
        try:
            self.finish(item_id, move_id, Step.PLACED, target_upstream, by, local=target == row.original)
        except NotPutBack:
            raise
        except MirrorScanError as err:
            raise UpstreamRestorePending(
                f"{display_path(target)} is back in the mirror, but putting it back in {row.remote} failed: "
                f"{str(err).splitlines()[0]}",
                hint=PENDING_HINT,
            ) from None
        return target

    def _restore_object(self, row: ItemRow, item_dir: Path, upstream_wanted: bool, by: By | None) -> bytes:
        """An object scanned in its bucket has no mirror copy: it goes back to its key (verified by reading
        it back), then its sha256 is allowlisted. intent -> placed (nothing local) -> upstream_restored -> done."""
        if not upstream_wanted:
            raise QuarantineError(
                f"item {row.id} came from the bucket and has no mirror copy",
                hint="restore it upstream (without --no-upstream), or a local copy with --to PATH",
            )
        self._verify_bytes(row, item_dir)
        upstream = self.upstreams.get(row.remote, direct=True)  # type: ignore[arg-type]
        move_id = self._begin(row, None, "bucket", by)
        self.journal.step(move_id, Step.PLACED, "restore")
        try:
            self.finish(row.id, move_id, Step.PLACED, upstream, by)
        except NotPutBack:
            raise
        except MirrorScanError as err:
            raise UpstreamRestorePending(
                f"putting {row.remote}/{row.key} back failed: {str(err).splitlines()[0]}", hint=PENDING_HINT
            ) from None
        return file_key(row)

    def _restore_by_link(self, item_id: str, move_id: int, place: Place, meta: dict[str, Any]) -> str:
        """Temp beside the target, verified, then hard-linked to the target (fails if anything appeared
        there: never overwrites). Returns 'direct' if the filesystem turns out to have no hard links."""
        tmp = restore_tmp_name(place.name)
        if place.exists(tmp):
            place.unlink(tmp)  # ours (the name says so), left by a restore whose journal was lost with the ledger
        self._write_verified(item_id, place, tmp, meta)
        self.journal.step(move_id, Step.COPIED, "restore")
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
        source = os.open(self.journal.item_dir(item_id) / DATA, os.O_RDONLY | os.O_CLOEXEC)
        try:
            written = copy_to_new(source, name, meta.get("mode", 0o644) & 0o777, dir_fd=place.dirfd)
        finally:
            os.close(source)
        if written != meta["sha256"] or place.sha256(name) != meta["sha256"]:
            place.unlink(name)
            raise QuarantineError(f"copy to {display_path(place.path)} did not verify; nothing restored")
        mtime = meta.get("mtime_ns", time.time_ns())
        with contextlib.suppress(OSError):  # some mounts cannot set times; the bytes are what matters
            os.utime(name, ns=(mtime, mtime), dir_fd=place.dirfd, follow_symlinks=False)

    def finish(
        self,
        item_id: str,
        move_id: int,
        step: str,
        upstream: Upstream | None,
        by: By | None = None,
        local: bool = False,
        ask_pictrs: bool = False,
    ) -> None:
        """Finish a placed restore: the upload's other objects back in the mirror (local: the original went
        back to its own place), every object back upstream (when wanted), then done: allowlisted, the file
        rows marked, moderation's undo queued and the decision recorded, in one transaction. Each part is
        idempotent, so recovery finishes an interrupted one by running it again (`ask_pictrs`: asking
        pict-rs again first, as time has passed since the restore began).

        Nothing is ever written over other bytes, upstream or in the mirror: a companion whose key holds
        other bytes upstream is skipped (and its mirror copy, which would hide them from pulls, removed);
        the original's key holding other bytes, or pict-rs having forgotten the upload, undoes the restore
        (NotPutBack: the item stays in quarantine)."""
        row = self.ledger.item(item_id)
        assert row is not None
        if step == Step.PLACED:
            objects = self.objects.restorable(row)  # not one pict-rs forgot: it would be an orphan
            if local:  # not one whose mirror path holds other bytes: bucket and mirror would disagree
                objects = self.objects.place_local(row, objects)
            if upstream is not None and row.key:
                if ask_pictrs and self._gone_from_pictrs(row):
                    self._undo(row, move_id, local, objects, "pict-rs no longer records the upload")
                try:
                    upstream.restore(self.journal.item_dir(item_id) / DATA, row.key)
                except UpstreamError as err:
                    if err.kind != "mismatch":
                        raise
                    self._undo(row, move_id, local, objects, f"{row.remote}/{row.key} holds other bytes now")
                skipped = self.objects.restore_upstream(row, upstream, objects)
                if local:
                    self.objects.remove_local(row, skipped, mark_taken=False)
                self.journal.step(move_id, Step.UPSTREAM_RESTORED, "restore")
        self.lifecycle.apply(item_id, ItemEvent.RESTORED, by=by, step=(move_id, Step.DONE, "restore"))

    def _undo(self, row: ItemRow, move_id: int, local: bool, objects: list, why: str) -> None:
        """A placed restore undone before anything went upstream: the copies it put in the mirror removed
        (each only if it still holds the item's bytes), the item back to quarantined. Raises NotPutBack."""
        if local:
            self.objects.remove_local(row, {o.key for o in objects}, mark_taken=False)
            if row.original:
                remove_if_holds(row.mirror_root, relative_to(row.mirror_root, row.original), row.sha256)
        self.lifecycle.apply(row.id, ItemEvent.RESTORE_ROLLED_BACK, step=(move_id, Step.ROLLED_BACK, "restore"),
                             note=why)  # fmt: skip
        raise NotPutBack(f"item {row.id}: {why}; not restored (the item stays in quarantine)",
                         hint="look at what is there now; `--to PATH` takes a copy of the item")  # fmt: skip

    def clean_leftovers(self, move: MoveRow, place: Place, sha256: str) -> bool:
        """Remove an interrupted restore's temp file (and, for a direct write, its partial target); True if
        the target holds the item's bytes."""
        tmp = restore_tmp_name(place.name)
        if place.exists(tmp):
            place.unlink(tmp)
        if place.sha256() == sha256:
            return True
        data = self.journal.item_dir(move.item) / DATA
        if (move.method or "").startswith("direct") and place.exists() and is_prefix_of(place, data):
            place.unlink()  # our own interrupted O_EXCL write: never leave a partial object behind
            place.fsync_dir()
        return False
