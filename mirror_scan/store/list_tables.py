"""The ledger's hash-list vocabulary: picture hashes of scored bytes, imported lists, subscriptions
and pushes. Shares the ledger's connection and transactions (`ledger.lists`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from mirror_scan.store.schema import DECIDED_SQL, EXPORTED_SQL
from mirror_scan.store.vocabulary import Vocabulary


class ListTables(Vocabulary):
    def put_picture_hashes(
        self,
        sha256: str,
        md5: str | None,
        pdq: list[tuple[str, int]] | None,
        variants: list[str] | None = None,
        video: list[tuple[str, int, float]] | None = None,
    ) -> None:
        """md5 of the bytes, the PDQ of each scored frame with its 8 rotations and mirror images (frame -1
        holds the md5 alone when no frame could be hashed), and a video's vPDQ (a PDQ per second)."""
        if video:
            self.begin()
            self.db.executemany(
                "INSERT OR REPLACE INTO video_hashes VALUES (?,?,?,?,?)",
                [(sha256, i, h, q, t) for i, (h, q, t) in enumerate(video)],
            )
        pdq, variants = pdq or [], variants or []
        per_frame = len(variants) == 8 * len(pdq)
        rows = [
            (sha256, i, md5, h, q, " ".join(variants[8 * i : 8 * i + 8]) if per_frame else None)
            for i, (h, q) in enumerate(pdq)
        ] or [(sha256, -1, md5, None, None, None)]
        self.begin()
        self.db.executemany(
            "INSERT OR REPLACE INTO picture_hashes (sha256, frame, md5, pdq, quality, variants) VALUES (?,?,?,?,?,?)",
            rows,
        )

    def picture_hashes(self, sha256: str) -> tuple[str | None, list[tuple[str, int]], list[str] | None]:
        """(md5, [(pdq, quality)] per frame, every frame's 8 variants in frame order or None if not kept)."""
        rows = self.db.execute(
            "SELECT md5, pdq, quality, variants FROM picture_hashes WHERE sha256=? ORDER BY frame", (sha256,)
        ).fetchall()
        md5 = next((r[0] for r in rows if r[0]), None)
        frames = [r for r in rows if r[1]]
        variants = [v for r in frames for v in (r[3] or "").split()]
        return md5, [(r[1], int(r[2])) for r in frames], variants if len(variants) == 8 * len(frames) else None

    def video_hashes(self, sha256: str) -> list[tuple[str, int, float]]:
        return [
            (r[0], int(r[1]), float(r[2]))
            for r in self.db.execute("SELECT pdq, quality, ts FROM video_hashes WHERE sha256=? ORDER BY idx", (sha256,))
        ]

    def quarantined_pictures(self, since: float | None = None, confirmed_only: bool = False) -> list[dict]:
        """What a hash export shares: every item in quarantine that was not restored (with `confirmed_only`,
        those a reviewer confirmed), one dict per distinct picture (sha256, md5, its frames' PDQ with
        quality, its vPDQ, whether it is a video)."""
        confirmed = (
            "AND id IN (SELECT item FROM decisions WHERE decision='confirm' AND outcome='done') "
            if confirmed_only
            else ""
        )
        shas = [
            r[0]
            for r in self.db.execute(
                f"SELECT sha256 FROM quarantine WHERE state IN {EXPORTED_SQL} {confirmed}"  # noqa: S608
                "AND coalesce(json_extract(reason, '$.hash_list'), '') != 'canary' "  # the test picture: never shared
                "AND created >= ? GROUP BY sha256 ORDER BY min(created)",
                (since or 0.0,),
            )
        ]
        pictures = []
        for sha256 in shas:
            md5, pdqs, _ = self.picture_hashes(sha256)
            fmt = self.db.execute(
                "SELECT format FROM files WHERE sha256=? AND format IS NOT NULL LIMIT 1", (sha256,)
            ).fetchone()
            pictures.append(
                {
                    "sha256": sha256,
                    "md5": md5,
                    "pdq": pdqs,
                    "vpdq": self.video_hashes(sha256),
                    "video": bool(fmt and fmt[0] in ("mp4", "webm")),
                }  # fmt: skip
            )
        return pictures

    def hash_list_entries(self) -> Iterator[tuple[str, str, str, str, str | None]]:
        """(list, action, kind, value, note) of every imported list, streamed to the matcher."""
        yield from self.db.execute(
            "SELECT e.list, l.action, e.kind, e.value, e.note FROM hash_list_entries e "
            "JOIN hash_lists l ON l.name = e.list"
        )

    def hash_lists_changed_at(self) -> float:
        """When a list was last imported or removed (verdicts decided before then may match differently)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='hash_lists_changed'").fetchone()
        imported = self.db.execute("SELECT max(imported) FROM hash_lists").fetchone()[0]
        return max(float(row[0]) if row else 0.0, imported or 0.0)

    def hash_lists_version(self) -> tuple:
        """Changes whenever a list is imported, replaced or removed: long-running matchers reload on it."""
        return tuple(self.db.execute("SELECT count(*), max(imported), total(entries) FROM hash_lists").fetchone())

    def replace_hash_list(self, name: str, action: str, source: str, entries: list[tuple[str, str, str, str]]) -> None:
        """A list's entries replaced in one step (a subscription's fetch): never a moment without them."""
        with self.transaction():
            self.remove_hash_list(name)
            self.import_hash_list(name, action, source, entries)

    # ---------------------------------------------------------------- subscriptions and pushes

    def subscriptions(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT name, api, config, action, checkpoint, state, fetched, note FROM subscriptions ORDER BY name"
        ).fetchall()
        keys = ("name", "api", "config", "action", "checkpoint", "state", "fetched", "note")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def put_subscription(self, name: str, api: str, config: str, action: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO subscriptions (name, api, config, action) VALUES (?, ?, ?, ?)", (name, api, config, action)
            )

    def remove_subscription(self, name: str) -> int:
        with self.transaction():
            return self.db.execute("DELETE FROM subscriptions WHERE name=?", (name,)).rowcount

    def save_fetch(self, name: str, checkpoint: str | None, state: str | None, note: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE subscriptions SET checkpoint=?, state=?, fetched=?, note=? WHERE name=?",
                (checkpoint, state, time.time(), note, name),
            )

    def pushed(self, target: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT value FROM hash_pushes WHERE target=?", (target,))}

    def record_push(self, target: str, value: str, content_id: str | None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO hash_pushes VALUES (?, ?, ?, ?)", (target, value, content_id, time.time())
            )

    def has_hash_list(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM hash_lists WHERE name=?", (name,)).fetchone() is not None

    def hash_list_rows(self, name: str) -> list[tuple]:
        """(type, hash, note, source) of one list, in import order."""
        return self.db.execute(
            "SELECT kind, value, note, source FROM hash_list_entries WHERE list=? ORDER BY rowid", (name,)
        ).fetchall()

    def files_lacking_hashes(self) -> Iterator[tuple[str, bytes]]:
        """(sha256, path) of scored files whose pictures have no stored hashes (scanned before they were kept),
        or hashes of the old way (before schema 5: taken from the rotated, reduced view, no variants kept)."""
        for sha256, path in self.db.execute(
            f"SELECT sha256, path FROM files WHERE status IN {DECIDED_SQL} AND sha256 IS NOT NULL "  # noqa: S608
            "AND sha256 NOT IN (SELECT sha256 FROM picture_hashes WHERE pdq IS NULL OR variants IS NOT NULL)"
        ).fetchall():
            yield sha256, bytes(path)

    def hash_lists(self) -> list[tuple]:
        return self.db.execute(
            "SELECT name, action, imported, source, entries FROM hash_lists ORDER BY name"
        ).fetchall()

    def import_hash_list(self, name: str, action: str, source: str, entries: list[tuple[str, str, str, str]]) -> None:
        """All or nothing: entries (kind, value, note, source) replace nothing; a list of that name must not
        exist (the caller removes it first to replace it)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO hash_lists VALUES (?,?,?,?,?)", (name, action, time.time(), source, len(entries))
            )
            self.db.executemany(
                "INSERT INTO hash_list_entries VALUES (?,?,?,?,?)", [(name, *entry) for entry in entries]
            )

    def remove_hash_list(self, name: str) -> int:
        with self.transaction():
            self.db.execute(
                "INSERT INTO meta VALUES ('hash_lists_changed', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(time.time()),),
            )
            self.db.execute("DELETE FROM hash_list_entries WHERE list=?", (name,))
            return self.db.execute("DELETE FROM hash_lists WHERE name=?", (name,)).rowcount
