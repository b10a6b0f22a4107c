"""Re-decide stored results under another policy or severity without reading any image, and act on
recorded verdicts without running the model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mirror_scan.lists.live import ledger_matcher, match_stored
from mirror_scan.model.bundle import Bundle
from mirror_scan.model.scoring import policy_sims
from mirror_scan.policy import Policy, evaluate
from mirror_scan.scan import anime
from mirror_scan.scan.act import Actor, Flagged
from mirror_scan.scan.decide import Facts, verdict_for
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.rows import RescoreRow

CHUNK = 100_000


@dataclass
class RescoreSummary:
    files: int = 0
    to_flagged: int = 0
    to_clean: int = 0
    still_flagged: int = 0
    still_clean: int = 0
    seconds: float = 0.0
    newly_flagged_by_label: dict[str, int] = field(default_factory=dict)  # clean -> flagged, by label
    dry_run: bool = False  # nothing was written

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def rescore(
    ledger: Ledger,
    policy: Policy,
    severity: float,
    bundle: Bundle | None = None,
    progress: Callable[[int, int], None] | None = None,
    dry_run: bool = False,
) -> RescoreSummary:
    """Every decided file re-decided with what the scan decides with: the model's similarities (every
    frame), what the decode said, the hash lists (every rotation and mirror image of every frame) and the
    allowlist, through the same functions (decide.file_verdict, decide.complete). The policy is evaluated
    for whole chunks at once; Python runs only for files whose verdict or reason can change."""
    started = time.monotonic()
    summary = RescoreSummary()
    total = ledger.results.count_decided()
    allowed = {row[0] for row in ledger.allowlist()}
    prompt_sets: dict[str, tuple[str, ...]] = {}
    # Embeddings are read only for prompt sets that lack some of the policy's prompts.
    needs_embedding = {
        set_id: any(p not in ledger.results.prompt_set(set_id) for p in policy.prompts)
        for set_id in ledger.results.prompt_set_ids()
    }
    cursor = ledger.results.rescore_rows([s for s, needed in needs_embedding.items() if needed])
    matcher = ledger_matcher(ledger)
    lists_changed = ledger.lists.hash_lists_changed_at()
    updates: list[tuple[str, str | None, float, int]] = []
    while rows := cursor.fetchmany(CHUNK):
        by_set: dict[str, list[RescoreRow]] = {}
        for row in rows:
            by_set.setdefault(row.prompt_set, []).append(row)
        for set_id, group in by_set.items():
            if set_id not in prompt_sets:
                prompt_sets[set_id] = ledger.results.prompt_set(set_id)
            prompts = prompt_sets[set_id]
            frames = np.fromiter((r.frames for r in group), dtype=np.intp, count=len(group))
            sims = np.frombuffer(b"".join(r.sims for r in group), dtype=np.float32).reshape(-1, len(prompts))
            embedding = None
            if needs_embedding[set_id]:
                embedding = np.frombuffer(b"".join(r.embedding for r in group), dtype=np.float16).reshape(
                    int(frames.sum()), -1
                )
            dd_rows = None
            if anime.policy_wants(policy):  # DeepDanbooru's stored scores (never run again here)
                scores = [anime.stored_scores(json.loads(r.detail)) if r.detail else None for r in group]
                dd_rows = anime.per_row(scores, frames.tolist())
            ev = evaluate(policy, policy_sims(sims, embedding, prompts, policy, bundle), severity, dd_rows)
            starts = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.intp)
            model_flag = np.logical_or.reduceat(ev.flagged, starts)
            old_flag = np.fromiter((r.verdict == "flagged" for r in group), dtype=bool, count=len(group))
            # A hash list can decide where the model does not: files a list decided before, and (when lists
            # were imported or changed since a file was decided) every file.
            listed = np.fromiter(
                (r.mentions_list or (bool(matcher) and (r.decided_at or 0) < lists_changed) for r in group),
                dtype=bool,
                count=len(group),
            )
            same_inputs = np.fromiter(
                (r.policy_id == policy.policy_id and r.severity == severity for r in group),
                dtype=bool,
                count=len(group),
            )
            clean_both = ~model_flag & ~old_flag & ~listed
            summary.still_clean += int(clean_both.sum())
            now = time.time()
            for index in np.flatnonzero(~clean_both):
                row = group[index]
                allow = row.sha256 in allowed
                facts = Facts(
                    json.loads(row.detail) if row.detail else None, allow, match_stored(matcher, ledger, row.sha256)
                )
                verdict = verdict_for(ev, int(starts[index]), int(frames[index]), facts)
                new, old = verdict.flagged, bool(old_flag[index])
                summary.to_flagged += int(new and not old)
                if new and not old:
                    for label in (verdict.reason or {}).get("labels") or ["?"]:
                        summary.newly_flagged_by_label[label] = summary.newly_flagged_by_label.get(label, 0) + 1
                summary.to_clean += int(old and not new)
                summary.still_flagged += int(new and old)
                summary.still_clean += int(not new and not old)
                if not (same_inputs[index] and new == old and not listed[index]):
                    updates.append((verdict.label, verdict.reason_json(), now, row.rowid))
            summary.files += len(group)
        if progress:
            progress(summary.files, total)
    summary.dry_run = dry_run
    if not dry_run:  # a dry run shows what would change and writes nothing
        ledger.results.apply_rescore(updates)
        ledger.results.stamp_decisions(policy.policy_id, severity)
    summary.seconds = time.monotonic() - started
    return summary


def apply_verdicts(
    ledger: Ledger,
    actor: Actor,
    origin: str | None = None,
    root: bytes | None = None,
    on_each: Callable[[], None] | None = None,
) -> int:
    """Act on every flagged verdict not yet acted on; no inference. origin "bucket": the objects scanned
    in the bucket `root` (NAME:bucket). on_each() after each file (a progress display)."""
    acted = 0
    for row in list(ledger.flagged_unacted(origin)):
        if root is not None and row.root != root:
            continue
        if row.sha256 is None:
            continue
        flagged = Flagged.recorded(row.path, row.root, row.sha256, row.reason, row.model_id, row.policy_id,
                                   row.severity)  # fmt: skip
        if actor.act(flagged) is not None:  # the quarantine records the file's action
            acted += 1
        if on_each:
            on_each()
    ledger.commit()
    return acted
