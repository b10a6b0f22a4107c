"""The ledger's review vocabulary (`ledger.reviews`): who decided what about an item (restore, confirm, ban)
and the review console's people: local accounts, API tokens and sessions.

Secrets are never stored: passwords as argon2 hashes (made by the caller), API tokens and session
cookies as their sha256 (they are 256-bit random values, so a plain hash cannot be reversed or guessed).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from mirror_scan.store.vocabulary import Vocabulary


@dataclass(frozen=True)
class Decision:
    id: int
    item: str
    decision: str  # restore | confirm | ban | unban
    who: str  # "alice (lemmy admin)", "shell:root", "token:nightly"
    via: str  # console | api | shell
    at: float
    outcome: str  # done | pending: ... | failed: ...
    note: str | None


@dataclass(frozen=True)
class Session:
    who: str
    kind: str  # local | lemmy
    admin: bool
    communities: frozenset[str]  # the actor URLs of the communities a Lemmy moderator moderates
    csrf: str
    expires: float


_DECISION_COLUMNS = "id, item, decision, who, via, at, outcome, note"


class ReviewTables(Vocabulary):
    # ------------------------------------------------------------------ decisions

    def record_decision(
        self, item_id: str, decision: str, who: str, via: str, outcome: str, note: str | None = None
    ) -> int:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO decisions (item, decision, who, via, at, outcome, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item_id, decision, who, via, time.time(), outcome, note),
            )
        return int(cursor.lastrowid or 0)

    def decisions(self, item_id: str | None = None, limit: int = 200) -> list[Decision]:
        """An item's decisions, oldest first; or the newest `limit` decisions of all items, newest first."""
        if item_id is not None:
            rows = self.db.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE item=? ORDER BY id",  # noqa: S608
                (item_id,),
            )
        else:
            rows = self.db.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions ORDER BY id DESC LIMIT ?",  # noqa: S608
                (limit,),
            )
        return [Decision(*r) for r in rows]

    # ------------------------------------------------------------------ holds

    def hold(self, item_id: str, until: float | None, why: str, who: str, at: float | None = None) -> None:
        """An item held from purge until `until` (None: until released). A new hold replaces the last; a
        release is a hold that ended now. Inside the caller's transaction or its own."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO holds (item, until, why, who, at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(item) DO UPDATE "
                "SET until=excluded.until, why=excluded.why, who=excluded.who, at=excluded.at",
                (item_id, until, why, who, time.time() if at is None else at),
            )

    def hold_of(self, item_id: str) -> tuple[float | None, str, str, float] | None:
        """(until, why, who, at) of the item's explicit hold or release, or None. A database older than
        schema 10, opened read-only, has no holds table: no holds."""
        try:
            row = self.db.execute("SELECT until, why, who, at FROM holds WHERE item=?", (item_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else (row[0], row[1], row[2], row[3])

    def confirmed_items(self) -> set[str]:
        """Items whose latest successful confirm or restore decision is a confirm."""
        rows = self.db.execute(
            "SELECT item, decision FROM decisions WHERE decision IN ('confirm', 'restore') AND outcome='done' "
            "ORDER BY id"
        )
        last: dict[str, str] = {}
        for item, decision in rows:
            last[item] = decision
        return {item for item, decision in last.items() if decision == "confirm"}

    # ------------------------------------------------------------------ local accounts

    def put_user(self, name: str, password_hash: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO console_users (name, password_hash, created) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET password_hash=excluded.password_hash",
                (name, password_hash, time.time()),
            )
            # a new password ends the account's sessions (someone else may have known the old one)
            self.db.execute("DELETE FROM console_sessions WHERE kind='local' AND who=?", (name,))

    def user_hash(self, name: str) -> tuple[str, str] | None:
        """(the account's name as stored, its password hash) for a name in any case."""
        row = self.db.execute(
            "SELECT name, password_hash FROM console_users WHERE name=? COLLATE NOCASE", (name,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def users(self) -> list[tuple[str, float]]:
        return [(r[0], r[1]) for r in self.db.execute("SELECT name, created FROM console_users ORDER BY name")]

    def remove_user(self, name: str) -> bool:
        with self.transaction():
            gone = self.db.execute("DELETE FROM console_users WHERE name=?", (name,)).rowcount
            self.db.execute("DELETE FROM console_sessions WHERE kind='local' AND who=?", (name,))
        return bool(gone)

    # ------------------------------------------------------------------ API tokens

    def put_token(self, name: str, token_hash: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO console_tokens (name, token_hash, created) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET token_hash=excluded.token_hash, created=excluded.created, "
                "last_used=NULL",
                (name, token_hash, time.time()),
            )

    def token_name(self, token_hash: str) -> str | None:
        row = self.db.execute("SELECT name FROM console_tokens WHERE token_hash=?", (token_hash,)).fetchone()
        return row[0] if row else None

    def tokens(self) -> list[tuple[str, float, float | None]]:
        return [tuple(r) for r in self.db.execute("SELECT name, created, last_used FROM console_tokens ORDER BY name")]

    def token_used(self, name: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE console_tokens SET last_used=? WHERE name=?", (time.time(), name))

    def remove_token(self, name: str) -> bool:
        with self.transaction():
            return bool(self.db.execute("DELETE FROM console_tokens WHERE name=?", (name,)).rowcount)

    # ------------------------------------------------------------------ sessions

    def open_session(self, token_hash: str, session: Session) -> None:
        with self.transaction():
            now = time.time()
            self.db.execute("DELETE FROM console_sessions WHERE expires < ?", (now,))
            self.db.execute(
                "INSERT INTO console_sessions (token_hash, who, kind, admin, communities, csrf, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (token_hash, session.who, session.kind, int(session.admin), json.dumps(sorted(session.communities)),
                 session.csrf, now, session.expires),
            )  # fmt: skip

    def session(self, token_hash: str) -> Session | None:
        row = self.db.execute(
            "SELECT who, kind, admin, communities, csrf, expires FROM console_sessions WHERE token_hash=? "
            "AND expires >= ?",
            (token_hash, time.time()),
        ).fetchone()
        if row is None:
            return None
        who, kind, admin, communities, csrf, expires = row
        return Session(who, kind, bool(admin), frozenset(json.loads(communities)), csrf, expires)

    def close_session(self, token_hash: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM console_sessions WHERE token_hash=?", (token_hash,))
