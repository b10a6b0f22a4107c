"""Re-decide stored results under another policy or severity without reading any image, and act on
recorded verdicts without running the model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .act import Actor
from .bundle import Bundle
from .decide import Verdict
from .policy import Policy, evaluate
from .scoring import policy_sims
from .state import Ledger

CHUNK = 100_000


@dataclass
class RescoreSummary:
    files: int = 0
    to_flagged: int = 0
    to_clean: int = 0
    still_flagged: int = 0
    still_clean: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def rescore(
    ledger: Ledger,
    policy: Policy,
    severity: float,
    bundle: Bundle | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RescoreSummary:
    started = time.monotonic()
    summary = RescoreSummary()
    total = ledger.count("status IN ('scored', 'reused') AND result_id IS NOT NULL")
    allowed = {row[0] for row in ledger.allowlist()}
    prompt_sets: dict[str, tuple[str, ...]] = {}
    cursor = ledger.db.execute(
        """SELECT f.rowid, f.verdict, f.sha256, r.frames, r.prompt_set, r.sims, r.embedding
           FROM files f JOIN results r ON r.id = f.result_id
           WHERE f.status IN ('scored', 'reused') ORDER BY r.prompt_set, f.rowid"""
    )
    updates: list[tuple[str, str | None, float, int]] = []
    while rows := cursor.fetchmany(CHUNK):
        by_set: dict[str, list] = {}
        for row in rows:
            by_set.setdefault(row[4], []).append(row)
        for set_id, group in by_set.items():
            if set_id not in prompt_sets:
                prompt_sets[set_id] = ledger.prompt_set(set_id)
            prompts = prompt_sets[set_id]
            frames = np.fromiter((r[3] for r in group), dtype=np.intp, count=len(group))
            sims = np.frombuffer(b"".join(r[5] for r in group), dtype=np.float32).reshape(-1, len(prompts))
            embedding = None
            if any(p not in prompts for p in policy.prompts):
                embedding = np.frombuffer(b"".join(r[6] for r in group), dtype=np.float16).reshape(
                    int(frames.sum()), -1
                )
            policy_columns = policy_sims(sims, embedding, prompts, policy, bundle)
            ev = evaluate(policy, policy_columns, severity)
            starts = np.concatenate([[0], np.cumsum(frames)[:-1]])
            flagged = np.logical_or.reduceat(ev.flagged, starts)
            now = time.time()
            for index, row in enumerate(group):
                rowid, old, sha256 = row[0], row[1], row[2]
                new_flag = bool(flagged[index])
                reason = None
                if new_flag:
                    first = int(starts[index] + np.argmax(ev.flagged[starts[index] : starts[index] + frames[index]]))
                    why = ev.explain(first)
                    why.update(frame=int(first - starts[index]), frames=int(frames[index]))
                    if sha256 in allowed:
                        new_flag, reason = False, {"allowlisted": True, "policy_would_flag": why}
                    else:
                        reason = why
                new = Verdict(new_flag, reason)
                if old == new.label:
                    if new_flag:
                        summary.still_flagged += 1
                        updates.append((new.label, new.reason_json(), now, rowid))
                    else:
                        summary.still_clean += 1
                        if reason is not None:
                            updates.append((new.label, new.reason_json(), now, rowid))
                    continue
                if new_flag:
                    summary.to_flagged += 1
                else:
                    summary.to_clean += 1
                updates.append((new.label, new.reason_json(), now, rowid))
            summary.files += len(group)
        if progress:
            progress(summary.files, total)
    ledger.begin()
    # A verdict that changes also forgets any action taken under the old one, so `apply` sees it afresh.
    ledger.db.executemany(
        """UPDATE files SET action = CASE WHEN verdict IS ?1 THEN action END,
                            acted_at = CASE WHEN verdict IS ?1 THEN acted_at END,
                            verdict=?1, reason=?2, decided_at=?3 WHERE rowid=?4""",
        updates,
    )
    ledger.db.execute(
        "UPDATE files SET policy_id=?, severity=? WHERE status IN ('scored', 'reused')", (policy.policy_id, severity)
    )
    ledger.commit()
    summary.seconds = time.monotonic() - started
    return summary


def apply_verdicts(ledger: Ledger, actor: Actor) -> int:
    """Act on every flagged verdict not yet acted on; no inference."""
    acted = 0
    for path, sha256, reason in list(ledger.flagged_unacted()):
        ledger.mark_action(path, actor.act(path, sha256, reason))
        acted += 1
    ledger.commit()
    return acted
