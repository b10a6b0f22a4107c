"""Policy data: what a policy file holds once validated. No decision logic here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SEVERITY_NAMES = ("strict", "default", "lenient")


@dataclass(frozen=True)
class Entry:
    """One prompt of a group with its numeric fields (threshold and rule-specific ones)."""

    prompt: str
    values: dict[str, float | None]

    def get(self, key: str) -> float | None:
        return self.values.get(key)


@dataclass(frozen=True)
class DeepDanbooruRule:
    """horde-safety's optional DeepDanbooru step (rule step 4 of check_for_nsfw) as data. It runs on the
    pictures the CLIP part calls anime, on the model's raw (sigmoid) output per tag."""

    enabled: bool  # false: decide anime pictures by CLIP alone, as the library does without the model
    made_for: str | None
    rating_tags: dict[str, str]  # "safe" | "questionable" | "explicit" -> the model's tag
    round_decimals: int | None  # the ratings (and reported tags) are rounded before comparing
    nsfw_tags: dict[str, float]  # tag -> an output above this makes the picture NSFW
    explicit_above: float
    questionable_above: float
    questionable_needs_safe_below: float
    safe_below: float
    tag_above: float  # a tag counts as present (reported; checked against not_anime_tags) above this
    not_anime_tags: tuple[str, ...]  # a present tag of these makes the picture not anime

    @property
    def tags_compared(self) -> tuple[str, ...]:
        """Every tag the rule reads: a producer that drops low outputs must keep these."""
        return tuple(dict.fromkeys([*self.rating_tags.values(), *self.nsfw_tags, *self.not_anime_tags]))


@dataclass(frozen=True)
class DeepDanbooruResult:
    """What the DeepDanbooru step made of one picture's outputs."""

    ratings: dict[str, float]  # rating tag -> rounded score (horde reports them as NSFW concepts)
    nsfw_tags: tuple[str, ...]
    tags: dict[str, float]  # every present tag, rounded (horde's anime_concepts_identified)
    nsfw: bool
    not_anime: bool

    def explain(self) -> dict[str, Any]:
        return {
            "nsfw": self.nsfw,
            "ratings": dict(self.ratings),
            "nsfw_tags": list(self.nsfw_tags),
            "not_anime": self.not_anime,
            "tags": dict(self.tags),
        }


DEEPDANBOORU_MISSING = (
    "anime check ran without DeepDanbooru: the policy asks for its scores on anime pictures and none were "
    "given, so CLIP alone decided"
)


@dataclass
class DeepDanbooruRows:
    """Which rows the policy wanted DeepDanbooru for (anime after the photo override), and its results
    for those that had scores."""

    wanted: np.ndarray  # bool [N]
    results: dict[int, DeepDanbooruResult]  # row -> result

    @property
    def missing(self) -> np.ndarray:
        """bool [N]: rows the policy wanted DeepDanbooru for that came without scores."""
        out = self.wanted.copy()
        out[list(self.results)] = False
        return out


@dataclass(frozen=True)
class Policy:
    name: str
    source: str
    rule: str
    description: str
    made_for: str | None
    round_decimals: int | None
    severity_levels: dict[str, float]
    flag_on: tuple[str, ...]
    groups: dict[str, tuple[Entry, ...]]
    parameters: dict[str, Any]
    coverage: str  # "center" | "full": which crops of each frame the model sees
    policy_id: str
    deepdanbooru: DeepDanbooruRule | None = None  # horde-v2 only
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def prompts(self) -> tuple[str, ...]:
        """Every prompt the policy scores, once, in order of first appearance: the column order."""
        seen: dict[str, None] = {}
        for entries in self.groups.values():
            for entry in entries:
                seen.setdefault(entry.prompt, None)
        return tuple(seen)

    def column(self) -> dict[str, int]:
        return {prompt: i for i, prompt in enumerate(self.prompts)}


@dataclass
class Evaluation:
    """Decisions for N similarity rows. `evidence` names masks over the policy's prompt columns;
    `values` are the numbers the rule compared (rounded or adjusted similarities)."""

    prompts: tuple[str, ...]
    flagged: np.ndarray  # bool [N]
    labels: dict[str, np.ndarray]  # bool [N] each
    evidence: dict[str, np.ndarray]  # bool [N, P] each
    values: np.ndarray  # float64 [N, P]
    # evidence name -> (row -> float64 [P] thresholds that row was compared with)
    thresholds: dict[str, Callable[[int], np.ndarray]] = field(default_factory=dict)
    deepdanbooru: DeepDanbooruRows | None = None  # None: the policy has no (enabled) DeepDanbooru step

    def __len__(self) -> int:
        return int(self.flagged.shape[0])

    def fired(self, row: int, name: str) -> dict[str, float]:
        mask = self.evidence[name][row]
        return {self.prompts[c]: float(self.values[row, c]) for c in np.flatnonzero(mask)}

    def _threshold(self, name: str, row: int, col: int) -> float | None:
        thresholds_for = self.thresholds.get(name)
        return None if thresholds_for is None else float(thresholds_for(row)[col])

    def explain(self, row: int) -> dict[str, Any]:
        """Why row `row` got its verdict: labels, and each check's prompts with value and margin."""
        checks: dict[str, list[dict[str, Any]]] = {}
        for name, mask in self.evidence.items():
            fired = []
            for col in np.flatnonzero(mask[row]):
                item: dict[str, Any] = {
                    "prompt": self.prompts[col],
                    "similarity": round(float(self.values[row, col]), 6),
                }
                thr = self._threshold(name, row, col)
                if thr is not None:
                    item["threshold"] = round(thr, 6)
                    item["margin"] = round(float(self.values[row, col]) - thr, 6)
                fired.append(item)
            if fired:
                checks[name] = fired
        out: dict[str, Any] = {
            "flagged": bool(self.flagged[row]),
            "labels": [name for name, arr in self.labels.items() if arr[row]],
            "checks": checks,
        }
        dd = self.deepdanbooru
        if dd is not None and dd.wanted[row]:
            result = dd.results.get(row)
            if result is None:
                out["deepdanbooru_missing"] = DEEPDANBOORU_MISSING
            else:
                out["deepdanbooru"] = result.explain()
        return out
