"""Is int8 faithful to fp32 on this CPU? Checked where the model runs, not where it was exported.

onnxruntime's int8 kernels differ by CPU: with VNNI (or AMX) u8 x s8 products are exact; on AVX2 and on
AVX-512 without VNNI they are added in pairs into 16 bits and saturate unless the weights have 7-bit
range. An encoder that was faithful on the export machine can move similarities by ~1e-2 on the admin's,
and verdicts near a threshold then flip without a word. So the first time an int8 session opens for a
bundle on a CPU, it is compared with fp32 on generated images, and the result is cached per bundle, CPU
and onnxruntime version.

The bound: min cosine 0.995 between int8 and fp32 embeddings of the same images. Measured: full-range
weights on a CPU without VNNI give 0.985-0.990 (similarities off by ~1e-2, a whole severity step);
7-bit weights give 0.9995 there and 0.9997 here. The largest similarity drift against the bundle's
prompts is measured and shown beside it: policies move thresholds in steps of 0.01, and on a real-size
model (ViT-B-32) a faithful int8 stays within a quarter of a step (0.0024 here). It is not the criterion
because on tiny test models with random weights the drift is larger at the same cosine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mirror_scan.atomic import atomic_write_bytes
from mirror_scan.model.bundle import Bundle
from mirror_scan.model.cpu import cpu_info
from mirror_scan.model.preprocess import to_model_input
from mirror_scan.model.synthetic import parity_images
from mirror_scan.settings import data_dir

FAITHFUL_MIN_COSINE = 0.995
SEVERITY_STEP = 0.01
CHECK_IMAGES = 8


@dataclass(frozen=True)
class Int8Check:
    faithful: bool
    min_cosine: float
    max_similarity_drift: float
    cpu: str
    cpu_int8_class: str
    checked_at: float
    cached: bool = False

    def describe(self) -> str:
        verdict = "faithful" if self.faithful else "NOT faithful"
        text = (
            f"int8 {verdict} on this CPU ({self.cpu}, {self.cpu_int8_class}): min cosine {self.min_cosine:.5f} "
            f"vs fp32 over {CHECK_IMAGES} generated images (needs >= {FAITHFUL_MIN_COSINE})"
        )
        if self.max_similarity_drift <= SEVERITY_STEP:
            return text + (f"; similarities move by up to {self.max_similarity_drift:.4f}, within a severity step "
                           f"({SEVERITY_STEP})")  # fmt: skip
        # Said, not hidden behind "faithful": the cosine is the criterion (see above), and a drift past a step
        # means pictures that close to a threshold can get another verdict than with fp32.
        return text + (
            f"; but similarities move by up to {self.max_similarity_drift:.4f}, more than a severity step "
            f"({SEVERITY_STEP}): a picture within that of a threshold may get another verdict than with fp32 "
            "(random-weight test bundles drift this much; --precision fp32 where it matters)"
        )


def cache_path() -> Path:
    return data_dir() / "int8-checks.json"


def _cache_key(bundle: Bundle) -> str:
    import onnxruntime

    sha = bundle.manifest["sha256"]
    return "|".join(
        (sha[bundle.file("image_int8")], sha[bundle.file("image_fp32")], cpu_info().signature, onnxruntime.__version__)
    )


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measure(bundle: Bundle, int8: Callable[[np.ndarray], np.ndarray], fp32: Callable[[np.ndarray], np.ndarray]):
    pixels = np.stack([to_model_input(img, bundle.preprocess) for img in parity_images(CHECK_IMAGES)])
    low, high = int8(pixels), fp32(pixels)
    cosine = float((low * high).sum(axis=1).min())
    drift = float(np.abs((low - high) @ bundle.concepts.matrix.T).max()) if len(bundle.concepts.prompts) else 0.0
    cpu = cpu_info()
    return Int8Check(
        faithful=cosine >= FAITHFUL_MIN_COSINE,
        min_cosine=round(cosine, 6),
        max_similarity_drift=round(drift, 6),
        cpu=cpu.model,
        cpu_int8_class=cpu.int8_class,
        checked_at=time.time(),
    )


def cached_check(bundle: Bundle, path: Path | None = None) -> Int8Check | None:
    """The stored result for this bundle on this CPU, if int8 was checked here before."""
    if "image_int8" not in bundle.manifest["files"]:
        return None
    cached = _read_cache(path or cache_path()).get(_cache_key(bundle))
    try:
        check = Int8Check(**{**cached, "cached": True}) if isinstance(cached, dict) else None
    except TypeError:
        return None
    if check is None or not all(isinstance(v, float | int) for v in (check.min_cosine, check.max_similarity_drift)):
        return None  # an edited or older entry: measure again
    return replace(check, faithful=check.min_cosine >= FAITHFUL_MIN_COSINE)  # derived from the figure, not read


def check_int8(
    bundle: Bundle,
    int8: Callable[[np.ndarray], np.ndarray],
    fp32_factory: Callable[[], Callable[[np.ndarray], np.ndarray]],
    path: Path | None = None,
) -> Int8Check:
    """The cached result for this bundle on this CPU, or a fresh measurement (fp32 is loaded only then)."""
    path = path or cache_path()
    key = _cache_key(bundle)
    cached = cached_check(bundle, path)
    if cached is not None:
        return cached
    result = measure(bundle, int8, fp32_factory())
    entries = _read_cache(path)
    entries[key] = {k: v for k, v in asdict(result).items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(entries, indent=1, sort_keys=True).encode(), mode=0o600)
    except OSError:
        pass  # a read-only data dir: the check is simply redone next time
    return result
