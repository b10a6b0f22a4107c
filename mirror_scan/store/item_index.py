"""The quarantine's index: items listed from the ledger, rebuilt from meta.json (never overriding the
ledger), purged (the bytes deleted for good, a tombstone kept)."""

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
from mirror_scan.faults import checkpoint
from mirror_scan.hashing import sha256_file
from mirror_scan.kinds import ItemEvent, ItemState
from mirror_scan.store.content import SEALED_DATA
from mirror_scan.store.items import (
    DATA,
    META_FORMAT,
    QuarantineError,
    claims_of,
    file_key,
    item_origin,
    meta_disagreement,
    unb64,
)
from mirror_scan.store.journal import Journal, iso
from mirror_scan.store.lifecycle import By, Lifecycle
from mirror_scan.store.paths import check_relative
from mirror_scan.store.rows import ItemRow, display_path
from mirror_scan.store.sealing import SEALED_SUFFIX

log = logging.getLogger(__name__)


class ItemIndex:
    def __init__(self, journal: Journal, lifecycle: Lifecycle) -> None:
        self.journal = journal
        self.lifecycle = lifecycle
        self.ledger = journal.ledger

    def _import(self, meta: dict[str, Any]) -> None:
        """An item the ledger does not know, from its checked metadata file, in the caller's transaction."""
        root = unb64(meta["mirror_root_b64"])
        fields = {
            "id": meta["id"],
            "dir": os.fsencode(self.journal.item_dir(meta["id"])),
            "sha256": meta["sha256"],
            "size": meta["size"],
            "original": os.path.join(root, unb64(meta["original_b64"])) if meta["original_b64"] else b"",
            "mirror_root": root,
            "remote": meta.get("remote"),
            "key": meta.get("key"),
            "state": meta["state"],
            "reason": json.dumps(meta.get("verdict")),
            "created": dt.datetime.fromisoformat(meta["quarantined_at"]).timestamp(),
            "updated": time.time(),
            **_content_fields(meta),
        }
        lines = []
        for entry in meta.get("history") or []:
            try:
                lines.append((dt.datetime.fromisoformat(entry["at"]).timestamp(), str(entry["state"])))
            except (KeyError, TypeError, ValueError):
                continue  # a line of history that does not parse is not worth refusing the item for
        self.lifecycle.import_item(fields, lines)
        self._import_companions(meta)

    def _import_companions(self, meta: dict[str, Any]) -> None:
        """The upload's other objects the metadata file lists: held (or taken, as it says) where their bytes are
        in the item and hash to what it records, else listed (the next restore or retry looks for them again)."""
        from mirror_scan.store.companions import COMPANIONS

        item_id = meta["id"]
        companions = meta.get("companions")
        if isinstance(meta.get("pictrs_hash"), str):
            self.ledger.objects.set_hash(item_id, meta["pictrs_hash"], [])
        if not isinstance(companions, list):
            return
        root = unb64(meta["mirror_root_b64"]) if meta.get("original_b64") else b""
        for entry in companions:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                continue
            key, sha = entry["key"], entry.get("sha256")
            try:
                check_relative(os.fsencode(key))
            except MirrorScanError:
                continue  # a key that would lead outside the mirror is not imported
            role = entry.get("role") if entry.get("role") in ("variant", "motion", "original") else "variant"
            variant = entry.get("variant") if isinstance(entry.get("variant"), str) else None
            self.ledger.objects.add(item_id, key, role, variant, os.path.join(root, os.fsencode(key)) if root else b"")
            if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                continue
            sealed = entry.get("sealed_sha256") if isinstance(entry.get("sealed_sha256"), str) else None
            held = self.journal.item_dir(item_id) / COMPANIONS / (sha + SEALED_SUFFIX if sealed else sha)
            if held.is_file() and sha256_file(held) == (sealed or sha):
                md5 = entry.get("md5") if isinstance(entry.get("md5"), str) else None
                size = entry.get("size") if sealed and isinstance(entry.get("size"), int) else held.stat().st_size
                self.ledger.objects.held(item_id, key, sha, size, md5, sealed)
                if entry.get("state") == "taken":  # out of the bucket and the mirror when it was written
                    self.ledger.objects.taken(item_id, [key])

    def reindex(self, mirror_root: bytes | None = None) -> tuple[int, list[str]]:
        """Rebuild the index from the metadata files after losing the state database. Items the ledger
        already knows are left as the ledger records them (it is the authority; a metadata file that
        disagrees is reported, never imported); a new item is imported only if it passes the checks a
        restore makes: a stored path inside its root, bytes that hash to the recorded sha256, a known
        state, and (with `mirror_root`) that root. Returns (items indexed, problems)."""
        count, problems = 0, []
        for item_dir in sorted(self.journal.items.iterdir()):
            try:
                meta = self.journal.read_meta(item_dir.name)
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
                    self._import(meta)
                    if isinstance(meta.get("attribution"), dict):  # the item's own copy rebuilds the ledger's
                        self.ledger.follow_ups.put_attribution(meta["id"], meta["attribution"])
                self.journal.sync_meta(meta["id"], rewrite=True)  # its lines, now under the ledger's ids
                count += 1
            except (MirrorScanError, KeyError, ValueError, TypeError) as err:
                problems.append(f"{item_dir.name}: {err}")
        return count, problems

    def _check_importable(self, item_dir: Path, meta: dict[str, Any], mirror_root: bytes | None) -> None:
        claims = claims_of(meta)
        if meta.get("state") not in {str(s) for s in ItemState}:
            raise QuarantineError(f"unknown state {meta.get('state')!r}; not imported")
        if not isinstance(claims["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", claims["sha256"]):
            raise QuarantineError("no valid sha256; not imported")
        if claims["original"]:
            if not os.path.isabs(claims["mirror_root"]):
                raise QuarantineError("its mirror root is not an absolute path; not imported")
            check_relative(unb64(meta["original_b64"]))
            if mirror_root is not None and os.path.realpath(claims["mirror_root"]) != os.path.realpath(mirror_root):
                raise QuarantineError(
                    f"it came from {display_path(claims['mirror_root'])}, not the mirror given; not imported"
                )
        if claims["key"] is not None:
            check_relative(os.fsencode(claims["key"]))
        sealed = claims["sealed"]  # (recipient, sha256 of data.age): its plaintext is checked when it is opened
        data = item_dir / (SEALED_DATA if sealed else DATA)
        if meta["state"] == ItemState.PURGED:
            if data.exists():
                raise QuarantineError("marked purged but its bytes are still there; not imported")
        elif not data.is_file() or sha256_file(data) != (sealed[1] if sealed else claims["sha256"]):
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
        """Write down what was purged from pict-rs (irreversible), in the item's history and metadata."""

        def purged(meta: dict[str, Any]) -> None:
            meta.setdefault("pictrs_purged", []).append({"alias": alias, "result": note, "at": iso(time.time())})

        with self.journal.item_lock(item_id, wait_s=5.0):
            self.journal.note(item_id, f"pict-rs purge of {alias}: {note}", purged)

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

    def purge(self, item_id: str, by: By | None = None) -> None:
        """Delete an item's bytes permanently; keep a tombstone (metadata, state 'purged'). A removal still
        pending upstream is given up (the mirror file stays)."""
        with self.journal.item_lock(item_id, wait_s=5.0):
            self.lifecycle.apply(item_id, ItemEvent.PURGED, by=by)  # recorded first: then the bytes go
            checkpoint("purge:recorded")
            delete_bytes(self.journal.item_dir(item_id))


def _content_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """How a metadata file says the item holds its bytes (checked by _check_importable)."""
    sealed = claims_of(meta)["sealed"]
    md5 = meta.get("md5")
    if md5 is not None and not (isinstance(md5, str) and re.fullmatch(r"[0-9a-f]{32}", md5)):
        raise QuarantineError("its md5 is not one; not imported")
    return {"md5": md5, "sealed_to": sealed[0] if sealed else None, "sealed_sha256": sealed[1] if sealed else None}


def delete_bytes(item_dir: Path) -> None:
    """A purged item's bytes, its companions' too (recovery calls this again for a purge a crash cut short)."""
    from mirror_scan.atomic import fsync_dir
    from mirror_scan.store.companions import COMPANIONS

    (item_dir / DATA).unlink(missing_ok=True)
    (item_dir / SEALED_DATA).unlink(missing_ok=True)
    companions = item_dir / COMPANIONS
    if companions.is_dir():
        for held in companions.iterdir():
            held.unlink(missing_ok=True)
        companions.rmdir()
    if item_dir.exists():
        fsync_dir(item_dir)
