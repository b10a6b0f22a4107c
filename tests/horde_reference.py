"""A deliberately plain, loop-by-loop implementation of horde-safety's rules, written from the rule
texts in the reference JSON (tests/data/horde_*_checker_*.json), independent of mirror-scan's policy
files and vectorised code. Tests compare the two on random inputs. `off` is added to every threshold."""

from __future__ import annotations

import numpy as np


def deepdanbooru_v2(ref: dict, outputs: dict[str, float]) -> tuple[bool, dict, dict]:
    """The 'deepdanbooru' section's rule: (is_anime_nsfw, the three rounded ratings, tag_results). Outputs
    are float32 as the model's; a rating the model lacks scores 0.0."""
    dd = ref["deepdanbooru"]
    t = dd["thresholds"]
    out = {tag: np.float32(v) for tag, v in outputs.items()}
    safe, questionable, explicit = (
        round(float(out.get(f"rating:{k}", 0.0)), 4) for k in ("safe", "questionable", "explicit")
    )
    tags = [tag for tag, thr in dd["nsfw_deepdanbooru_concepts"].items() if tag in out and out[tag] > np.float32(thr)]
    results = {tag: round(float(v), 4) for tag, v in out.items() if v > np.float32(t["tag_results_gt"])}
    nsfw = False
    if tags or explicit > t["explicit_gt"]:
        nsfw = True
    elif questionable > t["questionable_gt"] and safe < t["questionable_requires_safe_lt"]:
        nsfw = True
    elif safe < t["safe_lt"]:
        nsfw = True
    ratings = {"rating:safe": safe, "rating:questionable": questionable, "rating:explicit": explicit}
    return nsfw, ratings, results


def check_v2(ref: dict, sims: dict[str, float], off: float = 0.0, dd: dict[str, float] | None = None) -> dict:
    """dd: the DeepDanbooru model's outputs for this image (None: no model configured)."""
    g = ref["groups"]
    s = {k: round(v, 4) for k, v in sims.items()}
    fired_anime = [e for e in g["anime_cartoon"] if s[e["prompt"]] > e["threshold"] + off]
    is_anime = bool(fired_anime)
    if is_anime and all(s[e["prompt"]] < 0.208 + off for e in fired_anime):
        if any(s[p] > 0.24 + off for p in ref["photo_override_candidate_prompts"]):
            is_anime = False
    dd_ran, dd_nsfw, ratings, tag_results = False, False, {}, {}
    if dd is not None and is_anime:
        dd_ran = True
        dd_nsfw, ratings, tag_results = deepdanbooru_v2(ref, dd)
        if ref["deepdanbooru"]["thresholds"]["realistic_tag"] in tag_results:
            is_anime = False
    predicate_groups = ("anime_cartoon", "human_subject", "underage", "nsfw_predicates")
    matched = {}
    for group in predicate_groups:
        for e in g[group]:
            if s[e["prompt"]] > e["threshold"] + off:
                matched[e["prompt"]] = s[e["prompt"]]
    subject = bool(matched)
    concepts = {}
    if subject and not dd_nsfw:
        if not is_anime:
            concepts = {
                e["prompt"]: s[e["prompt"]] for e in g["nsfw_concepts"] if s[e["prompt"]] > e["threshold"] + off
            }
        else:
            concepts = {
                e["prompt"]: s[e["prompt"]]
                for e in g["nsfw_post_anime_concepts"]
                if e["effective"] and s[e["prompt"]] > e["anime_threshold"] + off
            }
    is_nsfw = dd_nsfw or bool(concepts)
    first = {e["prompt"]: s[e["prompt"]] for e in g["underage"] if s[e["prompt"]] > e["danger_threshold"] + off}
    if first:
        underage, csam_matched = True, first
    else:
        hits = {}
        if is_anime:
            for e in g["human_subject"]:
                if e["prompt"] in ("teen", "teens") and s[e["prompt"]] > 0.19 + off:
                    hits[e["prompt"]] = s[e["prompt"]]
            for e in g["underage"]:
                if e["prefix"] is None and e["prompt"] != "lolicon":
                    if s[e["prompt"]] > e["anime_second_pass_threshold"] + off:
                        hits[e["prompt"]] = s[e["prompt"]]
        else:
            for e in g["underage"]:
                if s[e["prompt"]] > e["second_pass_threshold"] + off:
                    hits[e["prompt"]] = s[e["prompt"]]
        pairs = [
            ("tween", "tweens"),
            ("tweens", "tween"),
            ("teen", "teens"),
            ("teens", "teen"),
            ("an infant", "infants"),
            ("infants", "an infant"),
            ("toddler", "toddlers"),
            ("toddlers", "toddler"),
            ("child", "children"),
            ("children", "child"),
        ]
        for a, b in pairs:
            if a in hits and b in hits and hits[a] <= hits[b]:
                del hits[a]
        underage, csam_matched = len(hits) >= 2, hits
    return {
        "is_anime": is_anime,
        "is_nsfw": is_nsfw,
        "is_underage_subject": underage,
        "is_csam": underage and is_nsfw,
        "found_human_subject": subject,
        "nsfw_concepts_identified": {**ratings, **concepts},
        "csam_predicates_matched": csam_matched,
        "matched_predicates": matched,
        "anime_concepts_identified": tag_results,
        "deepdanbooru_ran": dd_ran,
    }


def check_v1(ref: dict, sims: dict[str, float], off: float = 0.0, nsfw_model: bool = True, tags=()) -> dict:
    v = dict(sims)
    ctx = ref["underage_context"]
    pairs = ref["pairs"]

    def adjust(word, delta, skip):
        if skip and word in pairs and v[pairs[word]] > ctx[word] + off:
            return
        v[word] = v[word] + delta

    if nsfw_model:
        for word, delta in ref["nsfw_model_adjustments"]:
            adjust(word, delta, False)
    for tag in ("anime", "hentai"):
        if tag in tags:
            for word, delta in ref["model_tag_adjustments"][tag]:
                adjust(word, delta, False)
    for control in ref["control_word_adjustments"]:
        if v[control["control_word"]] > control["trigger_if_similarity_gt"] + off:
            for word, delta in control["adjustments"]:
                adjust(word, delta, True)
    found_uc = [w for w in ctx if v[w] > ctx[w] + off]
    for w, t in ref["underage_critical"].items():
        if v[w] > t + off:
            found_uc += [f"{w} (critical)"] * 2
    found_lewd = [w for w, t in ref["lewd_context"].items() if v[w] > t + off]
    return {
        "is_csam": len(found_uc) >= 3 and len(found_lewd) >= 1,
        "found_uc": found_uc,
        "found_lewd": found_lewd,
        "values": v,
    }
