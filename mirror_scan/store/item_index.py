"""The quarantine's index: items listed from the ledger, rebuilt from meta.json (never overriding the
ledger), purged. Part of Quarantine (store/quarantine.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mirror_scan.errors import MirrorScanError
from mirror_scan.hashing import sha256_file
from mirror_scan.kinds import HELD_STATES, ItemState, Step
from mirror_scan.store.items import (
    DATA,
    META_FORMAT,
    QuarantineError,
    _claims,
    _now_iso,
    _unb64,
    file_key,
    item_origin,
    meta_disagreement,
)
from mirror_scan.store.paths import (
    check_relative,
)
from mirror_scan.store.rows import ItemRow, display_path

log = logging.getLogger(__name__)


class ItemIndex:
    """The index half of the Quarantine (a mixin)."""

    def _index(self, meta: dict[str, Any]) -> None:
        self.ledger.insert_item(
            {
                "id": meta["id"],
                "dir": os.fsencode(self.items / meta["id"]),
                "sha256": meta["sha256"],
                "size": meta["size"],
                "original": os.path.join(_unb64(meta["mirror_root_b64"]), _unb64(meta["original_b64"]))
                if meta["original_b64"]
                else b"",
                "mirror_root": _unb64(meta["mirror_root_b64"]),
                "remote": meta.get("remote"),
                "key": meta.get("key"),
                "state": meta["state"],
                "reason": json.dumps(meta.get("verdict")),
                "created": dt.datetime.fromisoformat(meta["quarantined_at"]).timestamp(),
                "updated": time.time(),
            },
        )

    def reindex(self, mirror_root: bytes | None = None) -> tuple[int, list[str]]:
        """Rebuild the index from the metadata files after losing the state database. Items the ledger
        already knows are left as the ledger records them (it is the authority; a metadata file that
        disagrees is reported, never imported); a new item is imported only if it passes the checks a
        restore makes: a stored path inside its root, bytes that hash to the recorded sha256, a known
        state, and (with `mirror_root`) that root. Returns (items indexed, problems)."""
        count, problems = 0, []
        for item_dir in sorted(self.items.iterdir()):
            try:
                meta = self.read_meta(item_dir.name)
                if meta.get("format") != META_FORMAT or meta.get("id") != item_dir.name:
                    raise QuarantineError("not a mirror-scan quarantine item")
                known = self.ledger.item(item_dir.name)
                if known is not None:
                    differing = meta_disagreement(known, meta)
                    if differing:
                        problems.append(
                            f"{item_dir.name}: its metadata file disagrees with the ledger on "
                            f"{', '.join(differing)}; the ledger's record is kept"
                        )
                    elif (
                        isinstance(meta.get("attribution"), dict)
                        and self.ledger.follow_ups.attribution(known.id) is None
                    ):
                        with self.ledger.transaction():  # filled in where the ledger lost it, never replaced
                            self.ledger.follow_ups.put_attribution(known.id, meta["attribution"])
                    continue
                self._check_importable(item_dir, meta, mirror_root)
                with self.ledger.transaction():
                    self._index(meta)
                    if isinstance(meta.get("attribution"), dict):  # the item's own copy rebuilds the ledger's
                        self.ledger.follow_ups.put_attribution(meta["id"], meta["attribution"])
                count += 1
            except (MirrorScanError, KeyError, ValueError, TypeError) as err:
                problems.append(f"{item_dir.name}: {err}")
        return count, problems

    def _check_importable(self, item_dir: Path, meta: dict[str, Any], mirror_root: bytes | None) -> None:
        claims = _claims(meta)
        if meta.get("state") not in {str(s) for s in ItemState}:
            raise QuarantineError(f"unknown state {meta.get('state')!r}; not imported")
        if not isinstance(claims["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", claims["sha256"]):
            raise QuarantineError("no valid sha256; not imported")
        if claims["original"]:
            if not os.path.isabs(claims["mirror_root"]):
                raise QuarantineError("its mirror root is not an absolute path; not imported")
            check_relative(_unb64(meta["original_b64"]))
            if mirror_root is not None and os.path.realpath(claims["mirror_root"]) != os.path.realpath(mirror_root):
                raise QuarantineError(
                    f"it came from {display_path(claims['mirror_root'])}, not the mirror given; not imported"
                )
        if claims["key"] is not None:
            check_relative(os.fsencode(claims["key"]))
        data = item_dir / DATA
        if meta["state"] == ItemState.PURGED:
            if data.exists():
                raise QuarantineError("marked purged but its bytes are still there; not imported")
        elif not data.is_file() or sha256_file(data) != claims["sha256"]:
            raise QuarantineError("its bytes are missing or do not hash to its recorded sha256; not imported")

    def entries(self, since: float | None = None, states: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
        for row in self.ledger.items(since, states):
            yield self.entry(row)

    @staticmethod
    def entry(row: ItemRow) -> dict[str, Any]:
        """One item as listings show it (`quarantine list`, the console), from its ledger row."""
        return {
            "id": row.id,
            "quarantined_at": dt.datetime.fromtimestamp(row.created, dt.UTC).isoformat(timespec="seconds"),
            "original": display_path(file_key(row)) or "(rejected upload)",
            "state": row.state,
            "reason": json.loads(row.reason) if row.reason else None,
            "sha256": row.sha256,
            "size": row.size,
            "remote": row.remote,
            "key": row.key,
            "source": item_origin(row) or "mirror",
            "seen_count": row.seen_count,
        }

    def record_pictrs_purge(self, item_id: str, alias: str, note: str) -> None:
        """Write down what was purged from pict-rs (irreversible), in the item's own metadata."""
        with self.item_lock(item_id, wait_s=5.0):
            meta = self.read_meta(item_id)
            meta.setdefault("pictrs_purged", []).append({"alias": alias, "result": note, "at": _now_iso()})
            meta.setdefault("history", []).append({"state": f"pict-rs purge of {alias}: {note}", "at": _now_iso()})
            self._write_meta(self.items / item_id, meta)

    def expire_canaries(self, older_than_s: float, now: float | None = None) -> list[str]:
        """Purge the canary items (the harmless test picture) quarantined longer ago than `older_than_s`,
        once they are fully quarantined (an item still waiting for its upstream removal keeps its bytes:
        purging it would leave the canary in the bucket). Never a restore: that would allowlist the canary,
        and it would never be flagged again. Returns the ids purged."""
        from mirror_scan.lists.canary import CANARY_LIST

        if older_than_s <= 0:
            return []
        cutoff = (now or time.time()) - older_than_s
        purged = []
        for row in self.ledger.items(states=(str(ItemState.QUARANTINED),)):
            try:
                listed = (json.loads(row.reason) if row.reason else {}).get("hash_list")
            except (ValueError, AttributeError):
                continue
            if listed != CANARY_LIST or row.created > cutoff:
                continue
            try:
                self.purge(row.id)
            except MirrorScanError as error:  # busy or moved meanwhile: the next round takes it
                log.info("canary %s is not purged yet: %s", row.id, error)
                continue
            purged.append(row.id)
        return purged

    def purge(self, item_id: str) -> None:
        """Delete an item's bytes permanently; keep a tombstone (metadata, state 'purged')."""
        with self.item_lock(item_id, wait_s=5.0):
            row = self.ledger.item(item_id)
            if row is None or row.state not in (*HELD_STATES, ItemState.RESTORED):
                raise QuarantineError(f"item {item_id} cannot be purged (it is {row.state if row else 'unknown'})")
            if row.state in (ItemState.QUARANTINING, ItemState.RESTORING):
                raise QuarantineError(f"item {item_id} is being moved right now; purge it afterwards")
            with self.ledger.transaction():
                for move in self.ledger.unfinished_moves(item_id):
                    # A removal pending upstream of a file the operator purges: the mirror file stays.
                    self.ledger.set_step(move.id, Step.ROLLED_BACK, note="superseded by a purge")
            (self.items / item_id / DATA).unlink(missing_ok=True)
            self._note_in_meta(item_id, ItemState.PURGED, "purged")
            with self.ledger.transaction():
                self.ledger.set_item_state(item_id, ItemState.PURGED)
