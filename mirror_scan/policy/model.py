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
        return {
            "flagged": bool(self.flagged[row]),
            "labels": [name for name, arr in self.labels.items() if arr[row]],
            "checks": checks,
        }
