#!/usr/bin/env python3
"""Hash lists: what PDQ hashing costs inside the scan, and how fast a lookup is at real list sizes.

- scan throughput without PDQ hashing, with it (the picture as stored, decoded whole: PDQ's reference),
  and with the hashing path before issue 24 (JPEGs decoded at model size, hash of the rotated view), on
  the same tree of JPEGs of 512-1600 px, same bundle, two decode threads, alternating runs;
- lookup time per query (8 dihedral variants of one picture, as the scanner asks) against random lists
  of 100k, 1M and (without --quick) 10M PDQ hashes with numpy's brute force, and the list's memory
  (targets: < 5 ms at 1M, < 50 ms at 10M).

    python scripts/bench_hashlist.py [--quick] [--json] [--model DIR | --tiny] [--images N]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from bench_scan import make_tree, run_scan
from benchutil import BENCH_OUT, bundle_for, emit, machine, parser

from mirror_scan.lists.hashes import Matcher, pdq_index
from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.scoring import Scorer
from mirror_scan.policy import load_policy
from mirror_scan.scan.decoders import decode as decode_module


def _old_still(img, prep, rows, where):
    """The hashing path before issue 24, for comparison: JPEGs decoded at model size (draft mode), PDQ of the
    EXIF-rotated reduced view, box-resized to at most 512 px."""
    from PIL import Image, ImageOps

    if img.format == "JPEG":
        img.draft("RGB", (prep.size[1], prep.size[0]))
    img.load()
    frame = ImageOps.exif_transpose(img) if img.getexif().get(decode_module.ORIENTATION, 1) != 1 else img
    rgb = frame.convert("RGB")
    if max(rgb.size) > 512:
        scale = 512 / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BOX)
    import pdqhash

    variants, quality = pdqhash.compute_dihedral(np.ascontiguousarray(np.asarray(rgb)))
    hexes = [np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex() for v in variants]
    rows.add_frame(frame, where, (hexes[0], int(quality), hexes))


def scan_cost(bundle, scorer, policy, tree: Path, rounds: int) -> dict:
    """Scan throughput: without PDQ, with today's hashing path (the picture as stored, decoded whole) and
    with the one before it (reduced decode, rotated view), alternating runs on the same tree."""
    hashing, still = decode_module.pdq_dihedral, decode_module._still
    rates: dict[str, list[float]] = {"without": [], "new": [], "old": []}
    try:
        for _ in range(rounds):
            for mode in ("without", "new", "old"):
                decode_module.pdq_dihedral = None if mode == "without" else hashing
                decode_module._still = _old_still if mode == "old" else still
                with tempfile.TemporaryDirectory() as work:
                    counters, seconds = run_scan(bundle, scorer, policy, tree, Path(work) / "s.db", 16, 2,
                                                 decoders="thread")  # fmt: skip
                rates[mode].append(counters["scanned"] / seconds)
    finally:
        decode_module.pdq_dihedral, decode_module._still = hashing, still
    best = {mode: max(values) for mode, values in rates.items()}
    return {
        "scan_images_per_s_without_pdq": round(best["without"], 2),
        "scan_images_per_s_with_pdq": round(best["new"], 2),
        "scan_images_per_s_old_hashing": round(best["old"], 2),
        "scan_with_over_without": round(best["new"] / best["without"], 3),
        "scan_new_over_old_hashing": round(best["new"] / best["old"], 3),
    }


def lookups(size: int, queries: int) -> dict:
    """A list of `size` random hashes; each query is one picture: 8 variants, half of them planted at
    31 bits from a listed hash (so the index must find them), as the scanner asks."""
    rng = np.random.default_rng(size)
    table = rng.integers(0, 2**63, size=(size, 4), dtype=np.uint64)
    matcher = Matcher([])
    started = time.perf_counter()
    matcher.index = pdq_index(table)
    built = time.perf_counter() - started
    matcher.lists = [("bench", "flag")]
    matcher.owners = np.zeros(size, dtype=np.int32)
    asked, found = [], 0
    for _ in range(queries):
        variants = []
        for k in range(8):
            query = table[int(rng.integers(size))].copy() if k % 2 else rng.integers(0, 2**63, size=4, dtype=np.uint64)
            if k % 2:
                as_bytes = query.view(np.uint8)
                for bit in rng.choice(256, size=31, replace=False):
                    as_bytes[bit // 8] ^= 1 << (bit % 8)
            variants.append((query.view(np.uint8).tobytes().hex(), 100))
        asked.append(variants)
    started = time.perf_counter()
    for variants in asked:
        found += matcher.match(None, None, variants) is not None
    per_query = (time.perf_counter() - started) / queries * 1000
    assert found == queries, "a planted near-duplicate was missed"
    return {
        f"lookup_{size}_ms": round(per_query, 2),
        f"list_{size}_mb": round(matcher.index.nbytes / 2**20, 1),
        f"index_{size}": type(matcher.index).__name__,
        f"build_{size}_s": round(built, 2),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int)
    args = p.parse_args()
    bundle = load_bundle(bundle_for(args))
    scorer = Scorer(bundle, device="auto")
    policy = load_policy("horde-v2") if not args.tiny else None
    if policy is None or any(p not in bundle.concepts.prompts for p in policy.prompts):
        from mirror_scan.policy.load import parse_policy

        first = bundle.concepts.prompts[0]
        policy = parse_policy(
            "bench", {"rule": "groups", "groups": {"any": {first: 1.0}}, "parameters": {"flag_when": {"any": 1}}}
        )
    count = args.images or (60 if args.quick else 400)
    tree = make_tree(BENCH_OUT / f"tree-{count}", count)
    figures = {"bench": "hashlist", "images": count, "model": bundle.manifest["model"]["arch"], **machine()}
    figures["quick"] = args.quick
    figures.update(scan_cost(bundle, scorer, policy, tree, 1 if args.quick else 2))
    print(
        f"scan: {figures['scan_images_per_s_without_pdq']} images/s without PDQ, "
        f"{figures['scan_images_per_s_with_pdq']} with ({figures['scan_with_over_without']}x), "
        f"{figures['scan_images_per_s_old_hashing']} with the hashing before issue 24 "
        f"(new/old {figures['scan_new_over_old_hashing']}x)"
    )
    for size in (100_000, 1_000_000) if args.quick else (100_000, 1_000_000, 10_000_000):
        figures.update(lookups(size, 20))
        print(f"lookup against {size:>10,} PDQ hashes ({figures[f'index_{size}']}, built in "
              f"{figures[f'build_{size}_s']} s): {figures[f'lookup_{size}_ms']:8.2f} ms per picture (8 variants), "
              f"{figures[f'list_{size}_mb']} MB")  # fmt: skip
    emit(figures, args.json)


if __name__ == "__main__":
    main()
