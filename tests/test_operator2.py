"""The operator's day, second round (issue 45): each friction a new admin met, through the real CLI, named
after the finding it answers."""

from __future__ import annotations

import json

from .conftest import run_cli


def _where(tmp_path) -> tuple[str, ...]:
    return ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))


def _canary_items(tmp_path, bundle, write_policy) -> list[dict]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    assert run_cli("canary", "make", str(mirror / "canary.png")).returncode == 0
    clear = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")
    proc = run_cli("scan", str(mirror), "--model", str(bundle), "--policy", str(clear), *_where(tmp_path))
    assert proc.returncode == 1, proc.stderr
    return json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)


def test_5_a_canary_item_is_never_restored_or_confirmed_only_purged(tmp_path, tiny_bundle_master, write_policy):
    (item,) = _canary_items(tmp_path, tiny_bundle_master, write_policy)
    restore = run_cli("quarantine", "restore", item["id"], "--yes", *_where(tmp_path))
    assert restore.returncode != 0 and "is the canary" in restore.stdout + restore.stderr, restore
    assert not (tmp_path / "mirror" / "canary.png").exists()  # still held
    confirm = run_cli("quarantine", "confirm", item["id"], *_where(tmp_path))
    assert confirm.returncode != 0 and "is the canary" in confirm.stdout + confirm.stderr, confirm
    (still,) = json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)
    assert still["state"] == "quarantined"
    allowlist = run_cli("allowlist", "list", "--json", *_where(tmp_path))
    assert allowlist.returncode == 0 and json.loads(allowlist.stdout or "[]") == []
    purge = run_cli("quarantine", "purge", item["id"], "--yes", *_where(tmp_path))
    assert purge.returncode == 0, purge.stderr


def test_8_a_misspelled_section_and_a_word_for_a_number_are_named_with_the_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[scna]\nbatch_size = 8\n")
    proc = run_cli("config", "--config", str(config))
    assert proc.returncode == 2 and f"config file {config}: unknown section [scna]" in proc.stderr, proc.stderr
    assert "did you mean [scan]?" in proc.stderr
    config.write_text('[scan]\nbatch_size = "sixteen"\n')
    proc = run_cli("config", "--config", str(config))
    assert proc.returncode == 2 and str(config) in proc.stderr and "must be a whole number" in proc.stderr
    assert "invalid literal" not in proc.stderr
    # config init says what the defaults are: dry_run is false.
    written = tmp_path / "init.toml"
    init = run_cli("config", "init", "--out", str(written))
    assert init.returncode == 0, init.stderr
    text = written.read_text()
    assert "# dry_run = false" in text and "# dry_run = true" not in text


def test_9_12_purge_takes_a_unique_part_of_an_id_when_asked_and_a_question_without_an_answer_says_why(
    tmp_path, tiny_bundle_master, flag_all
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    from .mediafiles import image_bytes

    (mirror / "a.png").write_bytes(image_bytes("PNG", 1))
    proc = run_cli("scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                   *_where(tmp_path))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (item,) = json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)
    part = item["id"][2:12]
    # No terminal, no answer: said, with what to do (not a bare exit 1).
    asked = run_cli("quarantine", "purge", part, *_where(tmp_path))
    assert asked.returncode == 1 and "got no answer" in asked.stderr and "--yes" in asked.stderr, asked
    # Asked and answered: a unique part of the id is enough, as for show and restore.
    answered = run_cli("quarantine", "purge", part, *_where(tmp_path), input="y\n")
    assert answered.returncode == 0 and "purged 1 item(s)" in answered.stdout, answered
    # With -y (now accepted) a fragment is not enough: irreversible without a question needs the id.
    (mirror / "b.png").write_bytes(image_bytes("PNG", 2))
    run_cli("scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all), *_where(tmp_path))
    items = json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)
    (second,) = [i for i in items if i["state"] == "quarantined"]
    refused = run_cli("quarantine", "purge", second["id"][2:12], "-y", *_where(tmp_path))
    assert refused.returncode != 0, refused
    done = run_cli("quarantine", "purge", second["id"], "-y", *_where(tmp_path))
    assert done.returncode == 0, done.stderr


def test_6_a_state_database_that_is_not_there_is_named_not_taken_for_an_empty_one(tmp_path):
    wrong = ("--state", str(tmp_path / "typo" / "state.db"), "--quarantine", str(tmp_path / "q"))
    for command in (("quarantine", "list"), ("quarantine", "show", "abc"), ("quarantine", "restore", "abc"),
                    ("quarantine", "confirm", "abc"), ("quarantine", "purge", "abc", "--yes"),
                    ("quarantine", "export-hashes")):  # fmt: skip
        proc = run_cli(*command, *wrong)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert f"state database {tmp_path / 'typo' / 'state.db'} does not exist" in proc.stderr, proc.stderr
        assert "quarantine reindex" in proc.stderr and "0 item(s)" not in proc.stdout
    assert not (tmp_path / "typo").exists()  # nothing made for a command that failed
