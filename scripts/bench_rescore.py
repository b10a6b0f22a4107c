#!/usr/bin/env python3
"""Rescore speed: re-decide N stored results (default 1,000,000) under a new severity from stored
similarities, with no image read. Builds a synthetic state database once (similarities near the
horde-v2 thresholds, a few per cent flagged; fp16 embeddings of ViT-L-14's size) and times `rescore`.

    python scripts/bench_rescore.py [--quick] [--json] [--files N]
"""

from __future__ import annotations

import time

import numpy as np
from benchutil import BENCH_OUT, emit, machine, parser

from mirror_scan.policy import load_policy
from mirror_scan.scan.rescore import rescore
from mirror_scan.store.ledger import Ledger

EMBEDDING_DIM = 768  # ViT-L-14
TARGET_SECONDS = 30.0


def build(path, files: int, policy, seed: int = 0) -> None:
    marker = path.with_suffix(f".complete-{files}")
    if marker.exists():
        return
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    prompts = policy.prompts
    col = policy.column()
    hot = [col[p] for p in ("child", "naked", "woman", "nude")]
    with Ledger(path) as ledger:
        prompt_set = ledger.results.ensure_prompt_set(prompts)
        ledger.commit()
        now = time.time()
        chunk = 50_000
        for start in range(0, files, chunk):
            n = min(chunk, files - start)
            sims = rng.normal(0.15, 0.02, size=(n, len(prompts))).astype(np.float32)
            spicy = rng.random(n) < 0.03  # ~3% of rows near the underage + nsfw thresholds
            sims[np.ix_(spicy, hot)] = rng.normal(0.226, 0.004, size=(int(spicy.sum()), len(hot)))
            emb = rng.normal(0, 1, size=(n, EMBEDDING_DIM)).astype(np.float16)
            ledger.begin()
            ledger.db.executemany(
                "INSERT INTO results (id, sha256, model_id, frames, prompt_set, sims, embedding, created) "
                "VALUES (?, ?, 'bench', 1, ?, ?, ?, ?)",
                (
                    (start + i + 1, f"{start + i:064x}", prompt_set, sims[i].tobytes(), emb[i].tobytes(), now)
                    for i in range(n)
                ),
            )
            ledger.db.executemany(
                "INSERT INTO files (path, size, mtime_ns, sha256, status, verdict, result_id, model_id, first_seen) "
                "VALUES (?, 1000, 1, ?, 'scored', 'clean', ?, 'bench', ?)",
                ((f"/mirror/{start + i:012x}".encode(), f"{start + i:064x}", start + i + 1, now) for i in range(n)),
            )
            ledger.commit()
    marker.touch()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int)
    args = p.parse_args()
    files = args.files or (100_000 if args.quick else 1_000_000)
    policy = load_policy("horde-v2")
    BENCH_OUT.mkdir(exist_ok=True)
    db = BENCH_OUT / f"rescore-{files}.db"
    started = time.perf_counter()
    build(db, files, policy)
    build_seconds = time.perf_counter() - started
    figures: dict = {
        "bench": "rescore",
        "files": files,
        "prompts": len(policy.prompts),
        **machine(),
        "quick": args.quick,
    }
    with Ledger(db) as ledger:
        first = rescore(ledger, policy, 0.0)  # from the stored 'clean' to today's verdicts
        second = rescore(ledger, policy, -0.005)  # stricter: some flip to flagged
        third = rescore(ledger, policy, 0.0)  # and back
    for name, result in (("default", first), ("strict", second), ("back", third)):
        rate = result.files / result.seconds
        figures[f"{name}_seconds"] = round(result.seconds, 2)
        figures[f"{name}_files_per_s"] = round(rate)
        figures[f"{name}_to_flagged"] = result.to_flagged
        figures[f"{name}_to_clean"] = result.to_clean
        print(
            f"rescore ({name:7s}): {result.files:,} files in {result.seconds:6.2f}s ({rate:,.0f}/s), "
            f"{result.to_flagged} -> flagged, {result.to_clean} -> clean"
        )
    worst = max(first.seconds, second.seconds, third.seconds) * (1_000_000 / files)
    figures["projected_seconds_per_million"] = round(worst, 2)
    figures["target_seconds_per_million"] = TARGET_SECONDS
    print(
        f"projected for 1,000,000 stored results: {worst:.1f}s (target < {TARGET_SECONDS:.0f}s); "
        f"database built in {build_seconds:.0f}s"
    )
    emit(figures, args.json)


if __name__ == "__main__":
    main()
