#!/usr/bin/env python3
"""What "nothing a viewer can see goes unscanned" costs, measured in one run with one bundle:

- a realistic mix (85% stills of assorted sizes and formats, 10% short GIFs with a few scenes, 5% short
  videos): files/s and model rows per file, decoded and scored (batch 16) with the decoder as it was
  before (8 frames sampled, centre crop: loaded from git, commit BEFORE below) and as it is now, with
  coverage "center" and "full";
- coverage "full" by aspect ratio (1:1 to 40:1): rows per image and milliseconds per image against the
  centre crop alone.

    python scripts/bench_coverage.py [--quick] [--json] [--model DIR | --tiny] [--files N]
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import REPO, bundle_for, emit, machine, parser

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.scoring import Scorer
from mirror_scan.model.synthetic import generated_image
from mirror_scan.scan.decoders.decode import Limits, decode

BEFORE = "70236ef"  # the last commit with the old decoder (sampled frames, centre crop, fewer formats)


def old_decoder():
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE}:mirror_scan/decode.py"], capture_output=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "decode_before.py"
    path.write_bytes(source)
    # The old decoder imports the flat modules of its day (`.bundle`, `.preprocess`): their new homes.
    import mirror_scan.model.bundle
    import mirror_scan.model.preprocess

    sys.modules.setdefault("mirror_scan.bundle", mirror_scan.model.bundle)
    sys.modules.setdefault("mirror_scan.preprocess", mirror_scan.model.preprocess)
    spec = importlib.util.spec_from_file_location("mirror_scan.decode_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def realistic_mix(count: int) -> list[bytes]:
    import av

    rng = np.random.default_rng(7)
    files = []
    for i in range(count):
        kind = rng.random()
        if kind < 0.85:
            w, h = (int(v) for v in rng.integers(200, 1400, size=2))
            fmt = ("JPEG", "JPEG", "JPEG", "PNG", "WEBP")[i % 5]
            buf = io.BytesIO()
            generated_image(i, w, h).save(buf, format=fmt, **({"quality": 85} if fmt != "PNG" else {}))
            files.append(buf.getvalue())
        elif kind < 0.95:
            scenes = [generated_image(1000 + i * 10 + s, 320, 240) for s in range(int(rng.integers(2, 5)))]
            frames = [scenes[(f * len(scenes)) // 40] for f in range(40)]
            buf = io.BytesIO()
            frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
            files.append(buf.getvalue())
        else:
            buf = io.BytesIO()
            with av.open(buf, mode="w", format="mp4") as out:
                stream = out.add_stream("mpeg4", rate=10)
                stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
                scenes = [generated_image(2000 + i * 10 + s, 320, 240) for s in range(3)]
                for f in range(80):  # 8 s, three scenes
                    for packet in stream.encode(av.VideoFrame.from_image(scenes[(f * 3) // 80])):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            files.append(buf.getvalue())
    return files


def run(files: list[bytes], decode_fn, prep, limits, scorer: Scorer) -> dict:
    rows, batch, errors = 0, [], 0
    started = time.perf_counter()
    for data in files:
        decoded = decode_fn(data, prep, limits)
        if isinstance(decoded, str):
            errors += 1
            continue
        batch.append(decoded.pixels)
        rows += len(decoded.pixels)
        if sum(len(p) for p in batch) >= 16:
            scorer(np.concatenate(batch))
            batch = []
    if batch:
        scorer(np.concatenate(batch))
    seconds = time.perf_counter() - started
    return {
        "files_per_s": round(len(files) / seconds, 2),
        "rows_per_file": round(rows / len(files), 2),
        "errors": errors,
    }


def by_aspect(prep, scorer: Scorer, repeats: int) -> dict:
    figures = {}
    for ratio in (1, 2, 4, 10, 40):
        height = 256
        img = generated_image(ratio, height * ratio, height)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        times = {}
        for coverage in ("center", "full"):
            limits = Limits(coverage=coverage)
            started = time.perf_counter()
            for _ in range(repeats):
                decoded = decode(data, prep, limits)
                scorer(decoded.pixels)
            times[coverage] = (time.perf_counter() - started) / repeats * 1000
            figures[f"aspect_{ratio}_{coverage}_rows"] = len(decoded.pixels)
        figures[f"aspect_{ratio}_full_ms"] = round(times["full"], 1)
        figures[f"aspect_{ratio}_center_ms"] = round(times["center"], 1)
        figures[f"aspect_{ratio}_full_cost_x"] = round(times["full"] / times["center"], 2)
    return figures


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int)
    args = p.parse_args()
    bundle = load_bundle(bundle_for(args))
    scorer = Scorer(bundle, device="auto")
    prep = bundle.preprocess
    count = args.files or (60 if args.quick else 400)
    files = realistic_mix(count)
    before = old_decoder()
    figures = {"bench": "coverage", "files": count, "model": bundle.manifest["model"]["arch"], **machine()}
    figures["quick"] = args.quick
    scorer(np.zeros((16, 3, *prep.size), dtype=np.float32))  # warm up
    results = {
        "before": run(files, before.decode, prep, before.Limits(), scorer),
        "center": run(files, decode, prep, Limits(coverage="center"), scorer),
        "full": run(files, decode, prep, Limits(coverage="full"), scorer),
    }
    for name, result in results.items():
        print(
            f"realistic mix, {name:6s}: {result['files_per_s']:8.2f} files/s, {result['rows_per_file']:.2f} rows/file, "
            f"{result['errors']} errors"
        )
        figures.update({f"mix_{name}_{k}": v for k, v in result.items()})
    figures["mix_center_vs_before_x"] = round(results["center"]["files_per_s"] / results["before"]["files_per_s"], 2)
    figures["mix_full_vs_center_x"] = round(results["full"]["files_per_s"] / results["center"]["files_per_s"], 2)
    aspect = by_aspect(prep, scorer, 3 if args.quick else 10)
    for ratio in (1, 2, 4, 10, 40):
        key = f"aspect_{ratio}"
        print(
            f"aspect {ratio:2d}:1  centre {aspect[key + '_center_ms']:7.1f} ms ({aspect[key + '_center_rows']} row)"
            f"  full {aspect[key + '_full_ms']:7.1f} ms ({aspect[key + '_full_rows']} rows)"
            f"  x{aspect[key + '_full_cost_x']}"
        )
    figures.update(aspect)
    emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
