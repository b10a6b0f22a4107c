"""calibrate: how often the policy flags pictures an admin knows to be benign, per label and per severity
offset, with a 95% confidence interval, and the most sensitive severity that meets a target. Pure:
similarities in, numbers out (app/calibration.py reads the sample).

Every picture in the sample is benign, so every flag is a false positive: the false-positive rate at an
offset is flagged/n. With few flags the point estimate says little (0 of 2,000 is not "0%"), so each
rate comes with its Wilson score interval, and a severity is chosen by the interval's upper bound: the
most sensitive (lowest) offset whose upper bound is at or under the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mirror_scan.policy import Policy, evaluate

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson(flagged: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion flagged/n (good at 0 and near it, unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = flagged / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if flagged == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    high = 1.0 if flagged == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class AtOffset:
    offset: float
    flagged: int
    rate: float
    low: float
    high: float
    by_label: dict[str, int]


@dataclass
class Calibration:
    pictures: int
    current: float  # the severity offset in use
    target: float
    points: list[AtOffset]
    chosen: AtOffset | None  # the most sensitive offset meeting the target (None: none in the range does)
    critical: np.ndarray  # per picture: the highest offset at which it is still flagged (-inf: never)
    near_current: int  # pictures that change verdict within one grid step of the current offset
    notes: list[str] = field(default_factory=list)

    def at(self, offset: float) -> AtOffset:
        return min(self.points, key=lambda p: abs(p.offset - offset))


def offsets_around(policy: Policy, current: float, span: float = 0.05, step: float = 0.0025) -> np.ndarray:
    """A grid of offsets around the current one, wide enough for the policy's own levels."""
    levels = list(policy.severity_levels.values()) or [0.0]
    low = min(current - span, *levels)
    high = max(current + span, *levels)
    count = int(round((high - low) / step)) + 1
    return np.round(np.linspace(low, high, count), 6)


def calibrate(
    policy: Policy,
    sims: list[np.ndarray],
    current: float,
    target: float = 0.005,
    offsets: np.ndarray | None = None,
    deepdanbooru: list[dict[str, float] | None] | None = None,
) -> Calibration:
    """sims: one [frames, P] array per picture, in the policy's column order (a picture is flagged when
    any of its frames is, as a scan decides); deepdanbooru: DeepDanbooru's stored scores per picture (None
    where it did not run), for a policy with the anime check's second model."""
    offsets = offsets_around(policy, current) if offsets is None else np.asarray(offsets, dtype=float)
    n = len(sims)
    frames = np.array([len(s) for s in sims], dtype=np.intp)
    stacked = np.concatenate(sims) if n else np.zeros((0, len(policy.prompts)), np.float32)
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.intp) if n else np.zeros(0, np.intp)
    critical = np.full(n, -np.inf)
    points = []
    dd_rows = None
    if deepdanbooru is not None:
        dd_rows = [one for one, count in zip(deepdanbooru, frames, strict=True) for _ in range(int(count))]
    for offset in offsets:
        ev = evaluate(policy, stacked, float(offset), dd_rows)
        flagged = np.logical_or.reduceat(ev.flagged, starts) if n else np.zeros(0, bool)
        by_label = {
            label: int(np.logical_or.reduceat(mask, starts).sum()) if n else 0
            for label, mask in ev.labels.items()
            if label in policy.flag_on or mask.any()
        }
        critical[flagged] = np.maximum(critical[flagged], offset)
        count = int(flagged.sum())
        low, high = wilson(count, n)
        points.append(AtOffset(float(offset), count, count / n if n else 0.0, low, high, by_label))
    meeting = [p for p in points if p.high <= target]
    chosen = min(meeting, key=lambda p: p.offset) if meeting else None
    step = float(np.min(np.diff(offsets))) if len(offsets) > 1 else 0.0
    near = int(np.sum(np.abs(critical - current) <= step)) if n else 0
    notes = []
    if n < math.ceil(3 / max(target, 1e-9)):
        notes.append(
            f"{n} picture(s) cannot show a rate of {target:.2%} with 95% confidence even with none flagged "
            f"(that takes about {math.ceil(3 / target):,}): add more benign pictures"
        )
    return Calibration(n, current, target, points, chosen, critical, near, notes)


def histogram(
    critical: np.ndarray, offsets: np.ndarray, current: float, chosen: float | None, width: int = 40
) -> list[str]:
    """Text bars: how many pictures stop being flagged at each offset (their margin to the thresholds),
    with the current and the chosen severity marked. Pictures never flagged in the range are counted apart."""
    flagged = critical[np.isfinite(critical)]
    lines = []
    counts = [(float(o), int(np.sum(np.isclose(flagged, o)))) for o in offsets]
    top = max((c for _, c in counts), default=0) or 1
    for offset, count in counts:
        marks = ("  <- current" if math.isclose(offset, current, abs_tol=1e-9) else "") + (
            "  <- chosen" if chosen is not None and math.isclose(offset, chosen, abs_tol=1e-9) else ""
        )
        bar = "#" * max(1 if count else 0, round(width * count / top))
        lines.append(f"{offset:+8.4f} {count:6d} {bar}{marks}")
    lines.append(f"never flagged in this range: {int(np.sum(~np.isfinite(critical)))}")
    return lines


def rate_lines(result) -> list[str]:
    """The table: per severity offset (every 0.005, the current and the chosen one), how many are flagged,
    the share with its 95% interval, and by label."""
    now, chosen = result.at(result.current), result.chosen
    lines = [f"{'offset':>8} {'flagged':>8} {'rate':>8}  95% interval        by label"]
    for p in result.points:
        if not (_on_step(p.offset, 0.005) or p.offset in (now.offset, getattr(chosen, "offset", None))):
            continue
        labels = ", ".join(f"{k} {v}" for k, v in sorted(p.by_label.items()) if v) or "-"
        mark = " <- current" if p is now else (" <- chosen" if p is chosen else "")
        lines.append(f"{p.offset:+8.4f} {p.flagged:8d} {p.rate:8.2%}  {_interval(p.low, p.high):18s}  {labels}{mark}")
    return lines


def margin_lines(result, offsets) -> list[str]:
    lines = ["margins (the highest offset at which each picture is still flagged):"]
    for line in histogram(result.critical, offsets, result.current, getattr(result.chosen, "offset", None)):
        if not line.split()[1:2] == ["0"] or "<-" in line or line.startswith("never"):
            lines.append(f"  {line}")
    return lines


def _on_step(offset: float, step: float) -> bool:
    return abs(offset / step - round(offset / step)) < 1e-6


def _interval(low: float, high: float) -> str:
    return f"[{low:.2%}, {high:.2%}]"
