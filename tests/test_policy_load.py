"""Policy files: what loads, and one clear error for each kind of mistake."""

from __future__ import annotations

import json

import pytest

from mirror_scan.errors import PolicyError
from mirror_scan.policy import builtin_policies, load_policy

from .conftest import run_cli


def test_builtin_policies_load_with_their_prompt_counts():
    assert {"horde-v2", "horde-v1"} <= set(builtin_policies())
    v2 = load_policy("horde-v2")
    assert v2.rule == "horde-v2" and v2.round_decimals == 4 and v2.made_for == "ViT-L-14/openai"
    assert len(v2.prompts) == 233  # 160 predicate + 109 concept texts, 36 shared
    assert len(load_policy("horde-v1").prompts) == 22
    assert load_policy(None).name == "horde-v2"  # the default


def test_toml_policy_with_shorthand_groups(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\nrule = "groups"\nflag_on = ["match"]\n'
        '[groups.signs]\n"a stop sign" = 0.25\n"a road" = 0.2\n'
        "[parameters.flag_when]\nsigns = 1\n"
    )
    policy = load_policy(str(path))
    assert policy.prompts == ("a stop sign", "a road")
    assert policy.policy_id.startswith("mine@")


def _write(tmp_path, data, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


GOOD = {"rule": "groups", "groups": {"a": {"x": 0.2}}, "parameters": {"flag_when": {"a": 1}}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"treshold": 1}, "unknown key 'treshold'"),
        ({"rule": "horde-v3"}, "did you mean 'horde-v2'"),
        ({"groups": {"a": [{"prompt": "x", "threshhold": 0.2}]}}, "did you mean 'threshold'"),
        ({"groups": {"a": [{"prompt": "x", "threshold": "high"}]}}, "must be a number"),
        ({"parameters": {"flag_when": {"b": 1}}}, "unknown group 'b'"),
        ({"parameters": {"flag_wen": {"a": 1}}}, "did you mean 'flag_when'"),
        ({"flag_on": ["csam"]}, "flag_on names 'csam'"),
        ({"severity_levels": {"extreme": -1}}, "unknown level 'extreme'"),
        ({"format_version": 99}, "newer than this mirror-scan reads"),
    ],
)
def test_policy_mistakes_name_the_key(tmp_path, change, message):
    with pytest.raises(PolicyError) as err:
        load_policy(_write(tmp_path, {**GOOD, **change}))
    assert message in str(err.value)
    assert "p.json" in str(err.value)


def test_horde_policy_with_an_unknown_group_is_refused(tmp_path):
    data = json.loads(json.dumps(load_policy("horde-v2").raw))
    data["groups"]["nsfw_concept"] = data["groups"].pop("nsfw_concepts")
    with pytest.raises(PolicyError, match="(?s)unknown group 'nsfw_concept'.*did you mean 'nsfw_concepts'"):
        load_policy(_write(tmp_path, data))


def test_unreadable_policy_files(tmp_path):
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(_write(tmp_path, "{not json"))
    with pytest.raises(PolicyError, match="neither a built-in policy nor an existing file"):
        load_policy(str(tmp_path / "missing.json"))


def test_cli_policy_errors_have_no_traceback(tmp_path):
    path = _write(tmp_path, {**GOOD, "descripton": "typo"})
    proc = run_cli("policy", "show", path)
    assert proc.returncode == 2
    assert "unknown key 'descripton'" in proc.stderr and "did you mean 'description'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_policy_test_passes_reference_vectors_and_fails_on_disagreement(tmp_path):
    from .conftest import DATA

    for policy, vectors in (("horde-v2", "horde_v2_vectors.json"), ("horde-v1", "horde_v1_vectors.json")):
        proc = run_cli("policy", "test", str(DATA / vectors), "--policy", policy)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "(100.0%)" in proc.stdout
    # Under a stricter severity the same vectors disagree: exit 1 and every disagreement listed.
    proc = run_cli("policy", "test", str(DATA / "horde_v2_vectors.json"), "--severity", "strict")
    assert proc.returncode == 1
    assert "DISAGREE" in proc.stdout and "expected" in proc.stdout
    proc = run_cli("policy", "test", str(DATA / "horde_v2_vectors.json"), "--severity", "harsh")
    assert proc.returncode == 2 and "not a level or a number" in proc.stderr


def test_cli_policy_show_and_list():
    proc = run_cli("policy", "show", "horde-v1")
    assert proc.returncode == 0 and "horde-v1" in proc.stdout and "underage" in proc.stdout
    proc = run_cli("policy", "show", "horde-v2", "--json")
    assert json.loads(proc.stdout)["rule"] == "horde-v2"
    proc = run_cli("policy", "list")
    assert "horde-v2 (default)" in proc.stdout
