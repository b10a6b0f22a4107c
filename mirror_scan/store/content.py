"""How an item holds its bytes, plain or sealed (sealing.py), as the ledger records it: which file holds
them, checking that file, the md5 the bucket's check needs, opening a sealed item for a way out, and
sealing an item held plain (`quarantine seal`).

Every part of the quarantine that writes or checks an item's bytes asks here, so the plain/sealed
difference lives in one place: the mover and the companions write through `write`, recovery and
`state check` verify through `held_ok`, and the ways out (restore, reimport, extract, report) run inside
`opened`, where a sealed item's plaintext sits under the plain names for as long as they run."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from mirror_scan.atomic import fsync_dir
from mirror_scan.faults import checkpoint
from mirror_scan.hashing import md5_file, sha256_file
from mirror_scan.store.companions import COMPANIONS, ItemObject
from mirror_scan.store.items import DATA, QuarantineError
from mirror_scan.store.rows import ItemRow
from mirror_scan.store.sealing import (
    IDENTITY_HINT,
    OPENING_SUFFIX,
    SEALED_SUFFIX,
    Identity,
    Sealer,
    SealError,
    Written,
    sealed_name,
    write_new,
    write_new_bytes,
)

log = logging.getLogger(__name__)

SEALED_DATA = sealed_name(DATA)
SEALING_SUFFIX = ".sealing.tmp"  # a sealed copy being written by `quarantine seal` (removed by recovery)


class ItemContent:
    def __init__(self, items: Path, ledger) -> None:
        self.items = items
        self.ledger = ledger
        self.sealer: Sealer | None = None  # set from seal_to: new items are sealed to it
        self.identity: Identity | None = None  # set by a way out that was given one
        self.ask_identity: Callable[[], Identity] | None = None  # how to get one when none was given

    # ------------------------------------------------------------------ where the bytes are

    def held_path(self, row: ItemRow) -> Path:
        """The file that holds the item's bytes as stored: data.age when sealed, else data."""
        return self.items / row.id / (SEALED_DATA if row.sealed_to else DATA)

    def object_path(self, row: ItemRow, obj: ItemObject) -> Path:
        name = f"{obj.sha256}{SEALED_SUFFIX}" if obj.sealed_sha256 else str(obj.sha256)
        return self.items / row.id / COMPANIONS / name

    def held_ok(self, row: ItemRow) -> bool:
        """The item's file is there and holds what was written: the plaintext's sha256, or for a sealed
        item the sealed file's (its plaintext is checked when it is opened)."""
        return _holds(self.held_path(row), str(row.sealed_sha256 if row.sealed_to else row.sha256))

    def md5(self, row: ItemRow) -> str:
        """The plaintext's md5 (S3's ETag of a single-part object): recorded, else read from a plain item."""
        if row.md5:
            return row.md5
        if row.sealed_to:  # sealed items always record it: this is damage, said rather than guessed
            raise QuarantineError(f"item {row.id}: sealed, and its md5 is not recorded")
        return md5_file(self.items / row.id / DATA)

    def object_md5(self, row: ItemRow, obj: ItemObject) -> str:
        if obj.md5:
            return obj.md5
        return md5_file(self.items / row.id / COMPANIONS / str(obj.sha256))

    # ------------------------------------------------------------------ writing

    def write(self, source_fd: int | None, data: bytes | None, target: Path) -> Written:
        """The bytes (from a descriptor, or in memory) into a new temp file, sealed when seal_to is set."""
        if source_fd is not None:
            return write_new(source_fd, target, self.sealer)
        return write_new_bytes(data or b"", target, self.sealer)

    @staticmethod
    def written_ok(target: Path, written: Written) -> bool:
        """The temp file reads back as written (the sealed file's own hash, or the plaintext's)."""
        return sha256_file(target) == (written.sealed_sha256 or written.sha256)

    @staticmethod
    def final_name(written: Written, plain_name: str) -> str:
        return sealed_name(plain_name) if written.sealed_sha256 else plain_name

    def record(self, item_id: str, written: Written) -> None:
        """How the item holds its bytes, in the caller's transaction."""
        self.ledger.set_item_content(item_id, written.md5, written.sealed_to, written.sealed_sha256)

    # ------------------------------------------------------------------ a way out

    def _identity(self) -> Identity:
        if self.identity is None:
            if self.ask_identity is None:
                raise SealError("this item is sealed and this process has no identity to open it", hint=IDENTITY_HINT)
            self.identity = self.ask_identity()
        return self.identity

    def check_identity(self, row: ItemRow) -> Identity | None:
        """The identity that opens a sealed item (None for a plain one); refused early, nothing changed, when
        there is none or it is another key's."""
        if not row.sealed_to:
            return None
        identity = self._identity()
        if row.sealed_to not in identity.recipients:
            raise SealError(f"{identity.where} does not open item {row.id}: it is sealed to {row.sealed_to}; "
                            "nothing changed", hint="give the identity that belongs to that key")  # fmt: skip
        return identity

    @contextlib.contextmanager
    def opened(self, row: ItemRow) -> Iterator[None]:
        """For the duration, the item's plaintext (and its held companions') under the plain names, each
        verified against its sha256; removed afterwards. A plain item is left as it is. The caller holds
        the item's lock."""
        if not row.sealed_to:
            yield
            return
        self.check_identity(row)  # a way out needs the admin's identity, whatever a kill left
        try:
            self.open(row)
            checkpoint("open:opened")
            yield
        finally:
            if not self.ledger.unfinished_moves(row.id):  # a restore that waits finishes from the plaintext
                self.close(row)

    def open(self, row: ItemRow) -> None:
        """A sealed item's plaintext (and its held companions') under the plain names, each verified; what is
        there and verifies already (a restore a kill interrupted) is kept. Recovery finishing such a restore
        calls this; a way out uses `opened`."""
        if not row.sealed_to:
            return
        self._open_file(row, self.held_path(row), self.items / row.id / DATA, row.sha256, row.md5)
        for obj in self.ledger.objects.of(row.id):
            if obj.sealed_sha256 and obj.sha256 and obj.state in ("held", "taken"):
                plain = self.items / row.id / COMPANIONS / obj.sha256
                self._open_file(row, self.object_path(row, obj), plain, obj.sha256, obj.md5)

    def _open_file(self, row: ItemRow, sealed: Path, plain: Path, sha256: str, md5: str | None) -> None:
        if _holds(plain, sha256) and (md5 is None or md5_file(plain) == md5):
            return  # opened by a way out a kill interrupted, still needed by its move
        identity = self.check_identity(row)  # asked only when a file is to be opened
        plain.unlink(missing_ok=True)
        tmp = plain.with_name(plain.name + OPENING_SUFFIX)
        tmp.unlink(missing_ok=True)
        # Not fsynced: a transient copy, checked against the sha256 whenever it is used again (a power cut
        # that loses it costs a decryption, never the evidence: data.age is the record).
        opened = identity.open_to(sealed, tmp, durable=False)  # type: ignore[union-attr]
        if opened.sha256 != sha256 or (md5 is not None and opened.md5 != md5):  # the md5 the bucket checks by
            tmp.unlink(missing_ok=True)
            raise QuarantineError(
                f"item {row.id}: the sealed bytes do not match their recorded sha256 (tampered or damaged); "
                "nothing changed",
                hint="compare with your backups; `quarantine show` prints the recorded metadata",
            )
        os.rename(tmp, plain)

    def close(self, row: ItemRow) -> None:
        """A sealed item's plaintext removed (what `opened` wrote, or a kill left): only the sealed file stays."""
        if not row.sealed_to:
            return
        item_dir = self.items / row.id
        names = [item_dir / DATA, item_dir / (DATA + OPENING_SUFFIX)]
        folder = item_dir / COMPANIONS
        if folder.is_dir():
            names += [p for p in folder.iterdir() if not p.name.endswith(SEALED_SUFFIX) and not p.name.startswith(".")
                      or p.name.endswith(OPENING_SUFFIX)]  # fmt: skip
        removed = False
        for path in names:
            if not os.path.lexists(path):
                continue
            if self._sealed_twin_ok(row, path) or path.is_symlink():
                path.unlink()  # a link planted at a plain name is nothing of ours: removed, never followed
                removed = True
            else:
                log.warning("quarantine item %s: %s is kept in the clear: its sealed copy does not verify "
                            "(`mirror-scan state check` names the item)", row.id, path.name)  # fmt: skip
        if removed:
            fsync_dir(item_dir)
            if folder.is_dir():
                fsync_dir(folder)

    def _sealed_twin_ok(self, row: ItemRow, plain: Path) -> bool:
        """A plaintext is removed only while its sealed file holds the bytes (never the last copy)."""
        if plain.name.endswith(OPENING_SUFFIX):
            return True  # a partial decrypt: the sealed file it came from is the copy
        if plain.parent.name == COMPANIONS:
            obj = next((o for o in self.ledger.objects.of(row.id) if o.sha256 == plain.name), None)
            if obj is None or not obj.sealed_sha256:
                return False  # not a companion the ledger holds sealed: left for `state check` to name
            return _holds(plain.with_name(plain.name + SEALED_SUFFIX), obj.sealed_sha256)
        return self.held_ok(row)

    def problem(self, row: ItemRow, identity: Identity | None) -> str | None:
        """What is wrong with the bytes an item holds (`state check`), or None: the file is missing or does
        not hash as written; with an identity, a sealed item is also decrypted (in memory) and its plaintext
        checked against the item's sha256."""
        if not self.held_ok(row):
            return f"{self.held_path(row).name} is missing or does not hash to what was written"
        if row.sealed_to and os.path.lexists(self.items / row.id / DATA):
            return "a copy in the clear lies beside data.age (a way out was interrupted: `state recover` removes it)"
        if row.sealed_to and identity is not None:
            if row.sealed_to not in identity.recipients:
                return f"sealed to {row.sealed_to}, which {identity.where} does not open"
            try:
                if identity.digest(self.held_path(row)) != row.sha256:
                    return "decrypts to other bytes than its recorded sha256"
            except SealError as err:
                return str(err)
        for obj in self.ledger.objects.of(row.id):
            if obj.sha256 and obj.state in ("held", "taken"):
                if not _holds(self.object_path(row, obj), obj.sealed_sha256 or obj.sha256):
                    return f"its copy of {obj.key} is missing or does not hash to what was written"
        return None

    # ------------------------------------------------------------------ sealing an item held plain

    def seal(self, row: ItemRow) -> bool:
        """Seal a plain item in place (`quarantine seal`), companions first, then its own bytes; each file:
        sealed copy written, fsynced and read back, renamed to its .age name, recorded in the ledger, and
        only then the plain file removed. A kill at any point leaves either the plain file as the record
        says (a stray sealed copy is removed by recovery: `clean_seal`), or both with the record sealed
        (the plaintext is then removed as an opened item's is). The caller holds the item's lock. False
        when it was sealed already."""
        if self.sealer is None:
            raise SealError("sealing needs seal_to (the age public key) in the config",
                            hint="`mirror-scan quarantine keygen` makes a key pair and says what to set")  # fmt: skip
        if row.sealed_to:
            return False
        item_dir = self.items / row.id
        for obj in self.ledger.objects.of(row.id):
            if obj.sha256 and not obj.sealed_sha256 and obj.state in ("held", "taken"):
                written = self._seal_file(item_dir / COMPANIONS / obj.sha256, obj.sha256, row.id)
                with self.ledger.transaction():
                    self.ledger.objects.set_sealed(row.id, obj.sha256, written.md5, written.sealed_sha256)  # type: ignore[arg-type]
                checkpoint("seal:companion")
                (item_dir / COMPANIONS / obj.sha256).unlink()
        written = self._seal_file(item_dir / DATA, row.sha256, row.id)
        with self.ledger.transaction():
            self.record(row.id, written)
            self.ledger.history.add(row.id, f"sealed to {self.sealer.recipient}", _now())
        checkpoint("seal:recorded")
        (item_dir / DATA).unlink()
        fsync_dir(item_dir)
        return True

    def _seal_file(self, plain: Path, sha256: str, item_id: str) -> Written:
        tmp = plain.with_name(plain.name + SEALING_SUFFIX)
        tmp.unlink(missing_ok=True)
        fd = os.open(plain, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            written = write_new(fd, tmp, self.sealer)
        finally:
            os.close(fd)
        if written.sha256 != sha256 or not self.written_ok(tmp, written):
            tmp.unlink(missing_ok=True)
            raise QuarantineError(f"item {item_id}: {plain.name} does not hold its recorded bytes; not sealed",
                                  hint="`mirror-scan state check` names damaged items")  # fmt: skip
        checkpoint("seal:written")
        os.rename(tmp, plain.with_name(plain.name + SEALED_SUFFIX))
        fsync_dir(plain.parent)
        return written

    def may_have_leftovers(self, row: ItemRow, names: set[str]) -> bool:
        """From the names in the item's directory alone (the recovery sweep lists it every second): whether
        an interrupted seal or way out may have left something `clean_seal` or `close` removes. A folder of
        companions is always looked into."""
        if COMPANIONS in names or any(n.endswith((SEALING_SUFFIX, OPENING_SUFFIX)) for n in names):
            return True
        return DATA in names and (SEALED_DATA in names or bool(row.sealed_to))

    def clean_seal(self, row: ItemRow) -> None:
        """What an interrupted `quarantine seal` or way out left beside the item's files: temp files, a sealed
        copy the ledger does not record (the plain file is the record), a plaintext of a sealed one."""
        item_dir = self.items / row.id
        for folder in (item_dir, item_dir / COMPANIONS):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.endswith(SEALING_SUFFIX):
                    path.unlink()
        # A sealed copy the ledger does not record goes only while the plain file holds the item's bytes: a
        # ledger restored from before a seal, or rebuilt from an edited metadata file, never costs the copy.
        plain = item_dir / DATA
        if not row.sealed_to and (item_dir / SEALED_DATA).exists() and _holds(plain, row.sha256):
            (item_dir / SEALED_DATA).unlink()
        folder = item_dir / COMPANIONS
        if folder.is_dir():
            recorded = {o.sha256: o for o in self.ledger.objects.of(row.id) if o.sha256}
            for path in folder.glob(f"*{SEALED_SUFFIX}"):
                obj = recorded.get(path.name[: -len(SEALED_SUFFIX)])
                if obj is not None and not obj.sealed_sha256 and _holds(folder / str(obj.sha256), str(obj.sha256)):
                    path.unlink()


def _holds(path: Path, sha256: str) -> bool:
    """A regular file (never a link) holding these bytes."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode) and sha256_file(path) == sha256
    except OSError:
        return False


def _now() -> float:
    import time

    return time.time()
