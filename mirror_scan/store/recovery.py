"""Recovery: every writer, at start (and the daemon every second), finishes or rolls back the moves whose
owner died, and sweeps temporary files. Part of Quarantine (store/quarantine.py)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from mirror_scan.errors import MirrorScanError
from mirror_scan.hashing import sha256_file
from mirror_scan.kinds import ItemState, MoveKind, Step
from mirror_scan.store.items import (
    DATA,
    META,
    NO_UPSTREAM,
    TMP_DATA,
    TMP_META,
    ItemBusy,
    _is_prefix_of,
    restore_tmp_name,
)
from mirror_scan.store.paths import (
    MissingParent,
    Place,
    UnsafePath,
)
from mirror_scan.store.rows import ItemRow, MoveRow, display_path
from mirror_scan.store.upstream import UpstreamUnavailable

log = logging.getLogger(__name__)


class Recovery:
    """Dead moves finished or rolled back (a mixin of the Quarantine)."""

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
