"""horde-v2's DeepDanbooru step (rule step 4): each branch, against the library's own vectors and an
independent scalar implementation; what a verdict says without DeepDanbooru; the policy section's checks."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mirror_scan.errors import PolicyError
from mirror_scan.policy import (
    DEEPDANBOORU_MISSING,
    deepdanbooru_rows,
    evaluate,
    load_policy,
    needs_deepdanbooru,
    parse_policy,
)
from mirror_scan.policy.rules import deepdanbooru_result
from mirror_scan.policy.vectors import load_vectors, observed, run_vectors
from mirror_scan.scan.decide import decide

from .conftest import DATA, run_cli
from .horde_reference import check_v2

V2_REF = json.loads((DATA / "horde_nsfw_checker_v2.json").read_text())
DD_VECTORS = DATA / "horde_v2_deepdanbooru_vectors.json"
SAFE = {"rating:safe": 0.97, "rating:questionable": 0.03, "rating:explicit": 0.01}


@pytest.fixture(scope="module")
def policy():
    return load_policy("horde-v2")


def _policy_with(policy, **dd_changes):
    """horde-v2 with its deepdanbooru section changed: a key set to None is removed; _remove=True removes
    the whole section."""
    data = json.loads(json.dumps(policy.raw))
    if dd_changes.pop("_remove", False):
        del data["deepdanbooru"]
    for key, value in dd_changes.items():
        if value is None:
            data["deepdanbooru"].pop(key, None)
        else:
            data["deepdanbooru"][key] = value
    return parse_policy("test-policy.json", data)


def _row(policy, **sims: float) -> np.ndarray:
    row = np.full((1, len(policy.prompts)), 0.1)
    col = policy.column()
    for prompt, value in sims.items():
        row[0, col[prompt.replace("_", " ")]] = value
    return row


def _result(policy, **scores: float):
    return deepdanbooru_result(policy.deepdanbooru, {**SAFE, **scores})


# ---------------------------------------------------------------- the library's own vectors


def test_deepdanbooru_vectors_all_agree_and_cover_every_branch(policy):
    vectors = load_vectors(DD_VECTORS)
    assert len(vectors) >= 30
    results = run_vectors(policy, vectors)
    assert {r.name: r.differences for r in results if r.status != "pass"} == {}
    expected = [v["expected"] for v in vectors]
    ran = [e for e in expected if e["deepdanbooru_ran"]]
    # DeepDanbooru ran and said NSFW (no CLIP concept reported), ran and said safe, flipped anime with
    # 'realistic', and did not run (not anime, the photo override, or no model): each several times.
    assert sum(e["is_nsfw"] and all(k.startswith("rating:") for k in e["nsfw_concepts_identified"]) for e in ran) > 5
    assert sum(not e["is_nsfw"] for e in ran) > 5
    assert sum(not e["is_anime"] for e in ran) >= 5
    assert sum(not e["deepdanbooru_ran"] for e in expected) >= 5
    assert sum(e["is_csam"] for e in ran) >= 3


def test_cli_policy_test_runs_deepdanbooru_vectors():
    proc = run_cli("policy", "test", str(DD_VECTORS), "--policy", "horde-v2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "38/38 applicable vectors agree (100.0%), 0 not applicable" in proc.stdout


# ---------------------------------------------------------------- each branch of the rule


@pytest.mark.parametrize(
    ("scores", "nsfw"),
    [
        ({}, False),
        ({"rating:explicit": 0.1251}, True),
        ({"rating:explicit": 0.125}, False),  # strict >
        ({"rating:explicit": 0.12504}, False),  # rounded to 0.125 first
        ({"rating:questionable": 0.1851, "rating:safe": 0.9299}, True),
        ({"rating:questionable": 0.1851, "rating:safe": 0.93}, False),  # questionable needs safe < 0.93
        ({"rating:questionable": 0.185, "rating:safe": 0.8}, False),
        ({"rating:safe": 0.4999}, True),
        ({"rating:safe": 0.5}, False),
        ({"rating:safe": 0.49996}, False),  # rounds to 0.5
        ({"bikini": 0.61}, True),
        ({"bikini": float(np.float32(0.6))}, False),  # a float32 output equal to float32(0.6) is not above it
        ({"bikini": 0.59}, False),
    ],
)
def test_deepdanbooru_nsfw_branches(policy, scores, nsfw):
    assert _result(policy, **scores).nsfw is nsfw


def test_deepdanbooru_reports_ratings_tags_and_realistic(policy):
    result = deepdanbooru_result(
        policy.deepdanbooru,
        {
            "rating:safe": 0.612345,
            "rating:questionable": 0.2,
            "rating:explicit": 0.1,
            "bikini": 0.7,
            "realistic": 0.55,
            "1girl": 0.4,
        },  # fmt: skip
    )
    assert result.ratings == {"rating:safe": 0.6123, "rating:questionable": 0.2, "rating:explicit": 0.1}
    assert result.nsfw_tags == ("bikini",) and result.nsfw
    assert result.tags == {"rating:safe": 0.6123, "bikini": 0.7, "realistic": 0.55}  # every tag above 0.5
    assert result.not_anime
    assert not _result(policy, realistic=0.5).not_anime  # strict >
    # A rating the model did not output scores 0.0, as in the library: a missing safe rating reads as unsafe.
    bare = deepdanbooru_result(policy.deepdanbooru, {"1girl": 0.9})
    assert bare.ratings == {"rating:safe": 0.0, "rating:questionable": 0.0, "rating:explicit": 0.0} and bare.nsfw
    with pytest.raises(ValueError, match="tag 'nsfw_tags' must be a number"):
        deepdanbooru_result(policy.deepdanbooru, {"nsfw_tags": []})


def test_deepdanbooru_nsfw_needs_no_subject_and_skips_the_clip_check(policy):
    # Anime with 'nude' at 0.21 (> the anime 0.195): the CLIP check would fire; DeepDanbooru's NSFW comes first.
    row = _row(policy, anime=0.21, nude=0.21)
    ev = evaluate(policy, row, 0.0, [{**SAFE, "rating:explicit": 0.7}])
    got = observed(policy, ev, 0)
    assert got["is_nsfw"] and got["nsfw_concepts_identified"] == {**SAFE, "rating:explicit": 0.7}
    ev = evaluate(policy, row, 0.0, [SAFE])
    assert observed(policy, ev, 0)["nsfw_concepts_identified"] == {**SAFE, "nude": 0.21}


def test_realistic_tag_switches_to_the_non_anime_rules(policy):
    row = _row(policy, anime=0.21, child=0.2041, photo_of_child=0.2041)
    explicit = {**SAFE, "rating:explicit": 0.7}
    as_anime = evaluate(policy, row, 0.0, [explicit])
    assert as_anime.labels["anime"][0] and not as_anime.labels["csam"][0]  # anime pass: only 'child' counts
    realistic = evaluate(policy, row, 0.0, [{**explicit, "realistic": 0.9}])
    assert not realistic.labels["anime"][0] and realistic.labels["csam"][0]
    why = realistic.explain(0)
    assert why["deepdanbooru"]["not_anime"] and why["deepdanbooru"]["ratings"]["rating:explicit"] == 0.7


def test_severity_does_not_move_deepdanbooru_thresholds(policy):
    row = _row(policy, anime=0.25)
    scores = [{**SAFE, "rating:explicit": 0.1251}]
    for offset in (-0.01, 0.0, 0.01):
        assert evaluate(policy, row, offset, scores).labels["nsfw"][0]
    assert not evaluate(policy, row, 0.01, [{**SAFE, "rating:explicit": 0.125}]).labels["nsfw"][0]


# ---------------------------------------------------------------- which pictures need DeepDanbooru


def test_needs_deepdanbooru_follows_anime_after_the_photo_override(policy):
    assert needs_deepdanbooru(policy, _row(policy, anime=0.21)[0])
    assert needs_deepdanbooru(policy, _row(policy, manga=0.2051))
    assert not needs_deepdanbooru(policy, _row(policy, nude=0.3))
    assert not needs_deepdanbooru(policy, _row(policy, anime=0.205, photo_of_a_woman=0.2401))  # override
    assert needs_deepdanbooru(policy, _row(policy, anime=0.208, photo_of_a_woman=0.3))  # strong anime
    # The severity offset moves the anime thresholds, so the caller passes the one it decides with.
    assert not needs_deepdanbooru(policy, _row(policy, anime=0.2001), severity=0.01)
    rows = np.vstack([_row(policy, nude=0.3), _row(policy, anime=0.21), _row(policy, cartoon=0.2)])
    assert deepdanbooru_rows(policy, rows).tolist() == [False, True, False]
    assert needs_deepdanbooru(policy, rows)  # a picture of several rows: any of them
    assert not needs_deepdanbooru(_policy_with(policy, _remove=True), rows)
    assert not needs_deepdanbooru(_policy_with(policy, enabled=False), rows)
    assert not needs_deepdanbooru(load_policy("horde-v1"), np.zeros(len(load_policy("horde-v1").prompts)))


def test_anime_without_scores_is_decided_by_clip_and_says_so(policy):
    rows = np.vstack([_row(policy, anime=0.21, nude=0.1951, child=0.2251), _row(policy, nude=0.3, woman=0.2)])
    ev = evaluate(policy, rows)
    assert ev.deepdanbooru is not None and ev.deepdanbooru.missing.tolist() == [True, False]
    assert ev.flagged.tolist() == [True, False]  # CLIP's anime thresholds alone, as the library without a model
    assert ev.explain(0)["deepdanbooru_missing"] == DEEPDANBOORU_MISSING
    assert "deepdanbooru_missing" not in ev.explain(1)
    # The verdict of a flagged file carries it, and says DeepDanbooru ran when it did.
    (verdict,) = decide(policy, rows[:1], [1], 0.0)
    assert verdict.flagged and verdict.reason["deepdanbooru_missing"] == DEEPDANBOORU_MISSING
    (verdict,) = decide(policy, rows[:1], [1], 0.0, deepdanbooru=[{**SAFE, "rating:explicit": 0.7}])
    assert verdict.flagged and "deepdanbooru_missing" not in verdict.reason
    assert (
        verdict.reason["deepdanbooru"]["nsfw"] and verdict.reason["deepdanbooru"]["ratings"]["rating:explicit"] == 0.7
    )
    # Disabled in the policy: CLIP alone by choice, and nothing missing.
    ev = evaluate(_policy_with(policy, enabled=False), rows, 0.0, [{**SAFE, "rating:explicit": 0.7}, None])
    assert ev.deepdanbooru is None and "deepdanbooru_missing" not in ev.explain(0)


def test_scores_are_one_per_row(policy):
    rows = np.vstack([_row(policy, anime=0.21), _row(policy, anime=0.21)])
    with pytest.raises(ValueError, match="one mapping"):
        evaluate(policy, rows, 0.0, [SAFE])
    with pytest.raises(ValueError, match="one mapping"):
        evaluate(policy, rows[:1], 0.0, SAFE)
    with pytest.raises(ValueError, match="row 1 must map tag -> output"):
        evaluate(policy, rows, 0.0, [None, [0.5]])
    ev = evaluate(policy, rows, 0.0, [{**SAFE, "rating:explicit": 0.7}, None])
    assert ev.labels["nsfw"].tolist() == [True, False]
    assert ev.deepdanbooru.missing.tolist() == [False, True]


def test_policy_without_deepdanbooru_section_ignores_scores(policy):
    plain = _policy_with(policy, _remove=True)
    assert plain.deepdanbooru is None
    row = _row(policy, anime=0.21)
    ev = evaluate(plain, row, 0.0, [{**SAFE, "rating:explicit": 0.9}])
    assert ev.deepdanbooru is None and not ev.labels["nsfw"][0] and "deepdanbooru_missing" not in ev.explain(0)
    results = run_vectors(plain, load_vectors(DATA / "horde_v2_vectors.json"))
    assert sum(r.status == "pass" for r in results) == 27 and not any(r.status == "fail" for r in results)
    # Vectors with DeepDanbooru scores are not applicable to it; those without still agree.
    results = {r.name: r for r in run_vectors(plain, load_vectors(DD_VECTORS))}
    assert results["dd_explicit_just_above"].status == "n/a"
    assert results["dd_disabled_anime_csam"].status == "pass"


# ---------------------------------------------------------------- against an independent implementation


@pytest.mark.parametrize("offset", [0.0, -0.005])
def test_horde_v2_with_deepdanbooru_matches_scalar_reference(policy, offset):
    rng = np.random.default_rng(11 + int(abs(offset) * 1e4))
    rows = 1200
    col = policy.column()
    sims = np.full((rows, len(policy.prompts)), 0.1)
    near = [0.2, 0.2001, 0.205, 0.2051, 0.2079, 0.208, 0.24, 0.2401, 0.19, 0.1901, 0.1918, 0.195, 0.1951, 0.2041,
            0.22, 0.2201, 0.2251]  # fmt: skip
    prompts = ["anime", "manga", "cartoon", "photo of a woman", "teen", "child", "photo of child", "nude", "porn",
               "woman", "naked"]  # fmt: skip
    for r in range(rows):
        picked = rng.choice(prompts, size=int(rng.integers(1, 6)), replace=False)
        sims[r, [col[p] for p in picked]] = rng.choice(near, size=len(picked))
    edges = {
        "rating:safe": [0.3, 0.4999, 0.5, 0.49996, 0.9299, 0.93, 0.92996, 0.97],
        "rating:questionable": [0.03, 0.185, 0.1851, 0.3],
        "rating:explicit": [0.01, 0.125, 0.12504, 0.12506, 0.1251, 0.7],
        "bikini": [0.59, 0.6, 0.61],
        "realistic": [0.3, 0.5, 0.50000001, 0.51],
    }
    scores: list[dict[str, float] | None] = []
    for _ in range(rows):
        if rng.random() < 0.15:
            scores.append(None)
            continue
        scores.append({tag: float(rng.choice(values)) for tag, values in edges.items() if rng.random() < 0.8})
    ev = evaluate(policy, sims, offset, scores)
    seen = Counter()
    for r in range(rows):
        want = check_v2(V2_REF, dict(zip(policy.prompts, sims[r], strict=True)), offset, scores[r])
        got = observed(policy, ev, r)
        for key, value in want.items():
            assert got[key] == value, (r, key, value, got[key], scores[r])
        ran = want["deepdanbooru_ran"]
        seen.update(
            {
                "ran": ran,
                "dd_nsfw": ran
                and want["is_nsfw"]
                and any(k.startswith("rating:") for k in want["nsfw_concepts_identified"]),
                "flipped": ran and not want["is_anime"],
                "csam": ran and want["is_csam"],
                "missing": bool(ev.deepdanbooru.missing[r]),
            }
        )
    assert min(seen[k] for k in ("ran", "dd_nsfw", "flipped", "csam", "missing")) > 10, seen


# ---------------------------------------------------------------- the policy file's section


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"explicit_abov": 0.1}, "(?s)unknown key 'explicit_abov'.*did you mean 'explicit_above'"),
        ({"explicit_above": None}, "deepdanbooru lacks 'explicit_above'"),
        ({"safe_below": 1.5}, "deepdanbooru.safe_below is 1.5: DeepDanbooru outputs are probabilities"),
        ({"tag_above": "high"}, "deepdanbooru.tag_above must be a number"),
        ({"nsfw_tags": {"bikini": -0.1}}, "deepdanbooru.nsfw_tags.bikini is -0.1"),
        ({"nsfw_tags": ["bikini"]}, "nsfw_tags must be a table"),
        ({"nsfw_tags": {"rating:explicit": 0.3}}, "names the rating tag 'rating:explicit'"),
        ({"rating_tags": {"safe": "rating:safe"}}, "must name exactly the ratings safe, questionable, explicit"),
        ({"rating_tags": {"safe": "a", "questionable": "a", "explicit": "b"}}, "a different tag name"),
        ({"not_anime_tags": "realistic"}, "not_anime_tags must be a list of tag names"),
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"round_decimals": 12}, "deepdanbooru.round_decimals must be an integer from 0 to 8"),
    ],
)
def test_invalid_deepdanbooru_section_is_refused(policy, change, message):
    with pytest.raises(PolicyError, match=message) as err:
        _policy_with(policy, **change)
    assert "test-policy.json" in str(err.value)


def test_deepdanbooru_section_only_for_horde_v2(policy, tmp_path):
    data = {"rule": "groups", "groups": {"a": {"x": 0.2}}, "parameters": {"flag_when": {"a": 1}},
            "deepdanbooru": policy.raw["deepdanbooru"]}  # fmt: skip
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyError, match="rule groups has no DeepDanbooru step"):
        load_policy(str(path))
    with pytest.raises(PolicyError, match="deepdanbooru must be a table"):
        parse_policy("p.json", {**policy.raw, "deepdanbooru": [1]})


SMALL_V2_TOML = """
name = "small-v2"
rule = "horde-v2"
round_decimals = 4
[groups]
anime_cartoon = { "anime" = 0.2 }
human_subject = [{ prompt = "photo of a woman", threshold = 0.202 }]
underage = [{ prompt = "child", threshold = 0.19, danger_threshold = 0.225, second_pass_threshold = 0.204 }]
nsfw_predicates = { "nsfw" = 0.21 }
nsfw_concepts = [{ prompt = "nude", threshold = 0.22, anime_threshold = 0.195 }]
[parameters]
anime_override_below = 0.208
photo_override_above = 0.24
photo_override_prompts = ["photo of a woman"]
dedup_pairs = []
[deepdanbooru]
explicit_above = 0.125
questionable_above = 0.185
questionable_needs_safe_below = 0.93
safe_below = 0.5
tag_above = 0.5
not_anime_tags = ["realistic"]
[deepdanbooru.nsfw_tags]
"swimsuit" = 0.7
"""


def test_toml_policy_with_deepdanbooru_table(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_V2_TOML)
    small = load_policy(str(path))
    dd = small.deepdanbooru
    assert dd.enabled and dd.rating_tags["explicit"] == "rating:explicit" and dd.round_decimals is None
    row = np.full((2, len(small.prompts)), 0.1)
    row[:, small.column()["anime"]] = 0.21
    ev = evaluate(small, row, 0.0, [{**SAFE, "swimsuit": 0.71}, {**SAFE, "rating:safe": 0.123456}])
    assert ev.labels["nsfw"].tolist() == [True, True]
    assert ev.deepdanbooru.results[1].ratings["rating:safe"] == pytest.approx(0.123456)  # no rounding asked
