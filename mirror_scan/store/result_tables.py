"""The ledger's results vocabulary: what the model said of some bytes (once per sha256 and model), the
prompt sets, and the reads and writes of rescore. Shares the ledger's connection (`ledger.results`)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import numpy as np

from mirror_scan.store.rows import RescoreRow, StoredResult
from mirror_scan.store.schema import DECIDED_SQL
from mirror_scan.store.vocabulary import Vocabulary


class ResultTables(Vocabulary):
    def ensure_prompt_set(self, prompts: tuple[str, ...]) -> str:
        text = json.dumps(list(prompts), ensure_ascii=False)
        set_id = hashlib.sha256(text.encode()).hexdigest()[:16]
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO prompt_sets VALUES (?, ?)", (set_id, text))
        return set_id

    def prompt_set(self, set_id: str) -> tuple[str, ...]:
        row = self.db.execute("SELECT prompts FROM prompt_sets WHERE id=?", (set_id,)).fetchone()
        return tuple(json.loads(row[0]))

    def prompt_set_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT prompt_set FROM results")]

    def result_id_for(self, sha256: str, model_id: str, conn: sqlite3.Connection | None = None) -> int | None:
        row = (
            (conn or self.db)
            .execute("SELECT id FROM results WHERE sha256=? AND model_id=?", (sha256, model_id))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def put_result(
        self,
        sha256: str,
        model_id: str,
        prompt_set: str,
        sims: np.ndarray,
        embedding: np.ndarray,
        detail: dict | None = None,
    ) -> int:
        self.begin()
        self.db.execute(
            "INSERT OR IGNORE INTO results (sha256, model_id, frames, prompt_set, sims, embedding, created, detail, "
            "partial) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                sha256,
                model_id,
                int(sims.shape[0]),
                prompt_set,
                np.ascontiguousarray(sims, np.float32).tobytes(),
                np.ascontiguousarray(embedding, np.float16).tobytes(),
                time.time(),
                json.dumps(detail, ensure_ascii=False, separators=(",", ":")) if detail else None,
                int(bool(detail and detail.get("partial"))),
            ),
        )
        return self.result_id_for(sha256, model_id)  # type: ignore[return-value]

    def get_result(self, result_id: int) -> StoredResult:
        row = self.db.execute(
            "SELECT id, frames, prompt_set, sims, embedding, detail FROM results WHERE id=?", (result_id,)
        ).fetchone()
        frames = int(row[1])
        return StoredResult(
            id=int(row[0]),
            frames=frames,
            prompt_set=row[2],
            sims=np.frombuffer(row[3], dtype=np.float32).reshape(frames, -1),
            embedding=np.frombuffer(row[4], dtype=np.float16).reshape(frames, -1),
            detail=json.loads(row[5]) if row[5] else None,
        )

    def count_decided(self) -> int:
        return int(
            self.db.execute(
                f"SELECT count(*) FROM files WHERE status IN {DECIDED_SQL} AND result_id IS NOT NULL"  # noqa: S608
            ).fetchone()[0]
        )

    def rescore_rows(self, embedding_sets: list[str]) -> sqlite3.Cursor:
        """Every decided file joined with its stored result, grouped by prompt set (for `rescore`), as
        RescoreRow (embeddings only for the prompt sets named)."""
        placeholders = ",".join("?" * len(embedding_sets)) or "NULL"
        cursor = self.db.cursor()
        cursor.row_factory = lambda _cursor, row: RescoreRow(*row)
        return cursor.execute(
            f"""SELECT f.rowid, f.verdict, f.sha256, r.frames, r.prompt_set, r.sims,
                       CASE WHEN r.prompt_set IN ({placeholders}) THEN r.embedding END, f.policy_id, f.severity,
                       r.detail, f.decided_at, instr(coalesce(f.reason, ''), '"hash_list') > 0
                FROM files f JOIN results r ON r.id = f.result_id
                WHERE f.status IN {DECIDED_SQL} ORDER BY r.prompt_set, f.rowid""",  # noqa: S608
            embedding_sets,
        )

    def apply_rescore(self, updates: list[tuple[str, str | None, float, int]]) -> None:
        """New verdicts by rowid. A verdict that changes also forgets any action taken under the old one,
        so `apply` sees it afresh."""
        with self.transaction():
            self.db.executemany(
                """UPDATE files SET action = CASE WHEN verdict IS ?1 THEN action END,
                                    acted_at = CASE WHEN verdict IS ?1 THEN acted_at END,
                                    verdict=?1, reason=?2, decided_at=?3 WHERE rowid=?4""",
                updates,
            )

    def stamp_decisions(self, policy_id: str, severity: float) -> None:
        """Every decided file was decided now, under this policy and severity (rescore)."""
        with self.transaction():
            self.db.execute(
                f"UPDATE files SET policy_id=?, severity=?, decided_at=? WHERE status IN {DECIDED_SQL}",  # noqa: S608
                (policy_id, severity, time.time()),
            )
