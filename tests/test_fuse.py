"""A real `rclone mount` of a real `rclone serve s3` bucket as the mirror: scan, quarantine, restore (no hard
links there), SIGKILL during a restore then recovery. A failed or interrupted restore never leaves
anything new in the bucket."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, run_cli, wait_until
from .mediafiles import image_bytes
from .s3server import RcloneMount as Mount
from .s3server import S3Server

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="FUSE is not available (scripts/install.sh installs fuse3 where it may)",
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    wait_until(condition, timeout, what, every=0.2)


def _scan_flag_all(tmp_path, mount, bundle, policy, server):
    proc = _cli(tmp_path, "scan", str(mount.point), "--model", str(bundle), "--policy", str(policy), env=server.env())
    assert proc.returncode == 1, proc.stderr
    _wait(lambda: server.keys() == set(), what="removal through the mount to reach the bucket")
    return {_rel(mount, i["original"]): i for i in json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)}


def _rel(mount: Mount, original: str) -> str:
    return os.path.relpath(original, mount.point)


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


def test_watch_on_a_mount_picks_polling_and_quarantines_a_new_upload(tmp_path, tiny_bundle_master, flag_all, mounted):
    from .test_watch import Watcher

    server, mount, objects = mounted
    # The objects already there are taken by the first reconciliation; a new upload to the bucket (not
    # through the mount) is seen by polling and quarantined, and removed upstream through the mount.
    watcher = Watcher(
        tmp_path, tiny_bundle_master, flag_all, "--settle", "0.5", "--poll-every", "1s",
        env=server.env(), mirror=mount.point,
    )  # fmt: skip
    try:
        status = watcher.status()
        assert status["observer"] == "polling", status
        watcher.wait_for(lambda: server.keys() == set(), timeout=60, what="the first objects to be quarantined")
        server.put("fresh-upload.png", image_bytes("PNG", 7), tmp_path)
        started = time.monotonic()
        watcher.wait_for(
            lambda: len(json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)) == 3,
            timeout=30,
            what="the new upload to be quarantined",
        )
        assert time.monotonic() - started < 30
        _wait(lambda: server.keys() == set(), what="the new upload to be removed from the bucket")
    finally:
        code, stderr = watcher.stop()
    assert code == 0, stderr


@pytest.mark.parametrize("stalls", ["reads", "stats"])
def test_a_stalled_mount_times_out_instead_of_hanging(tmp_path, tiny_bundle_master, flag_all, stalls):
    """The bucket stops answering. With --use-server-modtime the cached listing answers stats and the reads
    stall; without it every stat asks the bucket for the object's mtime, so the listing itself stalls."""
    server = S3Server(tmp_path / "s3")
    server.start()
    keys = [f"stalled-{i}.png" for i in range(3)]
    for i, key in enumerate(keys):
        server.put(key, image_bytes("PNG", 10 + i), tmp_path)
    extra = ("--use-server-modtime",) if stalls == "reads" else ()
    mount = Mount(server, tmp_path / "mnt", "off", dir_cache="1h", extra=extra)
    output = tmp_path / "scan.out"
    proc = None
    try:
        assert sorted(os.listdir(mount.point)) == keys  # the listing is cached; the bytes are not
        os.kill(server.proc.pid, signal.SIGSTOP)  # the bucket stops answering, as a stalled network would
        started = time.monotonic()
        with open(output, "wb") as sink:
            proc = subprocess.Popen(
                [*CLI, "scan", str(mount.point), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                 "--dry-run", "--json", "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q")],
                stdout=sink, stderr=subprocess.DEVNULL,
                env={**os.environ, **server.env(), "MIRROR_SCAN_READ_TIMEOUT": "2"},
            )  # fmt: skip
        # The scan finishes and reports. (The process itself exits only once the mount answers the reads
        # still in flight: the kernel waits for a FUSE request that rclone has taken; rclone's --timeout
        # bounds that.)
        _wait(lambda: output.read_bytes().strip().endswith(b"}"), timeout=45, what="the scan to finish")
        elapsed = time.monotonic() - started
        summary = json.loads(output.read_text())
        assert elapsed < 45
        errors = run_cli("report", "--errors", "--state", str(tmp_path / "state.db")).stdout
        if stalls == "reads":
            assert summary["errors"] == 3 and summary["scanned"] == 0, summary
            assert errors.count("read timed out after 2 s") == 3, errors
        else:
            assert summary["errors"] == 1 and summary["scanned"] == 0, summary
            assert "listing stalled for over 2 s" in errors and "stalled-0.png" in errors, errors
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        if proc is not None:
            proc.wait(timeout=60)
        mount.unmount()
        server.stop()
