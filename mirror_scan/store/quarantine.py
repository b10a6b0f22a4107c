"""The quarantine: flagged files kept as evidence, privately, and a way back.

A thin facade over the parts it is made of, each an object of its own that calls the others' public
methods:

    journal.py    item locks, move steps, each item's meta.json (for people and for rebuilding)
    upload_objects.py  the upload's other objects (variants, motion still), moved with the original
    lifecycle.py  the item's states: which event may happen when, and what it writes (the only writer)
    mover.py      into the quarantine: intent -> copied -> placed -> [upstream removed] -> local removed -> done
    restorer.py   back out: intent -> copied -> placed -> [upstream restored] -> done
    recovery.py   the moves of processes that died, finished or rolled back
    item_index.py listings, `reindex` from meta.json, purge

Several processes share one quarantine (the watch daemon, the validator, `quarantine restore` from a
shell). A process working on an item holds that item's lock (`locks/<id>`, flock) for the whole move;
the kernel releases it when the process dies, however it dies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mirror_scan.store.companions import UploadSource
from mirror_scan.store.item_index import ItemIndex
from mirror_scan.store.journal import Journal
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.lifecycle import By, Lifecycle
from mirror_scan.store.mover import Moved, Mover
from mirror_scan.store.recovery import Recovery
from mirror_scan.store.restorer import Restorer
from mirror_scan.store.rows import ItemRow
from mirror_scan.store.upload_objects import UploadObjects
from mirror_scan.store.upstream import Upstream, Upstreams


class Quarantine:
    def __init__(
        self,
        root: Path,
        ledger: Ledger,
        upstreams: Upstreams | None = None,
        follow_up: bool = False,
        uploads: UploadSource | None = None,
    ) -> None:
        self.ledger = ledger
        self.upstreams = upstreams or Upstreams()
        self.journal = Journal(root, ledger)
        self.lifecycle = Lifecycle(self.journal, follow_up)
        self.objects = UploadObjects(self.journal, self.upstreams, uploads)
        self.mover = Mover(self.journal, self.lifecycle, self.upstreams, self.objects)
        self.restorer = Restorer(self.journal, self.lifecycle, self.upstreams, self.objects)
        self.recovery = Recovery(self.journal, self.lifecycle, self.mover, self.restorer)
        self.index = ItemIndex(self.journal, self.lifecycle)

    @property
    def root(self) -> Path:
        return self.journal.root

    @property
    def items(self) -> Path:
        return self.journal.items

    @property
    def follow_up(self) -> bool:
        """New items get an attribution follow-up (a pict-rs or Lemmy source is configured)."""
        return self.lifecycle.follow_up

    @follow_up.setter
    def follow_up(self, value: bool) -> None:
        self.lifecycle.follow_up = value

    @property
    def upstream(self) -> Upstream | None:
        return self.mover.upstream

    def item_lock(self, item_id: str, wait_s: float = 0.0) -> AbstractContextManager[None]:
        return self.journal.item_lock(item_id, wait_s)

    def read_meta(self, item_id: str) -> dict[str, Any]:
        return self.journal.read_meta(item_id)

    def history(self, item_id: str) -> list[dict[str, str]]:
        return self.journal.history(item_id)

    def note_held(self, item_id: str, line: str, **fields: Any) -> None:
        """A line of history (and fields) for an item whose lock the caller holds."""
        self.journal.note(item_id, line, (lambda meta: meta.update(fields)) if fields else None)

    # What the scan, the validator and the bucket scan do to a flagged file.
    def quarantine(self, source: bytes, mirror_root: bytes, sha256: str, evidence: dict[str, Any]) -> Moved:
        return self.mover.quarantine(source, mirror_root, sha256, evidence)

    def take_back_returned(
        self, source: bytes, mirror_root: bytes, sha256: str, evidence: dict[str, Any]
    ) -> Moved | None:
        return self.mover.take_back_returned(source, mirror_root, sha256, evidence)

    def take_back_returned_object(self, remote: str, key: str, sha256: str, evidence: dict[str, Any]) -> Moved | None:
        return self.mover.take_back_returned_object(remote, key, sha256, evidence)

    def quarantine_object(self, remote: str, key: str, sha256: str, evidence: dict[str, Any]) -> Moved:
        return self.mover.quarantine_object(remote, key, sha256, evidence)

    def keep_upload(self, data: bytes, sha256: str, evidence: dict[str, Any]) -> str:
        return self.mover.keep_upload(data, sha256, evidence)

    def drop_returned_copy(self, source: bytes, mirror_root: bytes, sha256: str | None = None) -> str | None:
        return self.mover.drop_returned_copy(source, mirror_root, sha256)

    def take_companion(self, path: bytes, mirror_root: bytes) -> str | None:
        return self.mover.take_companion(path, mirror_root)

    def restore(
        self,
        item_id: str,
        to: Path | None = None,
        upstream: bool = True,
        wait_s: float = 5.0,
        by: By | None = None,
        reimport: bool = False,
    ) -> bytes:
        return self.restorer.restore(item_id, to, upstream, wait_s, by, reimport)

    def recover(self) -> list[str]:
        return self.recovery.recover()

    def purge(self, item_id: str, by: By | None = None) -> None:
        self.index.purge(item_id, by)

    def entries(self, since: float | None = None, states: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
        return self.index.entries(since, states)

    @staticmethod
    def entry(row: ItemRow) -> dict[str, Any]:
        return ItemIndex.entry(row)

    def reindex(self, mirror_root: bytes | None = None) -> tuple[int, list[str]]:
        return self.index.reindex(mirror_root)

    def expire_canaries(self, older_than_s: float, now: float | None = None) -> list[str]:
        return self.index.expire_canaries(older_than_s, now)

    def record_pictrs_purge(self, item_id: str, alias: str, note: str) -> None:
        self.index.record_pictrs_purge(item_id, alias, note)
