"""open_clip model -> mirror-scan bundle.

Steps: build the model (any open_clip arch/pretrained pair; `tiny-test` is a config shipped here for
tests, going through exactly the same code), export the image and text encoders to ONNX with
L2-normalised outputs and a dynamic batch axis, check ONNX against torch on generated images (fail
below cosine 0.9999), derive fp16 and optional int8 image encoders, embed the policies' prompts, and
write manifest.json with hashes, versions and parity figures. Everything is written to a temp folder
beside the target and renamed into place at the end, so a failed export leaves nothing half-made.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mirror_scan import __version__
from mirror_scan.atomic import fsync_dir
from mirror_scan.errors import ExportError, install_hint
from mirror_scan.hashing import sha256_file
from mirror_scan.model.bundle import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, Preprocess
from mirror_scan.model.concepts import write_concepts
from mirror_scan.model.preprocess import to_model_input
from mirror_scan.model.synthetic import parity_images
from mirror_scan.policy import builtin_policies, load_policy

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
MIN_PARITY_COSINE = 0.9999
OPSET = 17


@dataclass
class ExportOptions:
    arch: str = "ViT-L-14"
    pretrained: str | None = "openai"
    out: Path = Path("model")
    quantize: str | None = None  # None | "int8"
    fp16: bool = True
    policies: list[str] = field(default_factory=list)  # extra policy files whose prompts to embed
    force: bool = False
    parity_images: int = 6
    # DeepDanbooru, the optional second model (deepdanbooru.py): the local checkpoint, or random weights
    # when `pretrained` is none and no checkpoint is given. A width divisor > 1 is for test bundles only.
    deepdanbooru: bool = False
    deepdanbooru_weights: Path | None = None
    deepdanbooru_width_divisor: int = 1


def _import_export_stack():
    try:
        import open_clip
        import torch
    except ImportError as err:
        raise ExportError(
            f"model export needs torch and open_clip ({err.name} is missing)",
            hint=install_hint("export") + "; scanning itself never needs them",
        ) from None
    return torch, open_clip


def _versions() -> dict[str, str]:
    out = {"mirror_scan": __version__, "python": platform.python_version()}
    for dist in ("torch", "open_clip_torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxconverter-common", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _build_model(opts: ExportOptions):
    torch, open_clip = _import_export_stack()
    open_clip.add_model_config(CONFIG_DIR)
    if opts.arch not in open_clip.list_models():
        raise ExportError(
            f"unknown open_clip architecture {opts.arch!r}",
            hint="see open_clip.list_models(); e.g. ViT-L-14, ViT-B-32, or tiny-test for tests",
        )
    pretrained = None if opts.pretrained in (None, "", "none") else opts.pretrained
    if pretrained is None:
        torch.manual_seed(0)  # random-weight bundles (tests, benchmarks) are reproducible
    try:
        model = open_clip.create_model(opts.arch, pretrained=pretrained, device="cpu", precision="fp32")
    except Exception as err:  # noqa: BLE001 - open_clip raises many kinds for a missing download
        raise ExportError(
            f"could not create {opts.arch} with weights {pretrained!r}: {type(err).__name__}: {err}",
            hint="weights download from a model hub on first use; run on a machine that reaches it, "
            "or pass --pretrained PATH to a local checkpoint",
        ) from None
    model.eval()
    return torch, open_clip, model


def _preprocess_cfg(open_clip, model) -> dict[str, Any]:
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = [size, size] if isinstance(size, int) else list(size)
    return {
        "image_size": size,
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg.get("interpolation") or "bicubic",
        "resize_mode": cfg.get("resize_mode") or "shortest",
        "fill_color": int(cfg.get("fill_color") or 0),
    }


def _export_onnx(
    torch, module, example, path: Path, input_name: str, output_name: str = "embedding", input_axes=None
) -> None:
    """Traced export; the batch axis (and `input_axes`, e.g. DeepDanbooru's height and width) symbolic."""
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA path does not trace to ONNX
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter; parity is the real check
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: input_axes or {0: "batch"}, output_name: {0: "batch"}},
        )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _ort_run(path: Path, feed: np.ndarray) -> np.ndarray | None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - fp16 graphs may lack CPU kernels; recorded, not fatal
        log.warning("could not run %s on CPU for the parity check: %s", path.name, err)
        return None
    (out,) = session.run(None, {session.get_inputs()[0].name: feed})
    return out.astype(np.float32)


def _parity(reference: np.ndarray, candidate: np.ndarray | None) -> dict[str, Any]:
    if candidate is None:
        return {"checked": False}
    return {
        "checked": True,
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "min_cosine": float(_cosines(reference, candidate).min()),
    }


def _policy_prompts(extra: list[str]) -> list[str]:
    prompts: dict[str, None] = {}
    for spec in [*builtin_policies(), *extra]:
        for prompt in load_policy(spec).prompts:
            prompts.setdefault(prompt, None)
    return list(prompts)


def _policy_dd_tags(extra: list[str]) -> list[str]:
    """Every DeepDanbooru tag the policies read (a random-weight model must have them all)."""
    tags: dict[str, None] = {}
    for spec in [*builtin_policies(), *extra]:
        rule = getattr(load_policy(spec), "deepdanbooru", None)
        if rule is not None:
            tags.update(dict.fromkeys([*rule.rating_tags.values(), *rule.nsfw_tags, *rule.not_anime_tags]))
    return list(tags)


def export_bundle(opts: ExportOptions) -> dict[str, Any]:
    out = Path(opts.out)
    if out.exists() and not opts.force:
        raise ExportError(f"{out} already exists", hint="pass --force to replace it, or choose another --out")
    started = time.monotonic()
    with_dd = opts.deepdanbooru or opts.deepdanbooru_weights is not None
    if with_dd:
        weights = _check_deepdanbooru_options(opts)  # before the long CLIP export: a wrong checkpoint fails at once
    torch, open_clip, model = _build_model(opts)
    prep_cfg = _preprocess_cfg(open_clip, model)
    prep = Preprocess.from_manifest(prep_cfg, out)
    transform = open_clip.image_transform(
        tuple(prep_cfg["image_size"]),
        is_train=False,
        mean=tuple(prep_cfg["mean"]),
        std=tuple(prep_cfg["std"]),
        resize_mode=prep_cfg["resize_mode"],
        interpolation=prep_cfg["interpolation"],
        fill_color=prep_cfg["fill_color"],
    )
    tokenizer = open_clip.get_tokenizer(opts.arch)
    context_length = int(getattr(tokenizer, "context_length", 77))
    clip_bpe = isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)

    class ImageEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return torch.nn.functional.normalize(self.model.encode_image(pixels), dim=-1)

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens):
            return torch.nn.functional.normalize(self.model.encode_text(tokens), dim=-1)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    work.chmod(0o755)  # a bundle is not secret; the scanner may run as another user
    try:
        images = parity_images(opts.parity_images)
        torch_pixels = torch.stack([transform(img) for img in images])
        ours = np.stack([to_model_input(img, prep) for img in images])
        preprocess_diff = float(np.abs(torch_pixels.numpy() - ours).max())
        with torch.no_grad():
            ref_image = ImageEncoder()(torch_pixels).numpy()
            probe_prompts = ["a photo of a cat", "a diagram", "cartoon", "photo of a man"]
            probe_tokens = tokenizer(probe_prompts)
            ref_text = TextEncoder()(probe_tokens).numpy()

        files = {"image_fp32": "image_encoder.fp32.onnx", "text": "text_encoder.fp32.onnx"}
        _export_onnx(torch, ImageEncoder(), torch_pixels[:2], work / files["image_fp32"], "pixels")
        _export_onnx(torch, TextEncoder(), probe_tokens[:2], work / files["text"], "tokens")
        onnx_image = _ort_run(work / files["image_fp32"], torch_pixels.numpy())
        parity: dict[str, Any] = {
            "images": len(images),
            "image": _parity(ref_image, onnx_image),
            "text": _parity(ref_text, _ort_run(work / files["text"], probe_tokens.numpy().astype(np.int64))),
            "preprocess_max_abs_diff_vs_open_clip": preprocess_diff,
            "threshold_min_cosine": MIN_PARITY_COSINE,
        }
        for part in ("image", "text"):
            if parity[part]["min_cosine"] < MIN_PARITY_COSINE:
                raise ExportError(
                    f"ONNX {part} encoder disagrees with torch: min cosine {parity[part]['min_cosine']:.6f} "
                    f"< {MIN_PARITY_COSINE}",
                    hint="report the architecture and tool versions; the bundle was not written",
                )

        if opts.fp16:
            files["image_fp16"] = "image_encoder.fp16.onnx"
            _to_fp16(work / files["image_fp32"], work / files["image_fp16"])
            # Not run here: onnxruntime's CPU provider lacks fp16 kernels for these graphs (and was seen to
            # crash loading one). `mirror-scan model verify --device cuda` compares it with fp32 on a GPU.
            parity["fp16_vs_fp32"] = {"checked": False, "reason": "fp16 runs on CUDA; checked by model verify there"}
        if opts.quantize == "int8":
            files["image_int8"] = "image_encoder.int8.onnx"
            _to_int8(work / files["image_fp32"], work / files["image_int8"])
            parity["int8_vs_fp32"] = _parity(onnx_image, _ort_run(work / files["image_int8"], torch_pixels.numpy()))
            parity["int8_vs_fp32"]["quantization"] = DEFAULT_INT8_VARIANT
            parity["int8_vs_fp32"]["cpu"] = cpu_info().as_dict()  # int8 fidelity depends on the CPU

        tokenizer_info: dict[str, Any] = {"kind": "clip-bpe" if clip_bpe else "other", "context_length": context_length}
        if clip_bpe:
            tokenizer_info["file"] = "tokenizer.bpe.txt.gz"
            shutil.copyfile(open_clip.tokenizer.default_bpe(), work / tokenizer_info["file"])

        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": {
                "arch": opts.arch,
                "pretrained": opts.pretrained or "none",
                "embedding_dim": int(ref_image.shape[1]),
                "random_weights": opts.pretrained in (None, "", "none"),
            },
            "preprocess": prep_cfg,
            "tokenizer": tokenizer_info,
            "onnx": {
                "opset": OPSET,
                "image_input": "pixels",
                "text_input": "tokens",
                "output": "embedding",
                "output_normalised": True,
                "dynamic_batch": True,
            },
            "files": files,
            "tools": _versions(),
            "parity": parity,
        }
        manifest["sha256"] = {name: sha256_file(work / name) for name in manifest["files"].values()}
        if clip_bpe:
            manifest["sha256"][tokenizer_info["file"]] = sha256_file(work / tokenizer_info["file"])

        if with_dd:
            from .deepdanbooru import export_deepdanbooru

            manifest["deepdanbooru"] = export_deepdanbooru(
                work,
                weights,
                width_divisor=opts.deepdanbooru_width_divisor,
                extra_tags=_policy_dd_tags(opts.policies),
            )

        prompts = _policy_prompts(opts.policies)
        with torch.no_grad():
            concept_rows = [TextEncoder()(tokenizer(prompts[i : i + 64])).numpy() for i in range(0, len(prompts), 64)]
        manifest = write_concepts(work, manifest, prompts, np.concatenate(concept_rows))
        manifest["export_seconds"] = round(time.monotonic() - started, 2)
        write_concepts(work, manifest, prompts, np.concatenate(concept_rows))  # re-commit with the timing
        fsync_dir(work)
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    from mirror_scan.model.bundle import read_manifest

    return read_manifest(out)


def _check_deepdanbooru_options(opts: ExportOptions) -> Path | None:
    """The checkpoint to export (None: random weights, with --pretrained none): the file given, else the
    release's, downloaded into the cache; verified by its sha256 either way."""
    from .deepdanbooru import fetch_weights, verified_weights

    if opts.deepdanbooru_weights is not None:
        if opts.deepdanbooru_width_divisor != 1:
            raise ExportError("a narrowed DeepDanbooru is for random-weight test bundles only, not with its weights")
        verified_weights(opts.deepdanbooru_weights)
        return Path(opts.deepdanbooru_weights)
    if opts.pretrained not in (None, "", "none"):
        return fetch_weights()  # real CLIP weights get the real checkpoint, never random ones
    return None


def _replace_dir(work: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(out)
    fsync_dir(out.parent)


def _to_fp16(src: Path, dst: Path) -> None:
    # onnxruntime's converter; onnxconverter-common's leaves a Cast whose type ORT rejects.
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


# Weight quantisation variants (scripts/bench_model.py --int8-variants measures them all). On x86-64
# without VNNI (AVX2, and AVX-512 without VNNI) onnxruntime's u8s8 kernels add pairs of u8 x s8 products
# into 16 bits, which saturates with full-range weights: similarities drift by ~1e-2. 7-bit weights
# (reduce_range) cannot saturate; per-channel scales win back the bit. VNNI CPUs are exact either way.
INT8_VARIANTS: dict[str, dict] = {
    "per-tensor": {},
    "reduce-range": {"reduce_range": True},
    "per-channel": {"per_channel": True},
    "reduce-range+per-channel": {"reduce_range": True, "per_channel": True},
}
DEFAULT_INT8_VARIANT = "reduce-range+per-channel"


def quantize_int8(src: Path, dst: Path, variant: str = DEFAULT_INT8_VARIANT) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Weights-only dynamic quantisation of the matrix multiplies: the transformer's bulk.
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        **INT8_VARIANTS[variant],
    )


def cpu_info():
    from mirror_scan.model.cpu import cpu_info as probe

    return probe()


def _to_int8(src: Path, dst: Path) -> None:
    quantize_int8(src, dst)
