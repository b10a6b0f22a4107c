"""The vectorised rules against the reference vectors and an independent scalar implementation."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mirror_scan.policy import evaluate, load_policy
from mirror_scan.policy.vectors import load_vectors, observed, run_vectors

from .conftest import DATA
from .horde_reference import check_v1, check_v2

V2_REF = json.loads((DATA / "horde_nsfw_checker_v2.json").read_text())
V1_REF = json.loads((DATA / "horde_csam_checker_v1.json").read_text())


@pytest.mark.parametrize(
    ("policy_name", "vector_file", "applicable"),
    [
        ("horde-v2", "horde_v2_vectors.json", 27),
        ("horde-v2", "horde_v2_deepdanbooru_vectors.json", 38),
        ("horde-v1", "horde_v1_vectors.json", 9),
    ],
)
def test_reference_vectors_all_agree(policy_name, vector_file, applicable):
    vectors = load_vectors(DATA / vector_file)
    policy = load_policy(policy_name)
    results = run_vectors(policy, vectors)
    failures = {r.name: r.differences for r in results if r.status == "fail"}
    assert failures == {}
    assert sum(r.status == "pass" for r in results) == applicable
    # Exactly the vectors needing a generation prompt (a file scanner never has one) are not applicable,
    # and those with DeepDanbooru scores where the policy has no DeepDanbooru step (horde-v1).
    na = {r.name for r in results if r.status == "n/a"}
    no_dd = policy.deepdanbooru is None
    assert na == {v["name"] for v in vectors if v.get("generation_prompt") or (no_dd and v.get("deepdanbooru_scores"))}


def _random_rows(policy, ref_thresholds: list[float], rows: int, seed: int) -> np.ndarray:
    """Mostly-default rows with a few prompts set close to real thresholds (on the 4-decimal grid)."""
    rng = np.random.default_rng(seed)
    sims = np.full((rows, len(policy.prompts)), 0.1)
    for r in range(rows):
        cols = rng.choice(len(policy.prompts), size=int(rng.integers(0, 25)), replace=False)
        picks = rng.choice(ref_thresholds, size=len(cols))
        sims[r, cols] = np.round(picks + rng.integers(-3, 4, size=len(cols)) * 0.0001, 4)
    return sims


@pytest.mark.parametrize("offset", [0.0, -0.01, 0.005])
def test_horde_v2_matches_scalar_reference_on_random_rows(offset):
    policy = load_policy("horde-v2")
    thresholds = sorted({e["threshold"] for grp in V2_REF["groups"].values() for e in grp if e.get("threshold")})
    sims = _random_rows(policy, [*thresholds, 0.208, 0.24, 0.1901, 0.2251], rows=1500, seed=int(abs(offset) * 1e4) + 7)
    ev = evaluate(policy, sims, offset)
    labels_seen = Counter()
    for row in range(len(sims)):
        want = check_v2(V2_REF, dict(zip(policy.prompts, sims[row], strict=True)), offset)
        got = observed(policy, ev, row)
        for key, value in want.items():
            assert got[key] == value, (row, key, value, got[key])
        labels_seen.update(k for k in ("is_anime", "is_nsfw", "is_underage_subject", "is_csam") if want[k])
    # The random rows must exercise every branch, or the comparison proves little.
    assert min(labels_seen[k] for k in ("is_anime", "is_nsfw", "is_underage_subject", "is_csam")) > 10, labels_seen


@pytest.mark.parametrize("offset", [0.0, 0.01])
def test_horde_v1_matches_scalar_reference_on_random_rows(offset):
    policy = load_policy("horde-v1")
    thresholds = list(V1_REF["underage_context"].values()) + list(V1_REF["lewd_context"].values())
    thresholds += [c["trigger_if_similarity_gt"] for c in V1_REF["control_word_adjustments"]]
    rng = np.random.default_rng(3)
    sims = np.full((1500, len(policy.prompts)), 0.1)
    for r in range(len(sims)):
        cols = rng.choice(len(policy.prompts), size=int(rng.integers(0, 10)), replace=False)
        sims[r, cols] = rng.choice(thresholds, size=len(cols)) + rng.normal(0, 0.01, size=len(cols))
    ev = evaluate(policy, sims, offset)
    positives = 0
    for row in range(len(sims)):
        want = check_v1(V1_REF, dict(zip(policy.prompts, sims[row], strict=True)), offset)
        got = observed(policy, ev, row)
        assert got["is_csam"] == want["is_csam"], row
        assert Counter(got["found_uc"]) == Counter(want["found_uc"]), row
        assert Counter(got["found_lewd"]) == Counter(want["found_lewd"]), row
        np.testing.assert_allclose(ev.values[row], [want["values"][p] for p in policy.prompts], rtol=0, atol=1e-12)
        positives += want["is_csam"]
    assert positives > 20


def test_severity_extremes_flag_everything_or_nothing():
    policy = load_policy("horde-v2")
    rng = np.random.default_rng(0)
    # Cosine similarities of a real image lie well inside (-0.75, 1): -1 makes every threshold crossable.
    sims = rng.uniform(-0.5, 0.6, size=(200, len(policy.prompts)))
    assert evaluate(policy, sims, -1.0).flagged.all()
    assert not evaluate(policy, sims, 1.0).flagged.any()
    assert not evaluate(policy, np.ones((3, len(policy.prompts))), 1.0).flagged.any()


def test_named_severity_levels_move_thresholds():
    from mirror_scan.policy import resolve_severity

    policy = load_policy("horde-v2")
    assert resolve_severity(policy, "strict") < 0 < resolve_severity(policy, "lenient")
    assert resolve_severity(policy, "default") == 0.0
    assert resolve_severity(policy, "-0.25") == -0.25
    # A row flagged only by a margin of 0.005 is flagged under strict, and not under lenient.
    col = policy.column()
    row = np.full((1, len(policy.prompts)), 0.1)
    row[0, col["child"]] = 0.2251 - 0.005
    row[0, col["naked"]] = 0.2201
    assert not evaluate(policy, row, 0.0).flagged[0]
    assert evaluate(policy, row, resolve_severity(policy, "strict")).flagged[0]
    row[0, col["child"]] = 0.2251
    assert evaluate(policy, row, 0.0).flagged[0]
    assert not evaluate(policy, row, resolve_severity(policy, "lenient")).flagged[0]


def test_generic_groups_rule_counts_hits_per_group(write_policy):
    path = write_policy(
        {"a": {"red": 0.5, "green": 0.5, "blue": 0.5}, "b": [{"prompt": "cat", "threshold": 0.3}]},
        flag_when={"a": 2, "b": 1},
    )
    policy = load_policy(str(path))
    assert policy.prompts == ("red", "green", "blue", "cat")
    sims = np.array(
        [
            [0.6, 0.6, 0.0, 0.4],  # a: 2 hits, b: 1 -> flagged
            [0.6, 0.0, 0.0, 0.4],  # a: 1 hit -> not
            [0.6, 0.6, 0.6, 0.3],  # b at threshold (strict >) -> not
        ]
    )
    ev = evaluate(policy, sims)
    assert ev.flagged.tolist() == [True, False, False]
    why = ev.explain(0)
    assert why["flagged"] and "match" in why["labels"]
    assert [c["prompt"] for c in why["checks"]["a"]] == ["red", "green"]
    assert why["checks"]["a"][0]["margin"] == pytest.approx(0.1)


def test_explain_names_the_prompts_that_fired_and_margins():
    policy = load_policy("horde-v2")
    col = policy.column()
    row = np.full((1, len(policy.prompts)), 0.1)
    row[0, col["child"]] = 0.2300
    row[0, col["nude"]] = 0.2250
    ev = evaluate(policy, row)
    why = ev.explain(0)
    assert why["flagged"] is True
    assert set(why["labels"]) >= {"csam", "nsfw", "underage", "subject"}
    underage = {c["prompt"]: c for c in why["checks"]["csam_predicates"]}
    assert underage["child"]["threshold"] == pytest.approx(0.225)
    assert underage["child"]["margin"] == pytest.approx(0.005)
    assert {c["prompt"] for c in why["checks"]["nsfw_concepts"]} == {"nude"}
