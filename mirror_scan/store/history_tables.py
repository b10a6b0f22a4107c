"""The ledger's item history (`ledger.history`): one line per thing that happened to a quarantine item (its
transitions, the decisions made on it, what its follow-ups did), written in the transaction that made it
happen. The item's meta.json carries the same lines for people and for rebuilding a lost ledger."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from mirror_scan.store.vocabulary import Vocabulary


@dataclass(frozen=True)
class HistoryLine:
    id: int
    item: str
    at: float
    line: str


class HistoryTables(Vocabulary):
    def add(self, item_id: str, line: str, at: float) -> None:
        """Inside the caller's transaction; the item's meta.json is behind until it catches up."""
        self.begin()
        self.db.execute("INSERT INTO item_history (item, at, line) VALUES (?, ?, ?)", (item_id, at, line))
        self.mark_behind(item_id)

    def mark_behind(self, item_id: str) -> None:
        """The item changed in this transaction: its meta.json is to catch up (Journal.sync_meta); a crash
        before it does leaves the mark, and recovery brings the file up to date."""
        self.begin()
        self.db.execute("UPDATE quarantine SET meta_behind=1 WHERE id=?", (item_id,))

    def caught_up(self, item_id: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE quarantine SET meta_behind=0 WHERE id=? AND meta_behind=1", (item_id,))

    def behind(self) -> list[str]:
        """Items whose meta.json has not caught up with the ledger."""
        try:
            return [i for (i,) in self.db.execute("SELECT id FROM quarantine WHERE meta_behind=1 ORDER BY id")]
        except sqlite3.OperationalError as err:  # a ledger from before the mark, read before any writer
            if "no such column" in str(err):
                return []
            raise

    def of(self, item_id: str) -> list[HistoryLine]:
        """An item's history, oldest first (none in a ledger from before it kept one, read before any writer
        added the table)."""
        try:
            rows = self.db.execute("SELECT id, item, at, line FROM item_history WHERE item=? ORDER BY id", (item_id,))
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise
        return [HistoryLine(*row) for row in rows]
