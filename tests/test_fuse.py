"""A real `rclone mount` of a real `rclone serve s3` bucket as the mirror: scan, quarantine, restore (no hard
links there), SIGKILL during a restore then recovery. A failed or interrupted restore never leaves
anything new in the bucket."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import run_cli
from .mediafiles import image_bytes
from .s3server import S3Server, rclone_binary

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="FUSE is not available (scripts/install.sh installs fuse3 where it may)",
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Mount:
    def __init__(self, server: S3Server, point: Path, cache_mode: str) -> None:
        self.server, self.point = server, point
        point.mkdir()
        self.proc = subprocess.Popen(
            [rclone_binary(), "mount", server.remote, str(point), "--vfs-cache-mode", cache_mode,
             "--dir-cache-time", "1s", "--vfs-write-back", "0s", "--config", os.devnull],
            env={**os.environ, **server.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not os.path.ismount(point):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("rclone mount did not come up")
            time.sleep(0.1)

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.point)], check=False, capture_output=True)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(params=["off", "writes"])
def mounted(request, tmp_path):
    server = S3Server(tmp_path / "s3")
    server.start()
    objects = {"0a1b2c3d-plain": image_bytes("PNG", 1), "01/a2/3f40a558.webp": image_bytes("WEBP", 2)}
    for key, data in objects.items():
        server.put(key, data, tmp_path)
    mount = Mount(server, tmp_path / "mnt", request.param)
    yield server, mount, objects
    mount.unmount()
    server.stop()


def _cli(tmp: Path, *args: str, env: dict | None = None):
    return run_cli(*args, "--state", str(tmp / "state.db"), "--quarantine", str(tmp / "q"), env=env)


def _wait(condition, timeout: float = 20, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _scan_flag_all(tmp_path, mount, bundle, policy, server):
    proc = _cli(tmp_path, "scan", str(mount.point), "--model", str(bundle), "--policy", str(policy), env=server.env())
    assert proc.returncode == 1, proc.stderr
    _wait(lambda: server.keys() == set(), what="removal through the mount to reach the bucket")
    return {_rel(mount, i["original"]): i for i in json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)}


def _rel(mount: Mount, original: str) -> str:
    return os.path.relpath(original, mount.point)


@pytest.fixture
def flag_all(write_policy):
    return write_policy({"any": {"cartoon": -1.0}}, {"any": 1}, name="flag-everything")


def test_scan_quarantine_and_restore_on_an_rclone_mount(tmp_path, tiny_bundle_master, flag_all, mounted):
    server, mount, objects = mounted
    items = _scan_flag_all(tmp_path, mount, tiny_bundle_master, flag_all, server)
    assert set(items) == set(objects)
    for key in objects:
        proc = _cli(tmp_path, "quarantine", "restore", items[key]["id"], env=server.env())
        assert proc.returncode == 0, proc.stderr
    # Byte-identical objects back at the same keys, and nothing else in the bucket (no temp names).
    _wait(lambda: server.keys() == set(objects), what="the objects to be back")
    for key, data in objects.items():
        assert server.get(key) == data
    assert server.keys() == set(objects)


def test_sigkill_during_a_restore_on_a_mount_leaves_nothing_new_in_the_bucket(
    tmp_path, tiny_bundle_master, flag_all, mounted
):
    server, mount, objects = mounted
    items = _scan_flag_all(tmp_path, mount, tiny_bundle_master, flag_all, server)
    key = "0a1b2c3d-plain"
    item = items[key]
    # Killed right after the intent is journalled; then, as if the O_EXCL write had been cut off halfway,
    # a leading part of the bytes sits at the key.
    proc = _cli(
        tmp_path, "quarantine", "restore", item["id"], env={**server.env(), "MIRROR_SCAN_KILL_AT": "restore:intent"}
    )
    assert proc.returncode == -9
    with open(mount.point / key, "wb") as partial:
        partial.write(objects[key][: len(objects[key]) // 2])
    _wait(lambda: key in server.keys(), what="the partial object to be uploaded")
    proc = _cli(tmp_path, "state", "recover", env=server.env())
    assert proc.returncode == 0 and "rolled back" in proc.stdout, proc.stdout + proc.stderr
    _wait(lambda: server.keys() == set(), what="the partial object to be removed")
    assert json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)[0]["state"] == "quarantined"
    # Killed once placed: recovery finishes it, the object is back and nothing else is there.
    proc = _cli(
        tmp_path, "quarantine", "restore", item["id"], env={**server.env(), "MIRROR_SCAN_KILL_AT": "restore:placed"}
    )
    assert proc.returncode == -9
    assert _cli(tmp_path, "state", "recover", env=server.env()).returncode == 0
    _wait(lambda: server.keys() == {key}, what="the object back")
    assert server.get(key) == objects[key]
    states = {
        _rel(mount, i["original"]): i["state"]
        for i in json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)
    }
    assert states[key] == "restored"


def test_a_foreign_file_at_the_target_is_never_touched_by_recovery(tmp_path, tiny_bundle_master, flag_all, mounted):
    server, mount, objects = mounted
    items = _scan_flag_all(tmp_path, mount, tiny_bundle_master, flag_all, server)
    key = "0a1b2c3d-plain"
    proc = _cli(
        tmp_path,
        "quarantine",
        "restore",
        items[key]["id"],
        env={**server.env(), "MIRROR_SCAN_KILL_AT": "restore:intent"},
    )
    assert proc.returncode == -9
    (mount.point / key).write_bytes(b"somebody else's upload")
    _wait(lambda: key in server.keys(), what="the foreign upload")
    assert _cli(tmp_path, "state", "recover", env=server.env()).returncode == 0
    assert server.get(key) == b"somebody else's upload"
