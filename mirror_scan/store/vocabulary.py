"""A part of the ledger's vocabulary (results, hash lists, follow-ups): its own methods over the ledger's
one connection and its transactions, so the ledger is split by subject without a second connection."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mirror_scan.store.ledger import Ledger


class Vocabulary:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @property
    def db(self) -> sqlite3.Connection:
        return self.ledger.db

    def begin(self) -> None:
        self.ledger.begin()

    def transaction(self):
        return self.ledger.transaction()
