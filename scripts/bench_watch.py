#!/usr/bin/env python3
"""Watch daemon latency and bursts, with the tiny bundle on CPU and real inotify:

- steady arrivals at 20 files/s (rclone's pattern: write `.partial`, rename): time from a file
  landing to its verdict recorded (files.scanned_at), p50 and p99; target p99 < 2 s;
- the same with a flag-everything policy and acting on: time from landing to the file being in
  the quarantine (its original gone);
- a burst of 10,000 files at once: zero missed (checked against the state database), time to drain,
  and the daemon's peak RSS;
- restore latency while the daemon drains such a burst: `quarantine restore ID` from another process,
  command start to the file back in the mirror, p50/p99 over 20 restores; target p99 < 2 s;
- steady arrivals on an `rclone mount` of a real `rclone serve s3` bucket (2 files/s uploaded to the
  bucket, not through the mount): object in the bucket -> verdict, p50/p99. The daemon picks the
  polling observer by itself; the latency is the mount's dir cache (1 s here) plus the polling interval
  (2 s) plus the settle time (1 s). Skipped where FUSE is missing.

    python scripts/bench_watch.py [--quick] [--json] [--rate 20] [--seconds N] [--burst N] [--no-mount]
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from benchutil import bundle_for, emit, machine, parser

from mirror_scan.model.synthetic import generated_image

CLI = [sys.executable, "-m", "mirror_scan.cli"]


def start(work: Path, bundle: Path, policy: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            *CLI,
            "watch",
            "--mirror",
            str(work / "mirror"),
            "--model",
            str(bundle),
            "--policy",
            str(policy),
            "--state",
            str(work / "state.db"),
            "--quarantine",
            str(work / "q"),
            "--reconcile-every",
            "1h",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = work / "state.db.status.json"
    for _ in range(600):
        if status.exists():
            return proc
        time.sleep(0.1)
    raise RuntimeError("watch did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def payloads(count: int) -> list[bytes]:
    base = []
    for i in range(32):
        buf = io.BytesIO()
        generated_image(i, 320, 240).save(buf, format="JPEG", quality=85)
        base.append(buf.getvalue())
    return [base[i % 32] + i.to_bytes(8, "big") for i in range(count)]  # unique bytes: no reuse by hash


def land(mirror: Path, name: str, data: bytes) -> float:
    partial = mirror / f"{name}.{os.getpid():08x}.partial"
    partial.write_bytes(data)
    os.rename(partial, mirror / name)
    return time.time()


def steady(work: Path, bundle: Path, policy: Path, rate: float, seconds: float, act: bool) -> dict:
    work.mkdir(parents=True)
    (work / "mirror").mkdir()
    proc = start(work, bundle, policy, *([] if act else ["--dry-run"]))
    count = int(rate * seconds)
    data = payloads(count)
    landed: dict[str, float] = {}
    started = time.monotonic()
    for i in range(count):
        name = f"{i:06d}.jpg"
        landed[name] = land(work / "mirror", name, data[i])
        time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
    done: dict[str, float] = {}
    deadline = time.monotonic() + 60
    # Times recorded by the daemon itself: when the verdict was recorded, or when the move finished.
    column, where = ("acted_at", "action='quarantined'") if act else ("scanned_at", "1")
    while len(done) < count and time.monotonic() < deadline:
        with sqlite3.connect(f"file:{work / 'state.db'}?mode=ro", uri=True) as db:
            for path, at in db.execute(f"SELECT path, {column} FROM files WHERE {where}"):  # noqa: S608
                done[os.path.basename(os.fsdecode(path))] = at
        time.sleep(0.2)
    stop(proc)
    latency = np.array([done[n] - landed[n] for n in landed if n in done]) * 1000
    return {
        "files": count,
        "done": len(done),
        "p50_ms": round(float(np.percentile(latency, 50)), 1),
        "p99_ms": round(float(np.percentile(latency, 99)), 1),
    }


def burst(work: Path, bundle: Path, policy: Path, count: int) -> dict:
    work.mkdir(parents=True)
    (work / "mirror").mkdir()
    proc = start(work, bundle, policy, "--dry-run")
    process = psutil.Process(proc.pid)
    peak = [process.memory_info().rss]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.1):
            try:
                peak[0] = max(peak[0], process.memory_info().rss)
            except psutil.Error:
                return

    threading.Thread(target=sample, daemon=True).start()
    base = payloads(32)
    started = time.monotonic()
    for i in range(count):
        (work / "mirror" / f"{i % 100:02d}").mkdir(exist_ok=True)
        land(work / "mirror" / f"{i % 100:02d}", f"{i:06d}.jpg", base[i % 32][:-8] + i.to_bytes(8, "big"))
    landed_s = time.monotonic() - started
    scored = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{work / 'state.db'}?mode=ro", uri=True) as db:
            scored = db.execute("SELECT count(*) FROM files").fetchone()[0]
        if scored >= count:
            break
        time.sleep(0.5)
    drained_s = time.monotonic() - started
    stop_sampling.set()
    status = json.loads((work / "state.db.status.json").read_text())
    stop(proc)
    return {
        "burst_files": count,
        "burst_scored": scored,
        "burst_missed": count - scored,
        "burst_landed_s": round(landed_s, 1),
        "burst_drained_s": round(drained_s, 1),
        "burst_dropped_events": status.get("dropped_events"),
        "peak_rss_mb": round(peak[0] / 2**20, 1),
    }


def restores_during_burst(work: Path, bundle: Path, policy: Path, count: int, restores: int) -> dict:
    work.mkdir(parents=True)
    mirror = work / "mirror"
    mirror.mkdir()
    proc = start(work, bundle, policy)
    base = payloads(restores)
    for i in range(restores):
        land(mirror, f"r{i:03d}.jpg", base[i])

    def quarantined() -> dict[str, str]:
        with sqlite3.connect(f"file:{work / 'state.db'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT id, original FROM quarantine WHERE state='quarantined'").fetchall()
        return {os.path.basename(os.fsdecode(original)): item for item, original in rows}

    deadline = time.monotonic() + 120
    while len([n for n in quarantined() if n.startswith("r")]) < restores and time.monotonic() < deadline:
        time.sleep(0.2)
    items = {n: i for n, i in quarantined().items() if n.startswith("r")}
    burst_data = payloads(32)
    for i in range(count):  # the burst lands; the daemon starts draining it
        (mirror / f"{i % 100:02d}").mkdir(exist_ok=True)
        land(mirror / f"{i % 100:02d}", f"b{i:06d}.jpg", burst_data[i % 32][:-8] + (10**9 + i).to_bytes(8, "big"))
    latencies = []
    for name, item in sorted(items.items()):
        started = time.monotonic()
        subprocess.run(
            [*CLI, "quarantine", "restore", item, "--state", str(work / "state.db"), "--quarantine", str(work / "q")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        while not (mirror / name).exists():
            time.sleep(0.005)
        latencies.append(time.monotonic() - started)
    with sqlite3.connect(f"file:{work / 'state.db'}?mode=ro", uri=True) as db:
        still_draining = db.execute("SELECT count(*) FROM files").fetchone()[0] < count + restores
    stop(proc)
    ms = np.array(latencies) * 1000
    return {
        "restores": len(latencies),
        "restore_burst_files": count,
        "restore_during_drain": bool(still_draining),
        "restore_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "restore_p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def steady_on_mount(work: Path, bundle: Path, policy: Path, rate: float, seconds: float) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.s3server import RcloneMount, S3Server

    work.mkdir(parents=True)
    server = S3Server(work / "s3")
    server.start()
    mount = RcloneMount(server, work / "mirror", "off", extra=("--use-server-modtime",))
    os.environ.update(server.env())
    proc = start(work, bundle, policy, "--dry-run")
    try:
        count = max(2, int(rate * seconds))
        data = payloads(count)
        landed: dict[str, float] = {}
        started = time.monotonic()
        for i in range(count):
            name = f"{i:06d}.jpg"
            server.put(name, data[i], work)
            landed[name] = time.time()
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        done: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(done) < count and time.monotonic() < deadline:
            with sqlite3.connect(f"file:{work / 'state.db'}?mode=ro", uri=True) as db:
                for path, at in db.execute("SELECT path, scanned_at FROM files WHERE status='scored'"):
                    done[os.path.basename(os.fsdecode(path))] = at
            time.sleep(0.2)
    finally:
        stop(proc)
        mount.unmount()
        server.stop()
    latency = np.array([done[n] - landed[n] for n in landed if n in done]) * 1000
    return {
        "files": count,
        "done": len(done),
        "p50_ms": round(float(np.percentile(latency, 50)), 1) if len(latency) else None,
        "p99_ms": round(float(np.percentile(latency, 99)), 1) if len(latency) else None,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--seconds", type=float)
    p.add_argument("--burst", type=int)
    p.add_argument("--no-mount", action="store_true", help="skip the rclone mount figure")
    args = p.parse_args()
    args.tiny = True
    bundle = bundle_for(args)
    seconds = args.seconds or (5 if args.quick else 30)
    burst_count = args.burst or (1000 if args.quick else 10_000)
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    policy = work / "flag-everything.json"
    policy.write_text(
        json.dumps({"rule": "groups", "groups": {"any": {"cartoon": -1.0}}, "parameters": {"flag_when": {"any": 1}}})
    )
    figures: dict = {"bench": "watch", "rate_per_s": args.rate, "seconds": seconds, **machine(), "quick": args.quick}
    verdict = steady(work / "verdict", bundle, policy, args.rate, seconds, act=False)
    print(
        f"landing -> verdict   : p50 {verdict['p50_ms']} ms, p99 {verdict['p99_ms']} ms "
        f"({verdict['done']}/{verdict['files']} files at {args.rate}/s)"
    )
    quarantine = steady(work / "quarantine", bundle, policy, args.rate, seconds, act=True)
    print(
        f"landing -> quarantine: p50 {quarantine['p50_ms']} ms, p99 {quarantine['p99_ms']} ms "
        f"({quarantine['done']}/{quarantine['files']} files)"
    )
    result = burst(work / "burst", bundle, policy, burst_count)
    print(
        f"burst of {burst_count}: {result['burst_scored']} scored, {result['burst_missed']} missed, drained in "
        f"{result['burst_drained_s']}s, peak RSS {result['peak_rss_mb']} MB"
    )
    restored = restores_during_burst(work / "restore", bundle, policy, burst_count, 10 if args.quick else 20)
    print(
        f"restore while draining a burst of {burst_count}: p50 {restored['restore_p50_ms']} ms, "
        f"p99 {restored['restore_p99_ms']} ms over {restored['restores']} restores "
        f"(burst still draining at the end: {restored['restore_during_drain']})"
    )
    figures.update(restored)
    if not args.no_mount and os.path.exists("/dev/fuse") and shutil.which("fusermount3"):
        mounted = steady_on_mount(work / "mount", bundle, policy, 2.0, 10 if args.quick else 30)
        print(
            f"rclone mount: bucket -> verdict: p50 {mounted['p50_ms']} ms, p99 {mounted['p99_ms']} ms "
            f"({mounted['done']}/{mounted['files']} files at 2/s)"
        )
        figures.update({f"mount_{k}": v for k, v in mounted.items()})
    figures.update({f"verdict_{k}": v for k, v in verdict.items()})
    figures.update({f"quarantine_{k}": v for k, v in quarantine.items()})
    figures.update(result)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
