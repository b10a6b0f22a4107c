#!/usr/bin/env python3
"""What the anime check's second model costs: DeepDanbooru (the full-size TorchDeepDanbooru architecture,
random weights, exported once by the project's own code into bench-out/) per picture on this machine, at
the sizes horde-safety's resize rule gives fedi-safety's 512 px thumbnails, against CLIP's image encoder
(random ViT-B-32) on the same machine in the same run. A scan pays it only for the pictures the policy
calls anime.

    python scripts/bench_deepdanbooru.py [--quick] [--json]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from benchutil import BENCH_OUT, bundle_for, emit, machine, parser

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.deepdanbooru import DeepDanbooru, choose_target
from mirror_scan.model.preprocess import thumbnail, to_model_input
from mirror_scan.model.scoring import Scorer
from mirror_scan.model.synthetic import generated_image


def dd_bundle(clip: Path) -> Path:
    """The ViT-B-32 bundle with a full-size random DeepDanbooru beside it (a copy; exported once)."""
    import json
    import shutil

    out = BENCH_OUT / "vit-b-32-dd"
    if (out / "manifest.json").exists() and "deepdanbooru" in json.loads((out / "manifest.json").read_text()):
        return out
    from mirror_scan_export.deepdanbooru import export_deepdanbooru

    print(f"exporting a full-size random-weight DeepDanbooru into {out} (once; ~650 MB) ...", file=sys.stderr)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(clip, out)
    entry = export_deepdanbooru(out, None)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["deepdanbooru"] = entry
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` runs (one warm-up first)."""
    fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    args = parser("DeepDanbooru's cost per picture against CLIP's, in one run").parse_args()
    clip_dir = bundle_for(args)
    bundle = load_bundle(dd_bundle(clip_dir))
    repeats = 2 if args.quick else 5
    # fedi-safety's thumbnails of typical uploads (landscape, portrait, square): what DeepDanbooru sees.
    sizes = [(1600, 1200), (1080, 1920), (1024, 1024)] if args.quick else [
        (1600, 1200), (1080, 1920), (1024, 1024), (2400, 900), (640, 480), (300, 300)]  # fmt: skip
    dd = DeepDanbooru(bundle, "cpu")
    scorer = Scorer(bundle, device="cpu", precision="fp32")
    figures: dict[str, object] = {"provider": dd.placement.provider, "tags": len(dd.tags), "sizes": {}}
    dd_ms, clip_ms = [], []
    for seed, (width, height) in enumerate(sizes):
        thumb = thumbnail(generated_image(seed, width, height))
        target = choose_target(*thumb.size)
        dd_s = timed(lambda thumb=thumb: dd.tag_scores([thumb]), repeats)
        pixels = to_model_input(generated_image(seed, width, height), bundle.preprocess)[None]
        clip_s = timed(lambda pixels=pixels: scorer(pixels), repeats)
        dd_ms.append(dd_s * 1000)
        clip_ms.append(clip_s * 1000)
        figures["sizes"][f"{width}x{height}"] = {  # type: ignore[index]
            "thumbnail": list(thumb.size),
            "target": list(target),
            "deepdanbooru_ms": round(dd_s * 1000, 1),
            "clip_ms": round(clip_s * 1000, 1),
        }
    batch = [thumbnail(generated_image(s, 1600, 1200)) for s in range(8)]
    batch8_s = timed(lambda: dd.tag_scores(batch), max(1, repeats // 2))
    figures.update(
        deepdanbooru_ms_per_picture=round(statistics.median(dd_ms), 1),
        clip_ms_per_picture=round(statistics.median(clip_ms), 1),
        deepdanbooru_over_clip=round(statistics.median(dd_ms) / statistics.median(clip_ms), 2),
        deepdanbooru_batch8_ms_per_picture=round(batch8_s * 1000 / len(batch), 1),
        clip_arch=bundle.manifest["model"]["arch"],
        machine=machine(),
    )
    if not args.json:
        for size, row in figures["sizes"].items():  # type: ignore[union-attr]
            print(f"{size:>10s}: thumbnail {row['thumbnail']}, target {row['target']}: DeepDanbooru "
                  f"{row['deepdanbooru_ms']} ms, CLIP {row['clip_ms']} ms")  # fmt: skip
        print(f"median per picture: DeepDanbooru {figures['deepdanbooru_ms_per_picture']} ms "
              f"({figures['deepdanbooru_over_clip']}x CLIP {figures['clip_arch']}), batch of 8: "
              f"{figures['deepdanbooru_batch8_ms_per_picture']} ms each")  # fmt: skip
    emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
