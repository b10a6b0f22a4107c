"""The anime check's second model: DeepDanbooru's scores for the pictures the policy calls anime
(horde-safety's check_for_nsfw, step 4), as fedi-safety's default runs it.

Between infer and decide: after CLIP has scored a batch, the policy says which pictures are anime
(`deepdanbooru_rows`, after the photo override, at the scan's severity); only those go through the bundle's
DeepDanbooru, on the first frame's 512 thumbnail the decode kept (`Picture.dd_view`). Its scores are stored
with the CLIP result (`detail["deepdanbooru"]`), so rescore, calibrate and every later decision read them
instead of running it again. A picture the policy calls anime without scores (a bundle without
DeepDanbooru, a result stored before, or a severity beyond the policy's named ones that the scan did not
use) is decided by CLIP alone, and says so."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mirror_scan.model.bundle import Bundle
from mirror_scan.policy import DEEPDANBOORU_MISSING, Policy, deepdanbooru_rows

SCORES_KEY = "deepdanbooru"  # in a result's detail: {tag: raw sigmoid output}


def policy_wants(policy: Policy) -> bool:
    rule = policy.deepdanbooru
    return rule is not None and rule.enabled


def wanted(policy: Policy, bundle: Bundle) -> bool:
    """The decode keeps the thumbnail DeepDanbooru sees: the policy asks for it and the bundle has it."""
    return policy_wants(policy) and bundle.deepdanbooru is not None


def anime_check_said(policy: Policy, bundle: Bundle) -> str | None:
    """What a scan says at its start of the anime check's second model (None: the policy has none)."""
    if not policy_wants(policy):
        return None
    if bundle.deepdanbooru is None:
        return ("DeepDanbooru: not in this bundle; anime pictures are decided by CLIP alone, and say so "
                "(`model export --with-deepdanbooru` adds it)")  # fmt: skip
    weights = "random weights: a test bundle" if bundle.deepdanbooru.random_weights else "release weights"
    return f"DeepDanbooru: on the pictures the policy calls anime ({weights})"


def stored_scores(detail: dict | None) -> dict[str, float] | None:
    scores = (detail or {}).get(SCORES_KEY)
    return scores if isinstance(scores, dict) else None


def per_row(scores: Sequence[dict[str, float] | None], frames: Sequence[int]) -> list[dict[str, float] | None]:
    """A file's scores for each of its rows (DeepDanbooru sees the picture once; every row is the picture)."""
    return [one for one, count in zip(scores, frames, strict=True) for _ in range(int(count))]


def with_outcome(detail: dict | None, scores: dict[str, float] | None, needed: bool) -> dict | None:
    """The detail stored with a result: DeepDanbooru's scores when it ran, the note when it was wanted and
    could not run (every verdict on such a picture then says the anime check ran without it)."""
    if scores is None and not needed:
        return detail
    out: dict[str, Any] = dict(detail or {})
    if scores is not None:
        out[SCORES_KEY] = scores
    elif DEEPDANBOORU_MISSING not in (out.get("notes") or []):
        out["notes"] = [*(out.get("notes") or []), DEEPDANBOORU_MISSING]
    return out


class AnimeCheck:
    """The bundle's DeepDanbooru, loaded once, run on the pictures a batch needs it for."""

    def __init__(self, bundle: Bundle, policy: Policy, device: str = "auto") -> None:
        self.policy, self.bundle, self.device = policy, bundle, device
        self._model = None  # loaded when a picture first needs it (the real one is 614 MB)

    @property
    def model(self):
        if self._model is None and wanted(self.policy, self.bundle):
            from mirror_scan.model.deepdanbooru import DeepDanbooru

            always = self.policy.deepdanbooru.tags_compared  # type: ignore[union-attr]
            self._model = DeepDanbooru(self.bundle, self.device, always=always)
        return self._model

    @property
    def active(self) -> bool:
        """The policy asks for DeepDanbooru (whether or not this bundle has it: then its absence is said)."""
        return policy_wants(self.policy)

    def needed(self, sims: np.ndarray, frames: Sequence[int], severity: float) -> list[bool]:
        """Per file: any of its rows ([rows, P] in the policy's columns) is anime at this severity or at one
        of the policy's named ones, so a rescore at strict, default or lenient finds the scores stored."""
        if not self.active:
            return [False] * len(frames)
        rows = np.zeros(len(sims), dtype=bool)
        for level in {float(severity), *(float(v) for v in self.policy.severity_levels.values())}:
            rows |= deepdanbooru_rows(self.policy, sims, level)
        ends = np.cumsum(frames)
        return [bool(rows[int(end) - int(count) : int(end)].any()) for end, count in zip(ends, frames, strict=True)]

    def scores(self, views: Sequence[np.ndarray | None], needed: Sequence[bool]) -> list[dict[str, float] | None]:
        """DeepDanbooru's scores for each needed picture with a view (one call for the batch), else None."""
        chosen = [i for i, (view, need) in enumerate(zip(views, needed, strict=True)) if need and view is not None]
        out: list[dict[str, float] | None] = [None] * len(views)
        if not chosen or self.model is None:
            return out
        from PIL import Image

        for index, scores in zip(chosen, self.model.tag_scores([Image.fromarray(views[i]) for i in chosen]),
                                 strict=True):  # fmt: skip
            out[index] = scores
        return out
