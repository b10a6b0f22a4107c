"""Recovery: every writer, at start (and the daemon every second), finishes or rolls back the moves whose
owner died, and sweeps temporary files.

Only moves whose item lock it can take are touched, so a move a live process owns is never rolled back,
and every move whose owner is dead is finished or rolled back: a quarantine stopped before 'placed' is
rolled back (its temp removed; the original was never touched) unless the original is gone and verified
bytes are placed (the last copy is never deleted); one stopped after is finished. A restore stopped
before 'placed' is rolled back unless the target already holds the verified bytes."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from mirror_scan.errors import MirrorScanError
from mirror_scan.kinds import FINISHED_STEPS, ItemEvent, ItemState, MoveKind, Step
from mirror_scan.store.content import SEALED_DATA
from mirror_scan.store.item_index import delete_bytes
from mirror_scan.store.items import (
    DATA,
    META,
    NO_UPSTREAM,
    TMP_DATA,
    TMP_META,
    ItemBusy,
    PictrsSilent,
    QuarantineError,
)
from mirror_scan.store.journal import Journal
from mirror_scan.store.lifecycle import By, Lifecycle
from mirror_scan.store.mover import Mover
from mirror_scan.store.paths import MissingParent, UnsafePath
from mirror_scan.store.restorer import NotPutBack, Restorer
from mirror_scan.store.rows import ItemRow, MoveRow, display_path
from mirror_scan.store.upstream import UpstreamUnavailable

log = logging.getLogger(__name__)

NOT_RECOVERED = "not recovered yet: "  # a note of a move left as it was (retried at the next start)
REIMPORT_AGAIN_S = 60.0  # an alias pict-rs could not take is tried again after this


class Recovery:
    def __init__(self, journal: Journal, lifecycle: Lifecycle, mover: Mover, restorer: Restorer) -> None:
        self.journal = journal
        self.lifecycle = lifecycle
        self.ledger = journal.ledger
        self.mover = mover
        self.restorer = restorer
        self._reimport_tried: dict[int, float] = {}  # move -> when this process last imported for it

    def pending_moves(self) -> list[MoveRow]:
        return self.ledger.unfinished_moves()

    def recover(self) -> list[str]:
        """Finish or roll back every unfinished move whose owner is gone (its item lock is free); moves a
        live process is working on are left to it. Returns one line per move handled."""
        notes = []
        for move in self.pending_moves():
            try:
                with self.journal.item_lock(move.item):
                    current = self.ledger.move(move.id)
                    if current is None or current.step in FINISHED_STEPS:
                        continue  # finished by its owner since we listed it
                    notes.append(self._recover(current))
            except ItemBusy:
                continue
            except MirrorScanError as err:
                notes.append(f"{move.item}: {NOT_RECOVERED}{err}")
        self._sweep_temp_files()
        self._settle_objects()
        self._catch_up_metadata()
        self.ledger.commit()
        return [n for n in notes if n]

    def _settle_objects(self) -> None:
        """Quarantined items whose upload's other objects could not all be found, copied or removed at their
        move (pict-rs's repo or the bucket did not answer): tried again (`UploadObjects.settle`)."""
        for item_id in self.ledger.objects.unsettled():
            try:
                self.mover.settle(item_id)
            except ItemBusy:
                continue  # its owner is at it
            except (MirrorScanError, OSError) as err:
                log.warning("quarantine item %s: its upload's other objects wait: %s", item_id, err)

    def _catch_up_metadata(self) -> None:
        """meta.json of items a crash left behind the ledger (between a commit and the file's rewrite)."""
        for item_id in self.ledger.history.behind():
            try:
                with self.journal.item_lock(item_id):
                    self.journal.sync_meta(item_id)
            except MirrorScanError:  # busy (its owner syncs it), or not an item id: next time
                continue

    def _recover(self, move: MoveRow) -> str:
        row = self.ledger.item(move.item)
        if row is None:
            self.journal.step(move.id, Step.ROLLED_BACK, "recover", note="no index row")
            return f"{move.item}: nothing to recover"
        if move.kind == MoveKind.EXTRACT:
            from mirror_scan.store.extract import finish_or_roll_back

            return finish_or_roll_back(self.journal, move)
        if move.kind == MoveKind.RESTORE and row.sealed_to and self._restore_reads_bytes(move, row):
            # Its plaintext stays while the restore is unfinished; opened again (with an identity) if it went.
            self.journal.content.open(row)
        if move.kind == MoveKind.RESTORE and move.method == "reimport":
            return self._recover_reimport(move, row)
        if move.kind == MoveKind.RESTORE and move.method != "bucket" and move.target is None:
            self.lifecycle.apply(row.id, ItemEvent.RESTORE_ROLLED_BACK, step=(move.id, Step.ROLLED_BACK, "recover"),
                                 note="the restore recorded no target")  # fmt: skip
            return f"{move.item}: restore with no target, rolled back (still quarantined)"
        if move.kind == MoveKind.QUARANTINE:
            return self._recover_quarantine(move, row)
        if move.kind == MoveKind.ADOPT:
            key = os.fsdecode(move.target or b"")
            if row.state != ItemState.QUARANTINED:  # restored or purged since: nothing more to remove
                self.journal.step(move.id, Step.ROLLED_BACK, "recover", note=f"the item is {row.state}")
                return ""
            self.mover.finish_adopt(row, key, move.id, move.step)
            finished = self.ledger.move(move.id)
            if finished is not None and finished.step == Step.DONE:
                return f"{row.id}: taking {key} into the item finished (was at '{move.step}')"
            return ""  # its removal upstream waits, retried like the item's own
        if move.method == "bucket":
            return self._recover_object_restore(move, row)
        return self._recover_restore(move, row)

    def _restore_reads_bytes(self, move: MoveRow, row: ItemRow) -> bool:
        """What is left of an interrupted restore reads the item's bytes: before 'placed' (a partial target is
        recognised by them), uploading again, or at 'placed' with the object or the upload's other objects
        still to go back. Past that nothing does, and a sealed item's restore finishes without the identity."""
        if move.method == "reimport" or move.step in (Step.INTENT, Step.COPIED):
            return True
        if move.step != Step.PLACED:
            return False
        upstream = NO_UPSTREAM not in (move.method or "") and bool(row.remote and row.key)
        return upstream or bool(self.ledger.objects.of(row.id))

    def _recover_quarantine(self, move: MoveRow, row: ItemRow) -> str:
        item_id, step = row.id, move.step
        content = self.journal.content
        data = content.held_path(row)  # data, or data.age for a sealed item (its sha256 as written)
        if step in (Step.INTENT, Step.COPIED):
            original_ok = bool(row.original) and self.mover.original_holds(row)
            placed_ok = content.held_ok(row)
            if original_ok or not placed_ok:
                self.mover.rollback(item_id, move.id, f"interrupted at {step}; rolled back", kind="recover")
                return f"{item_id}: quarantine interrupted at '{step}', rolled back (original untouched)"
            step = Step.PLACED  # the original is gone but verified bytes are placed: never delete the last copy
        if step == Step.PLACED and data.is_file() and not content.held_ok(row):
            self.lifecycle.apply(item_id, ItemEvent.DAMAGED, step=(move.id, Step.ROLLED_BACK, "recover"),
                                 note="quarantined bytes do not verify; original kept")  # fmt: skip
            return f"{item_id}: quarantined bytes do not verify; original left in place"
        state = self.mover.finish(item_id, move.id, step)
        if state == ItemState.UPSTREAM_PENDING:
            return "" if row.state == ItemState.UPSTREAM_PENDING else f"{item_id}: upstream removal pending (retried)"
        return f"{item_id}: quarantine finished (was at '{step}')"

    def _recover_restore(self, move: MoveRow, row: ItemRow) -> str:
        item_id, step, target = row.id, move.step, move.target
        try:
            place = self.restorer.target_place(row, None if target == row.original else target, create_parents=False)
        except MissingParent:
            place = None  # its directory is gone: nothing of ours can be there
        except UnsafePath as err:
            # A directory on the way was swapped for a link: never follow it, never call the restore done.
            log.warning("quarantine item %s: the restore target %s: %s", item_id, display_path(target), err)
            place = None
        with place or contextlib.nullcontext():
            placed = place is not None and self.restorer.clean_leftovers(move, place, row.sha256)
        if step in (Step.INTENT, Step.COPIED) and not placed:
            self.lifecycle.apply(item_id, ItemEvent.RESTORE_ROLLED_BACK, step=(move.id, Step.ROLLED_BACK, "recover"),
                                 note=f"interrupted at {step}")  # fmt: skip
            return f"{item_id}: restore interrupted at '{step}', rolled back (still quarantined)"
        upstream = None
        wanted = NO_UPSTREAM not in (move.method or "")
        if wanted and row.remote and row.key and step != Step.UPSTREAM_RESTORED and target == row.original:
            upstream = self.restorer.upstreams.get(row.remote)
        try:
            self.restorer.finish(item_id, move.id, Step.PLACED if step in (Step.INTENT, Step.COPIED) else step,
                                 upstream, By.from_json(move.decided_by), local=target == row.original,
                                 ask_pictrs=True)  # fmt: skip
        except NotPutBack as undone:
            return f"{item_id}: restore interrupted at '{step}': {undone}"
        except (UpstreamUnavailable, PictrsSilent):
            return ""  # the bucket or pict-rs cannot answer now: the next recovery finishes it
        return f"{item_id}: restore interrupted at '{step}', finished"

    def _recover_object_restore(self, move: MoveRow, row: ItemRow) -> str:
        if move.step == Step.INTENT:  # nothing was put back yet
            self.lifecycle.apply(row.id, ItemEvent.RESTORE_ROLLED_BACK, step=(move.id, Step.ROLLED_BACK, "recover"),
                                 note="interrupted at intent")  # fmt: skip
            return f"{row.id}: restore interrupted at 'intent', rolled back (still quarantined)"
        upstream = self.restorer.upstreams.get(row.remote, direct=True) if move.step == Step.PLACED else None  # type: ignore[arg-type]
        try:
            self.restorer.finish(row.id, move.id, move.step, upstream, By.from_json(move.decided_by), ask_pictrs=True)
        except NotPutBack as undone:
            return f"{row.id}: restore interrupted at '{move.step}': {undone}"
        except (UpstreamUnavailable, PictrsSilent):
            return ""
        return f"{row.id}: restore interrupted at '{move.step}', finished"

    def _recover_reimport(self, move: MoveRow, row: ItemRow) -> str:
        """An upload again through pict-rs that was interrupted, or waits for an alias pict-rs could not take:
        the aliases not back yet are imported now (at most every REIMPORT_AGAIN_S per process); finished
        when all are back (or held by another upload), rolled back when none went back."""
        if self.restorer.objects.source is None:
            self.lifecycle.apply(row.id, ItemEvent.RESTORE_ROLLED_BACK, step=(move.id, Step.ROLLED_BACK, "recover"),
                                 note="pict-rs is not configured here")  # fmt: skip
            return f"{row.id}: uploading again through pict-rs was interrupted; rolled back (still quarantined)"
        if time.monotonic() - self._reimport_tried.get(move.id, -REIMPORT_AGAIN_S) < REIMPORT_AGAIN_S:
            return ""
        self._reimport_tried[move.id] = time.monotonic()
        try:
            done = self.restorer.continue_reimport(row, move.id, By.from_json(move.decided_by))
        except QuarantineError as refused:
            return f"{row.id}: uploading again through pict-rs was interrupted: {refused}"
        if done is None:
            return ""  # an alias waits for pict-rs: asked again later
        return f"{row.id}: uploading again through pict-rs was interrupted; finished ({done})"

    def _sweep_temp_files(self) -> None:
        """Temp files of moves that no longer exist (e.g. a state database restored from backup)."""
        active = {move.item for move in self.pending_moves()}
        for item_dir in self.journal.items.iterdir():
            if item_dir.name in active:
                continue
            try:
                with self.journal.item_lock(item_dir.name):
                    row = self.ledger.item(item_dir.name)
                    names = set(os.listdir(item_dir))  # once: this runs over every item, every second
                    held = DATA in names or SEALED_DATA in names
                    if row is not None and row.state == ItemState.PURGED and held:
                        delete_bytes(item_dir)  # a purge recorded, its deletion cut short
                        log.info("quarantine item %s: the bytes of its purge deleted", item_dir.name)
                        names = set(os.listdir(item_dir))
                    elif row is not None and self.journal.content.may_have_leftovers(row, names):
                        # A sealed item's plaintext a way out left (no move of it is active now), and what an
                        # interrupted `quarantine seal` left.
                        self.journal.content.clean_seal(row)
                        self.journal.content.close(row)
                        names = set(os.listdir(item_dir))
                    for name in (TMP_DATA, TMP_META):
                        if name in names and not held and META not in names:
                            (item_dir / name).unlink()
                            names.discard(name)
                            log.info("removed leftover %s in %s", name, item_dir.name)
                    if not names:
                        item_dir.rmdir()
            except (ItemBusy, UnsafePath, MirrorScanError):
                continue
