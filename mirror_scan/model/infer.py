"""ONNX Runtime sessions for a bundle. The only module that imports onnxruntime.

Device choice is verified, not assumed: onnxruntime-gpu lists CUDAExecutionProvider even on a machine
without a usable GPU and silently runs on the CPU, so after creating a session we read
`get_providers()` and report the provider that really runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from mirror_scan.errors import DeviceError, MirrorScanError, install_hint
from mirror_scan.model.bundle import Bundle
from mirror_scan.model.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "int8")


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MirrorScanError(
            "onnxruntime is not installed",
            hint=install_hint("cpu") + "; or the 'gpu' extra on a CUDA machine (never both)",
        ) from None
    return onnxruntime


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def ort_session(path, providers: list, threads: int):
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings from ORT about fallbacks are reported by us instead
    # Idle ORT threads spin by default; the scan's decode threads need those cycles (measured: spinning off
    # raised end-to-end throughput on a 2-core CPU, and model-only too).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


@dataclass(frozen=True)
class Placement:
    provider: str  # the provider that really runs the first node
    precision: str
    note: str  # why this placement, in words for logs and `model info`


NO_CUDA_BUILD = "this onnxruntime build has no CUDA provider (the 'gpu' extra has it)"


def cuda_session(path, threads: int):
    """(session, note) on CUDA, verified with get_providers(); (None, why not) where CUDA does not answer."""
    ort = _ort()
    if CUDA not in ort.get_available_providers():
        return None, NO_CUDA_BUILD
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as err:  # noqa: BLE001 - a broken CUDA install must not stop a CPU fallback
            log.debug("onnxruntime.preload_dlls failed: %s", err)
    try:
        session = ort_session(path, [CUDA, CPU], threads)
    except Exception as err:  # noqa: BLE001
        return None, f"CUDA session could not be created ({type(err).__name__})"
    if session.get_providers()[0] != CUDA:
        return None, "CUDA provider is installed but no usable GPU answered (onnxruntime fell back to CPU)"
    return session, "CUDA session verified with get_providers()"


def _try_cuda(bundle: Bundle, precision: str, threads: int):
    if CUDA not in available_providers():  # before naming a file: fp16 asked of a CPU-only build falls back
        return None, NO_CUDA_BUILD
    chosen = precision if precision != "auto" else ("fp16" if "fp16" in bundle.available_precisions() else "fp32")
    session, note = cuda_session(bundle.image_encoder_path(chosen), threads)  # BundleError propagates
    return (None if session is None else (session, chosen)), note


class ImageEncoder:
    """Pixels [N, 3, H, W] float32 -> L2-normalised embeddings [N, D] float32."""

    def __init__(self, bundle: Bundle, device: str = "auto", precision: str = "auto", threads: int = 0) -> None:
        if device not in DEVICES:
            raise DeviceError(f"unknown device {device!r}", hint="use one of: auto, cuda, cpu")
        if precision not in PRECISIONS:
            raise DeviceError(f"unknown precision {precision!r}", hint="use one of: auto, fp32, fp16, int8")
        self.bundle = bundle
        session = None
        note = "CPU requested"
        if device in ("auto", "cuda"):
            found, note = _try_cuda(bundle, precision, threads)
            if found is None and device == "cuda":
                raise DeviceError(f"--device cuda: {note}", hint="use --device auto or --device cpu")
            if found is not None:
                session, chosen = found
        if session is None:
            # fp16 kernels are a CUDA feature; on CPU an fp16 graph runs slower than fp32.
            chosen = "fp32" if precision in ("auto", "fp16") else precision
            if precision == "fp16":
                note += "; fp16 is for CUDA, using fp32 on CPU"
            session = ort_session(bundle.image_encoder_path(chosen), [CPU], threads)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.placement = Placement(provider=session.get_providers()[0], precision=chosen, note=note)
        self.int8_check = None
        if chosen == "int8":
            self.int8_check = self._check_int8(threads)

    def _check_int8(self, threads: int):
        """int8 is used only where it is faithful to fp32 on this CPU (see int8check.py); else refused."""
        from mirror_scan.model.int8check import check_int8

        def fp32_factory():
            reference = ort_session(self.bundle.image_encoder_path("fp32"), [CPU], threads)
            return lambda pixels: _embed(reference, reference.get_inputs()[0].name, pixels)

        check = check_int8(self.bundle, self, fp32_factory)
        if not check.faithful:
            raise DeviceError(
                f"--precision int8 refused: {check.describe()}",
                hint="use --precision fp32 (or auto); a bundle exported by this mirror-scan quantizes with "
                "reduce_range, which stays faithful on CPUs without VNNI",
            )
        log.info("%s", check.describe())
        return check

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return _embed(self.session, self.input_name, pixels)


def _embed(session, input_name: str, pixels: np.ndarray) -> np.ndarray:
    (out,) = session.run(None, {input_name: np.ascontiguousarray(pixels, dtype=np.float32)})
    out = out.astype(np.float32, copy=False)
    # int8/fp16 graphs normalise in reduced precision; renormalise so cosines stay cosines.
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class TextEncoder:
    """Prompts -> L2-normalised text embeddings, with the bundle's own tokenizer and text ONNX."""

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        tok = bundle.manifest["tokenizer"]
        if tok.get("kind") != "clip-bpe":
            raise MirrorScanError(
                f"the bundle's tokenizer {tok.get('kind')!r} is not supported without torch",
                hint="re-export the bundle with the policy's prompts (`mirror-scan model export --policy FILE`)",
            )
        self.tokenizer = ClipTokenizer(bundle.tokenizer_path, int(tok["context_length"]))
        self.session = ort_session(bundle.text_encoder_path, [CPU], threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, prompts: list[str], batch: int = 64) -> np.ndarray:
        rows = []
        for start in range(0, len(prompts), batch):
            tokens = self.tokenizer(prompts[start : start + batch])
            (out,) = self.session.run(None, {self.input_name: tokens})
            rows.append(out.astype(np.float32))
        out = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
