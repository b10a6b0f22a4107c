"""The ledger's companion vocabulary (`ledger.objects`): the objects of each quarantine item besides its
original (variants, motion stills: store/companions.py), and pict-rs's hash of each item's upload."""

from __future__ import annotations

import contextlib
import json
import sqlite3

from mirror_scan.kinds import HELD_STATES
from mirror_scan.store.companions import ItemObject
from mirror_scan.store.vocabulary import Vocabulary

OBJECT_COLUMNS = "item, key, role, variant, path, sha256, size, state, md5, sealed_sha256"


class ObjectTables(Vocabulary):
    def add(self, item_id: str, key: str, role: str, variant: str | None, path: bytes) -> bool:
        """A companion found for an item (state listed), in the caller's transaction; False if known."""
        self.begin()
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO item_objects (item, key, role, variant, path, state) "
            "VALUES (?, ?, ?, ?, ?, 'listed')",
            (item_id, key, role, variant, path),
        )
        return bool(cursor.rowcount)

    def held(self, item_id: str, key: str, sha256: str, size: int, md5: str | None = None,
             sealed_sha256: str | None = None) -> None:  # fmt: skip
        """Its bytes are in the item, verified (still to leave the bucket and the mirror)."""
        self.begin()
        self.db.execute(
            "UPDATE item_objects SET sha256=?, size=?, md5=?, sealed_sha256=?, state='held' WHERE item=? AND key=?",
            (sha256, size, md5, sealed_sha256, item_id, key),
        )

    def set_sealed(self, item_id: str, sha256: str, md5: str, sealed_sha256: str) -> None:
        """Every companion of the item with these bytes is now held sealed (`quarantine seal`)."""
        self.begin()
        self.db.execute("UPDATE item_objects SET md5=?, sealed_sha256=? WHERE item=? AND sha256=?",
                        (md5, sealed_sha256, item_id, sha256))  # fmt: skip
        self.ledger.history.mark_behind(item_id)

    def taken(self, item_id: str, keys: list[str]) -> None:
        """Out of the bucket and the mirror: the item holds the only copy."""
        self.begin()
        self.db.executemany("UPDATE item_objects SET state='taken' WHERE item=? AND key=? AND state='held'",
                            [(item_id, key) for key in keys])  # fmt: skip
        self.ledger.history.mark_behind(item_id)

    def relist(self, item_id: str, key: str) -> None:
        """To be copied again (its object holds other bytes than the item's copy)."""
        self.begin()
        self.db.execute("UPDATE item_objects SET state='listed' WHERE item=? AND key=? AND state='held'",
                        (item_id, key))  # fmt: skip

    def missing(self, item_id: str, key: str) -> None:
        self.begin()
        self.db.execute("UPDATE item_objects SET state='missing' WHERE item=? AND key=? AND state='listed'",
                        (item_id, key))  # fmt: skip
        self.ledger.history.mark_behind(item_id)

    def set_pending(self, item_id: str, pending: bool) -> None:
        """The item's upload could not be listed (or an object of it not copied) the last time: looked for
        again (`UploadObjects.settle`)."""
        self.begin()
        self.db.execute("UPDATE quarantine SET objects_pending=? WHERE id=?", (int(pending), item_id))

    def pending(self, item_id: str) -> bool:
        row = self.db.execute("SELECT objects_pending FROM quarantine WHERE id=?", (item_id,)).fetchone()
        return bool(row and row[0])

    def unsettled(self) -> list[str]:
        """Quarantined items with objects still to find, copy or remove."""
        return [
            i
            for (i,) in self.db.execute(
                "SELECT id FROM quarantine WHERE state='quarantined' AND (objects_pending=1 OR id IN "
                "(SELECT item FROM item_objects WHERE state IN ('listed', 'held'))) ORDER BY id"
            )
        ]

    def forget(self, item_id: str) -> None:
        self.begin()
        self.db.execute("DELETE FROM item_objects WHERE item=?", (item_id,))

    def of(self, item_id: str) -> list[ItemObject]:
        """An item's companions (none in a ledger from before they were kept, read before any writer)."""
        try:
            rows = self.db.execute(f"SELECT {OBJECT_COLUMNS} FROM item_objects WHERE item=? ORDER BY key", (item_id,))  # noqa: S608
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise
        return [ItemObject(*row) for row in rows]

    def item_holding(self, key: str) -> str | None:
        """The held item one of whose companions has this key."""
        row = self.db.execute(
            f"SELECT o.item FROM item_objects o JOIN quarantine q ON q.id = o.item WHERE o.key=? "  # noqa: S608
            f"AND q.state IN ({','.join('?' * len(HELD_STATES))}) ORDER BY q.created DESC LIMIT 1",
            (key, *HELD_STATES),
        ).fetchone()
        return None if row is None else row[0]

    def set_hash(self, item_id: str, pictrs_hash: str, aliases: list[str]) -> None:
        """pict-rs's hash of the item's upload and its aliases, in the caller's transaction."""
        self.begin()
        self.db.execute("UPDATE quarantine SET pictrs_hash=?, pictrs_aliases=coalesce(?, pictrs_aliases) WHERE id=?",
                        (pictrs_hash, json.dumps(aliases) if aliases else None, item_id))  # fmt: skip

    def aliases_of(self, item_id: str) -> list[str]:
        """The aliases pict-rs had for the item's upload when it was quarantined, and those attribution found."""
        row = self.db.execute("SELECT pictrs_aliases FROM quarantine WHERE id=?", (item_id,)).fetchone()
        found: list[str] = []
        with contextlib.suppress(TypeError, ValueError):
            found = [a for a in json.loads(row[0]) if isinstance(a, str)] if row and row[0] else []
        attributed = self.ledger.follow_ups.attribution(item_id) or {}
        for alias in attributed.get("aliases") or []:
            if isinstance(alias, str) and alias not in found:
                found.append(alias)
        return found

    def hash_of(self, item_id: str) -> str | None:
        row = self.db.execute("SELECT pictrs_hash FROM quarantine WHERE id=?", (item_id,)).fetchone()
        return None if row is None else row[0]

    def held_hashes(self) -> dict[str, str]:
        """pict-rs hash -> the held item whose upload it is."""
        rows = self.db.execute(
            f"SELECT pictrs_hash, id FROM quarantine WHERE pictrs_hash IS NOT NULL "  # noqa: S608
            f"AND state IN ({','.join('?' * len(HELD_STATES))}) ORDER BY created",
            HELD_STATES,
        )
        return {h: item for h, item in rows}
