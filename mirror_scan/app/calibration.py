"""`calibrate` as an application object: read a benign sample, score what the ledger has not scored yet
(stored results are reused, new ones stored), and hand every picture's similarities to
scan/calibrate.py. Records no file rows and no verdicts: a calibration sample never becomes something
`apply` could act on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirror_scan.settings import Settings


@dataclass
class Sample:
    sims: list[np.ndarray]  # per picture, the policy's columns
    deepdanbooru: list[dict[str, float] | None]  # per picture: its stored or fresh scores, None where not run
    reused: int
    scored: int
    errors: list[tuple[str, str]]  # (path, why): not part of the sample
    seconds: float


class Calibration:
    def __init__(self, settings: Settings) -> None:
        from mirror_scan.app.scanner import load_scanner, scan_config
        from mirror_scan.model.scoring import columns, result_model_id

        self.settings = settings
        self.bundle, self.policy, self.offset, self.scorer = load_scanner(settings)
        self.config = scan_config(settings, self.offset, self.policy, self.bundle)
        self.model_id = result_model_id(self.bundle, self.scorer, self.config.limits)
        self.policy_columns = columns(self.bundle.concepts.prompts, self.policy)

    def read(self, workspace, paths: list[Path], progress: Callable[[int], None] | None = None) -> Sample:
        """Every picture under `paths` (discovered like a scan: no links followed, *.partial skipped)."""
        from mirror_scan.model.scoring import policy_sims
        from mirror_scan.scan.read import Failed, Reused, ToScore, fetch
        from mirror_scan.store.discover import Found, discover

        started = time.monotonic()
        ledger, results = workspace.ledger, workspace.ledger.results
        prompt_set = results.ensure_prompt_set(self.bundle.concepts.prompts) if not ledger.readonly else None
        from mirror_scan.scan import anime
        from mirror_scan.scan.calibrate import offsets_around

        sims: list[np.ndarray] = []
        dd_scores: list[dict[str, float] | None] = []
        check = anime.AnimeCheck(self.bundle, self.policy, self.settings.device)
        grid = offsets_around(self.policy, self.offset)  # DeepDanbooru for a picture anime at any of them
        errors: list[tuple[str, str]] = []
        reused = scored = 0
        batch: list[ToScore] = []

        def flush() -> None:
            nonlocal scored
            if not batch:
                return
            embeddings, all_sims = self.scorer(np.concatenate([item.pixels for item in batch]))
            frames = [len(item.pixels) for item in batch]
            chosen = all_sims[:, self.policy_columns]
            needed = [any(both) for both in zip(*(check.needed(chosen, frames, float(o)) for o in grid),
                                                strict=True)] if check.active else [False] * len(batch)  # fmt: skip
            fresh = check.scores([item.picture.dd_view for item in batch], needed)
            start = 0
            for item, scores, need in zip(batch, fresh, needed, strict=True):
                rows = slice(start, start + len(item.pixels))
                start += len(item.pixels)
                sims.append(chosen[rows])
                dd_scores.append(scores)
                if prompt_set is not None:  # stored for the next calibration, and for scans of the same bytes
                    detail = anime.with_outcome(item.picture.detail, scores, need)
                    results.put_result(item.picture.sha256, self.model_id, prompt_set, all_sims[rows],
                                       embeddings[rows], detail)  # fmt: skip
                scored += 1
            batch.clear()
            ledger.commit()

        for found in discover([str(p) for p in paths]):
            if not isinstance(found, Found):
                errors.append((found.path, found.reason))
                continue
            outcome = fetch(found, prep=self.bundle.preprocess, limits=self.config.limits,
                            max_bytes=self.config.max_bytes,
                            lookup_result=lambda sha: results.result_id_for(sha, self.model_id),
                            read_timeout_s=self.config.read_timeout_s)  # fmt: skip
            if isinstance(outcome, Reused):
                stored = results.get_result(outcome.result_id)
                prompts = results.prompt_set(stored.prompt_set)
                sims.append(policy_sims(stored.sims, stored.embedding, prompts, self.policy, self.bundle))
                dd_scores.append(anime.stored_scores(stored.detail))
                reused += 1
            elif isinstance(outcome, ToScore):
                batch.append(outcome)
                if sum(len(item.pixels) for item in batch) >= self.config.batch_size:
                    flush()
            elif isinstance(outcome, Failed):
                errors.append((found.path, outcome.reason))
            if progress:
                progress(len(sims) + len(batch) + len(errors))
        flush()
        return Sample(sims, dd_scores, reused, scored, errors, time.monotonic() - started)


def stored_calibration(settings: Settings):
    """calibrate's view of everything the ledger decided (stored results, no image read): (Calibration,
    offsets, policy id), or None when nothing was decided yet. For `report --summary` and the console."""
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.scoring import policy_sims
    from mirror_scan.policy import load_policy, resolve_severity
    from mirror_scan.scan.calibrate import calibrate, offsets_around
    from mirror_scan.store.ledger import Ledger

    policy = load_policy(settings.policy)
    offset = resolve_severity(policy, settings.severity)
    bundle = load_bundle(settings.model) if (settings.model / "manifest.json").exists() else None
    from mirror_scan.scan import anime

    sims, dd_scores = [], []
    with Ledger(settings.state, readonly=True) as ledger:
        results = ledger.results
        needed = [s for s in results.prompt_set_ids() if any(p not in results.prompt_set(s) for p in policy.prompts)]
        for row in results.rescore_rows(needed):
            prompts = results.prompt_set(row.prompt_set)
            rows = np.frombuffer(row.sims, np.float32).reshape(row.frames, len(prompts))
            embedding = np.frombuffer(row.embedding, np.float16).reshape(row.frames, -1) if row.embedding else None
            sims.append(policy_sims(rows, embedding, prompts, policy, bundle))
            dd_scores.append(anime.stored_scores(json.loads(row.detail)) if row.detail else None)
    if not sims:
        return None
    offsets = offsets_around(policy, offset)
    return calibrate(policy, sims, offset, offsets=offsets, deepdanbooru=dd_scores), offsets, policy.policy_id
