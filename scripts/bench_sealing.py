#!/usr/bin/env python3
"""Quarantine and restore throughput, sealed (age, X25519: store/sealing.py) against plain, measured in one
run on the same files, rounds interleaved (plain, sealed, plain, ...) so the machine's noise falls on both.

Each round: N files in a fresh mirror are quarantined (the real journalled move: copy, fsync, read back,
verify, rename, remove the original), then restored (opened, copied back, verified, allowlisted). Through
the store's own API: no CLI start-up, no model, so the figures are the quarantine's alone.

    python scripts/bench_sealing.py [--quick] [--json] [--files N] [--rounds N]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchutil import emit, machine, parser

from mirror_scan.store.ledger import Ledger
from mirror_scan.store.quarantine import Quarantine
from mirror_scan.store.sealing import Identity, Sealer, generate_identity

EVIDENCE = {"verdict": {"flagged": True, "labels": ["bench"], "checks": {}}}


def make_files(root: Path, count: int, seed: int) -> dict[str, bytes]:
    """Incompressible bytes (what a picture is to a cipher), 100 KiB to 3 MiB: pict-rs uploads' sizes."""
    rng = __import__("random").Random(seed)
    files = {}
    for i in range(count):
        size = rng.randint(100 << 10, 3 << 20)
        files[f"{i:02d}/{i:06x}.webp"] = rng.randbytes(size)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def one_round(base: Path, files: dict[str, bytes], key: Path | None) -> dict[str, float]:
    mirror = base / "mirror"
    if mirror.exists():
        shutil.rmtree(mirror)
    mirror.mkdir(parents=True)
    for rel, data in files.items():
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(data)
    for name in ("state.db", "state.db-wal", "state.db-shm", "q"):
        target = base / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    ledger = Ledger(base / "state.db")
    quarantine = Quarantine(base / "q", ledger)
    content = quarantine.journal.content
    if key is not None:
        content.sealer = Sealer(next(line.split(": ")[1] for line in key.read_text().splitlines()
                                     if line.startswith("# public key: ")))  # fmt: skip
        content.identity = Identity.from_file(key)
    root = os.fsencode(mirror)
    started = time.perf_counter()
    items = [quarantine.quarantine(os.fsencode(mirror / rel), root, hashlib.sha256(data).hexdigest(),
                                   EVIDENCE).item_id for rel, data in files.items()]  # fmt: skip
    quarantined_s = time.perf_counter() - started
    assert not any(p.is_file() for p in mirror.rglob("*")), "a file was left in the mirror"
    started = time.perf_counter()
    for item_id in items:
        quarantine.restore(item_id, upstream=False)
    restored_s = time.perf_counter() - started
    for rel, data in files.items():
        assert (mirror / rel).read_bytes() == data, f"{rel} did not come back whole"
    ledger.close()
    return {"quarantine_s": quarantined_s, "restore_s": restored_s}


def main() -> None:
    p = parser("quarantine and restore throughput, sealed against plain, in one run")
    p.add_argument("--files", type=int, default=None, help="files per round (default 60; --quick 20)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of each (default 3; --quick 2)")
    args = p.parse_args()
    count = args.files or (20 if args.quick else 60)
    rounds = args.rounds or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench-sealing-") as tmp:
        base = Path(tmp)
        key = base / "key.txt"
        generate_identity(key)
        files = make_files(base / "source", count, seed=42)
        megabytes = sum(len(d) for d in files.values()) / 1e6
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "sealed": []}
        for _ in range(rounds):
            for mode in ("plain", "sealed"):
                runs[mode].append(one_round(base / mode, files, key if mode == "sealed" else None))
    figures: dict[str, object] = {"files": count, "megabytes": round(megabytes, 1), "rounds": rounds}
    for mode, measured in runs.items():
        for what in ("quarantine_s", "restore_s"):
            median = statistics.median(m[what] for m in measured)
            figures[f"{mode}_{what.removesuffix('_s')}_files_per_s"] = round(count / median, 1)
            figures[f"{mode}_{what.removesuffix('_s')}_mb_per_s"] = round(megabytes / median, 1)
    for what in ("quarantine", "restore"):
        figures[f"sealed_vs_plain_{what}"] = round(
            figures[f"sealed_{what}_files_per_s"] / figures[f"plain_{what}_files_per_s"],
            2,  # type: ignore[operator]
        )
    figures["machine"] = machine()
    if not args.json:
        print(f"{count} files, {megabytes:.0f} MB, median of {rounds} interleaved rounds")
        for what in ("quarantine", "restore"):
            print(f"{what:10s}  plain {figures[f'plain_{what}_files_per_s']:7} files/s "
                  f"({figures[f'plain_{what}_mb_per_s']} MB/s)   sealed {figures[f'sealed_{what}_files_per_s']:7} "
                  f"files/s ({figures[f'sealed_{what}_mb_per_s']} MB/s)   sealed/plain "
                  f"{figures[f'sealed_vs_plain_{what}']}x")  # fmt: skip
    emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
