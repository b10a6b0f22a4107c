#!/usr/bin/env python3
"""Model-only throughput: images/s of the image encoder at batch 1, 8 and 32, fp32 and int8, and the
provider that ran. Pixels are prepared once; only session.run is timed. Also int8's cosine vs fp32, and
with --int8-variants every weight quantisation the export knows (re-quantised from the bundle's fp32
encoder), each with its batch-32 throughput, min cosine and largest similarity drift on this CPU, whose
name and features are part of the figures.

    python scripts/bench_model.py [--quick] [--json] [--model DIR | --tiny] [--device auto|cpu|cuda]
                                  [--int8-variants]
"""

from __future__ import annotations

import time

import numpy as np
from benchutil import bundle_for, emit, machine, parser

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.infer import ImageEncoder
from mirror_scan.model.preprocess import to_model_input
from mirror_scan.model.synthetic import generated_image


def throughput(encoder, pixels: np.ndarray, batch: int, seconds: float) -> float:
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
    p.add_argument("--int8-variants", action="store_true", help="measure every int8 quantisation variant")
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
    if args.int8_variants:
        figures.update(int8_variants(bundle, pixels, seconds, figures["fp32_b32_images_per_s"]))
    print(f"CPU: {figures['cpu']} ({', '.join(figures['cpu_features'])}): {figures['cpu_int8_class']}")
    emit(figures, args.json)


def int8_variants(bundle, pixels: np.ndarray, seconds: float, fp32_rate: float) -> dict:
    import tempfile
    from pathlib import Path

    from mirror_scan_export.export import DEFAULT_INT8_VARIANT, INT8_VARIANTS, quantize_int8

    from mirror_scan.model.infer import CPU, _embed, _session
    from mirror_scan.model.int8check import measure

    reference = _session(bundle.image_encoder_path("fp32"), [CPU], 0)
    fp32 = lambda px: _embed(reference, reference.get_inputs()[0].name, px)  # noqa: E731
    figures = {"int8_default_variant": DEFAULT_INT8_VARIANT}
    work = Path(tempfile.mkdtemp(prefix="int8-variants-"))
    for variant in INT8_VARIANTS:
        path = work / f"{variant}.onnx"
        quantize_int8(bundle.image_encoder_path("fp32"), path, variant)
        session = _session(path, [CPU], 0)
        name = session.get_inputs()[0].name

        class Run:
            def __call__(self, px, session=session, name=name):
                return _embed(session, name, px)

        check = measure(bundle, Run(), fp32)
        rate = throughput(Run(), pixels, 32, seconds)
        key = variant.replace("+", "_").replace("-", "_")
        figures[f"int8_{key}_min_cosine"] = check.min_cosine
        figures[f"int8_{key}_max_drift"] = check.max_similarity_drift
        figures[f"int8_{key}_over_fp32_b32"] = round(rate / fp32_rate, 3)
        print(
            f"int8 {variant:26s}: min cosine {check.min_cosine:.5f}, drift {check.max_similarity_drift:.4f}, "
            f"{rate / fp32_rate:.2f}x fp32 at batch 32"
            + ("  (export default)" if variant == DEFAULT_INT8_VARIANT else "")
        )
    return figures


if __name__ == "__main__":
    main()
