"""`mirror-scan policy test`: run a policy on labelled similarity vectors and list every disagreement.

Vector files use the format of horde-safety's reference vectors: per-prompt similarities (unlisted
prompts = default_similarity), DeepDanbooru's outputs where the vector has them (`deepdanbooru_scores`;
null = the checker had no DeepDanbooru model) and the expected outputs. Vectors that need an input a
file scanner never has (a generation prompt), or DeepDanbooru scores for a policy without that step, are
"not applicable", neither passes nor failures.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mirror_scan.errors import MirrorScanError
from mirror_scan.policy import evaluate
from mirror_scan.policy.model import Evaluation, Policy


@dataclass
class VectorResult:
    name: str
    status: str  # "pass" | "fail" | "n/a"
    differences: list[str] = field(default_factory=list)
    reason: str = ""


def _not_applicable(policy: Policy, vector: dict[str, Any]) -> str:
    if vector.get("generation_prompt"):
        return "needs a generation prompt (a file scanner has none)"
    dd = policy.deepdanbooru
    if vector.get("deepdanbooru_scores") is not None and (dd is None or not dd.enabled):
        return "needs a policy with a DeepDanbooru step (this policy has none, or has it disabled)"
    return ""


def _policy_for_vector(policy: Policy, vector: dict[str, Any]) -> Policy:
    """horde-v1's model_info maps onto its nsfw_model / model_tags parameters."""
    if policy.rule != "horde-v1" or "model_info" not in vector:
        return policy
    info = vector["model_info"] or {}
    params = dict(policy.parameters)
    params["nsfw_model"] = True if info.get("nsfw") is None else bool(info["nsfw"])
    params["model_tags"] = list(info.get("tags") or [])
    return replace(policy, parameters=params)


def similarity_row(policy: Policy, vector: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    default = float(vector.get("default_similarity", 0.0))
    sims = vector.get("similarities", {})
    unknown = [p for p in sims if p not in policy.column()]
    row = np.array([[float(sims.get(p, default)) for p in policy.prompts]])
    return row, unknown


def observed(policy: Policy, ev: Evaluation, row: int) -> dict[str, Any]:
    """This policy's outputs in the vocabulary of the reference vectors."""
    out: dict[str, Any] = {"flagged": bool(ev.flagged[row])}
    labels = {k: bool(v[row]) for k, v in ev.labels.items()}
    if policy.rule == "horde-v2":
        dd = ev.deepdanbooru.results.get(row) if ev.deepdanbooru is not None else None
        out |= {
            "is_anime": labels["anime"],
            "is_nsfw": labels["nsfw"],
            "is_underage_subject": labels["underage"],
            "is_csam": labels["csam"],
            "found_human_subject": labels["subject"],
            "is_neg_prompt_suspect": False,
            # The library reports DeepDanbooru's ratings among the NSFW concepts, before the CLIP ones.
            "nsfw_concepts_identified": {**(dd.ratings if dd else {}), **ev.fired(row, "nsfw_concepts")},
            "anime_concepts_identified": dict(dd.tags) if dd else {},
            "deepdanbooru_ran": dd is not None,
            "csam_predicates_matched": ev.fired(row, "csam_predicates"),
            "matched_predicates": ev.fired(row, "matched_predicates"),
        }
    elif policy.rule == "horde-v1":
        critical_extra = policy.parameters["critical_weight"] - 1
        found_uc = list(ev.fired(row, "underage_context"))
        for word in ev.fired(row, "underage_critical"):
            found_uc += [f"{word} (critical)"] * critical_extra
        out |= {
            "is_csam": labels["csam"],
            "found_uc": found_uc,
            "found_lewd": list(ev.fired(row, "lewd")),
        }
    else:
        out |= {f"group:{k}": v for k, v in labels.items()}
    return out


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got if isinstance(expected, bool) and isinstance(got, bool) else False
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(expected, got, rel_tol=0, abs_tol=1e-9)
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(_same(expected[k], got[k]) for k in expected)
    if isinstance(expected, list) and isinstance(got, list):
        # found_uc / found_lewd: the library's list order follows dict iteration; the count is what decides.
        return Counter(map(str, expected)) == Counter(map(str, got))
    return expected == got


def check_vector(policy: Policy, vector: dict[str, Any], severity: float = 0.0) -> VectorResult:
    name = str(vector.get("name", "?"))
    reason = _not_applicable(policy, vector)
    if reason:
        return VectorResult(name, "n/a", reason=reason)
    vpolicy = _policy_for_vector(policy, vector)
    row, unknown = similarity_row(vpolicy, vector)
    try:
        ev = evaluate(vpolicy, row, severity, [vector.get("deepdanbooru_scores")])
    except ValueError as err:  # deepdanbooru_scores not in this format (tag -> raw output)
        return VectorResult(name, "fail", [f"deepdanbooru_scores: {err}"])
    got = observed(vpolicy, ev, 0)
    diffs = [f"similarity given for '{p}', which this policy does not score" for p in unknown]
    expected = dict(vector.get("expected", {}))
    changed = expected.pop("adjusted_similarities_changed", None)
    if changed is not None:
        base = row[0]
        got_changed = {
            p: float(ev.values[0, c])
            for c, p in enumerate(vpolicy.prompts)
            if not math.isclose(ev.values[0, c], base[c], abs_tol=1e-12)
        }
        if not _same(changed, got_changed):
            diffs.append(f"adjusted_similarities_changed: expected {changed}, got {got_changed}")
    for key, want in expected.items():
        if key not in got:
            diffs.append(f"{key}: this policy's rule ({vpolicy.rule}) does not produce it")
        elif not _same(want, got[key]):
            diffs.append(f"{key}: expected {want!r}, got {got[key]!r}")
    return VectorResult(name, "fail" if diffs else "pass", diffs)


def load_vectors(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MirrorScanError(f"vector file {path} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MirrorScanError(f"vector file {path} cannot be read as JSON ({err})") from None
    vectors = data.get("vectors") if isinstance(data, dict) else data
    if not isinstance(vectors, list) or not all(isinstance(v, dict) for v in vectors):
        raise MirrorScanError(f'vector file {path}: expected {{"vectors": [...]}} or a list of vectors')
    return vectors


def run_vectors(policy: Policy, vectors: list[dict[str, Any]], severity: float = 0.0) -> list[VectorResult]:
    return [check_vector(policy, v, severity) for v in vectors]
