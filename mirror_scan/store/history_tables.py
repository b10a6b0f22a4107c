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
        """Inside the caller's transaction."""
        self.begin()
        self.db.execute("INSERT INTO item_history (item, at, line) VALUES (?, ?, ?)", (item_id, at, line))

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

    def forget(self, item_id: str) -> None:
        """A quarantine rolled back before its item existed for anyone: nothing of it stays."""
        self.begin()
        self.db.execute("DELETE FROM item_history WHERE item=?", (item_id,))
