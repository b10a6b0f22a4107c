"""A truncated still WebP, as browsers show it: the rows that arrived. Pillow decodes a WebP whole or not at
all; browsers use libwebp's incremental decoder, which draws each row as its data comes in, so a file cut
short shows its top part. This is that decoder (libwebp's WebPINewRGB / WebPIUpdate / WebPIDecGetRGB, a
stable C API), through ctypes, on the libwebp that Pillow itself uses (its wheel's copy, or the system's).

The rows that did not arrive are neutral grey (as a viewer's empty background). Lossy (VP8) and lossless
(VP8L) stills; animated WebP is not salvaged here. Runs in the decoder worker processes like every decode."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import numpy as np
from PIL import Image

MODE_RGB = 0  # WEBP_CSP_MODE
VP8_STATUS_OK, VP8_STATUS_SUSPENDED = 0, 5


@functools.cache
def _libwebp() -> ctypes.CDLL | None:
    import PIL

    candidates = sorted((Path(PIL.__file__).parent.parent / "pillow.libs").glob("libwebp-*.so*"))
    system = ctypes.util.find_library("webp")
    for path in [*map(str, candidates), *([system] if system else [])]:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, name) for name in ("WebPGetInfo", "WebPINewRGB", "WebPIUpdate", "WebPIDecGetRGB")):
            lib.WebPGetInfo.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int),
                                        ctypes.POINTER(ctypes.c_int)]  # fmt: skip
            lib.WebPINewRGB.restype = ctypes.c_void_p
            lib.WebPINewRGB.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            lib.WebPIUpdate.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            lib.WebPIDecGetRGB.restype = ctypes.c_void_p
            lib.WebPIDecGetRGB.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(ctypes.c_int)] * 4
            lib.WebPIDelete.argtypes = [ctypes.c_void_p]
            return lib
    return None


def available() -> bool:
    return _libwebp() is not None


def salvage(data: bytes, max_pixels: int) -> tuple[Image.Image, int, int] | None:
    """(picture, rows decoded, rows in all) of a truncated still WebP, or None when nothing can be drawn
    (not a still WebP, no libwebp, no row arrived)."""
    lib = _libwebp()
    if lib is None or data[:4] != b"RIFF" or data[8:12] != b"WEBP" or b"ANIM" in data[12:64]:
        return None
    width, height = ctypes.c_int(), ctypes.c_int()
    if not lib.WebPGetInfo(data, len(data), ctypes.byref(width), ctypes.byref(height)):
        return None
    w, h = width.value, height.value
    if w <= 0 or h <= 0 or w * h > max_pixels:
        return None
    pixels = np.full((h, w, 3), 128, np.uint8)  # rows that never arrive stay neutral grey
    decoder = lib.WebPINewRGB(MODE_RGB, pixels.ctypes.data, pixels.nbytes, w * 3)
    if not decoder:
        return None
    try:
        status = lib.WebPIUpdate(decoder, data, len(data))
        if status not in (VP8_STATUS_OK, VP8_STATUS_SUSPENDED):
            return None
        last_y = ctypes.c_int(0)
        lib.WebPIDecGetRGB(decoder, ctypes.byref(last_y), None, None, None)
        rows = last_y.value
    finally:
        lib.WebPIDelete(decoder)
    if rows <= 0:
        return None
    return Image.fromarray(pixels, "RGB"), rows, h
