"""The ledger's follow-up vocabulary: the journal of what follows a quarantine or a restore, and the
attributions it fills in. Shares the ledger's connection and transactions (`ledger.follow_ups`)."""

from __future__ import annotations

import json
import time

from mirror_scan.store.rows import FOLLOWUP_COLUMNS, FollowupRow
from mirror_scan.store.vocabulary import Vocabulary


class FollowupTables(Vocabulary):
    def add_followup(
        self,
        item_id: str,
        action: str,
        target: str = "",
        *,
        plan: bool = False,
        state: str = "pending",
        error: str | None = None,
    ) -> None:
        """Inside the caller's transaction (the quarantine or restore that causes it); once per
        (item, action, target). state 'skipped' (with why, in error): an action Lemmy would refuse."""
        self.begin()
        now = time.time()
        self.db.execute(
            "INSERT OR IGNORE INTO followups (item, action, target, state, plan, next_try, error, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, action, target, state, int(plan), now, error, now, now),
        )

    def followups(self, item_id: str) -> list[FollowupRow]:
        rows = self.db.execute(
            f"SELECT {FOLLOWUP_COLUMNS} FROM followups WHERE item=? ORDER BY id",
            (item_id,),  # noqa: S608
        )
        return [FollowupRow(*r) for r in rows]

    def due_followups(self, now: float, limit: int = 100) -> list[FollowupRow]:
        rows = self.db.execute(
            f"SELECT {FOLLOWUP_COLUMNS} FROM followups WHERE state='pending' AND next_try <= ? "  # noqa: S608
            "ORDER BY next_try, id LIMIT ?",
            (now, limit),
        )
        return [FollowupRow(*r) for r in rows]

    def followup(self, followup_id: int) -> FollowupRow | None:
        row = self.db.execute(
            f"SELECT {FOLLOWUP_COLUMNS} FROM followups WHERE id=?",
            (followup_id,),  # noqa: S608
        ).fetchone()
        return None if row is None else FollowupRow(*row)

    def pending_followup_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM followups WHERE state='pending'").fetchone()[0])

    def finish_followup(
        self,
        followup_id: int,
        state: str,
        *,
        result: str | None = None,
        error: str | None = None,
        next_try: float | None = None,
        attempted: bool = True,
    ) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE followups SET state=?, result=coalesce(?, result), error=?, attempts=attempts+?, "
                "next_try=coalesce(?, next_try), updated=? WHERE id=?",
                (state, result, error, int(attempted), next_try, time.time(), followup_id),
            )

    def retry_followups(self, item_id: str | None = None, refused: bool = True) -> int:
        """Make pending (and, with refused=True, refused) follow-ups due now; returns how many."""
        states = ("pending", "refused") if refused else ("pending",)
        sql = (
            "UPDATE followups SET state='pending', next_try=?, updated=? "
            f"WHERE state IN ({','.join('?' * len(states))})"
        )
        params: list = [time.time(), time.time(), *states]
        if item_id is not None:
            sql += " AND item=?"
            params.append(item_id)
        with self.transaction():
            return self.db.execute(sql, params).rowcount

    def put_attribution(self, item_id: str, data: dict) -> None:
        self.begin()
        self.db.execute(
            "INSERT INTO attributions VALUES (?, ?, ?) ON CONFLICT(item) DO UPDATE SET data=excluded.data, "
            "updated=excluded.updated",
            (item_id, json.dumps(data, ensure_ascii=False), time.time()),
        )

    def attribution(self, item_id: str) -> dict | None:
        row = self.db.execute("SELECT data FROM attributions WHERE item=?", (item_id,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return None

    def cancel_followups(self, item_id: str, why: str) -> list[tuple[str, str, str | None]]:
        """Cancel an item's follow-ups not done yet (attribution stays); returns (action, target, result)
        of those that were done (a restore queues their undo: store/lifecycle.py)."""
        self.begin()
        self.db.execute(
            "UPDATE followups SET state='cancelled', updated=?, error=? "
            "WHERE item=? AND state IN ('pending', 'dry_run') AND action != 'attribute'",
            (time.time(), why, item_id),
        )
        return self.db.execute(
            "SELECT action, target, result FROM followups WHERE item=? AND state='done'", (item_id,)
        ).fetchall()
