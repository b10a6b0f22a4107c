#!/usr/bin/env python3
"""Model-only throughput: images/s of the image encoder at batch 1, 8 and 32, fp32 and int8, and the
provider that ran. Pixels are prepared once; only session.run is timed. Also int8's cosine vs fp32.

    python scripts/bench_model.py [--quick] [--json] [--model DIR | --tiny] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import time

import numpy as np
from benchutil import bundle_for, emit, machine, parser

from mirror_scan.bundle import load_bundle
from mirror_scan.infer import ImageEncoder
from mirror_scan.preprocess import to_model_input
from mirror_scan.synthetic import generated_image


def throughput(encoder: ImageEncoder, pixels: np.ndarray, batch: int, seconds: float) -> float:
    feed = pixels[:batch]
    encoder(feed)  # warm-up: allocations and kernel selection
    done, start = 0, time.perf_counter()
    while True:
        encoder(feed)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= 2 * batch:
            return done / elapsed


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    bundle = load_bundle(bundle_for(args))
    seconds = 2.0 if args.quick else 8.0
    batches = [1, 8, 32]
    pixels = np.stack([to_model_input(generated_image(i, 640, 480), bundle.preprocess) for i in range(max(batches))])
    figures: dict = {"bench": "model", "arch": bundle.manifest["model"]["arch"], **machine(), "quick": args.quick}
    embeddings = {}
    for precision in ("fp32", "int8"):
        if precision not in bundle.available_precisions():
            continue
        encoder = ImageEncoder(bundle, device="cpu" if precision == "int8" else args.device, precision=precision)
        figures[f"{precision}_provider"] = encoder.placement.provider
        for batch in batches:
            rate = throughput(encoder, pixels, batch, seconds)
            figures[f"{precision}_b{batch}_images_per_s"] = round(rate, 2)
            print(f"{precision:5s} batch {batch:2d}: {rate:8.2f} images/s on {encoder.placement.provider}")
        embeddings[precision] = encoder(pixels)
    if "int8" in embeddings:
        cosine = float((embeddings["int8"] * embeddings["fp32"]).sum(axis=1).min())
        ratio = figures["int8_b32_images_per_s"] / figures["fp32_b32_images_per_s"]
        figures["int8_min_cosine_vs_fp32"] = round(cosine, 5)
        figures["int8_over_fp32_b32"] = round(ratio, 3)
        print(f"int8 vs fp32 at batch 32: {ratio:.2f}x throughput, min cosine {cosine:.5f}")
    emit(figures, args.json)


if __name__ == "__main__":
    main()
