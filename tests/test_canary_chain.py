"""The canary end to end (issue 27): flagged by its hashes in watch and bucket scan as in scan and serve
(tests/test_canary.py), whatever the model says; through attribution and Lemmy's actions (dry run unless
`[actions] canary_dry_run = false`) with every step in `canary status`; purged after
`canary_purge_hours`; and `selftest` running the chain locally against a real bucket and the Lemmy test
server. Verdicts of the model are driven off by a policy that clears everything."""

from __future__ import annotations

import json
import time

import pytest

from mirror_scan.lists.canary import CANARY_LIST, canary_bytes

from .conftest import run_cli
from .lemmy_server import FakeLemmy
from .mediafiles import image_bytes
from .s3server import BUCKET
from .test_watch import Watcher


@pytest.fixture
def clear(write_policy):
    """Nothing is flagged by the model, at any severity: only the canary list can flag."""
    return write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")


def _items(tmp_path, env=None) -> list[dict]:
    where = ("--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"))
    return json.loads(run_cli("quarantine", "list", "--json", *where, env=env).stdout)


def test_watch_flags_the_canary_as_it_lands(tmp_path, tiny_bundle_master, clear):
    w = Watcher(tmp_path, tiny_bundle_master, clear, "--settle", "0.3", "--severity", "1")
    try:
        (w.mirror / "benign.png").write_bytes(image_bytes("PNG", 3))
        (w.mirror / "canary.png").write_bytes(canary_bytes("PNG"))
        # Its move done (an item is listed from its intent on: `quarantine list` runs in-process, fast
        # enough to see it before the mirror copy is gone).
        w.wait_for(lambda: [i["state"] for i in _items(tmp_path)] == ["quarantined"], what="the canary's item")
        assert (w.mirror / "benign.png").exists() and not (w.mirror / "canary.png").exists()
    finally:
        code, stderr = w.stop()
    (item,) = _items(tmp_path)
    assert item["labels"] == ["canary"] and item["reason"]["hash_list"] == CANARY_LIST
    assert code == 0, stderr


def test_bucket_scan_flags_the_canary_in_the_bucket(tmp_path, s3, tiny_bundle_master, clear):
    s3.put("abc/canary.jpeg", canary_bytes("JPEG"), tmp_path)
    s3.put("abc/benign.png", image_bytes("PNG", 5), tmp_path)
    proc = run_cli("bucket", "scan", s3.remote, "--model", str(tiny_bundle_master), "--policy", str(clear),
                   "--severity", "1", "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"),
                   "--json", env=s3.env())  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert s3.keys() == {"abc/benign.png"}  # the canary left the bucket, verified in the quarantine
    (item,) = _items(tmp_path, s3.env())
    assert item["labels"] == ["canary"] and item["source"] == "bucket"
    where = ("--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"))
    (status,) = json.loads(run_cli("canary", "status", "--json", *where, env=s3.env()).stdout)
    steps = [s["step"] for s in status["steps"]]
    assert steps[:2] == ["landed", "flagged"] and "quarantined" in steps, steps
    assert f"removed upstream from {s3.remote}" in steps, steps
    assert all(s["at"] for s in status["steps"]), status


@pytest.mark.parametrize("live", [False, True], ids=["dry-run-by-default", "canary_dry_run-false"])
def test_the_canary_goes_through_every_step_and_canary_status_shows_them(
    postgres, tmp_path, tiny_bundle_master, clear, live
):
    from .test_lemmy import World

    w = World(postgres, "0.19.5", tmp_path / "site", tiny_bundle_master)
    # The admin uploads the canary through Lemmy: pict-rs stores it under the key of a post's image.
    (w.mirror / World.KEYS["img"]).write_bytes(canary_bytes("PNG"))
    lemmy = FakeLemmy(users={"modbot": {"id": 900, "password": "bot password 123", "admin": True},
                             "boss": {"id": 3, "password": "boss password 1", "admin": True}}).start()  # fmt: skip
    try:
        (w.secrets_dir / "bot").write_text("bot password 123")
        actions = '\n[actions]\ncanary = ["remove", "notify"]\n' + ("canary_dry_run = false\n" if live else "")
        w.write_config(extra=f'url = "{lemmy.url}"\nusername = "modbot"\npassword_file = "{w.secrets_dir / "bot"}"\n'
                       f'notify = ["boss"]\n{actions}')  # fmt: skip
        proc = w.cli("scan", str(w.mirror), "--model", str(tiny_bundle_master), "--policy", str(clear),
                     "--severity", "1")  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        items = w.items()
        assert set(items) == {World.KEYS["img"]}  # only the canary: the model flagged nothing
        status = json.loads(w.cli("canary", "status", "--json").stdout)
        (canary,) = status
        steps = [s["step"] for s in canary["steps"]]
        assert steps[:3] == ["landed", "flagged", "quarantined"], steps
        assert any(s.startswith("attributed: uploader alice") for s in steps), steps
        assert len(steps) == len(set(steps)), steps  # each step once
        removals = {s for s in steps if s.startswith("remove post")}
        state = "done" if live else "dry_run"
        assert removals == {f"remove post 1: {state}", f"remove post 2: {state}"}, steps
        assert f"notify boss: {state}" in steps, steps
        if live:  # sent: the posts are removed and boss told
            assert set(lemmy.removed) == {("post", 1), ("post", 2), ("comment", 1)} and lemmy.messages
        else:  # planned and recorded, nothing sent
            assert lemmy.removed == {} and lemmy.messages == []
            assert any("dry run: would remove post" in s for s in steps)
        printed = w.cli("canary", "status").stdout
        assert canary["id"] in printed and "remove post 1" in printed
    finally:
        lemmy.stop()


def test_a_canary_is_purged_after_its_time_and_never_restored(tmp_path, tiny_bundle_master, clear):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "canary.png").write_bytes(canary_bytes("PNG"))
    where = ("--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"))
    scan = ("scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(clear), "--severity", "1", *where)
    env = {"MIRROR_SCAN_CANARY_PURGE_HOURS": "0.0002"}  # 0.72 s
    assert run_cli(*scan, env=env).returncode == 1
    (item,) = _items(tmp_path)
    assert item["state"] == "quarantined"  # not yet: its time has not come
    time.sleep(1.5)
    assert run_cli(*scan, env=env).returncode == 0  # the next command that follows up purges it
    states = {i["id"]: i["state"] for i in _items(tmp_path)}
    assert states == {item["id"]: "purged"}, states
    assert not (tmp_path / "q" / "items" / item["id"] / "data").exists()
    allowlisted = run_cli("allowlist", "list", *where).stdout
    assert json.loads(run_cli("quarantine", "show", item["id"], "--json", *where).stdout)["sha256"] not in allowlisted
    status = json.loads(run_cli("canary", "status", "--json", *where).stdout)
    purged = next(c for c in status if c["id"] == item["id"])
    assert any(s["step"] == "purged" for s in purged["steps"]), purged


def test_selftest_runs_the_chain_against_the_configured_remote_and_lemmy(tmp_path, s3, tiny_bundle_master):
    lemmy = FakeLemmy(users={"modbot": {"id": 900, "password": "bot password 123", "admin": True}}).start()
    try:
        (tmp_path / "bot").write_text("bot password 123")
        config = tmp_path / "config.toml"
        config.write_text(f'remote = "{s3.remote}"\n[lemmy]\nurl = "{lemmy.url}"\nusername = "modbot"\n'
                          f'password_file = "{tmp_path / "bot"}"\n')  # fmt: skip
        s3.put("existing.png", image_bytes("PNG", 1), tmp_path)
        proc = run_cli("selftest", "--model", str(tiny_bundle_master), "--config", str(config), "--json",
                       env=s3.env())  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stages = {s["name"]: s for s in json.loads(proc.stdout)}
        assert all(s["outcome"] == "ok" for s in stages.values()), stages
        assert "flagged by its hash" in stages["scanned and quarantined"]["detail"]
        assert "the bot modbot is admin" in stages["lemmy bot"]["detail"]
        # Said as what happens: no notify target is configured, so no notice (issue 45: it was "notify").
        assert "no notice (nobody to tell" in stages["canary actions (planned, not sent)"]["detail"]
        assert all(s["seconds"] >= 0 for s in stages.values())
        assert s3.keys() == {"existing.png"}  # the remote was only listed
        assert lemmy.calls("POST", "/post/remove") == [] and lemmy.messages == []
        # A remote that is wrong rather than down: that stage fails, the exit says so, secrets stay out.
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(config.read_text().replace(f'remote = "{s3.remote}"', f'remote = "{s3.remote}-gone"'))
        proc = run_cli("selftest", "--model", str(tiny_bundle_master), "--config", str(wrong), env=s3.env())
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "FAILED" in proc.stdout and "does not exist" in proc.stdout
        secret_key = next(v for k, v in s3.env().items() if k.endswith("SECRET_ACCESS_KEY"))
        for secret in ("bot password 123", secret_key):
            assert secret not in proc.stdout + proc.stderr
    finally:
        lemmy.stop()
    assert BUCKET in s3.remote
