"""JPEG decoding by NVIDIA's nvImageCodec (setting `jpeg_decoder`). On a GPU machine the whole decode
that PDQ and the model's view share, the largest CPU cost of a scan (docs/benchmarks.md), runs on nvJPEG
(the card's hardware JPEG decoder where it has one, else CUDA); the rest of the path is unchanged.

Backends, as Limits.jpeg_decoder carries them (resolve() turns the setting into one):
- "pillow": Pillow's libjpeg-turbo, as without this module;
- "nvimgcodec-gpu": nvJPEG only (never its CPU codec, so "on the GPU" is what happened);
- "nvimgcodec-cpu": nvImageCodec's own libjpeg-turbo backend. Pillow's pixels exactly: how the
  integration is tested on machines without a GPU.

Only what nvJPEG is known to decode the way browsers do goes to it: a whole (not cut) baseline,
extended or progressive Huffman-coded JPEG of three components in YCbCr (MPO's pictures are JPEGs of
their own and go through here one by one). Anything else (greyscale, CMYK, Adobe RGB-coded, lossless or
arithmetic-coded, cut), any failure of the library and any file it prints a word about fall back to
Pillow, per file, with the same verdicts. The EXIF orientation is applied by the caller, as for
Pillow's pixels (PDQ is taken before it)."""

from __future__ import annotations

import functools
import io
import logging
import threading
import time

import numpy as np
from PIL import Image

from mirror_scan.errors import UsageError
from mirror_scan.scan.decoders.decoded import clock
from mirror_scan.scan.decoders.quiet import in_worker, stderr_captured, worker_stderr_quiet

PILLOW, GPU, CPU = "pillow", "nvimgcodec-gpu", "nvimgcodec-cpu"
SETTINGS = ("pillow", "auto", "nvimgcodec")
INSTALL_HINT = "pip install nvidia-nvimgcodec-cu12 nvidia-nvjpeg-cu12 (with an NVIDIA driver and GPU)"
PROBE_MAX_MEAN_DIFF = 2.0  # nvJPEG's IDCT and upsampling differ from libjpeg-turbo's by a level or two

log = logging.getLogger(__name__)
# One decoder per thread: a worker process decodes on one thread; the main process only probes (works()).
_local = threading.local()


def _module():
    try:
        with worker_stderr_quiet(always=True):  # it lists every codec library it cannot find
            from nvidia import nvimgcodec
    except Exception:  # noqa: BLE001 - not installed, or its native part cannot load: Pillow decodes
        return None
    return nvimgcodec


def _decoder(backend: str):
    decoders = getattr(_local, "decoders", None)
    if decoders is None:
        decoders = _local.decoders = {}
    if backend not in decoders:
        decoders[backend] = None
        nv = _module()
        if nv is not None:
            try:
                with worker_stderr_quiet(always=True):
                    if backend == CPU:
                        made = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, backends=[nv.Backend(nv.CPU_ONLY)])
                    else:
                        made = nv.Decoder(backends=[nv.Backend(nv.HW_GPU_ONLY), nv.Backend(nv.GPU_ONLY),
                                                    nv.Backend(nv.HYBRID_CPU_GPU)])  # fmt: skip
                decoders[backend] = (nv, made)
            except Exception:  # noqa: BLE001 - no CUDA driver or device: Pillow decodes
                pass
    return decoders[backend]


def rgb_pixels(data: bytes, backend: str) -> np.ndarray | None:
    """The JPEG's pixels as nvImageCodec decodes them (H x W x 3 uint8, as stored: no EXIF rotation), or
    None when the library, the device or the file is not up to it. A file it says anything about is not
    taken: nvImageCodec prints libjpeg's errors and returns the pixels anyway (a bad marker between the
    last scan and EOI, a second SOF), where Pillow's strict decode refuses the file and its lenient pass
    says "partial"; Pillow then decodes it, so the verdict and its notes are Pillow's."""
    made = _decoder(backend)
    if made is None:
        return None
    nv, decoder = made
    try:
        with stderr_captured() as said:
            params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB, allow_any_depth=False)
            image = decoder.decode(data, params=params)
            pixels = None if image is None else np.asarray(image.cpu())
    except Exception:  # noqa: BLE001 - a stream it refuses: Pillow decodes it
        return None
    if pixels is None or said.text or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    return pixels


HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive: the JPEGs browsers draw


def _huffman_frame(data: bytes) -> bool:
    """The first frame header, found by walking the segments before the first scan, is SOF0-2: lossless,
    hierarchical and arithmetic-coded JPEGs (no browser draws them) stay with Pillow."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            return marker in HUFFMAN_FRAMES
        if marker == 0xDA:
            return False
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return False


def _whole(data: bytes) -> bool:
    """An end-of-image marker after the first scan: a cut file keeps Pillow's path, with its truncation
    note and the lenient decode browsers do (in entropy-coded data 0xFF is always stuffed, so FF D9 there is
    the marker)."""
    sos = data.find(b"\xff\xda")
    return sos != -1 and data.rfind(b"\xff\xd9") > sos


def takes(img: Image.Image) -> bool:
    """A JPEG of three YCbCr components (an Adobe marker with transform 0 means RGB-coded: Pillow's)."""
    if img.format not in ("JPEG", "MPO") or img.mode != "RGB" or len(getattr(img, "layer", ())) != 3:
        return False
    return not ("adobe" in img.info and img.info.get("adobe_transform", 1) == 0)


def decoded(img: Image.Image, data: bytes, backend: str) -> Image.Image:
    """img (an opened, not yet loaded JPEG) with its pixels from nvImageCodec and its info (EXIF, ICC
    profile) kept; img itself, for Pillow to load, when the backend is Pillow or nvImageCodec declines.
    Only in decoder worker processes (decoders = "process", the default): a damaged file is known only by
    what the library prints, which in-process decodes cannot take from stderr."""
    if backend == PILLOW or not in_worker() or not takes(img) or not _huffman_frame(data) or not _whole(data):
        return img
    started = time.thread_time()
    pixels = rgb_pixels(data, backend)
    if pixels is None or pixels.shape[:2] != (img.height, img.width):
        return img  # the attempt's CPU stays in "decode", with Pillow's
    clock.add("nvjpeg", time.thread_time() - started)  # counted only when taken: the scan's stage_cpu_s
    picture = Image.fromarray(pixels, "RGB")
    picture.info = dict(img.info)
    # Pillow's own reading of the EXIF, not a second parse of the bytes: a malformed block that Pillow
    # reads as empty must not fail the decode here (getexif returns a loaded Exif as it is).
    picture._exif = img.getexif()
    return picture


@functools.cache
def works(backend: str) -> bool:
    """The backend decodes a generated JPEG to nearly Pillow's pixels in this process (imports the library
    and, for the GPU, starts a CUDA context)."""
    y, x = np.mgrid[0:96, 0:128]
    source = np.stack([x * 2, y * 2, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(source, "RGB").save(buffer, "JPEG", quality=90)
    expected = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.int16)
    pixels = rgb_pixels(buffer.getvalue(), backend)
    if pixels is None or pixels.shape != expected.shape:
        return False
    return float(np.abs(pixels.astype(np.int16) - expected).mean()) <= PROBE_MAX_MEAN_DIFF


def resolve(setting: str, decoders: str = "process") -> str:
    """The backend for the setting: "pillow"; "auto" (nvJPEG when it works here, else Pillow);
    "nvimgcodec" (nvJPEG, or a UsageError saying what is missing). In-process decoders never use it."""
    if setting == "pillow":
        return PILLOW
    if setting not in SETTINGS:
        raise UsageError(f"jpeg_decoder must be one of {', '.join(SETTINGS)}, not {setting!r}")
    if decoders != "process":
        if setting == "nvimgcodec":
            raise UsageError("jpeg_decoder = nvimgcodec needs decoders = process (the default)")
        log.info("jpeg_decoder = auto with decoders = %s: Pillow decodes JPEGs", decoders)
        return PILLOW
    if works(GPU):
        log.info("JPEGs are decoded by nvJPEG on the GPU (jpeg_decoder = %s)", setting)
        return GPU
    missing = "nvImageCodec is not installed" if _module() is None else "nvImageCodec found no working GPU decoder"
    if setting == "auto":
        log.info("jpeg_decoder = auto: %s, so Pillow decodes JPEGs", missing)
        return PILLOW
    raise UsageError(f"jpeg_decoder = nvimgcodec, but {missing}: {INSTALL_HINT}; or set jpeg_decoder = auto or pillow")
