"""`quarantine extract`: a copy of an item's bytes and its record, for a report to the authorities or any
other lawful request, without restoring it (a restore puts it back in public and allowlists it).

The copy goes to a private directory of its own, `<DIR>/mirror-scan-<id>/` (0700, files 0600), written
under a dot name and renamed into place once whole: the bytes fsynced and verified against the recorded
sha256 on the way out, the record beside them. The item's history says who took a copy and where, before
the copy appears: a copy never exists without its line. The copy is a move of its own in the ledger
(kind "extract", its target the dot directory): intent -> copied -> placed (the history line written) ->
done (renamed into place). Killed part-way, recovery (every writer's start) removes the dot directory of a
copy not yet noted, and finishes one that was: never a copy in the clear left behind, never a whole-looking
one without its line. Nothing is displayed, decoded or re-encoded; the quarantine itself is unchanged but
for the history line."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from mirror_scan.atomic import fsync_dir
from mirror_scan.errors import MirrorScanError
from mirror_scan.faults import checkpoint
from mirror_scan.kinds import MoveKind, Step
from mirror_scan.store.items import copy_to_new, write_all
from mirror_scan.store.lifecycle import By
from mirror_scan.store.paths import UnsafePath, check_operator_target, sha256_fd

RECORD = "item.json"


class ExtractError(MirrorScanError):
    pass


def extracted_dir(to_dir: Path, item_id: str) -> Path:
    return to_dir / f"mirror-scan-{item_id}"


def _work_dir(to_dir: Path, item_id: str) -> Path:
    return to_dir / f".mirror-scan-{item_id}.extracting"


def file_name(original: bytes | None) -> str:
    """The copy's name: the original's own name where it is a plain one (what a hotline's form asks for),
    else `data`. Never a dot name, a path or a name the record file has."""
    name = os.path.basename(original or b"").decode("utf-8", "replace")
    if not name or name.startswith(".") or name == RECORD or len(name.encode()) > 200:
        return "data"
    return "".join(c if c.isprintable() and c not in "/\\" else "_" for c in name)


def check_target_dir(to_dir: Path) -> Path:
    """An existing directory of the operator's, reached without a symbolic link anywhere (as restore --to)."""
    try:
        real = Path(os.fsdecode(check_operator_target(os.fsencode(os.path.abspath(to_dir / "x"))))).parent
    except UnsafePath as err:
        raise ExtractError(f"--to {to_dir}: {err}", hint="give an existing directory") from None
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        raise ExtractError(f"--to {to_dir}: no such directory", hint="create it first (mkdir -m 700)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ExtractError(f"--to {to_dir}: not a directory", hint="give the directory the copy goes into")
    return real


def extract(quarantine, item_id: str, to_dir: Path, record: dict[str, Any], by: By, wait_s: float = 5.0) -> Path:
    """Copy the item's bytes and `record` (what `quarantine show --json` prints) into a private directory
    under `to_dir`; returns that directory. Refuses an item whose bytes are not held or do not match."""
    to_dir = check_target_dir(to_dir)
    final, work = extracted_dir(to_dir, item_id), _work_dir(to_dir, item_id)
    with quarantine.item_lock(item_id, wait_s=wait_s):
        row, _meta = quarantine.restorer.checked_item(item_id)  # the metadata file must agree with the ledger
        content = quarantine.journal.content
        source = content.held_path(row)  # data, or data.age: opened straight into the copy, nowhere else
        if not source.is_file():
            raise ExtractError(f"item {item_id}: its bytes are no longer in the quarantine (state: {row.state})")
        if os.path.lexists(final):
            raise ExtractError(
                f"item {item_id}: {final} already exists; not overwriting a copy taken before",
                hint="move it away or give another --to",
            )
        identity = content.check_identity(row)  # refused before anything is written when it does not open it
        if os.path.islink(work):  # never followed: a link there is not what a killed extract of ours left
            raise ExtractError(f"{work} is a symbolic link; refusing to write through it", hint="remove it")
        if os.path.lexists(work):  # what a killed extract of this item left: never a whole copy
            shutil.rmtree(work)
        ledger = quarantine.ledger
        with ledger.transaction():
            move_id = ledger.start_move(item_id, MoveKind.EXTRACT, os.fsencode(work))
        checkpoint("extract:intent")
        os.mkdir(work, 0o700)
        # Every file is made through the directory's own descriptor: a directory swapped under the copy
        # (for a link elsewhere) is never written through.
        work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(work_fd, 0o700)
            name = file_name(row.original)
            if identity is not None:
                identity.open_to(source, name, dir_fd=work_fd)  # O_EXCL, 0600, fsynced
            else:
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    copy_to_new(fd, name, 0o600, dir_fd=work_fd)  # O_EXCL, fsynced
                finally:
                    os.close(fd)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=work_fd)
            try:
                digest = sha256_fd(fd)  # what is on the disk now, read back
            finally:
                os.close(fd)
            if digest != row.sha256:
                raise ExtractError(
                    f"item {item_id}: the quarantined bytes do not match their recorded sha256 (tampered or "
                    "damaged); no copy taken", hint="`mirror-scan state check` lists damaged items")  # fmt: skip
            write_private(RECORD, json.dumps(
                {**record, "extracted": {"file": name, "sha256": digest, "by": by.who, "via": by.via}},
                indent=2, ensure_ascii=False).encode() + b"\n", dir_fd=work_fd)  # fmt: skip
            os.fsync(work_fd)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            with ledger.transaction():
                ledger.set_step(move_id, Step.ROLLED_BACK, note="the copy failed")
            raise
        finally:
            os.close(work_fd)
        quarantine.journal.step(move_id, Step.COPIED, "extract")
        # The line first, with the step that says it was written, in one transaction: a copy is never there
        # without its line, nor a line without its copy (killed after it, recovery renames it into place).
        with ledger.transaction():
            ledger.history.add(item_id, f"copy extracted to {final} by {by.who} via {by.via}", time.time())
            ledger.set_step(move_id, Step.PLACED, note="the history says where the copy is")
        quarantine.journal.sync_meta(item_id)
        checkpoint("extract:noted")
        place_copy(work, final)
        quarantine.journal.step(move_id, Step.DONE, "extract")
    return final


def place_copy(work: Path, final: Path) -> None:
    """The whole copy renamed into place (a copy already there, from a rename a kill cut short, stays)."""
    if os.path.lexists(work) and not os.path.lexists(final):
        os.rename(work, final)
        fsync_dir(final.parent)


def finish_or_roll_back(journal, move) -> str:
    """Recovery of an interrupted extract: a copy whose history line was written is renamed into place; any
    other is removed (it was never whole, or never said). The work directory is the ledger's record, and
    only a directory of that exact dot name is touched."""
    work = Path(os.fsdecode(move.target or b""))
    item_id = move.item
    if work.name != _work_dir(work.parent, item_id).name or os.path.islink(work):
        journal.step(move.id, Step.ROLLED_BACK, "recover", note="its work directory is not ours")
        return f"{item_id}: an interrupted copy left no work directory of ours; nothing to do"
    if move.step == Step.PLACED:
        place_copy(work, extracted_dir(work.parent, item_id))
        journal.step(move.id, Step.DONE, "recover")
        return f"{item_id}: the copy extracted to {extracted_dir(work.parent, item_id)} was put in place"
    if os.path.lexists(work):
        shutil.rmtree(work)
        fsync_dir(work.parent)
    journal.step(move.id, Step.ROLLED_BACK, "recover", note=f"interrupted at {move.step}")
    return f"{item_id}: an interrupted copy for extract removed from {work.parent}"


def write_private(target: Path | str, data: bytes, dir_fd: int | None = None) -> None:
    """A new file only its owner reads (0600), fsynced; never through a link, never over another file."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
