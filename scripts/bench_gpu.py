#!/usr/bin/env python3
"""The CUDA path, verified for real on a GPU machine, in one run:

- which providers onnxruntime offers, and which one each session really uses (a CUDA build silently
  falls back to the CPU when the GPU or its libraries are missing);
- fp16 vs fp32 on CUDA: min cosine of the image embeddings on generated images, and model-only
  images/s at batch 32 and 64 (CPU fp32 measured in the same run for the ratio);
- end-to-end scan images/s (discover, read, hash, decode, batch, infer, decide, record) with
  --workers 1, 2, 4, 8, 16: decode is the bottleneck on a GPU, so this is the scaling that matters;
- the same scan with JPEGs decoded by nvJPEG (jpeg_decoder = nvimgcodec, scan/decoders/gpujpeg.py) at the most
  workers, and how far its decode is from Pillow's on the same files: mean pixel difference of the model
  input, the embeddings' min cosine, the largest PDQ distance.

Without CUDA it says so and measures the CPU, so the script can be checked anywhere.

    python scripts/bench_gpu.py [--quick] [--json] [--model DIR | --tiny] [--images N]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_scan import make_tree
from benchutil import BENCH_OUT, bundle_for, emit, machine, parser

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.preprocess import to_model_input
from mirror_scan.model.scoring import Scorer
from mirror_scan.model.synthetic import generated_image
from mirror_scan.policy import load_policy
from mirror_scan.scan.decoders import gpujpeg
from mirror_scan.scan.decoders.decode import Limits
from mirror_scan.scan.decoders.decodepool import decoders
from mirror_scan.scan.runner import Scan, ScanConfig
from mirror_scan.store.ledger import Ledger


def gpu_name() -> str | None:
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return None
    proc = subprocess.run(
        [nvidia_smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or None


def model_only(scorer: Scorer, pixels: np.ndarray, seconds: float) -> float:
    scorer(pixels)  # warm-up (CUDA: kernels, cuDNN autotuning)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        scorer(pixels)
        done += len(pixels)
    return round(done / (time.perf_counter() - start), 1)


def scan_rate(bundle, scorer, policy, tree: Path, batch: int, workers: int, jpeg: str = gpujpeg.PILLOW) -> dict:
    state_dir = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    config = ScanConfig(batch_size=batch, workers=workers, limits=Limits(jpeg_decoder=jpeg))
    try:
        with Ledger(state_dir / "state.db") as ledger:
            scan = Scan(ledger, bundle, scorer, policy, config, actor=None)
            started = time.perf_counter()
            counters = scan.run([str(tree)])
            seconds = time.perf_counter() - started
        return {
            "images_per_s": round(counters.scored / seconds, 1),
            "decode_s": round(counters.stage_seconds["decode"], 1),
            "infer_s": round(counters.stage_seconds["infer"], 1),
        }
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def decoder_agreement(bundle, scorer: Scorer, files: list[Path], backend: str) -> dict:
    """The backend's decode against Pillow's on the same JPEGs: model inputs, embeddings, PDQ."""
    pixel_diff, cosines, pdq_bits, taken = [], [], [], 0
    with decoders("process", 1, 60.0) as decoder:  # nvImageCodec runs in decoder workers only
        pairs = [(decoder(p.read_bytes(), bundle.preprocess, Limits(jpeg_decoder=backend)),
                  decoder(p.read_bytes(), bundle.preprocess, Limits())) for p in files]  # fmt: skip
    for ours, theirs in pairs:
        if isinstance(ours, str) or isinstance(theirs, str):
            continue
        taken += "nvjpeg" in ours.cpu_s
        pixel_diff.append(float(np.abs(ours.pixels - theirs.pixels).mean()) * 127.5)  # in levels of 255
        a, _ = scorer(ours.pixels)
        b, _ = scorer(theirs.pixels)
        cosines.append(float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))))
        pairs = zip(ours.pdq, theirs.pdq, strict=True)
        pdq_bits += [bin(int(x, 16) ^ int(y, 16)).count("1") for (x, _), (y, _) in pairs]
    return {
        "files": len(files),
        "decoded_by_nvimgcodec": taken,
        "model_input_mean_diff_levels": round(float(np.mean(pixel_diff)), 3) if pixel_diff else None,
        "model_input_max_mean_diff_levels": round(max(pixel_diff), 3) if pixel_diff else None,
        "embedding_min_cosine": round(min(cosines), 6) if cosines else None,
        "pdq_max_distance": max(pdq_bits) if pdq_bits else None,
        "pdq_mean_distance": round(float(np.mean(pdq_bits)), 2) if pdq_bits else None,
    }


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, help="JPEGs of 512-1600 px for the scan runs (default 2000; --quick 300)")
    p.add_argument("--workers", default="1,2,4,8,16", help="decode thread counts to measure")
    args = p.parse_args()
    import onnxruntime as ort

    bundle = load_bundle(bundle_for(args))
    policy = load_policy("horde-v2")
    seconds = 2.0 if args.quick else 6.0
    figures: dict = {
        **machine(),
        "gpu": gpu_name(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "model": bundle.manifest["model"]["arch"],
    }
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    height, width = bundle.preprocess.size
    images = [generated_image(i, 320 + 7 * i, 240 + 3 * i) for i in range(64)]
    pixels = np.stack([to_model_input(img, bundle.preprocess) for img in images]).astype(np.float32)

    scorers: dict[str, Scorer] = {}
    for name, device, precision in (
        ("cpu_fp32", "cpu", "fp32"),
        ("cuda_fp32", "cuda", "fp32"),
        ("cuda_fp16", "cuda", "fp16"),
    ):
        if device == "cuda" and not cuda:
            figures[f"{name}_session"] = "no CUDA provider in this onnxruntime build"
            continue
        try:
            scorer = Scorer(bundle, device=device, precision=precision)
        except Exception as err:  # noqa: BLE001 - the figure is the failure
            figures[f"{name}_session"] = f"failed: {err}"
            continue
        scorers[name] = scorer
        figures[f"{name}_provider"] = scorer.placement.provider
        figures[f"{name}_session_providers"] = scorer.encoder.session.get_providers()
        for batch in (32, 64) if device == "cuda" else (32,):
            figures[f"{name}_b{batch}_images_per_s"] = model_only(scorer, pixels[:batch], seconds)
    if "cpu_fp32" in scorers:
        reference, _ = scorers["cpu_fp32"](pixels)
        for name in ("cuda_fp32", "cuda_fp16"):
            if name in scorers:
                emb, _ = scorers[name](pixels)
                cos = np.sum(reference * emb, axis=1) / (
                    np.linalg.norm(reference, axis=1) * np.linalg.norm(emb, axis=1)
                )
                figures[f"{name}_vs_cpu_fp32_min_cosine"] = round(float(cos.min()), 6)
        if "cuda_fp16" in scorers and "cuda_fp32" in scorers:
            figures["fp16_vs_fp32_speedup_b64"] = round(
                figures["cuda_fp16_b64_images_per_s"] / figures["cuda_fp32_b64_images_per_s"], 2
            )
    scan_scorer = scorers.get("cuda_fp16") or scorers.get("cuda_fp32") or scorers["cpu_fp32"]
    figures["scan_scorer"] = scan_scorer.placement.provider + "/" + scan_scorer.placement.precision
    count = args.images or (300 if args.quick else 2000)
    tree = make_tree(BENCH_OUT / f"gpu-tree-{count}", count)
    batch = 64 if cuda else 16
    model_rate = model_only(scan_scorer, pixels[:batch], seconds)
    figures["scan_model_only_images_per_s"] = model_rate
    for workers in [int(w) for w in args.workers.split(",") if int(w) <= (os.cpu_count() or 1)]:
        result = scan_rate(bundle, scan_scorer, policy, tree, batch, workers)
        figures[f"scan_w{workers}_images_per_s"] = result["images_per_s"]
        figures[f"scan_w{workers}_vs_model_only"] = round(result["images_per_s"] / model_rate, 3)
    files = sorted(tree.rglob("*.jpg"))[: 40 if args.quick else 200]
    for backend in (gpujpeg.CPU, gpujpeg.GPU):
        if not gpujpeg.works(backend):
            figures[f"{backend}"] = (
                "not working here (nvidia-nvimgcodec-cu12; nvJPEG also needs nvidia-nvjpeg-cu12 and a GPU)"
            )
            continue
        for key, value in decoder_agreement(bundle, scan_scorer, files, backend).items():
            figures[f"{backend}_vs_pillow_{key}"] = value
    if gpujpeg.works(gpujpeg.GPU):
        most = max(int(w) for w in args.workers.split(",") if int(w) <= (os.cpu_count() or 1))
        result = scan_rate(bundle, scan_scorer, policy, tree, batch, most, gpujpeg.GPU)
        figures[f"scan_nvjpeg_w{most}_images_per_s"] = result["images_per_s"]
        figures[f"scan_nvjpeg_w{most}_vs_model_only"] = round(result["images_per_s"] / model_rate, 3)
        figures[f"scan_nvjpeg_w{most}_vs_pillow"] = round(
            result["images_per_s"] / figures[f"scan_w{most}_images_per_s"], 3
        )
    for key, value in figures.items():
        if not args.json:
            print(f"{key:36s} {value}")
    emit(figures, args.json)


if __name__ == "__main__":
    main()
