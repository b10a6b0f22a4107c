#!/usr/bin/env python3
"""Kill -9 stress for the quarantine: run `apply` (quarantine) or `quarantine restore` in a
subprocess, SIGKILL it at a random moment inside its move window, recover, and check that every file
is byte-identical at its original place or in the quarantine (never nowhere, never half-written),
with no temp files and no unfinished move. Repeats for many iterations.

    python scripts/stress_quarantine.py [--quick] [--json] [--iterations N] [--files N]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import bundle_for, emit, machine, parser

from mirror_scan.model.synthetic import generated_image

CLI = [sys.executable, "-m", "mirror_scan.cli"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(args: list[str], base: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args, "--state", str(base / "state.db"), "--quarantine", str(base / "q")],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def check(base: Path, expected: dict[str, bytes]) -> None:
    stored = set()
    for item in (base / "q" / "items").iterdir():
        if (item / "data").exists():
            data = (item / "data").read_bytes()
            assert sha(data) == json.loads((item / "meta.json").read_text())["sha256"], f"half-written {item}"
            stored.add(sha(data))
    for rel, data in expected.items():
        path = base / "mirror" / rel
        if path.exists():
            assert path.read_bytes() == data, f"{rel} half-written"
        else:
            assert sha(data) in stored, f"{rel} is nowhere"
    temps = [p for p in base.rglob("*.tmp")]
    assert not temps, temps
    with sqlite3.connect(base / "state.db") as db:
        assert db.execute("SELECT count(*) FROM moves WHERE step NOT IN ('done','rolled_back')").fetchone()[0] == 0


def kill_inside_moves(args: list[str], base: Path, max_delay: float) -> bool:
    """Start the command, wait until its first move is journalled, then SIGKILL after a random delay.
    Returns True if the process was killed (False if it finished first)."""
    proc = subprocess.Popen(
        [*CLI, *args, "--state", str(base / "state.db"), "--quarantine", str(base / "q")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    start_count = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{base / 'state.db'}?mode=ro", uri=True, timeout=0.1) as db:
                count = db.execute("SELECT count(*) FROM moves").fetchone()[0]
        except sqlite3.OperationalError:
            count = None
        if start_count is None:
            start_count = count
        elif count is not None and count > start_count:
            break
        time.sleep(0.002)
    time.sleep(random.uniform(0, max_delay))
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int)
    p.add_argument("--files", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    args.tiny = True
    iterations = args.iterations or (15 if args.quick else 200)
    random.seed(args.seed)
    bundle = bundle_for(args)
    work = Path(tempfile.mkdtemp(prefix="stress-quarantine-"))
    # The state database records absolute paths: build the site in place, keep a copy, and reset the
    # site by copying that back to the same path.
    template, base = work / "template", work / "site"
    (base / "mirror").mkdir(parents=True)
    expected = {}
    for i in range(args.files):
        rel = f"{i % 3:02x}/{i:04d}.png"
        target = base / "mirror" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        generated_image(i, 96, 64).save(target, format="PNG")
        expected[rel] = target.read_bytes()
    proc = run(["scan", str(base / "mirror"), "--model", str(bundle), "--dry-run", "--severity=-1", "--quiet"], base)
    assert proc.returncode == 1, proc.stderr
    shutil.copytree(base, template)
    started = time.monotonic()
    killed = {"quarantine": 0, "restore": 0}
    finished_first = 0
    try:
        for iteration in range(iterations):
            shutil.rmtree(base, ignore_errors=True)
            shutil.copytree(template, base)
            mode = "restore" if iteration % 3 == 2 else "quarantine"
            if mode == "restore":
                assert run(["apply"], base).returncode == 0
                items = json.loads(run(["quarantine", "list", "--json"], base).stdout)
                ids = [i["id"] for i in items]
                if kill_inside_moves(["quarantine", "restore", *ids], base, 0.04):
                    killed["restore"] += 1
                else:
                    finished_first += 1
            elif kill_inside_moves(["apply"], base, 0.06):
                killed["quarantine"] += 1
            else:
                finished_first += 1
            recovery = run(["state", "recover"], base)  # reads recover nothing; any writer does
            assert recovery.returncode == 0, recovery.stderr
            try:
                check(base, expected)
            except AssertionError:
                keep = Path(tempfile.mkdtemp(prefix="stress-failure-"))
                shutil.copytree(base, keep / "site")
                print(
                    f"iteration {iteration} ({mode}) failed; recovery said: {recovery.stderr.strip()}; kept in {keep}",
                    file=sys.stderr,
                )
                raise
            if iteration % 10 == 0:
                print(f"iteration {iteration}: ok (killed: {killed}, finished before the kill: {finished_first})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    print(
        f"{iterations} iterations, every file accounted for; killed during quarantine {killed['quarantine']}, "
        f"during restore {killed['restore']}, finished before the kill {finished_first}; {seconds:.0f}s"
    )
    emit(
        {
            "bench": "stress_quarantine",
            "iterations": iterations,
            "files": args.files,
            "killed": killed,
            "finished_before_kill": finished_first,
            "failures": 0,
            "seconds": round(seconds, 1),
            **machine(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
