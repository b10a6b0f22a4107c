"""Offline scans through the real CLI: bad inputs recorded as errors and never touched, dry run,
apply, rescore, reuse by hash, resume after kill -9, reports, exit codes, settings."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, run_cli
from .mediafiles import BAD, GOOD, NON_UTF8_NAME, PARTIAL, image_bytes, write_tree


def snapshot(root: Path) -> dict[bytes, bytes]:
    """Every regular file under root (paths as bytes), with its content; links recorded as links."""
    files = {}
    for dirpath, _dirs, names in os.walk(os.fsencode(root)):
        for name in names:
            path = os.path.join(dirpath, name)
            files[path] = b"LINK->" + os.readlink(path) if os.path.islink(path) else open(path, "rb").read()
    return files


def read_jsonl(path: Path) -> dict[str, dict]:
    return {rec["path"]: rec for rec in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def scan(tree: Path, bundle: Path, state: Path, *extra: str, env: dict | None = None):
    return run_cli("scan", str(tree), "--model", str(bundle), "--state", str(state), *extra, env=env)


@pytest.fixture
def media_tree(tmp_path) -> tuple[Path, dict]:
    tree = tmp_path / "mirror"
    written = write_tree(tree)
    outside = tmp_path / "outside-secret.png"
    outside.write_bytes(image_bytes("PNG", 40))
    os.symlink(outside, tree / "link-outside.png")
    os.symlink(tree / "loop-b", tree / "loop-a")
    os.symlink(tree / "loop-a", tree / "loop-b")
    (tree / "in-progress.jpg.0a1b2c3d.partial").write_bytes(b"half")
    return tree, written


def test_scan_records_every_bad_file_as_an_error_and_touches_nothing(media_tree, tiny_bundle_master, tmp_path):
    tree, _ = media_tree
    before = snapshot(tree)
    outside_before = (tmp_path / "outside-secret.png").read_bytes()
    report = tmp_path / "report.jsonl"
    # -1: every threshold crossable, so every readable file is flagged; none of them may be an error.
    proc = scan(
        tree, tiny_bundle_master, tmp_path / "state.db", "--dry-run", "--severity=-1", "--report", str(report), "--json"
    )
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    records = read_jsonl(report)
    rel = {os.path.relpath(p, tree): r for p, r in records.items()}
    for name, (_, reason) in BAD.items():
        assert rel[name]["status"] == "error", name
        assert rel[name]["verdict"] is None
        assert reason in rel[name]["reason"], (name, rel[name]["reason"])
    for name in ("link-outside.png", "loop-a", "loop-b"):
        assert rel[name]["status"] == "error" and "symbolic link" in rel[name]["reason"]
    readable = [*GOOD, *PARTIAL, NON_UTF8_NAME.decode("utf-8", "backslashreplace")]
    for name in readable:
        assert rel[name]["status"] == "scored", (name, rel[name])
        assert rel[name]["verdict"] == "flagged"
    for name in PARTIAL:  # scored on the part that arrived, and the reason says so
        assert "partial" in rel[name]["reason"], rel[name]
    assert not any(".partial" in p for p in records)
    assert summary["scanned"] == len(readable) and summary["flagged"] == len(readable)
    assert summary["errors"] == len(BAD) + 3
    # Dry run: nothing deleted, moved or modified, and the link target outside was never touched.
    assert snapshot(tree) == before
    assert (tmp_path / "outside-secret.png").read_bytes() == outside_before
    # Formats come from the bytes, not the names.
    assert rel["named-jpg-but-png.jpg"]["format"] == "png"
    assert rel["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"]["format"] == "jpeg"
    assert rel["clip.webm"]["format"] == "webm" and rel["clip.mp4"]["format"] == "mp4"
    # Every distinct frame is scored, up to 32 (the thousand-frame GIF has a thousand distinct ones; the
    # clip cycles through 5 pictures, 30 frames).
    db = sqlite3.connect(tmp_path / "state.db")
    frames = dict(db.execute("SELECT f.path, r.frames FROM files f JOIN results r ON r.id = f.result_id"))
    assert frames[os.fsencode(tree / "thousand-frames.gif")] == 32
    assert 5 <= frames[os.fsencode(tree / "clip.mp4")] <= 10
    assert frames[os.fsencode(tree / "anim.gif")] == 6
    assert frames[os.fsencode(tree / NON_UTF8_NAME.decode("utf-8", "surrogateescape"))] == 1


def _without_dac_override() -> list[str]:
    """As root, file modes do not stop reads; drop the capabilities that bypass them for the child."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable to the scanner")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_unreadable_file_is_an_error(tmp_path, tiny_bundle_master):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.png").write_bytes(image_bytes("PNG", 1))
    (tree / "secret.png").write_bytes(image_bytes("PNG", 2))
    os.chmod(tree / "secret.png", 0o000)
    try:
        proc = subprocess.run(
            [
                *_without_dac_override(),
                *CLI,
                "scan",
                str(tree),
                "--model",
                str(tiny_bundle_master),
                "--state",
                str(tmp_path / "s.db"),
                "--dry-run",
                "--report",
                str(tmp_path / "r.jsonl"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
            timeout=120,
        )
    finally:
        os.chmod(tree / "secret.png", 0o644)
    records = read_jsonl(tmp_path / "r.jsonl")
    # A file that could not be checked makes the exit code 2 (as clamscan), unless something was flagged.
    assert proc.returncode == (1 if records[str(tree / "ok.png")]["verdict"] == "flagged" else 2), proc.stderr
    assert records[str(tree / "secret.png")]["status"] == "error"
    assert "permission denied" in records[str(tree / "secret.png")]["reason"]
    assert records[str(tree / "ok.png")]["status"] == "scored"
    assert (tree / "secret.png").exists()


def test_file_deleted_or_changed_after_discovery(tmp_path, tiny_bundle_master):
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.scan.decoders.decode import Limits
    from mirror_scan.scan.read import Changed, ToScore, Vanished, fetch
    from mirror_scan.store.discover import discover

    prep = load_bundle(tiny_bundle_master).preprocess
    for name in ("gone.png", "growing.png", "stays.png"):
        (tmp_path / name).write_bytes(image_bytes("PNG", 3))
    found = {Path(f.path).name: f for f in discover([tmp_path])}
    (tmp_path / "gone.png").unlink()
    with open(tmp_path / "growing.png", "ab") as handle:
        handle.write(b"more bytes arriving")

    def go(name):
        return fetch(found[name], prep=prep, limits=Limits(), max_bytes=1 << 20, lookup_result=lambda sha: None)

    assert isinstance(go("gone.png"), Vanished)
    assert isinstance(go("growing.png"), Changed)
    assert isinstance(go("stays.png"), ToScore)


def test_dry_run_apply_rescore_cycle(tmp_path, tiny_bundle_master):
    tree = tmp_path / "mirror"
    tree.mkdir()
    for i in range(6):
        (tree / f"img{i}.jpg").write_bytes(image_bytes("JPEG", i))
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    state = tmp_path / "state.db"
    # Nothing crosses +1: nothing flagged; exit 2, since broken.png could not be checked.
    proc = scan(tree, tiny_bundle_master, state, "--dry-run", "--severity=1", "--json")
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["flagged"] == 0
    # Same files, new severity: re-decided from stored results with no image read (nothing "scanned").
    proc = scan(tree, tiny_bundle_master, state, "--dry-run", "--severity=-1", "--json")
    summary = json.loads(proc.stdout)
    assert proc.returncode == 1 and summary["flagged"] == 6 and summary["scanned"] == 0
    assert summary["skipped_unchanged"] == 6 and summary["errors"] == 1
    originals = {p.name: p.read_bytes() for p in tree.glob("img*.jpg")}
    quarantine = tmp_path / "quarantine"
    proc = run_cli("apply", "--state", str(state), "--quarantine", str(quarantine), "--json")
    assert json.loads(proc.stdout) == {"acted": 6}, proc.stderr
    assert json.loads(run_cli("apply", "--state", str(state), "--quarantine", str(quarantine), "--json").stdout) == {
        "acted": 0
    }
    flagged = run_cli("report", "--state", str(state), "--flagged").stdout.splitlines()
    assert len(flagged) == 6 and all(json.loads(line)["action"] == "quarantined" for line in flagged)
    # Applied without inference: the 6 left the mirror and sit byte-identical in the quarantine.
    assert sorted(p.name for p in tree.iterdir()) == ["broken.png"]
    stored = sorted((d / "data").read_bytes() for d in (quarantine / "items").iterdir())
    assert stored == sorted(originals.values())
    proc = run_cli("rescore", "--state", str(state), "--quarantine", str(quarantine), "--severity=1", "--json")
    result = json.loads(proc.stdout)
    assert result["to_clean"] == 6 and result["to_flagged"] == 0 and result["files"] == 6
    assert run_cli("report", "--state", str(state), "--flagged").stdout == ""
    errors = [json.loads(line) for line in run_cli("report", "--state", str(state), "--errors").stdout.splitlines()]
    assert [e["path"].endswith("broken.png") for e in errors] == [True]


def test_copies_reuse_the_stored_result_and_unchanged_files_are_not_read(tmp_path, tiny_bundle_master):
    tree = tmp_path / "mirror"
    tree.mkdir()
    for i in range(5):
        (tree / f"a{i}.png").write_bytes(image_bytes("PNG", i))
    state = tmp_path / "state.db"
    first = json.loads(scan(tree, tiny_bundle_master, state, "--dry-run", "--json").stdout)
    assert first["scanned"] == 5
    (tree / "copy-of-a0").write_bytes((tree / "a0.png").read_bytes())  # pict-rs re-upload: new key, same bytes
    (tree / "b.png").write_bytes(image_bytes("PNG", 77))
    second = json.loads(scan(tree, tiny_bundle_master, state, "--dry-run", "--json").stdout)
    assert (second["scanned"], second["reused_by_hash"], second["skipped_unchanged"]) == (1, 1, 5)
    os.utime(tree / "a1.png", ns=(1, 1))  # touched: read again; same bytes so no inference
    third = json.loads(scan(tree, tiny_bundle_master, state, "--dry-run", "--json").stdout)
    assert (third["scanned"], third["reused_by_hash"], third["skipped_unchanged"]) == (0, 1, 6)


def test_interrupted_scan_resumes_where_it_stopped(tmp_path, tiny_bundle_master):
    tree = tmp_path / "mirror"
    tree.mkdir()
    for i in range(400):
        (tree / f"img{i:03d}.png").write_bytes(image_bytes("PNG", i, size=(64, 48)))
    state = tmp_path / "state.db"
    proc = subprocess.Popen(
        [
            *CLI,
            "scan",
            str(tree),
            "--model",
            str(tiny_bundle_master),
            "--state",
            str(state),
            "--dry-run",
            "--batch-size",
            "1",
            "--workers",
            "1",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    recorded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
                recorded = db.execute("SELECT count(*) FROM files").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        if recorded >= 20:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert 20 <= recorded < 400, "the scan was not caught mid-way"
    resumed = json.loads(scan(tree, tiny_bundle_master, state, "--dry-run", "--json").stdout)
    assert resumed["skipped_unchanged"] >= 20
    assert resumed["skipped_unchanged"] + resumed["scanned"] + resumed["reused_by_hash"] == 400
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 400


def test_csv_report_round_trips_awkward_names(tmp_path, tiny_bundle_master):
    tree = tmp_path / "mirror"
    tree.mkdir()
    names = ["with space.png", "quote'\"s.png", "dollar$HOME.png", "new\nline.png", "comma,name.png"]
    for i, name in enumerate(names):
        (tree / name).write_bytes(image_bytes("PNG", i))
    state = tmp_path / "state.db"
    scan(tree, tiny_bundle_master, state, "--dry-run", "--quiet")
    text = run_cli("report", "--state", str(state), "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(names)
    assert all(r["status"] == "scored" and len(r["sha256"]) == 64 for r in rows)


def test_exit_codes_and_clear_errors(tmp_path, tiny_bundle_master):
    proc = scan(tmp_path / "nope", tiny_bundle_master, tmp_path / "s.db")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "tree").mkdir()
    proc = run_cli(
        "scan", str(tmp_path / "tree"), "--model", str(tmp_path / "no-model"), "--state", str(tmp_path / "s.db")
    )
    assert proc.returncode == 2 and "model export" in proc.stderr and "Traceback" not in proc.stderr
    proc = scan(tmp_path / "tree", tiny_bundle_master, tmp_path / "s.db", "--batch-size", "0")
    assert proc.returncode == 2 and "batch_size" in proc.stderr
    proc = run_cli("rescore", "--state", str(tmp_path / "missing.db"))
    assert proc.returncode == 2 and "run mirror-scan scan first" in proc.stderr


def test_a_second_writer_waits_for_the_first_instead_of_failing(tmp_path, tiny_bundle_master):
    """Writers share the ledger (the daemon, the validator, a shell): one holding a transaction makes the
    other wait for it, never fail."""
    import threading

    from mirror_scan.store.ledger import Ledger

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.png").write_bytes(image_bytes("PNG", 1))
    with Ledger(tmp_path / "s.db") as ledger:
        ledger.begin()
        ledger.allow("0" * 64, note="held open")
        released = threading.Timer(2.0, ledger.commit)
        released.start()
        started = time.monotonic()
        proc = scan(tmp_path / "tree", tiny_bundle_master, tmp_path / "s.db", "--dry-run", "--json")
        released.join()
    assert proc.returncode in (0, 1), proc.stderr
    assert json.loads(proc.stdout)["scanned"] == 1 and time.monotonic() - started >= 2.0


def test_settings_come_from_flags_then_env_then_config_then_defaults(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('policy = "horde-v1"\nbatch_size = 4\nworkers = 3\n')
    env = {"MIRROR_SCAN_BATCH_SIZE": "8", "MIRROR_SCAN_DATA_DIR": str(tmp_path / "data")}
    shown = json.loads(run_cli("config", "--config", str(config), "--json", env=env).stdout)
    assert shown["policy"] == {"value": "horde-v1", "source": f"config {config}"}
    assert shown["batch_size"] == {"value": 8, "source": "env MIRROR_SCAN_BATCH_SIZE"}
    assert shown["workers"]["value"] == 3  # typed (issue 26: config --json gave every value as a string)
    assert shown["state"] == {"value": str(tmp_path / "data" / "state.db"), "source": "default"}
    from mirror_scan.settings import resolve

    assert resolve({"batch_size": 2}, config).batch_size == 2  # a flag beats everything
    config.write_text("batch_sise = 4\n")
    proc = run_cli("config", "--config", str(config))
    assert proc.returncode == 2 and "did you mean 'batch_size'" in proc.stderr


def test_rescore_with_new_prompts_uses_stored_embeddings(tmp_path, tiny_bundle, write_policy):
    tree = tmp_path / "mirror"
    tree.mkdir()
    for i in range(4):
        (tree / f"a{i}.png").write_bytes(image_bytes("PNG", i))
    state = tmp_path / "state.db"
    scan(tree, tiny_bundle, state, "--dry-run", "--quiet")
    # A policy on prompts the scan never scored: every image is "above" -1, none above 1.
    for threshold, expected in ((-1.0, 4), (1.0, 0)):
        policy = write_policy({"new": {"a freshly added prompt": threshold}}, {"new": 1}, name=f"p{expected}")
        assert run_cli("model", "concepts", "--model", str(tiny_bundle), "--policy", str(policy)).returncode == 0
        proc = run_cli("rescore", "--state", str(state), "--policy", str(policy), "--model", str(tiny_bundle), "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["still_flagged"] + result["to_flagged"] == expected
