"""The watch daemon with real inotify, real polling, real signals, and a real S3 server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import CLI, wait_until
from .mediafiles import image_bytes
from .s3server import free_port


class Watcher:
    def __init__(
        self, tmp: Path, bundle: Path, policy: Path, *args: str, env: dict | None = None, mirror: Path | None = None
    ) -> None:
        self.tmp, self.mirror, self.state = tmp, mirror or tmp / "mirror", tmp / "state.db"
        self.mirror.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *CLI,
                "watch",
                "--mirror",
                str(self.mirror),
                "--model",
                str(bundle),
                "--policy",
                str(policy),
                "--state",
                str(self.state),
                "--quarantine",
                str(tmp / "q"),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )
        # its own status (another daemon on the same state writes the same file)
        self.wait_for(lambda: (self.status() or {}).get("pid") == self.proc.pid, what="the daemon to start")

    def status(self) -> dict | None:
        path = self.state.with_name(self.state.name + ".status.json")
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read()) from None
            return None

    def rows(self) -> dict[str, tuple]:
        if not self.state.exists():
            return {}
        with sqlite3.connect(f"file:{self.state}?mode=ro", uri=True) as db:
            return {
                os.fsdecode(p): (size, status) for p, size, status in db.execute("SELECT path, size, status FROM files")
            }

    def wait_for(self, condition, timeout: float = 30, what: str = "the condition") -> None:
        wait_until(condition, timeout, what)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, stderr = self.proc.communicate(timeout=60)
        return self.proc.returncode, stderr


def _png(seed: int) -> bytes:
    return image_bytes("PNG", seed, size=(48, 32))


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_files_arriving_every_way_are_scored_once_when_complete(tmp_path, tiny_bundle_master, flag_all, observer):
    w = Watcher(
        tmp_path,
        tiny_bundle_master,
        flag_all,
        "--observer",
        observer,
        "--dry-run",
        "--settle",
        "0.5",
        "--reconcile-every",
        "1h",
    )
    try:
        m = w.mirror
        # rclone's pattern: a .partial, renamed to the final name
        (m / "a.png.0a1b2c3d.partial").write_bytes(_png(1))
        os.rename(m / "a.png.0a1b2c3d.partial", m / "a.png")
        # in brand-new nested directories (pict-rs 0.5.7 keys)
        (m / "01/a2/12/b0/13").mkdir(parents=True)
        (m / "01/a2/12/b0/13/3f40a5580bd6.webp").write_bytes(image_bytes("WEBP", 2))
        # written in place, slowly: scored once, after it is complete
        slow = _png(3)
        with open(m / "slow.png", "wb") as handle:
            for chunk in (slow[:200], slow[200:600], slow[600:]):
                handle.write(chunk)
                handle.flush()
                time.sleep(0.4)
        # a burst, and a .partial that is never completed
        for i in range(40):
            (m / f"burst-{i:02d}.png").write_bytes(_png(100 + i))
        (m / "stuck.png.deadbeef.partial").write_bytes(b"half a file")
        expected = {"a.png": _png(1), "01/a2/12/b0/13/3f40a5580bd6.webp": image_bytes("WEBP", 2), "slow.png": slow}
        expected |= {f"burst-{i:02d}.png": _png(100 + i) for i in range(40)}
        w.wait_for(lambda: len(w.rows()) >= len(expected), timeout=40, what="every file to be scored")
        time.sleep(1.0)  # let any duplicate events arrive
        rows = w.rows()
        assert {os.path.relpath(p, m) for p in rows} == set(expected)
        for rel, data in expected.items():
            assert rows[str(m / rel)] == (len(data), "scored"), rel  # complete when scored
        status = w.status()
        assert status["scanned"] == len(expected)  # each scored once, duplicates ignored
        assert status["observer"] == observer
    finally:
        code, stderr = w.stop()
    assert code == 0, stderr


def test_sigterm_mid_batch_then_restart_misses_nothing(tmp_path, tiny_bundle_master, flag_all):
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run", "--reconcile-every", "1h", "--settle", "0.3")
    for i in range(150):
        (w.mirror / f"f{i:03d}.png").write_bytes(_png(i))
    w.wait_for(lambda: len(w.rows()) >= 10, what="some files to be scored")
    code, stderr = w.stop()
    assert code == 0 and "stopped cleanly" in stderr
    assert len(w.rows()) < 160
    for i in range(150, 170):  # arrive while the daemon is down
        (w.mirror / f"f{i:03d}.png").write_bytes(_png(i))
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run", "--reconcile-every", "1h")
    try:
        w.wait_for(lambda: len(w.rows()) == 170, timeout=60, what="all 170 files after the restart")
    finally:
        assert w.stop()[0] == 0


def test_status_command_and_metrics(tmp_path, tiny_bundle_master, flag_all):
    port = free_port()
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run", "--metrics", f"127.0.0.1:{port}")
    try:
        (w.mirror / "x.png").write_bytes(_png(7))
        w.wait_for(lambda: len(w.rows()) == 1, what="the file to be scored")
        w.wait_for(lambda: (w.status() or {}).get("scanned") == 1, what="the status to update")
        proc = subprocess.run([*CLI, "status", "--state", str(w.state)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "files waiting" in proc.stdout and "CPUExecutionProvider" in proc.stdout
        assert "watch daemon" in proc.stdout and "not running" not in proc.stdout and "pid " in proc.stdout
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        # prometheus-client's exposition: HELP/TYPE lines, counters with _total, escaped labels, histograms.
        assert "# TYPE mirror_scan_scanned_total counter" in metrics or "# TYPE mirror_scan_scanned counter" in metrics
        assert "mirror_scan_scanned_total 1.0" in metrics and 'observer="inotify"' in metrics
        assert "mirror_scan_upstream_pending " in metrics and "mirror_scan_queue_depth " in metrics
        assert 'mirror_scan_landing_to_verdict_seconds_bucket{le="' in metrics
        assert "mirror_scan_inference_batch_seconds_count 1.0" in metrics
        assert "mirror_scan_in_flight 0.0" in metrics  # idle: nothing in flight
        promtool = shutil.which("promtool")
        if promtool is not None:  # Debian's prometheus package: the exposition passes Prometheus's own lint
            checked = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True)
            assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        assert w.stop()[0] == 0


def test_watch_pulls_from_s3_and_quarantines_upstream_and_locally(tmp_path, tiny_bundle_master, flag_all):
    from .s3server import S3Server

    server = S3Server(tmp_path / "s3")
    server.start()
    try:
        w = Watcher(
            tmp_path, tiny_bundle_master, flag_all, "--remote", server.remote, "--pull-every", "1s", env=server.env()
        )
        try:
            keys = {
                "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d": _png(1),
                "01/a2/12/b0/13/d3/7d/c4/93/8e/3f40a558.webp": image_bytes("WEBP", 2),
            }
            for key, data in keys.items():
                server.put(key, data, tmp_path)
            w.wait_for(lambda: server.keys() == set(), timeout=40, what="the objects to leave the bucket")
            # A pull that listed the bucket while an object was being removed can write it back into the
            # mirror after it left; the daemon removes such a copy again, under its item, not as a second one.
            w.wait_for(lambda: not [p for p in w.mirror.rglob("*") if p.is_file()], timeout=10, what="an empty mirror")
            items = [(d / "data").read_bytes() for d in (tmp_path / "q" / "items").iterdir()]
            assert sorted(items) == sorted(keys.values())
        finally:
            assert w.stop()[0] == 0
    finally:
        server.stop()


def test_a_copy_a_pull_brings_back_after_its_quarantine_is_removed_again_under_the_same_item(tmp_path):
    """The race behind it: rclone lists the bucket while a quarantine removes the object upstream, then the
    mirror copy, and writes the object back into the mirror. The bytes rclone would write are put back here;
    both paths that meet them (the pull's own check, and a scan that flags the copy) remove the copy again
    under the item that holds its bytes, and touch nothing else."""
    import hashlib

    from mirror_scan.kinds import ItemState
    from mirror_scan.store.ledger import Ledger
    from mirror_scan.store.mover import Moved
    from mirror_scan.store.quarantine import Quarantine

    mirror = tmp_path / "mirror"
    (mirror / "a").mkdir(parents=True)
    flagged, other = _png(1), _png(2)
    for name, data in (("a/x.png", flagged), ("y.png", other)):
        (mirror / name).write_bytes(data)
    root = os.fsencode(mirror)
    sha = hashlib.sha256(flagged).hexdigest()
    ledger = Ledger(tmp_path / "state.db")
    store = Quarantine(tmp_path / "q", ledger)
    moved = store.quarantine(os.fsencode(mirror / "a/x.png"), root, sha, {"verdict": None})
    item = moved.item_id
    assert moved.state == ItemState.QUARANTINED and not (mirror / "a/x.png").exists()

    (mirror / "a/x.png").write_bytes(flagged)  # the pull writes it back
    assert store.drop_returned_copy(os.fsencode(mirror / "a/x.png"), root) == item
    assert not (mirror / "a/x.png").exists()
    (mirror / "a/x.png").write_bytes(flagged)  # and again; this time a scan flags it first
    assert store.quarantine(os.fsencode(mirror / "a/x.png"), root, sha, {"verdict": None}) == Moved(item, "quarantined")
    assert not (mirror / "a/x.png").exists() and [d.name for d in (tmp_path / "q" / "items").iterdir()] == [item]

    # Other bytes at that path are another file: left for the scan (here: quarantined as a new item).
    (mirror / "a/x.png").write_bytes(_png(3))
    assert store.drop_returned_copy(os.fsencode(mirror / "a/x.png"), root) is None
    assert (mirror / "a/x.png").read_bytes() == _png(3)
    (mirror / "a/x.png").unlink()
    # A restored item's file is the restore's, never removed again; a path with no item is not touched.
    store.restore(item)
    assert (mirror / "a/x.png").read_bytes() == flagged
    assert store.drop_returned_copy(os.fsencode(mirror / "a/x.png"), root) is None
    assert store.drop_returned_copy(os.fsencode(mirror / "y.png"), root) is None
    assert (mirror / "a/x.png").read_bytes() == flagged and (mirror / "y.png").read_bytes() == other
    ledger.close()


def test_inotify_overflow_triggers_an_immediate_reconciliation():
    """watchdog reports a kernel queue overflow only as a log warning; the daemon must react to it."""
    import logging

    from mirror_scan.app.periodic import Periodic
    from mirror_scan.intake.watch import OverflowSignal

    runs = []
    reconciler = Periodic("reconcile", 3600, lambda: runs.append(time.monotonic()))
    signal_ = OverflowSignal(reconciler.trigger).install()
    reconciler.start()
    try:
        deadline = time.monotonic() + 5
        while not runs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(runs) == 1  # the run at start; the next is an hour away
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        deadline = time.monotonic() + 5
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(runs) == 2 and signal_.count == 1
    finally:
        reconciler.stop()
        logging.getLogger("watchdog.observers").removeHandler(signal_)
