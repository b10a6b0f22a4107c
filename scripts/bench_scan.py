#!/usr/bin/env python3
"""Scan throughput and memory, measured in one run with one bundle and one batch size:

- model-only images/s (pixels prepared in advance, session.run only),
- end-to-end scan images/s (discover, read, hash, decode, batch, infer, decide, record),
- a serial baseline built the way lemmy-safety works: one file at a time, open, full decode,
  preprocess, infer at batch 1,
- rescanning the unchanged tree (files/s),
- the same scan with decoders in threads instead of worker processes (the cost of crash isolation),
- peak RSS while scanning a large tree of small files, sampled along the way (flat = bounded queues).

With --floor, instead: the CPU time per picture of the scan (`mirror-scan scan --dry-run` in a subprocess,
its decode workers included) against a floor loop that only reads, sha256-hashes, draft-decodes and
resizes each file to 224 px on the same number of processes, side by side on large JPEGs (900-2400 px),
with and without start-up (a one-picture scan's CPU is the start-up), and the scan at 1, 2 and all cores.
Also: a second floor that decodes each JPEG whole and takes Meta's reference PDQ (what the shared hash
needs), the scan's CPU by stage (its `stage_cpu_s`), and the scan with `resize = reduced`.

With --modes, instead: the three `resize` modes (exact, reduced, thumbnail512) side by side, on generated
JPEGs of 900-2400 px and on benign pictures that installed packages ship (sample data; never downloaded):
each mode's model input against exact's (pixels, embedding cosine, the largest change of a policy
similarity, verdict agreement at each severity level), its decode CPU per picture by stage, and the real
scan per mode against the serial loops (lemmy-safety's shape; fedi-safety's, thumbnail first), all in one
run. With random weights the verdicts say little: what carries is how far the inputs move.

    python scripts/bench_scan.py [--quick] [--json] [--model DIR | --tiny] [--images N] [--rss-files N]
    python scripts/bench_scan.py --floor [--quick] [--json] [--tiny]
    python scripts/bench_scan.py --modes [--quick] [--json] [--model DIR | --tiny] [--images N]
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from benchutil import BENCH_OUT, bundle_for, emit, machine, parser
from PIL import Image

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.preprocess import RESIZE_MODES, thumbnail, to_model_input
from mirror_scan.model.scoring import Scorer, columns
from mirror_scan.model.synthetic import generated_image
from mirror_scan.policy import evaluate, load_policy
from mirror_scan.scan.decoders import gpujpeg
from mirror_scan.scan.decoders.decode import Limits, decode
from mirror_scan.scan.runner import Scan, ScanConfig
from mirror_scan.store.ledger import Ledger


def make_tree(root: Path, count: int, seed: int = 0, sides: tuple[int, int] = (512, 1600)) -> Path:
    """Generated JPEGs with sides in `sides`. The marker sits beside the tree: inside it would be scanned
    (an error) like any file."""
    marker = root.with_name(root.name + ".complete")
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        path = root / f"{i % 100:02x}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        generated_image(i, w, h).save(path, format="JPEG", quality=85)
    marker.touch()
    return root


def small_tree(root: Path, count: int) -> Path:
    marker = root / f".complete-{count}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    buf = io.BytesIO()
    generated_image(0, 48, 32).save(buf, format="PNG")
    base = buf.getvalue()
    for i in range(count):
        # pict-rs 0.5.7-like nested keys; unique bytes per file (so nothing is reused by hash)
        name = f"{i:012x}"
        path = root / name[-2:] / name[-4:-2] / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base + i.to_bytes(8, "big"))  # trailing bytes after IEND: still a valid PNG
    marker.touch()
    return root


def model_only(scorer: Scorer, pixels: np.ndarray, batch: int, seconds: float) -> float:
    scorer.encoder(pixels[:batch])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2 * batch:
        for i in range(0, len(pixels) - batch + 1, batch):
            scorer.encoder(pixels[i : i + batch])
            done += batch
    return done / (time.perf_counter() - start)


def serial_baseline(files: list[Path], bundle, scorer: Scorer, policy, cols, fedi: bool = False) -> float:
    """lemmy-safety's shape: for each file, open, decode fully, preprocess, infer alone, decide. fedi:
    fedi-safety's instead, thumbnail((512, 512)) on the file as opened (JPEGs drafted) first."""
    start = time.perf_counter()
    for path in files:
        img = thumbnail(Image.open(path)).convert("RGB") if fedi else Image.open(path).convert("RGB")
        pixels = to_model_input(img, bundle.preprocess)[None]
        _, sims = scorer(pixels)
        evaluate(policy, sims[:, cols])
    return len(files) / (time.perf_counter() - start)


def run_scan(
    bundle,
    scorer,
    policy,
    tree: Path | list[Path],
    state: Path,
    batch: int,
    workers: int,
    decoders: str = "process",
    limits: Limits | None = None,
) -> tuple[dict, float]:
    with Ledger(state) as ledger:
        scan = Scan(
            ledger,
            bundle,
            scorer,
            policy,
            ScanConfig(batch_size=batch, workers=workers, limits=limits or Limits(), decoders=decoders),
            actor=None,
        )
        started = time.perf_counter()
        counters = scan.run([str(t) for t in (tree if isinstance(tree, list) else [tree])])
        return counters.as_dict(), time.perf_counter() - started


def rss_profile(bundle, scorer, policy, tree: Path, total: int, batch: int, workers: int) -> dict:
    process = psutil.Process()
    samples: list[tuple[int, int]] = []
    stop = threading.Event()
    state_dir = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    with Ledger(state_dir / "state.db") as ledger:
        scan = Scan(ledger, bundle, scorer, policy, ScanConfig(batch_size=batch, workers=workers), actor=None)

        def sample() -> None:
            while not stop.is_set():
                samples.append((scan.counters.done, process.memory_info().rss))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        counters = scan.run([str(tree)])
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
    shutil.rmtree(state_dir, ignore_errors=True)

    def peak_until(fraction: float) -> int:
        return max((rss for done, rss in samples if done <= fraction * total), default=0)

    early, final = peak_until(0.2), peak_until(1.0)
    return {
        "rss_files": total,
        "rss_scan_seconds": round(seconds, 1),
        "rss_files_scanned": counters.scored,
        "rss_peak_first_20pct_mb": round(early / 2**20, 1),
        "rss_peak_mb": round(final / 2**20, 1),
        "rss_growth_after_20pct": round(final / early, 3) if early else None,
    }


def _floor_one(path: str) -> int:
    import hashlib

    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (224, 224))
    img.convert("RGB").resize((224, 224), Image.BILINEAR)
    return len(data)


def _hash_floor_one(path: str) -> int:
    """The floor when the shared PDQ must be Meta's reference hash: the JPEG decoded whole (the reference
    samples the stored picture), the reference PDQ with its 8 variants, then the same small resize."""
    import hashlib

    from mirror_scan.lists import hashes

    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    img = Image.open(io.BytesIO(data))
    img.load()
    hashes.pdq_dihedral(img)
    img.convert("RGB").resize((224, 224), Image.BILINEAR, reducing_gap=2.0)
    return len(data)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor_loop(files: list[Path], workers: int, one=_floor_one) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the floor on `workers` processes (reaped, so their CPU counts)."""
    import multiprocessing

    before, started = _children_cpu(), time.perf_counter()
    pool = multiprocessing.get_context("fork").Pool(workers)
    pool.map(one, [str(f) for f in files], chunksize=4)
    pool.close()
    pool.join()
    return _children_cpu() - before, time.perf_counter() - started


def scan_subprocess(
    tree: Path, bundle_dir: Path, workers: int, state: Path, resize: str = "exact", jpeg: str = "pillow"
) -> tuple[float, float, int, dict]:
    """(CPU seconds with its decode workers, wall seconds, pictures scanned, CPU seconds by stage) of a real
    `scan --dry-run`."""
    import json
    import subprocess
    import sys

    before, started = _children_cpu(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mirror_scan.cli", "scan", str(tree), "--model", str(bundle_dir), "--dry-run",
         "--json", "--workers", str(workers), "--state", str(state), "--quarantine", str(state.parent / "q")],
        capture_output=True, text=True, check=False,
        env={**os.environ, "MIRROR_SCAN_CONFIG": os.devnull, "MIRROR_SCAN_RESIZE": resize,
             "MIRROR_SCAN_JPEG_DECODER": jpeg},
    )  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"scan failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    return _children_cpu() - before, wall, int(summary["scanned"]), summary.get("stage_cpu_s", {})


def floor_main(args) -> None:
    from benchutil import bundle_for

    images = args.images or (60 if args.quick else 300)
    bundle_dir = bundle_for(args)
    bundle = load_bundle(bundle_dir)
    # JPEGs of 900-2400 px: phone and desktop uploads
    tree = make_tree(BENCH_OUT / f"floor-tree-{images}", images, seed=7, sides=(900, 2400))
    files = sorted(tree.rglob("*.jpg"))
    one = BENCH_OUT / "floor-tree-1"
    if not one.exists():
        one.mkdir(parents=True)
        shutil.copy(files[0], one / files[0].name)
    cores = os.cpu_count() or 2
    figures: dict = {"bench": "scan-floor", "arch": bundle.manifest["model"]["arch"], "images": images,
                     **machine(), "quick": args.quick}  # fmt: skip
    state_dir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    try:
        floor_cpu, floor_wall = floor_loop(files, 2)
        hash_floor_cpu, _ = floor_loop(files, 2, _hash_floor_one)
        start_cpu, start_wall, _, _ = scan_subprocess(one, bundle_dir, 2, state_dir / "one.db")
        scan_cpu, scan_wall, scanned, stages = scan_subprocess(tree, bundle_dir, 2, state_dir / "two.db")
        assert scanned == images, (scanned, images)
        reduced_cpu, _, _, reduced_stages = scan_subprocess(tree, bundle_dir, 2, state_dir / "reduced.db", "reduced")
        if gpujpeg.works(gpujpeg.GPU):  # JPEGs decoded by nvJPEG: what the decode leaves on the CPU
            nv_cpu, _, _, nv_stages = scan_subprocess(tree, bundle_dir, 2, state_dir / "nv.db", jpeg="nvimgcodec")
            figures["nvjpeg_scan_cpu_ms_per_image"] = round((nv_cpu - start_cpu) / images * 1000, 2)
            figures["nvjpeg_stage_cpu_ms_per_image"] = {k: round(v / images * 1000, 2) for k, v in nv_stages.items()}
        else:
            figures["nvjpeg_scan_cpu_ms_per_image"] = "no working nvJPEG here"
        walls = {2: scan_wall - start_wall}  # the run above
        for workers in sorted({1, cores} - {2}):
            _, wall, _, _ = scan_subprocess(tree, bundle_dir, workers, state_dir / f"w{workers}.db")
            walls[workers] = wall - start_wall
        walls = dict(sorted(walls.items()))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    floor_per = floor_cpu / images * 1000
    scan_per = (scan_cpu - start_cpu) / images * 1000
    scan_per_all = scan_cpu / images * 1000
    reduced_per = (reduced_cpu - start_cpu) / images * 1000
    hash_floor_per = hash_floor_cpu / images * 1000
    per_stage = {stage: round(seconds / images * 1000, 2) for stage, seconds in stages.items()}
    reduced_stage = {stage: round(seconds / images * 1000, 2) for stage, seconds in reduced_stages.items()}
    figures.update(
        hash_floor_cpu_ms_per_image=round(hash_floor_per, 2),
        scan_over_hash_floor_cpu=round(scan_per / hash_floor_per, 3),
        reduced_resize_scan_over_hash_floor_cpu=round(reduced_per / hash_floor_per, 3),
        scan_stage_cpu_ms_per_image=per_stage,
        scan_unaccounted_cpu_ms_per_image=round(scan_per - sum(per_stage.values()), 2),
        reduced_resize_scan_cpu_ms_per_image=round(reduced_per, 2),
        reduced_resize_scan_over_floor_cpu=round(reduced_per / floor_per, 3),
        reduced_resize_stage_cpu_ms_per_image=reduced_stage,
        floor_cpu_ms_per_image=round(floor_per, 2),
        scan_cpu_ms_per_image=round(scan_per, 2),
        scan_cpu_ms_per_image_with_startup=round(scan_per_all, 2),
        scan_over_floor_cpu=round(scan_per / floor_per, 3),
        scan_over_floor_cpu_with_startup=round(scan_per_all / floor_per, 3),
        floor_images_per_s=round(images / floor_wall, 2),
        startup_cpu_s=round(start_cpu, 2),
        **{f"scan_images_per_s_{w}_workers": round(images / max(t, 1e-9), 2) for w, t in walls.items()},
        scan_2_over_1_workers=round(walls[1] / max(walls[2], 1e-9), 3),
    )
    print(f"CPU             : {figures.get('cpu', '?')} ({cores} cores)")
    print(f"floor loop      : {floor_per:8.2f} ms CPU per picture (read, sha256, draft decode, resize; 2 processes)")
    print(f"scan            : {scan_per:8.2f} ms CPU per picture beyond start-up ({scan_per / floor_per:.2f}x the "
          f"floor); {scan_per_all:.2f} ms with start-up ({scan_per_all / floor_per:.2f}x)")  # fmt: skip
    print(f"floor with PDQ  : {hash_floor_per:8.2f} ms CPU per picture (the JPEG decoded whole and Meta's reference "
          f"PDQ, as the shared hash needs); the scan is {scan_per / hash_floor_per:.2f}x it, "
          f"{reduced_per / hash_floor_per:.2f}x with resize=reduced")  # fmt: skip
    rest = figures["scan_unaccounted_cpu_ms_per_image"]
    print("  where it goes : " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in per_stage.items())
          + f"; the rest (threads, queues, inference) {rest:.2f}")  # fmt: skip
    print(f"scan, resize=reduced: {reduced_per:8.2f} ms CPU per picture ({reduced_per / floor_per:.2f}x the floor); "
          f"view {reduced_stage.get('view', 0):.2f} ms")  # fmt: skip
    for workers, wall in walls.items():
        print(f"scan, {workers} worker(s): {images / wall:8.2f} pictures/s beyond start-up")
    print(f"2 workers / 1   : {figures['scan_2_over_1_workers']:.2f}x")
    print(f"scan, jpeg_decoder=nvimgcodec: {figures['nvjpeg_scan_cpu_ms_per_image']} (ms CPU per picture)")
    emit(figures, args.json)


# ---------------------------------------------------------------- --modes: the three `resize` modes

# Benign pictures installed packages ship (sample data), then the machine's own documentation pictures. Found,
# never downloaded; each once (stable and nightly toolchains ship the same files).
SAMPLE_GLOBS = (
    "{site}/skimage/data/*.png",
    "{site}/skimage/data/*.jpg",
    "{site}/matplotlib/mpl-data/sample_data/*.png",
    "{site}/matplotlib/mpl-data/sample_data/*.jpg",
    "{site}/imageio/resources/images/*.png",
    "{site}/imageio/resources/images/*.jpg",
    "/usr/share/backgrounds/**/*.jpg",
    "/usr/share/wallpapers/**/*.jpg",
    "/usr/share/doc/*/*.jpg",
    "{home}/.rustup/toolchains/*/share/doc/rust/html/**/*.jp*g",
)


def sample_pictures(limit: int = 24, min_side: int = 128) -> list[Path]:
    import glob
    import hashlib
    import site
    import sysconfig

    sites = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    seen: set[str] = set()
    found: list[Path] = []
    for pattern in SAMPLE_GLOBS:
        for where in sorted(sites) if "{site}" in pattern else [""]:
            spec = pattern.format(site=where, home=Path.home())
            for name in sorted(glob.glob(spec, recursive=True)):
                path = Path(name)
                try:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    with Image.open(path) as img:
                        small = min(img.size) < min_side or getattr(img, "is_animated", False)
                except (OSError, Image.UnidentifiedImageError, Image.DecompressionBombError):
                    continue
                if digest not in seen and not small:
                    seen.add(digest)
                    found.append(path)
    return found[:limit]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def compare_modes(files: list[Path], bundle, scorer: Scorer, policy, cols) -> dict:
    """Per mode against exact: the centre row's pixels, embedding and policy similarities, the verdict at
    each severity level, and the decode's CPU per picture by stage (one thread, the modes back to back)."""
    prep = bundle.preprocess
    rows: dict[str, list[np.ndarray]] = {mode: [] for mode in RESIZE_MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in RESIZE_MODES}
    stages: dict[str, dict[str, float]] = {mode: {} for mode in RESIZE_MODES}
    drafted: list[bool] = []  # thumbnail512 decoded the JPEG a second time, drafted
    for path in files:
        data = path.read_bytes()
        for mode in RESIZE_MODES:
            started = time.thread_time()
            decoded = decode(data, prep, Limits(resize=mode))
            cpu[mode].append(time.thread_time() - started)
            assert not isinstance(decoded, str), (path, decoded)
            rows[mode].append(decoded.pixels[0])
            if mode == "thumbnail512":
                drafted.append("thumbnail" in decoded.cpu_s)
            for stage, seconds in decoded.cpu_s.items():
                stages[mode][stage] = stages[mode].get(stage, 0.0) + seconds
    std = np.asarray(prep.std, np.float32)[None, :, None, None]
    scored = {}
    for mode in RESIZE_MODES:
        pixels = np.stack(rows[mode])
        outs = [scorer(pixels[i : i + 16]) for i in range(0, len(pixels), 16)]
        scored[mode] = (pixels, np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])[:, cols])
    exact_pixels, exact_emb, exact_sims = scored["exact"]
    n = len(files)
    out: dict = {"pictures": n, "drafted_by_thumbnail512": int(sum(drafted))}
    mask = np.asarray(drafted)
    for mode in RESIZE_MODES:
        pixels, emb, sims = scored[mode]
        levels = np.abs(pixels - exact_pixels) * std * 255
        cosine = _cosine(emb, exact_emb)
        times, exact_times = np.asarray(cpu[mode]), np.asarray(cpu["exact"])
        figure = {
            "decode_cpu_ms_per_picture": round(float(times.mean()) * 1000, 2),
            "decode_cpu_over_exact": round(float(times.sum() / exact_times.sum()), 3),
            "stage_cpu_ms_per_picture": {k: round(v / n * 1000, 2) for k, v in sorted(stages[mode].items())},
            # the pictures thumbnail512 drafts (a second decode) and the others, apart
            "decode_cpu_over_exact_drafted": round(float(times[mask].sum() / exact_times[mask].sum()), 3)
            if mask.any()
            else None,
            "decode_cpu_over_exact_not_drafted": round(float(times[~mask].sum() / exact_times[~mask].sum()), 3)
            if (~mask).any()
            else None,
            "pixels_mean_levels_from_exact": round(float(levels.mean()), 3),
            "embedding_cosine_to_exact_min": round(float(cosine.min()), 6),
            "embedding_cosine_to_exact_mean": round(float(cosine.mean()), 6),
            "policy_similarity_max_change": round(float(np.abs(sims - exact_sims).max()), 5),
        }
        for level, offset in policy.severity_levels.items():
            ours = evaluate(policy, sims, offset).flagged
            theirs = evaluate(policy, exact_sims, offset).flagged
            figure[f"verdicts_agree_{level}"] = f"{int((ours == theirs).sum())}/{n}"
            figure[f"flagged_{level}"] = int(ours.sum())
        out[mode] = figure
    return out


def _cpu_now() -> float:
    import resource

    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def modes_main(args) -> None:
    images = args.images or (16 if args.quick else 200)
    bundle = load_bundle(bundle_for(args))
    policy = load_policy("horde-v2")
    scorer = Scorer(bundle, device="auto")
    cols = columns(bundle.concepts.prompts, policy)
    tree = make_tree(BENCH_OUT / f"modes-tree-{images}", images, seed=7, sides=(900, 2400))
    generated = sorted(tree.rglob("*.jpg"))
    samples = sample_pictures(8 if args.quick else 24)
    sample_dir = BENCH_OUT / "modes-samples"
    shutil.rmtree(sample_dir, ignore_errors=True)
    sample_dir.mkdir(parents=True)
    copies = []
    for i, path in enumerate(samples):  # copied, so the scan below reads them like the generated ones
        copies.append(sample_dir / f"{i:02d}-{path.name}")
        shutil.copy(path, copies[-1])
    figures: dict = {"bench": "scan-modes", "arch": bundle.manifest["model"]["arch"], "provider":
                     scorer.placement.provider, "images": images, **machine(), "quick": args.quick,
                     "random_weights": bool(bundle.manifest["model"].get("random_weights")),
                     "samples": [str(p) for p in samples]}  # fmt: skip
    figures["generated"] = compare_modes(generated, bundle, scorer, policy, cols)
    if copies:
        figures["samples_compared"] = compare_modes(copies, bundle, scorer, policy, cols)
    roots = [tree, sample_dir] if copies else [tree]
    total = len(generated) + len(copies)
    serial_files = generated + copies
    state_dir = Path(tempfile.mkdtemp(prefix="bench-modes-"))
    # The scans in the order A B C, and without --quick C B A again: the shared cores' drift falls on all.
    order = list(RESIZE_MODES) if args.quick else [*RESIZE_MODES, *reversed(RESIZE_MODES)]
    try:
        rates: dict[str, list[float]] = {"serial": [serial_baseline(serial_files, bundle, scorer, policy, cols)]}
        scan_cpu: dict[str, float] = dict.fromkeys(RESIZE_MODES, 0.0)
        for run, mode in enumerate(order):
            before = _cpu_now()
            summary, seconds = run_scan(bundle, scorer, policy, roots, state_dir / f"{mode}-{run}.db",
                                        args.batch_size, args.workers, limits=Limits(resize=mode))  # fmt: skip
            scan_cpu[mode] += (_cpu_now() - before) / order.count(mode)
            assert summary["scanned"] == total, (summary, total)
            rates.setdefault(mode, []).append(total / seconds)
        rates["serial"].append(serial_baseline(serial_files, bundle, scorer, policy, cols))
        rates["serial_fedi"] = [serial_baseline(serial_files, bundle, scorer, policy, cols, fedi=True)]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    serial = sum(rates["serial"]) / len(rates["serial"])  # before and after the scans: the VM's drift halved
    figures["serial_images_per_s"] = [round(r, 2) for r in rates["serial"]]
    figures["serial_fedi_style_images_per_s"] = round(rates["serial_fedi"][0], 2)
    figures["serial_fedi_style_over_serial"] = round(rates["serial_fedi"][0] / serial, 3)
    for mode in RESIZE_MODES:
        rate = sum(rates[mode]) / len(rates[mode])
        figures[f"scan_{mode}_images_per_s_runs"] = [round(r, 2) for r in rates[mode]]
        figures[f"scan_{mode}_images_per_s"] = round(rate, 2)
        figures[f"scan_{mode}_over_serial"] = round(rate / serial, 3)
        figures[f"scan_{mode}_cpu_ms_per_picture"] = round(scan_cpu[mode] / total * 1000, 2)
        figures[f"scan_{mode}_cpu_over_exact"] = round(scan_cpu[mode] / scan_cpu["exact"], 3)
    print(f"CPU             : {figures.get('cpu', '?')} ({figures['cpus']} cores); model {figures['arch']}"
          f"{' (random weights: verdicts say little)' if figures['random_weights'] else ''}")  # fmt: skip
    drafted = figures["generated"]["drafted_by_thumbnail512"]
    print(f"pictures        : {len(generated)} generated JPEGs of 900-2400 px ({drafted} drafted by thumbnail512), "
          f"{len(copies)} shipped samples")  # fmt: skip
    for group in ("generated", "samples_compared"):
        if group not in figures:
            continue
        for mode in RESIZE_MODES:
            f = figures[group][mode]
            agree = ", ".join(f"{k[15:]} {v}" for k, v in f.items() if k.startswith("verdicts_agree_"))
            print(f"{group[:9]:9} {mode:12}: decode {f['decode_cpu_ms_per_picture']:6.2f} ms CPU "
                  f"({f['decode_cpu_over_exact']:.2f}x exact; drafted {f['decode_cpu_over_exact_drafted']}x, others "
                  f"{f['decode_cpu_over_exact_not_drafted']}x); pixels {f['pixels_mean_levels_from_exact']:.2f} "
                  f"levels from exact, cosine min {f['embedding_cosine_to_exact_min']:.6f}, similarity moved at most "
                  f"{f['policy_similarity_max_change']:.5f}; verdicts as exact: {agree}")  # fmt: skip
    print(f"serial loops    : lemmy-safety style {serial:.2f} images/s (runs {figures['serial_images_per_s']}), "
          f"fedi-safety style {figures['serial_fedi_style_images_per_s']:.2f}")  # fmt: skip
    for mode in RESIZE_MODES:
        print(f"scan {mode:12}: {figures[f'scan_{mode}_images_per_s']:7.2f} images/s "
              f"({figures[f'scan_{mode}_over_serial']:.2f}x the serial loop), "
              f"{figures[f'scan_{mode}_cpu_ms_per_picture']:.2f} ms CPU per picture "
              f"({figures[f'scan_{mode}_cpu_over_exact']:.2f}x exact)")  # fmt: skip
    emit(figures, args.json)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--floor", action="store_true", help="the scan's CPU per picture against the floor loop")
    p.add_argument("--modes", action="store_true", help="the three resize modes against each other and serial loops")
    p.add_argument("--images", type=int, help="synthetic JPEGs of 512-1600 px (default 2000; --quick 120)")
    p.add_argument("--rss-files", type=int, help="files in the memory test tree (default 100000; --quick 5000)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    if args.floor:
        floor_main(args)
        return
    if args.modes:
        modes_main(args)
        return
    images = args.images or (120 if args.quick else 2000)
    rss_files = args.rss_files or (5000 if args.quick else 100_000)
    bundle = load_bundle(bundle_for(args))
    policy = load_policy("horde-v2")
    scorer = Scorer(bundle, device="auto")
    cols = columns(bundle.concepts.prompts, policy)
    figures: dict = {
        "bench": "scan",
        "arch": bundle.manifest["model"]["arch"],
        "provider": scorer.placement.provider,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "images": images,
        **machine(),
        "quick": args.quick,
    }

    tree = make_tree(BENCH_OUT / f"scan-tree-{images}", images)
    files = sorted(tree.rglob("*.jpg"))
    sample = files[: min(len(files), 64)]
    pixels = np.stack([to_model_input(Image.open(f).convert("RGB"), bundle.preprocess) for f in sample[:32]])
    while len(pixels) < args.batch_size * 2:
        pixels = np.concatenate([pixels, pixels])

    state_dir = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    try:
        model_rate = model_only(scorer, pixels, args.batch_size, 3.0 if args.quick else 10.0)
        summary, seconds = run_scan(bundle, scorer, policy, tree, state_dir / "state.db", args.batch_size, args.workers)
        e2e_rate = summary["scanned"] / seconds
        serial_rate = serial_baseline(sample if args.quick else files[:200], bundle, scorer, policy, cols)
        rescan, rescan_seconds = run_scan(
            bundle, scorer, policy, tree, state_dir / "state.db", args.batch_size, args.workers
        )
        rescan_rate = rescan["skipped_unchanged"] / rescan_seconds
        threaded, threaded_seconds = run_scan(
            bundle, scorer, policy, tree, state_dir / "threads.db", args.batch_size, args.workers, "thread"
        )
        thread_rate = threaded["scanned"] / threaded_seconds
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    figures.update(
        model_only_images_per_s=round(model_rate, 2),
        scan_images_per_s=round(e2e_rate, 2),
        serial_baseline_images_per_s=round(serial_rate, 2),
        scan_over_model_only=round(e2e_rate / model_rate, 3),
        scan_over_serial_baseline=round(e2e_rate / serial_rate, 3),
        rescan_unchanged_files_per_s=round(rescan_rate),
        scan_thread_decoders_images_per_s=round(thread_rate, 2),
        scan_process_over_thread_decoders=round(e2e_rate / thread_rate, 3),
        scan_stage_seconds=summary["stage_seconds"],
    )
    print(f"model only      : {model_rate:8.2f} images/s (batch {args.batch_size}, {scorer.placement.provider})")
    print(f"scan end-to-end : {e2e_rate:8.2f} images/s ({e2e_rate / model_rate:.2f}x model-only)")
    print(f"serial baseline : {serial_rate:8.2f} images/s (scan is {e2e_rate / serial_rate:.2f}x)")
    print(f"rescan unchanged: {rescan_rate:8.0f} files/s")
    print(f"decoders in-process (threads, no crash isolation): {thread_rate:8.2f} images/s "
          f"(worker processes are {e2e_rate / thread_rate:.2f}x that)")  # fmt: skip

    tiny = load_bundle(bundle_for(type("A", (), {"model": None, "tiny": True})()))
    rss_tree = small_tree(BENCH_OUT / f"rss-tree-{rss_files}", rss_files)
    rss = rss_profile(tiny, Scorer(tiny, device="auto"), policy, rss_tree, rss_files, args.batch_size, args.workers)
    figures.update(rss)
    print(
        f"memory          : {rss_files} files, peak RSS {rss['rss_peak_mb']} MB, first 20%: "
        f"{rss['rss_peak_first_20pct_mb']} MB (growth x{rss['rss_growth_after_20pct']})"
    )
    emit(figures, args.json)


if __name__ == "__main__":
    main()
