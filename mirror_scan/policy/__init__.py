"""Data-driven policies: similarities in, verdicts out. Pure functions, no I/O beyond reading the file."""

from mirror_scan.policy.load import DEFAULT_POLICY, builtin_policies, load_policy, parse_policy, resolve_severity
from mirror_scan.policy.model import Evaluation, Policy
from mirror_scan.policy.rules import RULES


def evaluate(policy: Policy, sims, severity: float = 0.0) -> Evaluation:
    return RULES[policy.rule].evaluate(policy, sims, severity)


__all__ = [
    "DEFAULT_POLICY",
    "RULES",
    "Evaluation",
    "Policy",
    "builtin_policies",
    "evaluate",
    "load_policy",
    "parse_policy",
    "resolve_severity",
]
