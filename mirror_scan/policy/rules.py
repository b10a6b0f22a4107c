"""Decision rules: pure, vectorised functions from similarities to verdicts.

Every rule takes a similarity matrix [N, P] whose columns are `policy.prompts`, and a severity offset
added to every threshold it compares against, and returns an Evaluation. One implementation serves a
single file (N=1), a batch, and a rescore of a million stored rows.

`horde-v2` and `horde-v1` reproduce horde-safety's NSFWChecker.check_for_nsfw and check_for_csam for
inputs a file scanner has (no generation prompt); their numbers live in the policy files. horde-v2's
optional DeepDanbooru step (a `deepdanbooru` section) takes the DeepDanbooru model's outputs per row,
given by the caller for the rows `deepdanbooru_rows` names. `groups` is the simple generic form: named
prompt groups, flag when each listed group has at least k prompts above threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mirror_scan.policy.model import DeepDanbooruResult, DeepDanbooruRows, DeepDanbooruRule, Evaluation, Policy

INF = np.inf
# DeepDanbooru's raw outputs (tag -> sigmoid output) for each similarity row, None for a row without them.
DeepDanbooruScores = Sequence[Mapping[str, float] | None] | None


@dataclass(frozen=True)
class RuleSpec:
    name: str
    # group -> (required numeric fields, optional numeric fields); None = any group name allowed
    groups: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None
    group_fields: tuple[tuple[str, ...], tuple[str, ...]]  # used when groups is None
    parameters: dict[str, Any]  # name -> default (REQUIRED = must be given)
    labels: tuple[str, ...] | None  # None = derived from groups
    evaluate: Callable[[Policy, np.ndarray, float, DeepDanbooruScores], Evaluation]


REQUIRED = object()


def _field(policy: Policy, group: str, key: str, n_cols: int) -> np.ndarray:
    """A [P] threshold array: the field's value on the group's prompt columns, +inf elsewhere."""
    out = np.full(n_cols, INF)
    col = policy.column()
    for entry in policy.groups.get(group, ()):
        value = entry.get(key)
        if value is not None:
            out[col[entry.prompt]] = value
    return out


def _above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """values > thresholds as an [N, P] mask, comparing only the columns whose threshold is finite."""
    cols = np.flatnonzero(np.isfinite(thresholds))
    out = np.zeros(values.shape, dtype=bool)
    out[:, cols] = values[:, cols] > thresholds[cols]
    return out


def _prepare(policy: Policy, sims: np.ndarray) -> np.ndarray:
    values = np.asarray(sims, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(policy.prompts):
        raise ValueError(f"similarities must be [N, {len(policy.prompts)}], got {values.shape}")
    if policy.round_decimals is not None:
        values = np.round(values, policy.round_decimals)
    return values


def _flagged(policy: Policy, labels: dict[str, np.ndarray], n: int) -> np.ndarray:
    flagged = np.zeros(n, dtype=bool)
    for label in policy.flag_on:
        flagged |= labels[label]
    return flagged


# ---------------------------------------------------------------- horde-v2 (NSFWChecker.check_for_nsfw)

PREDICATE_GROUPS = ("anime_cartoon", "human_subject", "underage", "nsfw_predicates")


def _anime(policy: Policy, values: np.ndarray, offset: float) -> np.ndarray:
    """Steps 2-3: anime detection, and the photo override for weak anime matches. bool [N]."""
    p = values.shape[1]
    col = policy.column()
    params = policy.parameters
    anime_hits = _above(values, _field(policy, "anime_cartoon", "threshold", p) + offset)
    is_anime = anime_hits.any(axis=1)
    strong_anime = (anime_hits & (values >= params["anime_override_below"] + offset)).any(axis=1)
    photo_cols = [col[prompt] for prompt in params["photo_override_prompts"]]
    photo_hit = (values[:, photo_cols] > params["photo_override_above"] + offset).any(axis=1)
    return is_anime & ~(~strong_anime & photo_hit)


def _dd_rule(policy: Policy) -> DeepDanbooruRule | None:
    rule = policy.deepdanbooru
    return rule if policy.rule == "horde-v2" and rule is not None and rule.enabled else None


def deepdanbooru_rows(policy: Policy, sims: np.ndarray, severity: float = 0.0) -> np.ndarray:
    """bool [N]: the rows of sims ([N, P], or one row [P]) the policy runs DeepDanbooru on: those it calls
    anime after the photo override (rule step 3). All false for a policy without an enabled step."""
    values = _prepare(policy, np.atleast_2d(sims))
    if _dd_rule(policy) is None:
        return np.zeros(len(values), dtype=bool)
    return _anime(policy, values, severity)


def needs_deepdanbooru(policy: Policy, sims: np.ndarray, severity: float = 0.0) -> bool:
    """Whether a picture needs DeepDanbooru's scores: any of its rows ([P] or [rows, P]) needs them."""
    return bool(deepdanbooru_rows(policy, sims, severity).any())


def _output(value: float, tag: str = "") -> np.float32:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"DeepDanbooru output for tag {tag!r} must be a number, got {value!r}")
    # The model's outputs are float32 and the library compares them with Python floats, which NumPy >= 2
    # does in float32 (NEP 50): an output equal to float32(threshold) is not above it.
    return np.float32(value)


def deepdanbooru_result(rule: DeepDanbooruRule, scores: Mapping[str, float]) -> DeepDanbooruResult:
    """Step 4 for one picture, as horde-safety's check_for_nsfw_anime_only and NSFWAnimeScores do it."""
    outputs = {tag: _output(value, tag) for tag, value in scores.items()}
    digits = rule.round_decimals

    def rounded(value: np.float32) -> float:
        return round(float(value), digits) if digits is not None else float(value)

    # A rating the model did not output stays 0.0, as in the library: a missing safe rating reads as unsafe.
    ratings = {tag: rounded(outputs.get(tag, np.float32(0.0))) for tag in rule.rating_tags.values()}
    safe, questionable, explicit = (ratings[rule.rating_tags[k]] for k in ("safe", "questionable", "explicit"))
    nsfw_tags = tuple(tag for tag, thr in rule.nsfw_tags.items() if tag in outputs and outputs[tag] > _output(thr))
    tags = {tag: rounded(value) for tag, value in outputs.items() if value > _output(rule.tag_above)}
    nsfw = (
        bool(nsfw_tags)
        or explicit > rule.explicit_above
        or (questionable > rule.questionable_above and safe < rule.questionable_needs_safe_below)
        or safe < rule.safe_below
    )
    not_anime = any(tag in tags for tag in rule.not_anime_tags)
    return DeepDanbooruResult(ratings, nsfw_tags, tags, nsfw, not_anime)


def _deepdanbooru_step(policy: Policy, wanted: np.ndarray, scores: DeepDanbooruScores) -> DeepDanbooruRows | None:
    if scores is not None and (isinstance(scores, Mapping) or len(scores) != len(wanted)):
        raise ValueError(f"deepdanbooru scores must be a sequence of one mapping (or None) per row ({len(wanted)})")
    rule = _dd_rule(policy)
    if rule is None:
        return None  # no model configured: the library skips step 4
    results = {}
    if scores is not None:
        for row in np.flatnonzero(wanted):
            row_scores = scores[row]
            if row_scores is not None and not isinstance(row_scores, Mapping):
                raise ValueError(f"deepdanbooru scores of row {row} must map tag -> output, got {row_scores!r}")
            if row_scores is not None:
                results[int(row)] = deepdanbooru_result(rule, row_scores)
    return DeepDanbooruRows(wanted=wanted.copy(), results=results)


def evaluate_horde_v2(
    policy: Policy, sims: np.ndarray, offset: float = 0.0, deepdanbooru: DeepDanbooruScores = None
) -> Evaluation:
    values = _prepare(policy, sims)
    n, p = values.shape
    col = policy.column()
    params = policy.parameters
    concept_base_thr = _field(policy, "nsfw_concepts", "threshold", p) + offset
    concept_anime_thr = _field(policy, "nsfw_concepts", "anime_threshold", p) + offset
    danger_thr = _field(policy, "underage", "danger_threshold", p) + offset
    predicate_thr = np.full(p, INF)
    for group in PREDICATE_GROUPS:
        predicate_thr = np.minimum(predicate_thr, _field(policy, group, "threshold", p))
    predicate_thr += offset
    second_thr = _field(policy, "underage", "second_pass_threshold", p) + offset
    anime_second_thr = np.full(p, INF)
    for group in ("human_subject", "underage"):
        anime_second_thr = np.minimum(anime_second_thr, _field(policy, group, "anime_second_pass_threshold", p))
    anime_second_thr += offset

    is_anime = _anime(policy, values, offset)
    # Step 4: DeepDanbooru on anime rows; its thresholds are probabilities, not similarities, so the
    # severity offset leaves them alone. Its NSFW verdict needs no subject; a not-anime tag ('realistic')
    # unsets anime for the steps below.
    dd = _deepdanbooru_step(policy, is_anime, deepdanbooru)
    dd_nsfw = np.zeros(n, dtype=bool)
    for row, result in (dd.results if dd is not None else {}).items():
        dd_nsfw[row] = result.nsfw
        is_anime[row] &= not result.not_anime

    # Step 5: a subject is any predicate text above its base threshold.
    matched = _above(values, predicate_thr)
    subject = matched.any(axis=1)

    # Step 6: the CLIP NSFW check, only with a subject and when DeepDanbooru did not already say NSFW;
    # anime images use the anime thresholds.
    concepts = _above(values, concept_base_thr)
    if is_anime.any():
        concepts[is_anime] = _above(values[is_anime], concept_anime_thr)
    concepts &= (subject & ~dd_nsfw)[:, None]
    is_nsfw = dd_nsfw | concepts.any(axis=1)

    # Step 7-10: underage, first pass then (if empty) a second pass with plural dedup.
    first = _above(values, danger_thr)
    first_any = first.any(axis=1)
    second = _above(values, second_thr)
    if is_anime.any():
        second[is_anime] = _above(values[is_anime], anime_second_thr)
    second &= ~first_any[:, None]
    for a, b in params["dedup_pairs"]:
        ca, cb = col[a], col[b]
        both = second[:, ca] & second[:, cb]
        second[:, ca] &= ~(both & (values[:, ca] <= values[:, cb]))
    underage = first.sum(axis=1) >= params["first_pass_min_hits"]
    underage |= ~first_any & (second.sum(axis=1) >= params["second_pass_min_hits"])
    csam_evidence = second
    csam_evidence[first_any] = first[first_any]

    labels = {
        "anime": is_anime,
        "subject": subject,
        "nsfw": is_nsfw,
        "underage": underage,
        "csam": underage & is_nsfw,
    }
    return Evaluation(
        prompts=policy.prompts,
        flagged=_flagged(policy, labels, n),
        labels=labels,
        evidence={"csam_predicates": csam_evidence, "nsfw_concepts": concepts, "matched_predicates": matched},
        values=values,
        # Per-row thresholds are chosen when explaining one row, never materialised as [N, P] matrices.
        thresholds={
            "csam_predicates": lambda row: (
                danger_thr if first_any[row] else (anime_second_thr if is_anime[row] else second_thr)
            ),
            "nsfw_concepts": lambda row: concept_anime_thr if is_anime[row] else concept_base_thr,
            "matched_predicates": lambda row: predicate_thr,
        },
        deepdanbooru=dd,
    )


# ---------------------------------------------------------------- horde-v1 (check_for_csam)


def evaluate_horde_v1(
    policy: Policy, sims: np.ndarray, offset: float = 0.0, deepdanbooru: DeepDanbooruScores = None
) -> Evaluation:
    """check_for_csam has no DeepDanbooru step: `deepdanbooru` is accepted and unused."""
    values = _prepare(policy, sims).copy()
    n, p = values.shape
    col = policy.column()
    params = policy.parameters
    context_thr = _field(policy, "underage", "context_threshold", p) + offset
    critical_thr = _field(policy, "underage", "critical_threshold", p) + offset
    lewd_thr = _field(policy, "lewd", "threshold", p) + offset
    pairs: dict[str, str] = params["pairs"]
    every_row = np.ones(n, dtype=bool)

    def adjust(word: str, delta: float, rows: np.ndarray, partner_skip: bool) -> None:
        c = col[word]
        if partner_skip and word in pairs:
            # The partner is compared with the threshold of the word being adjusted, as the library does.
            rows = rows & ~(values[:, col[pairs[word]]] > context_thr[c])
        values[rows, c] += delta

    if params["nsfw_model"]:
        for word, delta in params["nsfw_model_adjustments"]:
            adjust(word, delta, every_row, partner_skip=False)
    for tag, adjustments in params["model_tag_adjustments"].items():
        if tag in params["model_tags"]:
            for word, delta in adjustments:
                adjust(word, delta, every_row, partner_skip=False)
    for control in params["control_word_adjustments"]:
        triggered = values[:, col[control["control_word"]]] > control["trigger_above"] + offset
        for word, delta in control["adjustments"]:
            adjust(word, delta, triggered, partner_skip=True)

    context = _above(values, context_thr)
    critical = _above(values, critical_thr)
    lewd = _above(values, lewd_thr)
    underage_count = context.sum(axis=1) + (params["critical_weight"] - 1) * critical.sum(axis=1)
    labels = {
        "underage": underage_count >= params["min_underage_hits"],
        "lewd": lewd.sum(axis=1) >= params["min_lewd_hits"],
    }
    labels["csam"] = labels["underage"] & labels["lewd"]
    return Evaluation(
        prompts=policy.prompts,
        flagged=_flagged(policy, labels, n),
        labels=labels,
        evidence={"underage_context": context, "underage_critical": critical, "lewd": lewd},
        values=values,
        thresholds={
            "underage_context": lambda row: context_thr,
            "underage_critical": lambda row: critical_thr,
            "lewd": lambda row: lewd_thr,
        },
    )


# ---------------------------------------------------------------- groups (generic)


def evaluate_groups(
    policy: Policy, sims: np.ndarray, offset: float = 0.0, deepdanbooru: DeepDanbooruScores = None
) -> Evaluation:
    """No DeepDanbooru step: `deepdanbooru` is accepted and unused."""
    values = _prepare(policy, sims)
    n, p = values.shape
    evidence, labels, thresholds = {}, {}, {}
    for group in policy.groups:
        thr = _field(policy, group, "threshold", p) + offset
        hits = _above(values, thr)
        evidence[group] = hits
        thresholds[group] = lambda row, thr=thr: thr
        labels[group] = hits.sum(axis=1) >= policy.parameters["flag_when"].get(group, 1)
    match = np.ones(n, dtype=bool)
    for group in policy.parameters["flag_when"]:
        match &= labels[group]
    labels["match"] = match
    return Evaluation(
        prompts=policy.prompts,
        flagged=_flagged(policy, labels, n),
        labels=labels,
        evidence=evidence,
        values=values,
        thresholds=thresholds,
    )


THRESHOLD_ONLY = (("threshold",), ())

RULES: dict[str, RuleSpec] = {
    "horde-v2": RuleSpec(
        name="horde-v2",
        groups={
            "anime_cartoon": THRESHOLD_ONLY,
            "human_subject": (("threshold",), ("anime_second_pass_threshold",)),
            "underage": (
                ("threshold", "danger_threshold", "second_pass_threshold"),
                ("anime_second_pass_threshold",),
            ),
            "nsfw_predicates": THRESHOLD_ONLY,
            "nsfw_concepts": (("threshold",), ("anime_threshold",)),
        },
        group_fields=THRESHOLD_ONLY,
        parameters={
            "anime_override_below": REQUIRED,
            "photo_override_above": REQUIRED,
            "photo_override_prompts": REQUIRED,
            "dedup_pairs": REQUIRED,
            "first_pass_min_hits": 1,
            "second_pass_min_hits": 2,
        },
        labels=("anime", "subject", "nsfw", "underage", "csam"),
        evaluate=evaluate_horde_v2,
    ),
    "horde-v1": RuleSpec(
        name="horde-v1",
        groups={
            "underage": (("context_threshold", "critical_threshold"), ()),
            "lewd": THRESHOLD_ONLY,
            "control": ((), ()),
        },
        group_fields=THRESHOLD_ONLY,
        parameters={
            "pairs": REQUIRED,
            "nsfw_model": True,
            "model_tags": [],
            "nsfw_model_adjustments": [],
            "model_tag_adjustments": {},
            "control_word_adjustments": [],
            "critical_weight": 3,
            "min_underage_hits": 3,
            "min_lewd_hits": 1,
        },
        labels=("underage", "lewd", "csam"),
        evaluate=evaluate_horde_v1,
    ),
    "groups": RuleSpec(
        name="groups",
        groups=None,
        group_fields=THRESHOLD_ONLY,
        parameters={"flag_when": REQUIRED},
        labels=None,
        evaluate=evaluate_groups,
    ),
}
