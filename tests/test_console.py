"""The operator's console works while the daemon runs: a real `watch` subprocess on a real `rclone serve s3`,
and the admin's commands from another "shell" (subprocesses) on the same state."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

from .conftest import CLI, run_cli
from .mediafiles import image_bytes
from .test_serve import Validator
from .test_watch import Watcher


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _png(seed: int) -> bytes:
    return image_bytes("PNG", seed, size=(48, 32))


class Shell:
    """The admin's second shell: the CLI on the daemon's state, with the remote's credentials in the env."""

    def __init__(self, tmp, env):
        self.tmp, self.env = tmp, env

    def __call__(
        self, *args: str, input_text: str | None = None, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        full = [*CLI, *args, "--state", str(self.tmp / "state.db"), "--quarantine", str(self.tmp / "q")]
        return subprocess.run(
            full,
            capture_output=True,
            text=True,
            input=input_text,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **self.env, **(env or {})},
            timeout=120,
        )

    def items(self) -> dict[str, dict]:
        proc = self("quarantine", "list", "--json")
        assert proc.returncode == 0, proc.stderr
        return {i["key"] or i["original"]: i for i in json.loads(proc.stdout)}


def test_restore_allowlist_purge_apply_rescore_while_the_daemon_runs(tmp_path, tiny_bundle_master, flag_all, s3):
    keys = {f"obj-{i}": _png(i) for i in range(3)}
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--remote", s3.remote, "--pull-every", "1s", env=s3.env())
    shell = Shell(tmp_path, s3.env())
    try:
        for key, data in keys.items():
            s3.put(key, data, tmp_path)
        w.wait_for(lambda: s3.keys() == set(), timeout=40, what="the objects to leave the bucket")
        # Three items with their moves done (an item is listed from its intent on).
        w.wait_for(lambda: [i["state"] for i in shell.items().values()] == ["quarantined"] * 3, what="three items")
        items = shell.items()
        assert {i["state"] for i in items.values()} == {"quarantined"}
        assert shell("quarantine", "show", items["obj-0"]["id"]).returncode == 0
        assert shell("allowlist", "list").returncode == 0

        # Restore with no --remote typed: the item's recorded remote is used. Back in the mirror and the
        # bucket within 2 s of the command starting, and neither pulled again nor re-flagged afterwards.
        started = time.monotonic()
        proc = shell("quarantine", "restore", items["obj-0"]["id"])
        assert proc.returncode == 0, proc.stderr
        assert (w.mirror / "obj-0").read_bytes() == keys["obj-0"]
        assert s3.get("obj-0") == keys["obj-0"]
        assert time.monotonic() - started < 2.0 + 1.5  # + the interpreter's start-up on a loaded 2-core CI
        time.sleep(3)  # several pulls and a re-scan of the restored file
        assert (w.mirror / "obj-0").read_bytes() == keys["obj-0"] and s3.get("obj-0") == keys["obj-0"]
        assert shell.items()["obj-0"]["state"] == "restored"

        # Allowlist live: bytes allowlisted from the shell are not flagged by the running daemon.
        fresh = _png(77)
        assert shell("allowlist", "add", sha(fresh), "--note", "our logo").returncode == 0
        s3.put("logo", fresh, tmp_path)
        w.wait_for(lambda: (w.mirror / "logo").exists() and str(w.mirror / "logo") in w.rows(), what="the logo")
        time.sleep(1)
        assert s3.get("logo") == fresh and (w.mirror / "logo").exists()

        # Purge, apply and rescore all run beside the daemon.
        proc = shell("quarantine", "purge", items["obj-1"]["id"], "--yes")
        assert proc.returncode == 0 and "purged 1" in proc.stdout, proc.stderr
        assert shell("apply").returncode == 0
        proc = shell("rescore", "--policy", str(flag_all), "--json")
        assert proc.returncode == 0, proc.stderr

        # A selection restore lists first and asks; --yes skips the question.
        proc = shell("quarantine", "restore", "--since", "1h", input_text="n\n")
        assert proc.returncode == 1 and items["obj-2"]["id"] in proc.stdout
        assert shell.items()["obj-2"]["state"] == "quarantined"
        proc = shell("quarantine", "restore", "--since", "1h", "--yes")
        assert proc.returncode == 0, proc.stderr
        assert s3.get("obj-2") == keys["obj-2"]
    finally:
        code, stderr = w.stop()
        assert code == 0, stderr


def _killed_restore(shell: Shell, item_id: str, step: str) -> int:
    """A restore from another shell, SIGKILLed right after `step` is journalled."""
    return shell("quarantine", "restore", item_id, env={"MIRROR_SCAN_KILL_AT": f"restore:{step}"}).returncode


def test_a_restore_killed_beside_the_daemon_is_finished_or_rolled_back_by_it(
    tmp_path, tiny_bundle_master, flag_all, s3
):
    keys = {"a": _png(1), "b": _png(2)}
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--remote", s3.remote, "--pull-every", "1s", env=s3.env())
    shell = Shell(tmp_path, s3.env())
    try:
        for key, data in keys.items():
            s3.put(key, data, tmp_path)
        w.wait_for(lambda: s3.keys() == set(), timeout=40, what="the objects to leave the bucket")
        items = shell.items()
        # Killed with its temp written: the live daemon rolls it back (nothing in the mirror or bucket).
        assert _killed_restore(shell, items["a"]["id"], "copied") == -9
        w.wait_for(lambda: shell.items()["a"]["state"] == "quarantined", timeout=15, what="the rollback")
        assert not (w.mirror / "a").exists() and "a" not in s3.keys()
        assert [p for p in w.mirror.rglob("*") if p.is_file()] == []  # no temp file left behind
        # Killed once the file is placed: the daemon finishes it (object back upstream, allowlisted).
        assert _killed_restore(shell, items["b"]["id"], "placed") == -9
        w.wait_for(lambda: shell.items()["b"]["state"] == "restored", timeout=15, what="the restore to finish")
        assert s3.get("b") == keys["b"] and (w.mirror / "b").read_bytes() == keys["b"]
        time.sleep(2)
        assert s3.get("b") == keys["b"] and (w.mirror / "b").exists()  # and not flagged again
    finally:
        code, stderr = w.stop()
        assert code == 0, stderr


def test_daemon_killed_mid_quarantine_then_restarted_loses_nothing(tmp_path, tiny_bundle_master, flag_all, s3):
    keys = {"a": _png(1)}
    for key, data in keys.items():
        s3.put(key, data, tmp_path)
    env = {**s3.env(), "MIRROR_SCAN_KILL_AT": "quarantine:placed"}
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--remote", s3.remote, "--pull-every", "1s", env=env)
    assert w.proc.wait(timeout=60) == -signal.SIGKILL
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--remote", s3.remote, "--pull-every", "1s", env=s3.env())
    try:
        w.wait_for(lambda: s3.keys() == set(), timeout=30, what="the removal to finish")
        shell = Shell(tmp_path, s3.env())
        items = shell.items()
        assert [i["state"] for i in items.values()] == ["quarantined"]
        data = (tmp_path / "q" / "items" / items["a"]["id"] / "data").read_bytes()
        assert data == keys["a"] and not (w.mirror / "a").exists()  # exactly one place
    finally:
        assert w.stop()[0] == 0


def test_bucket_down_at_start_heals_without_a_restart(tmp_path, tiny_bundle_master, flag_all, s3):
    keys = {f"k{i}": _png(i) for i in range(3)}
    for key, data in keys.items():
        s3.put(key, data, tmp_path)
    mirror = tmp_path / "mirror"
    assert run_cli("mirror", "pull", "--remote", s3.remote, "--to", str(mirror), env=s3.env()).returncode == 0
    s3.stop()
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--remote", s3.remote, "--pull-every", "2s", env=s3.env())
    shell = Shell(tmp_path, s3.env())
    try:
        w.wait_for(lambda: (w.status() or {}).get("upstream_pending") == 3, timeout=40, what="3 pending removals")
        assert all((mirror / k).exists() for k in keys)  # nothing leaves the mirror before upstream is done
        s3.start()
        w.wait_for(lambda: s3.keys() == set(), timeout=90, what="the bucket to heal")
        w.wait_for(lambda: (w.status() or {}).get("upstream_pending") == 0, timeout=10, what="pending to drop")
        assert {i["state"] for i in shell.items().values()} == {"quarantined"}
        assert [p for p in mirror.rglob("*") if p.is_file()] == []
        proc = subprocess.run([*CLI, "status", "--state", str(w.state), "--json"], capture_output=True, timeout=60)
        assert json.loads(proc.stdout)["upstream_pending"] == 0
    finally:
        assert w.stop()[0] == 0


def test_validator_and_daemon_share_one_state(tmp_path, tiny_bundle_master, flag_all):
    w = Watcher(tmp_path, tiny_bundle_master, flag_all)
    validator = Validator(tmp_path, tiny_bundle_master, "--policy", str(flag_all))
    shell = Shell(tmp_path, {})
    try:
        upload = _png(5)
        status, body = validator.post(upload)
        assert status == 406
        status, body = validator.post(upload)  # the same rejected upload again: one item, seen twice
        assert status == 406
        (item,) = shell.items().values()
        assert item["seen_count"] == 2
        # Bytes scored by the validator are reused by the daemon (no second inference).
        (w.mirror / "copy.png").write_bytes(upload)
        w.wait_for(lambda: str(w.mirror / "copy.png") in w.rows(), what="the copy to be decided")
        assert w.rows()[str(w.mirror / "copy.png")][1] == "reused"
        # Released from the shell while both run: the next try of the upload is accepted.
        assert shell("quarantine", "restore", item["id"]).returncode == 0
        status, body = validator.post(upload)
        assert status == 200, body
    finally:
        validator.stop()
        assert w.stop()[0] == 0
