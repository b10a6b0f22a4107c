"""The quarantine's journal: the item locks that say who owns a move, the move steps committed before each
next file operation (with the crash tests' checkpoints), and each item's self-description (meta.json),
kept in step with the ledger.

On disk, one directory per item: `items/<id>/data` (the bytes, no extension, so nothing opens them by
accident) and `items/<id>/meta.json` (where it came from, why, its state and history). Directories are
0700 and files 0600 from the moment they are created. The ledger is the authority on every item; the
metadata file describes the item for people and for `reindex` (rebuilding a lost ledger): its state and
history are copied from the ledger after each change (`sync_meta`), and lines a crash kept from it are
added the next time anything happens to the item.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mirror_scan.atomic import fsync_dir
from mirror_scan.faults import checkpoint
from mirror_scan.kinds import ItemState, Step
from mirror_scan.store.content import ItemContent
from mirror_scan.store.items import META, TMP_META, ItemBusy, QuarantineError, check_item_id, write_private
from mirror_scan.store.ledger import Ledger

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, root: Path, ledger: Ledger) -> None:
        self.root = Path(root)
        self.items = self.root / "items"
        self.locks = self.root / "locks"
        self.ledger = ledger
        self.content = ItemContent(self.items, ledger)  # plain or sealed: how each item holds its bytes
        if ledger.readonly:
            return
        for directory in (self.root, self.items, self.locks):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(directory.stat().st_mode) != 0o700:
                directory.chmod(0o700)

    def item_dir(self, item_id: str) -> Path:
        check_item_id(item_id)
        return self.items / item_id

    # ------------------------------------------------------------------ item locks

    @contextlib.contextmanager
    def item_lock(self, item_id: str, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the item's lock: exclusive between processes and threads (one open file description each),
        released by the kernel when the holder dies. ItemBusy if it is not free within wait_s."""
        check_item_id(item_id)
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

    # ------------------------------------------------------------------ move steps

    def step(self, move_id: int, step: Step, kind: str, note: str | None = None) -> None:
        """A step of a move that changes no item state, committed before the next file operation."""
        self.ledger.set_step(move_id, step, note)
        self.ledger.commit()
        checkpoint(f"{kind}:{step}")

    # ------------------------------------------------------------------ meta.json

    def read_meta(self, item_id: str) -> dict[str, Any]:
        path = self.item_dir(item_id) / META
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise QuarantineError(
                f"quarantine item {item_id} has no metadata file",
                hint="run `mirror-scan quarantine list` to see the items",
            ) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise QuarantineError(f"metadata of quarantine item {item_id} cannot be read: {err}") from None
        if not isinstance(meta, dict):
            raise QuarantineError(f"metadata of quarantine item {item_id} is not a JSON object (edited?)")
        return meta

    def write_meta(self, item_id: str, meta: dict[str, Any]) -> None:
        """Atomically: a private temp file, fsynced, renamed over meta.json, the directory fsynced."""
        item_dir = self.item_dir(item_id)
        tmp = item_dir / TMP_META
        tmp.unlink(missing_ok=True)
        write_private(tmp, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        os.replace(tmp, item_dir / META)
        fsync_dir(item_dir)

    def sync_meta(
        self, item_id: str, update: Callable[[dict[str, Any]], None] | None = None, rewrite: bool = False
    ) -> None:
        """Bring the item's metadata file in step with the ledger: its state, and every line of the ledger's
        history it does not hold yet (each carries its ledger id, `n`); with rewrite, its history becomes
        the ledger's (after a rebuild imported its lines). An item whose metadata file is not written yet
        (a quarantine before 'placed') is left behind until it is; one whose file cannot be read is said once
        and left as it is (the ledger has it all; `state check` names it)."""
        checkpoint("meta:sync")  # the crash tests' kill between a commit and the file that follows it
        row = self.ledger.item(item_id)
        if not (self.item_dir(item_id) / META).exists():
            if row is None or row.state != ItemState.QUARANTINING:
                self.ledger.history.caught_up(item_id)
            return
        try:
            meta = self.read_meta(item_id)
        except QuarantineError as err:
            log.warning("%s; it is left as it is", err)
            self.ledger.history.caught_up(item_id)
            return
        if row is not None:
            meta["state"] = row.state
            if row.md5:
                meta["md5"] = row.md5
            if row.sealed_to:  # data.age: the ledger's record of how it is held, for people and `reindex`
                meta["sealed"] = {"to": row.sealed_to, "sha256": row.sealed_sha256}
        companions = self.ledger.objects.of(item_id)
        if companions:  # the upload's other objects, as the ledger records them
            meta["pictrs_hash"] = self.ledger.objects.hash_of(item_id)
            meta["companions"] = [
                {"key": o.key, "role": o.role, "variant": o.variant, "sha256": o.sha256, "size": o.size,
                 "state": o.state, **({"md5": o.md5} if o.md5 else {}),
                 **({"sealed_sha256": o.sealed_sha256} if o.sealed_sha256 else {})}
                for o in companions
            ]  # fmt: skip
        if rewrite or not isinstance(meta.get("history"), list):
            meta["history"] = []
        history = meta["history"]
        # A line is the ledger's id and its words: a ledger restored from a backup reuses ids for other lines.
        have = {
            (e["n"], e.get("state"))
            for e in history
            if isinstance(e, dict) and isinstance(e.get("n"), int) and isinstance(e.get("state"), str)
        }
        for line in self.ledger.history.of(item_id):
            if (line.id, line.line) not in have:
                history.append({"state": line.line, "at": iso(line.at), "n": line.id})
        if update is not None:
            update(meta)
        try:
            self.write_meta(item_id, meta)
        except OSError as err:  # the ledger holds it all; recovery (or the next change) writes it again
            log.warning("metadata of quarantine item %s not updated: %s", item_id, err)
            return
        self.ledger.history.caught_up(item_id)

    def history(self, item_id: str) -> list[dict[str, str]]:
        """The item's history as people read it ({"at", "event"}, oldest first): the ledger's lines, after
        the lines its metadata file kept from before the ledger had a history (they carry no `n`)."""
        try:
            kept = self.read_meta(item_id).get("history")
        except QuarantineError:
            kept = None
        lines = self.ledger.history.of(item_id)
        first = iso(lines[0].at) if lines else None  # the file's own lines end where the ledger's begin
        earlier = [
            {"at": str(entry.get("at", "")), "event": str(entry.get("state") or "")}
            for entry in (kept if isinstance(kept, list) else [])
            if isinstance(entry, dict) and "n" not in entry and (first is None or str(entry.get("at", "")) <= first)
        ]
        return earlier + [{"at": iso(line.at), "event": line.line} for line in lines]

    def note(self, item_id: str, line: str, update: Callable[[dict[str, Any]], None] | None = None) -> None:
        """A line of the item's history that changes no state (what a follow-up did, a pict-rs purge), with
        optional changes to its metadata; the caller holds the item's lock."""
        with self.ledger.transaction():
            self.ledger.history.add(item_id, line, time.time())
        self.sync_meta(item_id, update)


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")
