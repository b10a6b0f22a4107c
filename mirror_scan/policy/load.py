"""Reading and validating policy files (JSON or TOML). Every problem names the file and the key."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from mirror_scan.errors import PolicyError
from mirror_scan.policy.model import SEVERITY_NAMES, DeepDanbooruRule, Entry, Policy
from mirror_scan.policy.rules import REQUIRED, RULES

POLICY_FORMAT = "mirror-scan-policy"
POLICY_FORMAT_VERSION = 1
DEFAULT_POLICY = "horde-v2"
TOP_LEVEL_KEYS = (
    "format",
    "format_version",
    "name",
    "description",
    "made_for",
    "rule",
    "round_decimals",
    "severity_levels",
    "flag_on",
    "groups",
    "parameters",
    "notes",
    "coverage",
    "deepdanbooru",
)
COVERAGE = ("center", "full")
DEFAULT_SEVERITY_LEVELS = {"strict": -0.01, "default": 0.0, "lenient": 0.01}
DD_RATINGS = ("safe", "questionable", "explicit")
DD_DEFAULT_RATING_TAGS = {kind: f"rating:{kind}" for kind in DD_RATINGS}
DD_THRESHOLDS = ("explicit_above", "questionable_above", "questionable_needs_safe_below", "safe_below", "tag_above")
DD_KEYS = ("enabled", "made_for", "rating_tags", "round_decimals", "nsfw_tags", *DD_THRESHOLDS, "not_anime_tags")


def builtin_policies() -> list[str]:
    folder = resources.files("mirror_scan") / "policies"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    options = ", ".join(choices)
    return f"did you mean '{close[0]}'? (allowed: {options})" if close else f"allowed: {options}"


def _read(spec: str | Path) -> tuple[str, dict[str, Any]]:
    text_spec = str(spec)
    if text_spec in builtin_policies():
        raw_text = (resources.files("mirror_scan") / "policies" / f"{text_spec}.json").read_text(encoding="utf-8")
        return text_spec, json.loads(raw_text)
    path = Path(spec)
    if not path.exists():
        raise PolicyError(
            text_spec,
            "is neither a built-in policy nor an existing file",
            f"built-in policies: {', '.join(builtin_policies())}; or pass a .json/.toml policy file",
        )
    try:
        raw_text = path.read_text(encoding="utf-8")
        data = tomllib.loads(raw_text) if path.suffix.lower() == ".toml" else json.loads(raw_text)
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(text_spec, f"cannot be read ({err})") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise PolicyError(text_spec, f"is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {err}") from None
    if not isinstance(data, dict):
        raise PolicyError(text_spec, "must hold a table/object at the top level")
    return text_spec, data


def _number(source: str, where: str, value: Any, allow_null: bool) -> float | None:
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(source, f"{where} must be a number, got {value!r}")
    return float(value)


def _entries(source: str, rule: str, group: str, raw: Any, fields: tuple[tuple[str, ...], tuple[str, ...]]):
    required, optional = fields
    # Shorthand for threshold-only groups: {"prompt text" = 0.21, ...}
    if isinstance(raw, dict) and required == ("threshold",) and not optional:
        raw = [{"prompt": prompt, "threshold": thr} for prompt, thr in raw.items()]
    if not isinstance(raw, list):
        raise PolicyError(source, f"group '{group}' must be a list of {{prompt, ...}} entries")
    entries = []
    allowed = ("prompt", *required, *optional)
    for i, item in enumerate(raw):
        where = f"groups.{group}[{i}]"
        if isinstance(item, str) and not required:
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise PolicyError(source, f"{where} needs a non-empty 'prompt' string")
        for key in item:
            if key not in allowed:
                raise PolicyError(source, f"{where} has unknown key '{key}' for rule {rule}", _suggest(key, allowed))
        values = {}
        for key in required:
            if key not in item:
                raise PolicyError(source, f"{where} ('{item['prompt']}') lacks '{key}'")
            values[key] = _number(source, f"{where}.{key}", item[key], allow_null=False)
        for key in optional:
            values[key] = _number(source, f"{where}.{key}", item.get(key), allow_null=True)
        entries.append(Entry(prompt=item["prompt"], values=values))
    return tuple(entries)


def parse_policy(source: str, data: dict[str, Any]) -> Policy:
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise PolicyError(source, f"unknown key '{key}'", _suggest(key, TOP_LEVEL_KEYS))
    if data.get("format", POLICY_FORMAT) != POLICY_FORMAT:
        raise PolicyError(source, f"'format' must be '{POLICY_FORMAT}'")
    version = data.get("format_version", POLICY_FORMAT_VERSION)
    if not isinstance(version, int) or version > POLICY_FORMAT_VERSION:
        raise PolicyError(
            source,
            f"format_version {version!r} is newer than this mirror-scan reads ({POLICY_FORMAT_VERSION})",
            "upgrade mirror-scan",
        )
    rule_name = data.get("rule")
    if rule_name not in RULES:
        raise PolicyError(source, f"'rule' is {rule_name!r}", _suggest(str(rule_name), tuple(RULES)))
    spec = RULES[rule_name]

    raw_groups = data.get("groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        raise PolicyError(source, "'groups' must be a non-empty table of prompt groups")
    groups = {}
    for group, raw in raw_groups.items():
        if spec.groups is not None and group not in spec.groups:
            raise PolicyError(
                source, f"unknown group '{group}' for rule {rule_name}", _suggest(group, tuple(spec.groups))
            )
        fields = spec.groups[group] if spec.groups is not None else spec.group_fields
        groups[group] = _entries(source, rule_name, group, raw, fields)
    if spec.groups is not None:
        for group in spec.groups:
            if group not in groups:
                raise PolicyError(source, f"rule {rule_name} needs group '{group}'")

    raw_params = data.get("parameters", {})
    if not isinstance(raw_params, dict):
        raise PolicyError(source, "'parameters' must be a table")
    params = {}
    for key in raw_params:
        if key not in spec.parameters:
            raise PolicyError(
                source, f"unknown parameter '{key}' for rule {rule_name}", _suggest(key, tuple(spec.parameters))
            )
    for key, default in spec.parameters.items():
        if key in raw_params:
            params[key] = raw_params[key]
        elif default is REQUIRED:
            raise PolicyError(source, f"rule {rule_name} needs parameter '{key}'")
        else:
            params[key] = default
    _check_parameters(source, rule_name, groups, params)

    labels = spec.labels if spec.labels is not None else (*groups, "match")
    flag_on = data.get("flag_on", ["csam"] if "csam" in labels else ["match"])
    if isinstance(flag_on, str):
        flag_on = [flag_on]
    for label in flag_on:
        if label not in labels:
            raise PolicyError(
                source, f"flag_on names '{label}', which rule {rule_name} does not produce", _suggest(label, labels)
            )

    levels = dict(DEFAULT_SEVERITY_LEVELS)
    for key, value in (data.get("severity_levels") or {}).items():
        if key not in SEVERITY_NAMES:
            raise PolicyError(source, f"severity_levels has unknown level '{key}'", _suggest(key, SEVERITY_NAMES))
        levels[key] = _number(source, f"severity_levels.{key}", value, allow_null=False)

    round_decimals = _round_decimals(source, "round_decimals", data.get("round_decimals"))

    coverage = data.get("coverage", "center")
    if coverage not in COVERAGE:
        raise PolicyError(
            source,
            f"coverage {coverage!r}: must be 'center' (the centre crop, what horde-safety was tuned on) or 'full' "
            "(tiles until every pixel is scored)",
            _suggest(str(coverage), COVERAGE),
        )

    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    name = str(data.get("name") or Path(source).stem)
    return Policy(
        name=name,
        source=source,
        rule=rule_name,
        description=str(data.get("description", "")),
        made_for=data.get("made_for"),
        round_decimals=round_decimals,
        severity_levels=levels,
        flag_on=tuple(flag_on),
        groups=groups,
        parameters=params,
        coverage=coverage,
        deepdanbooru=_deepdanbooru(source, rule_name, data.get("deepdanbooru")),
        policy_id=f"{name}@{hashlib.sha256(canonical.encode()).hexdigest()[:12]}",
        raw=data,
    )


def _round_decimals(source: str, where: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 8):
        raise PolicyError(source, f"{where} must be an integer from 0 to 8, or absent")
    return value


def _probability(source: str, where: str, value: Any) -> float:
    number = _number(source, where, value, allow_null=False)
    assert number is not None
    if not 0.0 <= number <= 1.0:
        raise PolicyError(
            source, f"{where} is {number}: DeepDanbooru outputs are probabilities", "use a value from 0 to 1"
        )
    return number


def _tag_list(source: str, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(tag, str) and tag for tag in value):
        raise PolicyError(source, f"{where} must be a list of tag names")
    return tuple(value)


def _deepdanbooru(source: str, rule: str, raw: Any) -> DeepDanbooruRule | None:
    """The optional `deepdanbooru` section: horde-v2's DeepDanbooru step (rule step 4)."""
    if raw is None:
        return None
    if rule != "horde-v2":
        raise PolicyError(source, f"deepdanbooru: rule {rule} has no DeepDanbooru step (only horde-v2 has)")
    if not isinstance(raw, dict):
        raise PolicyError(source, "deepdanbooru must be a table")
    for key in raw:
        if key not in DD_KEYS:
            raise PolicyError(source, f"deepdanbooru has unknown key '{key}'", _suggest(key, DD_KEYS))
    for key in ("nsfw_tags", *DD_THRESHOLDS, "not_anime_tags"):
        if key not in raw:
            raise PolicyError(source, f"deepdanbooru lacks '{key}'")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PolicyError(source, "deepdanbooru.enabled must be true or false")
    made_for = raw.get("made_for")
    if made_for is not None and not isinstance(made_for, str):
        raise PolicyError(source, "deepdanbooru.made_for must be a string")
    rating_tags = raw.get("rating_tags", DD_DEFAULT_RATING_TAGS)
    if not isinstance(rating_tags, dict) or set(rating_tags) != set(DD_RATINGS):
        raise PolicyError(source, f"deepdanbooru.rating_tags must name exactly the ratings {', '.join(DD_RATINGS)}")
    tags = [rating_tags[kind] for kind in DD_RATINGS]
    if not all(isinstance(tag, str) and tag for tag in tags) or len(set(tags)) != len(tags):
        raise PolicyError(source, "deepdanbooru.rating_tags must map each rating to a different tag name")
    nsfw_tags = raw["nsfw_tags"]
    if not isinstance(nsfw_tags, dict):
        raise PolicyError(source, "deepdanbooru.nsfw_tags must be a table of tag = output threshold")
    for tag in nsfw_tags:
        if tag in tags:
            # The library never tests a rating tag as an NSFW tag; the rating thresholds do that.
            raise PolicyError(source, f"deepdanbooru.nsfw_tags names the rating tag '{tag}'",
                              "use explicit_above, questionable_above or safe_below for ratings")  # fmt: skip
    return DeepDanbooruRule(
        enabled=enabled,
        made_for=made_for,
        rating_tags={kind: rating_tags[kind] for kind in DD_RATINGS},
        round_decimals=_round_decimals(source, "deepdanbooru.round_decimals", raw.get("round_decimals")),
        nsfw_tags={tag: _probability(source, f"deepdanbooru.nsfw_tags.{tag}", v) for tag, v in nsfw_tags.items()},
        not_anime_tags=_tag_list(source, "deepdanbooru.not_anime_tags", raw["not_anime_tags"]),
        **{key: _probability(source, f"deepdanbooru.{key}", raw[key]) for key in DD_THRESHOLDS},
    )


def _check_parameters(source: str, rule: str, groups: dict, params: dict[str, Any]) -> None:
    prompts = {entry.prompt for entries in groups.values() for entry in entries}

    def need_prompt(where: str, prompt: Any) -> None:
        if prompt not in prompts:
            raise PolicyError(source, f"parameter {where} names '{prompt}', which no group scores")

    if rule == "horde-v2":
        for prompt in params["photo_override_prompts"]:
            need_prompt("photo_override_prompts", prompt)
        for pair in params["dedup_pairs"]:
            for prompt in pair:
                need_prompt("dedup_pairs", prompt)
    elif rule == "horde-v1":
        for word, partner in params["pairs"].items():
            need_prompt("pairs", word)
            need_prompt("pairs", partner)
        for word, _ in params["nsfw_model_adjustments"]:
            need_prompt("nsfw_model_adjustments", word)
        for tag, adjustments in params["model_tag_adjustments"].items():
            for word, _ in adjustments:
                need_prompt(f"model_tag_adjustments.{tag}", word)
        for control in params["control_word_adjustments"]:
            need_prompt("control_word_adjustments", control["control_word"])
            for word, _ in control["adjustments"]:
                need_prompt("control_word_adjustments", word)
    elif rule == "groups":
        flag_when = params["flag_when"]
        if not isinstance(flag_when, dict) or not flag_when:
            raise PolicyError(source, "parameter flag_when must map group names to minimum hit counts")
        for group, k in flag_when.items():
            if group not in groups:
                raise PolicyError(source, f"flag_when names unknown group '{group}'", _suggest(group, tuple(groups)))
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise PolicyError(source, f"flag_when.{group} must be a whole number >= 1")


def load_policy(spec: str | Path | None = None) -> Policy:
    source, data = _read(spec or DEFAULT_POLICY)
    return parse_policy(source, data)


def resolve_severity(policy: Policy, severity: str | float | None) -> float:
    """'strict' | 'default' | 'lenient' (the policy's levels) or a number added to every threshold."""
    if severity is None:
        return 0.0
    if isinstance(severity, (int, float)):
        return float(severity)
    text = str(severity).strip()
    if text in policy.severity_levels:
        return policy.severity_levels[text]
    try:
        value = float(text)
    except ValueError:
        raise PolicyError(
            policy.source,
            f"severity {text!r} is not a level or a number",
            "use strict, default, lenient, or an offset such as -0.005",
        ) from None
    if not math.isfinite(value):
        raise PolicyError(policy.source, f"severity {text!r} is not a finite number")
    return value
