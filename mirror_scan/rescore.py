"""Re-decide stored results under another policy or severity without reading any image, and act on
recorded verdicts without running the model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .act import Actor
from .bundle import Bundle
from .decide import Verdict, annotate, with_hash_match
from .hashes import Matcher
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
    # Embeddings are read only for prompt sets that lack some of the policy's prompts.
    needs_embedding = {
        set_id: any(p not in ledger.prompt_set(set_id) for p in policy.prompts) for set_id in ledger.prompt_set_ids()
    }
    cursor = ledger.rescore_rows([s for s, needed in needs_embedding.items() if needed])
    matcher = Matcher(ledger.hash_list_entries())
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
            if needs_embedding[set_id]:
                embedding = np.frombuffer(b"".join(r[6] for r in group), dtype=np.float16).reshape(
                    int(frames.sum()), -1
                )
            policy_columns = policy_sims(sims, embedding, prompts, policy, bundle)
            ev = evaluate(policy, policy_columns, severity)
            starts = np.concatenate([[0], np.cumsum(frames)[:-1]])
            flagged = np.logical_or.reduceat(ev.flagged, starts)
            old_flag = np.fromiter((r[1] == "flagged" for r in group), dtype=bool, count=len(group))
            allow = np.fromiter((r[2] in allowed for r in group), dtype=bool, count=len(group))
            new_flag = flagged & ~allow
            summary.to_flagged += int((new_flag & ~old_flag).sum())
            summary.to_clean += int((~new_flag & old_flag).sum())
            summary.still_flagged += int((new_flag & old_flag).sum())
            summary.still_clean += int((~new_flag & ~old_flag).sum())
            now = time.time()
            # Only rows whose verdict or reason can differ need Python: flagged now, or changed, and not
            # already decided by this very policy and severity (same inputs, same reason).
            decided_same = np.fromiter(
                (r[7] == policy.policy_id and r[8] == severity for r in group), dtype=bool, count=len(group)
            )
            for index in np.flatnonzero((flagged | old_flag) & ~(decided_same & (new_flag == old_flag))):
                first = int(starts[index] + np.argmax(ev.flagged[starts[index] : starts[index] + frames[index]]))
                reason = None
                if flagged[index]:
                    reason = ev.explain(first)
                    reason.update(frame=int(first - starts[index]), frames=int(frames[index]))
                    if allow[index]:
                        reason = {"allowlisted": True, "policy_would_flag": reason}
                detail = group[index][9]
                verdict = annotate(Verdict(bool(new_flag[index]), reason), json.loads(detail) if detail else None)
                if matcher:  # a hash-list match still decides first; the model alone cannot clear it
                    md5, pdqs = ledger.picture_hashes(group[index][2])
                    verdict = with_hash_match(verdict, matcher.match(group[index][2], md5, pdqs), bool(allow[index]))
                    if verdict.flagged and not new_flag[index]:
                        summary.to_clean -= int(old_flag[index])
                        summary.still_clean -= int(not old_flag[index])
                        summary.still_flagged += int(old_flag[index])
                        summary.to_flagged += int(not old_flag[index])
                updates.append((verdict.label, verdict.reason_json(), now, group[index][0]))
            summary.files += len(group)
        if progress:
            progress(summary.files, total)
    ledger.apply_rescore(updates)
    ledger.stamp_decisions(policy.policy_id, severity)
    summary.seconds = time.monotonic() - started
    return summary


def apply_verdicts(ledger: Ledger, actor: Actor, origin: str | None = None, root: bytes | None = None) -> int:
    """Act on every flagged verdict not yet acted on; no inference. origin "bucket": the objects scanned
    in the bucket `root` (NAME:bucket)."""
    acted = 0
    for path, _sha, _reason, row_root in list(ledger.flagged_unacted(origin)):
        if root is not None and row_root != root:
            continue
        action = actor.act(path)
        if action:
            ledger.mark_action(path, action)
            acted += 1
    ledger.commit()
    return acted
