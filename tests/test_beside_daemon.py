"""The daily task beside the daemon: restores (and other writers) while `watch` pulls from a real S3
server every 2 s and has just quarantined a burst. A writer must get the ledger within a second or two,
a busy ledger is never called damaged, and the daemon's counters count each file once."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from .conftest import CLI, run_cli, wait_until
from .mediafiles import image_bytes
from .s3server import S3Server
from .test_watch import Watcher


def _items(tmp_path) -> list[dict]:
    proc = run_cli("quarantine", "list", "--json", "--state", str(tmp_path / "state.db"),
                   "--quarantine", str(tmp_path / "q"), check=True)  # fmt: skip
    return json.loads(proc.stdout)


# Timed: never beside the Ray cluster tests (their raylets take the 2 CPUs in bursts): conftest's `alone`.
@pytest.mark.usefixtures("alone")
def test_restore_beside_a_pulling_daemon_twenty_times_each_within_two_seconds(tmp_path, tiny_bundle_master, flag_all):
    server = S3Server(tmp_path / "s3")
    server.start()
    burst = {f"u{i:02d}.png": image_bytes("PNG", 300 + i, size=(48, 32)) for i in range(20)}
    try:
        w = Watcher(
            tmp_path, tiny_bundle_master, flag_all, "--remote", server.remote, "--pull-every", "2s",
            "--reconcile-every", "5s", env=server.env(),
        )  # fmt: skip
        try:
            for key, data in burst.items():
                server.put(key, data, tmp_path)
            wait_until(lambda: server.keys() == set(), timeout=60, what="the burst to leave the bucket")
            wait_until(
                lambda: sum(e["state"] == "quarantined" for e in _items(tmp_path)) == len(burst),
                timeout=30, what="every item to be quarantined",
            )  # fmt: skip
            state_args = ["--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q")]
            started = time.monotonic()
            subprocess.run([*CLI, "allowlist", "list", *state_args], capture_output=True, timeout=120, check=True)
            startup_s = time.monotonic() - started  # the CLI's own start-up (Python, imports), not the ledger
            times = []
            for entry in _items(tmp_path):
                started = time.monotonic()
                proc = subprocess.run(
                    [*CLI, "quarantine", "restore", entry["id"], *state_args],
                    capture_output=True, text=True, timeout=120, env={**os.environ, **server.env()},
                )  # fmt: skip
                times.append(time.monotonic() - started)
                assert proc.returncode == 0, proc.stderr
                assert "damaged" not in proc.stderr
            assert max(times) < 2.0 + startup_s, (startup_s, times)
            wait_until(lambda: server.keys() == set(burst), timeout=30, what="every object back in the bucket")
            wait_until(lambda: not (w.status() or {}).get("queue_depth"), timeout=30, what="the daemon to settle")
            time.sleep(4.5)  # two more pulls and a reconciliation walk see the restored files
            status = w.status()
            # Each file counted once: 20 scanned and 20 flagged, not 20 and 40 (a file seen by the observer
            # and by a pull, or again after its restore, is not a second verdict).
            assert status["scanned"] == len(burst), status
            assert status["flagged"] == len(burst), status
        finally:
            code, stderr = w.stop()
        assert code == 0, stderr
        assert f"{len(burst)} scanned" in stderr and f"{len(burst)} flagged" in stderr, stderr
    finally:
        server.stop()


def test_the_runner_never_waits_for_work_holding_the_write_lock(tmp_path, tiny_bundle_master, flag_all):
    """A verdict recorded from a stored result (a copy of bytes scored before) and then a quiet queue: the
    record must be committed and the write lock free while the runner waits for the next path."""
    import queue
    import sqlite3
    import threading

    from mirror_scan.app.scanner import load_scanner, scan_config
    from mirror_scan.scan.runner import Scan
    from mirror_scan.settings import resolve
    from mirror_scan.store.ledger import Ledger

    from .test_watch import _png

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "first.png").write_bytes(_png(1))
    settings = resolve({"model": tiny_bundle_master, "policy": str(flag_all), "state": tmp_path / "state.db",
                        "quarantine": tmp_path / "q", "decoders": "thread"})  # fmt: skip
    bundle, policy, offset, scorer = load_scanner(settings)
    ledger = Ledger(settings.state)
    config = scan_config(settings, offset, policy, bundle, flush_after_s=0.1, commit_every_s=3600.0)
    Scan(ledger, bundle, scorer, policy, config, actor=None).run([str(mirror)])
    (mirror / "copy.png").write_bytes(_png(1))  # the same bytes: decided from the stored result

    from mirror_scan.store.discover import discover

    source: queue.Queue = queue.Queue()
    runner = Scan(ledger, bundle, scorer, policy, config, actor=None)
    thread = threading.Thread(target=runner.run_stream, args=(source,))
    thread.start()
    try:
        source.put(next(f for f in discover([mirror]) if f.path.endswith("copy.png")))

        def recorded() -> bool:
            with sqlite3.connect(f"file:{settings.state}?mode=ro", uri=True) as db:
                return db.execute("SELECT count(*) FROM files WHERE path=?", (str(mirror / "copy.png").encode(),)
                                  ).fetchone()[0] == 1  # fmt: skip

        wait_until(recorded, timeout=20, what="the copy's verdict to be committed while the runner waits")
        other = sqlite3.connect(settings.state, timeout=0.5, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock is free (raises 'database is locked' otherwise)
        other.execute("ROLLBACK")
        other.close()
        assert runner.counters.reused == 1 and runner.counters.flagged == 1
    finally:
        source.put(None)  # the end of the stream
        thread.join(30)
        ledger.close()


def test_a_second_daemon_on_the_same_state_and_mirror_is_refused_naming_the_first(tmp_path, tiny_bundle_master,
                                                                                   flag_all):  # fmt: skip
    first = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run")
    try:
        proc = subprocess.run(
            [*CLI, "watch", "--mirror", str(first.mirror), "--model", str(tiny_bundle_master), "--policy",
             str(flag_all), "--state", str(first.state), "--quarantine", str(tmp_path / "q"), "--dry-run"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "another `mirror-scan watch`" in proc.stderr and f"pid {first.proc.pid}" in proc.stderr, proc.stderr
        assert first.proc.poll() is None  # the first one runs on, untouched
        # Another mirror on the same state is a different watch, and may run.
        other = tmp_path / "other-mirror"
        second = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run", mirror=other)
        assert second.stop()[0] == 0
    finally:
        code, stderr = first.stop()
    assert code == 0, stderr
    again = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run")  # the lock died with its holder
    assert again.stop()[0] == 0


@pytest.mark.parametrize("gap_s", [0.0, 0.3])
def test_a_second_event_for_a_file_being_read_decides_it_once(tmp_path, tiny_bundle_master, flag_all, gap_s):
    """The path queue holds a path once while it waits, not while it is read: a second event then reaches
    the runner for the same, unchanged file, in the same batch (no gap) or after the first was decided
    (a gap longer than the batch's flush). It is decided once, as scored, never recorded again as a reuse
    of itself (what the watch test saw on a loaded CI machine)."""
    import queue
    import sqlite3

    from mirror_scan.app.scanner import load_scanner, scan_config
    from mirror_scan.scan.runner import Scan
    from mirror_scan.settings import resolve
    from mirror_scan.store.discover import discover
    from mirror_scan.store.ledger import Ledger

    from .test_watch import _png

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.png").write_bytes(_png(5))
    settings = resolve({"model": tiny_bundle_master, "policy": str(flag_all), "state": tmp_path / "state.db",
                        "quarantine": tmp_path / "q", "decoders": "thread"})  # fmt: skip
    bundle, policy, offset, scorer = load_scanner(settings)
    config = scan_config(settings, offset, policy, bundle, flush_after_s=0.1)
    (found,) = list(discover([mirror]))

    class Twice:
        """The same Found twice (with a gap), then the end of the stream."""

        def __init__(self) -> None:
            self.items = [found, found, None]

        def get(self, timeout=None):
            if not self.items:
                raise queue.Empty
            if len(self.items) == 2 and gap_s:
                time.sleep(gap_s)
            return self.items.pop(0)

        def get_nowait(self):
            return self.get(0)

    with Ledger(settings.state) as ledger:
        counters = Scan(ledger, bundle, scorer, policy, config, actor=None).run_stream(Twice())
    assert (counters.scored, counters.reused) == (1, 0), counters
    with sqlite3.connect(settings.state) as db:
        assert db.execute("SELECT status FROM files").fetchall() == [("scored",)]
