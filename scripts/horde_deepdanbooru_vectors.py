#!/usr/bin/env python3
"""Produce tests/data/horde_v2_deepdanbooru_vectors.json: reference vectors for the DeepDanbooru step of
horde-safety's NSFWChecker.check_for_nsfw (rule step 4), computed by the library itself.

The library is imported unmodified from a checkout (nothing of it is copied here). Only what cannot run on
this machine is replaced: the CLIP interrogator answers each text with the vector's similarity, and the
DeepDanbooru model is a stub whose `tags` are the vector's tags and whose `evaluate_tensor` returns their
outputs as a float32 array, as the real model does; it counts its calls (`deepdanbooru_ran`). Modules the
library imports but these functions never use (loguru, unidecode, strenum, clip_interrogator, open_clip)
are stubbed only where they are not installed.

Usage:
  git --git-dir=<horde-safety mirror> archive ebea47ad14792ee1130d79a905428e3fb818c0ee horde_safety \
      | tar -x -C /tmp/horde-safety
  python scripts/horde_deepdanbooru_vectors.py --horde-safety /tmp/horde-safety [--commit ebea47a...]
"""

from __future__ import annotations

import argparse
import enum
import importlib.util
import json
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "horde_v2_deepdanbooru_vectors.json"
COMMIT = "ebea47ad14792ee1130d79a905428e3fb818c0ee"
DEFAULT_SIMILARITY = 0.1

# DeepDanbooru outputs of a plainly safe anime picture; each case changes what it tests.
SAFE = {"rating:safe": 0.97, "rating:questionable": 0.03, "rating:explicit": 0.01, "1girl": 0.9, "solo": 0.8}
EXPLICIT = {**SAFE, "rating:safe": 0.2, "rating:explicit": 0.7}
ANIME = {"anime": 0.21}  # >= 0.208: a strong anime match (no photo override), itself a subject


def case(name: str, description: str, sims: dict[str, float], dd: dict[str, float] | None) -> dict[str, Any]:
    return {"name": name, "description": description, "similarities": sims, "deepdanbooru_scores": dd}


CASES = [
    case("dd_safe_anime_not_nsfw", "Safe ratings, no NSFW tag: not NSFW; the three ratings are reported.",
         ANIME, SAFE),
    case("dd_explicit_just_above", "rating:explicit 0.1251 > 0.125: NSFW by DeepDanbooru.",
         ANIME, {**SAFE, "rating:safe": 0.9, "rating:explicit": 0.1251}),
    case("dd_explicit_at_threshold", "rating:explicit exactly 0.125 (strict >): not NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.9, "rating:explicit": 0.125}),
    case("dd_explicit_rounds_down_to_threshold", "Raw 0.12504 rounds to 0.125 before the comparison: not NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.9, "rating:explicit": 0.12504}),
    case("dd_explicit_rounds_up_above", "Raw 0.12506 rounds to 0.1251: NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.9, "rating:explicit": 0.12506}),
    case("dd_questionable_above_safe_below_093", "questionable 0.1851 > 0.185 and safe 0.9299 < 0.93: NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.9299, "rating:questionable": 0.1851}),
    case("dd_questionable_above_safe_at_093", "questionable 0.1851 but safe exactly 0.93: not NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.93, "rating:questionable": 0.1851}),
    case("dd_questionable_safe_rounds_to_093", "safe raw 0.92996 rounds to 0.93: the questionable rule fails.",
         ANIME, {**SAFE, "rating:safe": 0.92996, "rating:questionable": 0.3}),
    case("dd_questionable_at_threshold", "questionable exactly 0.185 with safe 0.8: not NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.8, "rating:questionable": 0.185}),
    case("dd_questionable_high_safe_high", "questionable 0.3 with safe 0.95: not NSFW (safe must be < 0.93).",
         ANIME, {**SAFE, "rating:safe": 0.95, "rating:questionable": 0.3}),
    case("dd_safe_below_half", "safe 0.4999 < 0.5: NSFW even with low questionable/explicit.",
         ANIME, {**SAFE, "rating:safe": 0.4999, "rating:questionable": 0.1, "rating:explicit": 0.05}),
    case("dd_safe_at_half", "safe exactly 0.5: not NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.5, "rating:questionable": 0.1, "rating:explicit": 0.05}),
    case("dd_safe_rounds_to_half", "safe raw 0.49996 rounds to 0.5: not NSFW.",
         ANIME, {**SAFE, "rating:safe": 0.49996, "rating:questionable": 0.1, "rating:explicit": 0.05}),
    case("dd_bikini_above", "Tag bikini 0.61 > 0.6: NSFW by tag; safe ratings.",
         ANIME, {**SAFE, "bikini": 0.61}),
    case("dd_bikini_at_float32_threshold", "bikini output float32(0.6) = 0.6000000238...: the library compares "
         "the float32 output with 0.6, which NumPy 2 does in float32: equal, so not NSFW.",
         ANIME, {**SAFE, "bikini": float(np.float32(0.6))}),
    case("dd_bikini_below", "bikini 0.59: not NSFW, but listed in the tags above 0.5.",
         ANIME, {**SAFE, "bikini": 0.59}),
    case("dd_nsfw_skips_clip_check", "DeepDanbooru says NSFW: the CLIP concept check is skipped, so 'nude' "
         "0.21 is not reported; only the ratings are.", {**ANIME, "nude": 0.21}, EXPLICIT),
    case("dd_safe_then_clip_anime_concept", "DeepDanbooru safe: the CLIP check runs with anime thresholds; "
         "'nude' 0.1951 > 0.195: NSFW, ratings and 'nude' reported.", {**ANIME, "nude": 0.1951}, SAFE),
    case("dd_realistic_flips_anime", "Tag realistic 0.51: is_anime false; 'nude' 0.21 is then judged "
         "with the non-anime 0.22: not NSFW.", {**ANIME, "nude": 0.21}, {**SAFE, "realistic": 0.51}),
    case("dd_realistic_at_half", "realistic exactly 0.5: stays anime; 'nude' 0.21 > 0.195: NSFW.",
         {**ANIME, "nude": 0.21}, {**SAFE, "realistic": 0.5}),
    case("dd_realistic_float32_half", "realistic 0.50000001 is float32 0.5 as a model output: stays anime.",
         {**ANIME, "nude": 0.21}, {**SAFE, "realistic": 0.50000001}),
    case("dd_realistic_then_nonanime_concept", "realistic flips anime; 'porn' 0.3 (ignored for anime) fires "
         "with the non-anime threshold.", {**ANIME, "porn": 0.3}, {**SAFE, "realistic": 0.8}),
    case("dd_explicit_realistic_still_nsfw", "realistic flips anime but DeepDanbooru's NSFW verdict stands.",
         ANIME, {**EXPLICIT, "realistic": 0.8}),
    case("dd_anime_second_pass_csam", "Anime second pass: teen 0.1901 + child 0.1918 = 2 hits; explicit: csam.",
         {**ANIME, "teen": 0.1901, "child": 0.1918}, EXPLICIT),
    case("dd_realistic_switches_second_pass_off", "Same, with realistic: the non-anime second pass does not "
         "count teen and child 0.1918 < 0.204: not underage, not csam.",
         {**ANIME, "teen": 0.1901, "child": 0.1918}, {**EXPLICIT, "realistic": 0.9}),
    case("dd_realistic_switches_second_pass_on", "realistic: the non-anime second pass counts 'photo of child' "
         "0.2041 and 'child' 0.2041 (2 hits; as anime only 'child' would count): csam.",
         {**ANIME, "child": 0.2041, "photo of child": 0.2041}, {**EXPLICIT, "realistic": 0.9}),
    case("dd_explicit_first_pass_csam", "child 0.2251 > danger 0.225 and explicit: csam.",
         {**ANIME, "child": 0.2251}, EXPLICIT),
    case("dd_safe_underage_not_csam", "child 0.2251 but DeepDanbooru safe and no CLIP concept: not csam.",
         {**ANIME, "child": 0.2251}, SAFE),
    case("dd_photo_override_prevents_dd", "'anime' 0.205 < 0.208 and 'photo of a woman' 0.2401: not anime, "
         "so DeepDanbooru does not run; its explicit scores are unused.",
         {"anime": 0.205, "photo of a woman": 0.2401}, EXPLICIT),
    case("dd_photo_at_threshold_runs_dd", "'photo of a woman' exactly 0.24: no override, DeepDanbooru runs.",
         {"anime": 0.205, "photo of a woman": 0.24}, EXPLICIT),
    case("dd_strong_anime_blocks_override", "'anime' 0.208 blocks the override: DeepDanbooru runs.",
         {"anime": 0.208, "photo of a woman": 0.3}, EXPLICIT),
    case("dd_manga_only_runs_dd", "'manga' 0.2051 is the only anime hit: DeepDanbooru runs.",
         {"manga": 0.2051}, {**SAFE, "rating:safe": 0.3}),
    case("dd_not_anime_no_dd", "No anime text fires: DeepDanbooru does not run; CLIP: 'woman' 0.1941 subject, "
         "'nude' 0.2201: NSFW.", {"woman": 0.1941, "nude": 0.2201}, EXPLICIT),
    case("dd_without_rating_tags", "A model output with no rating tags: the library's scores stay 0.0, so "
         "safe 0.0 < 0.5: NSFW.", ANIME, {"1girl": 0.9}),
    case("dd_several_reasons", "bikini, explicit and questionable at once: NSFW; rating tags above 0.5 are in "
         "the tag list too.", ANIME,
         {"rating:safe": 0.05, "rating:questionable": 0.6, "rating:explicit": 0.55, "bikini": 0.95, "1girl": 0.99}),
    case("dd_disabled_anime_clip", "DeepDanbooru disabled: the CLIP anime thresholds decide; 'nude' 0.1951: NSFW.",
         {**ANIME, "nude": 0.1951}, None),
    case("dd_disabled_anime_csam", "DeepDanbooru disabled: anime second pass teen + child and 'nude': csam.",
         {**ANIME, "teen": 0.1901, "child": 0.1918, "nude": 0.1951}, None),
    case("dd_disabled_anime_safe", "DeepDanbooru disabled, anime with nothing else: not NSFW.", ANIME, None),
]  # fmt: skip


def _stub(name: str, **attrs: Any) -> None:
    """A stand-in for a module the decision functions never use, only when it is not installed."""
    if importlib.util.find_spec(name.split(".")[0]) is not None:
        return
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


class _Logger:
    def __getattr__(self, _name: str):
        return lambda *args, **kwargs: None


def import_library(checkout: Path):
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="horde-safety-cache-")  # its import creates a cache folder
    _stub("loguru", logger=_Logger())
    _stub("unidecode", unidecode=lambda text: text)
    _stub("strenum", StrEnum=enum.StrEnum)
    _stub("clip_interrogator", Config=type("Config", (), {}),
          Interrogator=type("Interrogator", (), {"load_caption_model": None}))  # fmt: skip
    _stub("open_clip", CLIP=type("CLIP", (), {"encode_text": None}))
    sys.path.insert(0, str(checkout))
    from horde_safety import nsfw_checker_class

    return nsfw_checker_class


class FakeInterrogator:
    """Answers every CLIP text with the vector's similarity (the library rounds them itself)."""

    def __init__(self, sims: dict[str, float]) -> None:
        self.sims = sims

    def image_to_features(self, image):
        return "features"

    def similarities(self, image_features, text_array):
        return [self.sims.get(text, DEFAULT_SIMILARITY) for text in text_array]


class FakeDeepDanbooru:
    """The model's interface as check_for_nsfw_anime_only uses it: `tags` and a float32 output per tag."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.tags = list(scores)
        self.outputs = np.array([scores[t] for t in self.tags], dtype=np.float32)
        self.calls = 0

    def evaluate_tensor(self, tensor):
        self.calls += 1
        return self.outputs


def run_case(lib, vector: dict[str, Any]) -> dict[str, Any]:
    import PIL.Image

    scores = vector["deepdanbooru_scores"]
    dd = FakeDeepDanbooru(scores) if scores is not None else None
    checker = lib.NSFWChecker(FakeInterrogator(vector["similarities"]), dd)
    result = checker.check_for_nsfw(PIL.Image.new("RGB", (64, 64)))
    return {
        "is_anime": result.is_anime,
        "is_nsfw": result.is_nsfw,
        "is_underage_subject": result.is_underage_subject,
        "is_csam": result.is_csam,
        "found_human_subject": result.found_human_subject,
        "is_neg_prompt_suspect": result.is_neg_prompt_suspect,
        "nsfw_concepts_identified": result.nsfw_concepts_identified,
        "csam_predicates_matched": result.csam_predicates_matched,
        "matched_predicates": result.matched_predicates,
        "anime_concepts_identified": result.anime_concepts_identified,
        "deepdanbooru_ran": bool(dd and dd.calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horde-safety", type=Path, required=True, help="folder holding the horde_safety package")
    parser.add_argument("--commit", default=COMMIT, help="the commit that folder was taken from")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    lib = import_library(args.horde_safety)
    vectors = []
    for vector in CASES:
        vectors.append({**vector, "generation_prompt": None, "default_similarity": DEFAULT_SIMILARITY,
                        "expected": run_case(lib, vector)})  # fmt: skip
    import torch

    data = {
        "about": "Test vectors for horde-safety NSFWChecker.check_for_nsfw with its optional DeepDanbooru step "
        "(rule step 4 of nsfw_checker_v2.json).",
        "source_commit": args.commit,
        "how_to_use": "As horde_v2_vectors.json. 'deepdanbooru_scores' is the DeepDanbooru model's raw output "
        "per tag (the library sees each as a float32); null means the checker was built without a "
        "DeepDanbooru model (disabled).",
        "how_produced": "scripts/horde_deepdanbooru_vectors.py: horde_safety at the commit above imported "
        f"unmodified (Python {sys.version.split()[0]}, NumPy {np.__version__}, torch {torch.__version__}); "
        "loguru, unidecode, strenum, clip_interrogator and open_clip stubbed where not installed. NSFWChecker "
        "was built with a fake interrogator (similarities(image_features, text_array) -> [similarities.get(t, "
        "0.10)]) and, unless deepdanbooru_scores is null, a fake DeepDanbooru model whose tags are the keys of "
        "deepdanbooru_scores and whose evaluate_tensor returns their values as a float32 array. The library's "
        "own check_for_nsfw, check_for_nsfw_anime_only and NSFWAnimeScores then ran on a 64x64 blank image.",
        "expected_fields": {
            "is_anime ... matched_predicates": "as in horde_v2_vectors.json; is_anime after the 'realistic' tag",
            "nsfw_concepts_identified": "DeepDanbooru's three rating scores (rounded to 4 decimals) when it ran, "
            "plus the CLIP concepts that fired",
            "anime_concepts_identified": "NSFWResult.anime_concepts_identified: every tag whose output > 0.5",
            "deepdanbooru_ran": "whether the library called the DeepDanbooru model (the stub's call count)",
        },
        "vector_count": len(vectors),
        "vectors": vectors,
    }
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(vectors)} vectors to {args.out}")


if __name__ == "__main__":
    main()
