"""Data-driven policies: similarities in, verdicts out. Pure functions, no I/O beyond reading the file."""

import numpy as np

from mirror_scan.policy.load import DEFAULT_POLICY, builtin_policies, load_policy, parse_policy, resolve_severity
from mirror_scan.policy.model import DEEPDANBOORU_MISSING, Evaluation, Policy
from mirror_scan.policy.rules import RULES, DeepDanbooruScores, deepdanbooru_rows, needs_deepdanbooru


def evaluate(
    policy: Policy, sims: np.ndarray, severity: float = 0.0, deepdanbooru: DeepDanbooruScores = None
) -> Evaluation:
    """sims [N, P] in policy.prompts order. deepdanbooru: one tag -> raw output mapping (or None) per row,
    used by a horde-v2 policy with a deepdanbooru section on the rows deepdanbooru_rows names."""
    return RULES[policy.rule].evaluate(policy, sims, severity, deepdanbooru)


__all__ = [
    "DEEPDANBOORU_MISSING",
    "DEFAULT_POLICY",
    "RULES",
    "DeepDanbooruScores",
    "Evaluation",
    "Policy",
    "builtin_policies",
    "deepdanbooru_rows",
    "evaluate",
    "load_policy",
    "needs_deepdanbooru",
    "parse_policy",
    "resolve_severity",
]
