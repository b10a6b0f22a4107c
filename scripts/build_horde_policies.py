#!/usr/bin/env python3
"""Build mirror_scan/policies/horde-v2.json and horde-v1.json from horde-safety's constants as data
(shared/reference/horde-policy/). Run again if that reference data changes; the outputs are committed.

Usage: python scripts/build_horde_policies.py [--reference ../shared/reference/horde-policy]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "mirror_scan" / "policies"
# Step 9 of the v2 rules, in the library's order.
V2_DEDUP_PAIRS = [
    ["tween", "tweens"],
    ["tweens", "tween"],
    ["teen", "teens"],
    ["teens", "teen"],
    ["an infant", "infants"],
    ["infants", "an infant"],
    ["toddler", "toddlers"],
    ["toddlers", "toddler"],
    ["child", "children"],
    ["children", "child"],
]
SEVERITY = {"strict": -0.01, "default": 0.0, "lenient": 0.01}
# NSFWAnimeScores.*_score_key: the model's rating tags, whose outputs are rounded to 4 decimals.
V2_RATING_TAGS = {"safe": "rating:safe", "questionable": "rating:questionable", "explicit": "rating:explicit"}
V2_RATING_DECIMALS = 4


def pick(entry: dict, keys: tuple[str, ...]) -> dict:
    return {"prompt": entry["prompt"], **{k: entry[k] for k in keys if k in entry}}


def build_v2_deepdanbooru(dd: dict) -> dict:
    """Rule step 4 (the reference's "deepdanbooru" section) as the policy's deepdanbooru section."""
    thresholds = dd["thresholds"]
    model = dd["model"]
    return {
        "enabled": True,
        "made_for": f"{model['file']} ({model['origin']}; sha256 {model['sha256']})",
        "rating_tags": V2_RATING_TAGS,
        "round_decimals": V2_RATING_DECIMALS,
        "nsfw_tags": dd["nsfw_deepdanbooru_concepts"],
        "explicit_above": thresholds["explicit_gt"],
        "questionable_above": thresholds["questionable_gt"],
        "questionable_needs_safe_below": thresholds["questionable_requires_safe_lt"],
        "safe_below": thresholds["safe_lt"],
        "tag_above": thresholds["tag_results_gt"],
        "not_anime_tags": [thresholds["realistic_tag"]],
    }


def build_v2(ref: dict) -> dict:
    g = ref["groups"]
    return {
        "format": "mirror-scan-policy",
        "format_version": 1,
        "name": "horde-v2",
        "description": (
            "horde-safety NSFWChecker.check_for_nsfw (as used by fedi-safety): flags an image that is both "
            "NSFW and shows an underage subject (is_csam). Similarities rounded to 4 decimals, strict '>' "
            "comparisons. Anime pictures also get DeepDanbooru's verdict when its scores are given."
        ),
        "made_for": "ViT-L-14/openai",
        "rule": "horde-v2",
        "round_decimals": 4,
        "severity_levels": SEVERITY,
        "flag_on": ["csam"],
        "groups": {
            "anime_cartoon": [pick(e, ("threshold",)) for e in g["anime_cartoon"]],
            "human_subject": [pick(e, ("threshold", "anime_second_pass_threshold")) for e in g["human_subject"]],
            "underage": [
                pick(e, ("threshold", "danger_threshold", "second_pass_threshold", "anime_second_pass_threshold"))
                for e in g["underage"]
            ],
            "nsfw_predicates": [pick(e, ("threshold",)) for e in g["nsfw_predicates"]],
            "nsfw_concepts": [pick(e, ("threshold", "anime_threshold")) for e in g["nsfw_concepts"]],
        },
        "parameters": {
            "anime_override_below": 0.208,
            "photo_override_above": 0.24,
            "photo_override_prompts": ref["photo_override_candidate_prompts"],
            "dedup_pairs": V2_DEDUP_PAIRS,
            "first_pass_min_hits": 1,
            "second_pass_min_hits": 2,
        },
        "deepdanbooru": build_v2_deepdanbooru(ref["deepdanbooru"]),
        "notes": [
            f"Built from horde-safety commit {ref['source']['commit']} constants by scripts/build_horde_policies.py.",
            "The thresholds were tuned for ViT-L-14/openai; with another model they mean little until calibrated.",
            "A file scanner has no generation prompt: the negative-prompt suspicion rule is not used.",
            "DeepDanbooru (rule step 4) runs on pictures called anime after the photo override; without its "
            "scores such a picture is decided by CLIP alone and the verdict says so (deepdanbooru_missing). "
            "Its thresholds are probabilities and do not move with the severity offset.",
        ],
    }


def build_v1(ref: dict) -> dict:
    words = ref["clip_word_list_in_order"]
    underage = [
        {
            "prompt": w,
            "context_threshold": ref["underage_context"][w],
            "critical_threshold": ref["underage_critical"][w],
        }
        for w in ref["underage_context"]
    ]
    lewd = [{"prompt": w, "threshold": t} for w, t in ref["lewd_context"].items()]
    used = {e["prompt"] for e in underage + lewd}
    return {
        "format": "mirror-scan-policy",
        "format_version": 1,
        "name": "horde-v1",
        "description": (
            "horde-safety check_for_csam (legacy, as used by lemmy-safety): underage words with context and "
            "critical thresholds (a critical word counts 3), lewd words, and control-word adjustments; flags "
            "when at least 3 underage hits and 1 lewd hit. Raw similarities, strict '>' comparisons."
        ),
        "made_for": "ViT-L-14/openai",
        "rule": "horde-v1",
        "severity_levels": SEVERITY,
        "flag_on": ["csam"],
        "groups": {
            "underage": underage,
            "lewd": lewd,
            "control": [{"prompt": w} for w in words if w not in used],
        },
        "parameters": {
            "pairs": ref["pairs"],
            "nsfw_model": True,  # lemmy-safety passed model_info {nsfw: true, tags: []}
            "model_tags": [],
            "nsfw_model_adjustments": ref["nsfw_model_adjustments"],
            "model_tag_adjustments": ref["model_tag_adjustments"],
            "control_word_adjustments": [
                {
                    "control_word": c["control_word"],
                    "trigger_above": c["trigger_if_similarity_gt"],
                    "adjustments": c["adjustments"],
                }
                for c in ref["control_word_adjustments"]
            ],
            "critical_weight": 3,
            "min_underage_hits": 3,
            "min_lewd_hits": 1,
        },
        "notes": [
            f"Built from horde-safety commit {ref['source']['commit']} constants by scripts/build_horde_policies.py.",
            "Prompt boosts and negative-prompt adjustments need a generation prompt, which a file scanner never has.",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference" / "horde-policy")
    args = parser.parse_args()
    v2 = build_v2(json.loads((args.reference / "nsfw_checker_v2.json").read_text()))
    v1 = build_v1(json.loads((args.reference / "csam_checker_v1.json").read_text()))
    OUT.mkdir(parents=True, exist_ok=True)
    for policy in (v2, v1):
        target = OUT / f"{policy['name']}.json"
        target.write_text(json.dumps(policy, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
