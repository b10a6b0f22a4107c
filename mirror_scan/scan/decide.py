"""decide: where every verdict is made. Pure: similarities of each file's frames + policy + the facts
about the file (what the decode said, the allowlist, a hash-list match) -> one verdict per file.

A file's verdict is the worst of its frames (any flagged frame flags the file); its reason is the
explanation of the first flagged frame. A hash list on `flag` flags whatever the model says. An
allowlisted sha256 is never flagged, and the reason says what the policy (or the list) would have done.
The scan, the watch daemon, the validator, the bucket ingest (record.Decider) and rescore (a whole
chunk evaluated at once, then verdict_for per file) all decide here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mirror_scan.lists.canary import CANARY_LABEL, CANARY_LIST
from mirror_scan.policy import DeepDanbooruScores, Policy, evaluate


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    reason: dict[str, Any] | None

    @property
    def label(self) -> str:
        return "flagged" if self.flagged else "clean"

    def reason_json(self) -> str | None:
        return None if self.reason is None else json.dumps(self.reason, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Facts:
    """What a decision needs to know of a file besides its similarities, gathered before deciding."""

    detail: dict[str, Any] | None = None  # the decode's row labels and notes
    allowlisted: bool = False  # restored by a person: never flagged again
    match: Any = None  # a hash-list match (hashes.Match), or None


def decide_files(
    policy: Policy,
    sims: np.ndarray,
    frames: list[int] | np.ndarray,
    severity: float,
    facts: list[Facts],
    deepdanbooru: DeepDanbooruScores = None,
) -> list[Verdict]:
    """sims: [frames, P] in the policy's column order, the rows of file i being the next frames[i] rows.
    deepdanbooru: DeepDanbooru's outputs per row (None where not run), wanted for the rows that
    policy.deepdanbooru_rows names; a wanted row without them is decided by CLIP alone, and the reason
    explaining such a row says so (deepdanbooru_missing)."""
    ev = evaluate(policy, sims, severity, deepdanbooru)
    verdicts, start = [], 0
    for count, known in zip(frames, facts, strict=True):
        verdicts.append(verdict_for(ev, start, int(count), known))
        start += int(count)
    return verdicts


def verdict_for(ev, start: int, count: int, facts: Facts) -> Verdict:
    """One file's whole verdict from an evaluation of many rows (its rows are start..start+count)."""
    return complete(file_verdict(ev, start, count, facts.allowlisted), facts.detail, facts.match, facts.allowlisted)


def decide(
    policy: Policy,
    sims: np.ndarray,
    frames: list[int] | np.ndarray,
    severity: float,
    allowlisted: list[bool] | None = None,
    deepdanbooru: DeepDanbooruScores = None,
) -> list[Verdict]:
    """The model's part alone (no decode notes, no lists): decide_files with only the allowlist known."""
    facts = [Facts(allowlisted=bool(allowlisted and allowlisted[i])) for i in range(len(frames))]
    return decide_files(policy, sims, frames, severity, facts, deepdanbooru)


def file_verdict(ev, start: int, count: int, allowlisted: bool) -> Verdict:
    """One file's verdict from an evaluation of many rows: its rows are start..start+count."""
    hits = np.flatnonzero(ev.flagged[start : start + count])
    if not len(hits):
        return Verdict(False, None)
    why = ev.explain(start + int(hits[0]))
    why["frame"] = int(hits[0])
    why["frames_flagged"] = int(len(hits))
    why["frames"] = count
    if allowlisted:
        return Verdict(False, {"allowlisted": True, "policy_would_flag": why})
    return Verdict(True, why)


def complete(verdict: Verdict, detail: dict[str, Any] | None, match, allowlisted: bool) -> Verdict:
    """The model's verdict made whole: what the decode said (annotate), then the hash lists, which decide
    first (with_hash_match). Every decision path ends here."""
    return with_hash_match(annotate(verdict, detail), match, allowlisted)


def annotate(verdict: Verdict, detail: dict[str, Any] | None) -> Verdict:
    """A verdict with what the decode said: where the first flagged row comes from ("frame 12, tile 2/4"),
    and the file's notes (partial decode, caps hit, pictures not scored)."""
    if not detail:
        return verdict
    reason = dict(verdict.reason or {})
    inner_key = "policy_would_flag" if "policy_would_flag" in reason else None
    inner = dict(reason[inner_key]) if inner_key else reason
    labels = detail.get("labels") or []
    if "frame" in inner and 0 <= inner["frame"] < len(labels):
        inner["where"] = labels[inner["frame"]]
    if inner_key:
        reason[inner_key] = inner
    if detail.get("notes"):
        reason["notes"] = list(detail["notes"])
    if detail.get("partial"):
        reason["partial"] = True
    return Verdict(verdict.flagged, reason or None)


def with_hash_match(verdict: Verdict, match, allowlisted: bool) -> Verdict:
    """A hash-list match decides before the model: a `flag` list flags even what the model clears; a
    `review` list only records the match; the allowlist (restored bytes) wins over both."""
    if match is None:
        return verdict
    found = match.reason()
    reason = dict(verdict.reason or {})
    if allowlisted or match.action != "flag":
        reason["hash_list_would_flag" if allowlisted else "hash_list_review"] = found
        return Verdict(verdict.flagged, reason)
    label = CANARY_LABEL if found["hash_list"] == CANARY_LIST else "hash list"
    flagged = {"flagged": True, "labels": [label], **found}
    for key in ("notes", "partial"):
        if key in reason:
            flagged[key] = reason[key]
    if verdict.flagged:
        flagged["model"] = {k: v for k, v in reason.items() if k not in ("notes", "partial")}
    return Verdict(True, flagged)


def _hash_text(found: dict) -> str:
    return f"hash list {found['hash_list']}, {found['match']} distance {found['distance']}"


def _simple_reason(reason: str | dict | None, allowlisted: str) -> tuple[dict | None, str]:
    """A stored reason as a dict to render, or the finished text when there is nothing to render:
    empty, plain text, an error, or an allowlisting."""
    if reason is None:
        return None, ""
    if isinstance(reason, str):
        try:
            reason = json.loads(reason)
        except json.JSONDecodeError:
            return None, reason
    if not isinstance(reason, dict):
        return None, str(reason)
    if "error" in reason:
        return None, str(reason["error"])
    if reason.get("allowlisted"):
        return None, allowlisted
    return reason, ""


def reason_text(reason: str | dict | None) -> str:
    """One line for reports: labels and the prompts that fired, with similarity and threshold."""
    reason, text = _simple_reason(reason, "allowlisted (the policy would flag it)")
    if reason is None:
        return text
    if "hash_list" in reason:
        model = f"; model: {reason_text(reason['model'])}" if reason.get("model") else ""
        return "; ".join(filter(None, [_hash_text(reason) + model, *reason.get("notes", [])]))
    parts = []
    for check, fired in reason.get("checks", {}).items():
        items = ", ".join(
            f"{f['prompt']} {f['similarity']:.4f}" + (f">{f['threshold']:.4f}" if "threshold" in f else "")
            for f in fired[:6]
        )
        more = f" (+{len(fired) - 6} more)" if len(fired) > 6 else ""
        parts.append(f"{check}: {items}{more}")
    labels = ",".join(reason.get("labels", []))
    if reason.get("where"):
        frame = f" [{reason['where']}]"
    else:
        frame = f" [frame {reason['frame'] + 1}/{reason['frames']}]" if reason.get("frames", 1) > 1 else ""
    text = f"{labels}{frame}: " + "; ".join(parts) if parts or labels else ""
    review = f"review: {_hash_text(reason['hash_list_review'])}" if "hash_list_review" in reason else ""
    return "; ".join(filter(None, [text, review, *reason.get("notes", [])]))


LABEL_ORDER = ("csam", "hash list", "underage", "nsfw")  # the gravest first: the one a line or a count shows


def gravest_first(labels) -> list[str]:
    """Labels by gravity (csam before nsfw), "subject" (a context label) left out; the rest by name."""
    shown = [x for x in labels if x != "subject"]
    return sorted(shown, key=lambda x: (x not in LABEL_ORDER, LABEL_ORDER.index(x) if x in LABEL_ORDER else 0, x))


def short_reason(reason: str | dict | None) -> str:
    """Labels and the strongest prompt that fired, for one-line listings."""
    reason, text = _simple_reason(reason, "allowlisted")
    if reason is None:
        return text
    if "hash_list" in reason:
        return _hash_text(reason)
    fired = [f for checks in reason.get("checks", {}).values() for f in checks if "margin" in f]
    labels = ",".join(label for label in reason.get("labels", []) if label != "subject")
    if not fired:
        return labels or "; ".join(reason.get("notes", []))
    top = max(fired, key=lambda f: f["margin"])
    return f"{labels}: {top['prompt']} {top['similarity']:.4f} (+{top['margin']:.4f}), {len(fired)} prompt(s) fired"
