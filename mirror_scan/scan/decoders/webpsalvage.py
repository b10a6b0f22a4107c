"""A truncated still WebP, as browsers show it: the rows that arrived. Pillow decodes a WebP whole or not at
all; browsers use libwebp's incremental decoder, which draws each row as its data comes in, so a file cut
short shows its top part, and a damaged one its rows before the damage. This is that decoder (libwebp's
WebPINewRGB / WebPIAppend / WebPIDecGetRGB, a stable C API), through ctypes, on the libwebp that Pillow
itself uses (its wheel's copy, or the system's).

The rows that did not arrive are neutral grey (as a viewer's empty background). Lossy (VP8) and lossless
(VP8L) stills. A cut animated WebP shows the frames that arrived whole: `whole_frames` writes the file
again with those frames only (RIFF chunks by their sizes, no decoder), and a cut first frame is drawn
row by row like a still. Runs in the decoder worker processes like every decode."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
from pathlib import Path

import numpy as np
from PIL import Image

MODE_RGB = 0  # WEBP_CSP_MODE
VP8_STATUS_OK, VP8_STATUS_SUSPENDED = 0, 5
FEED_PIECES = 256  # a damaged file is fed in this many pieces: the rows before the damage, to 1/256 of it


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
        if all(hasattr(lib, name) for name in ("WebPGetInfo", "WebPINewRGB", "WebPIAppend", "WebPIDecGetRGB")):
            lib.WebPGetInfo.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int),
                                        ctypes.POINTER(ctypes.c_int)]  # fmt: skip
            lib.WebPINewRGB.restype = ctypes.c_void_p
            lib.WebPINewRGB.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            lib.WebPIAppend.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
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
    rows = _rows_decoded(lib, data, pixels, [len(data)])
    if rows is None:  # damaged, not cut: the rows before the damage, as browsers draw them, fed in pieces
        step = max(1, len(data) // FEED_PIECES)
        pixels[:] = 128
        rows = _rows_decoded(lib, data, pixels, [*range(step, len(data), step), len(data)])
    if not rows:
        return None
    return Image.fromarray(pixels, "RGB"), rows, h


def _rows_decoded(lib: ctypes.CDLL, data: bytes, pixels: np.ndarray, ends: list[int]) -> int | None:
    """Feed the decoder the data up to each of `ends` in turn: the rows decoded before it stopped or the data
    ended (None when the first piece already fails)."""
    h, w = pixels.shape[:2]
    decoder = lib.WebPINewRGB(MODE_RGB, pixels.ctypes.data, pixels.nbytes, w * 3)
    if not decoder:
        return None
    rows, start = None, 0
    try:
        for end in ends:
            if lib.WebPIAppend(decoder, data[start:end], end - start) not in (VP8_STATUS_OK, VP8_STATUS_SUSPENDED):
                break
            start = end
            last_y = ctypes.c_int(0)
            lib.WebPIDecGetRGB(decoder, ctypes.byref(last_y), None, None, None)
            rows = last_y.value
    finally:
        lib.WebPIDelete(decoder)
    return rows


def _chunks(data: bytes, at: int, end: int) -> list[tuple[bytes, int, int, bool]]:
    """(fourcc, payload start, payload end, whole) of the RIFF chunks from `at`; the last may be cut."""
    found = []
    while at + 8 <= end:
        fourcc, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        stop = at + 8 + size
        found.append((fourcc, at + 8, min(stop, end), stop <= end))
        at = stop + (size & 1)
    return found


def _riff(chunks: list[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")


def whole_frames(data: bytes) -> tuple[bytes | None, int, bool] | None:
    """A cut animated WebP: (the file again with only its whole frames, or None when no frame is whole; how
    many frames are whole; whether a cut frame follows them). None: not an animated WebP cut short."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    declared = int.from_bytes(data[4:8], "little") + 8
    chunks = _chunks(data, 12, len(data))
    if not chunks or chunks[0][0] != b"VP8X" or declared <= len(data) and all(whole for *_, whole in chunks):
        return None
    if not any(fourcc == b"ANIM" for fourcc, *_ in chunks):
        return None
    kept, frames, cut = [], 0, False
    for fourcc, start, stop, whole in chunks:
        if not whole or (fourcc == b"ANMF" and stop - start < 16):
            cut = cut or fourcc == b"ANMF"
            break
        if fourcc == b"ANMF":
            frames += 1
        if fourcc in (b"VP8X", b"ANIM", b"ANMF", b"ICCP"):  # EXIF and XMP come after the frames: not needed
            kept.append(_chunk(fourcc, data[start:stop]))
    return (_riff(kept) if frames else None), frames, cut


def first_frame_still(data: bytes) -> bytes | None:
    """The first frame of a cut animated WebP as a still WebP (its bitstream as far as it goes, alpha left
    out), for the row-by-row decoder."""
    chunks = _chunks(data, 12, len(data))
    anmf = next(((start, stop) for fourcc, start, stop, _ in chunks if fourcc == b"ANMF"), None)
    if anmf is None or anmf[1] - anmf[0] <= 16:
        return None
    for fourcc, start, stop, _ in _chunks(data, anmf[0] + 16, anmf[1]):
        if fourcc in (b"VP8 ", b"VP8L"):
            payload = data[start:stop]
            declared = int.from_bytes(data[start - 4 : start], "little")
            if declared > 0xFFFFFFFF - 12:
                return None  # no RIFF can hold it: not a frame to draw
            # The chunk keeps its declared size: the incremental decoder waits for the bytes still to come.
            return b"RIFF" + struct.pack("<I", 4 + 8 + declared) + b"WEBP" + fourcc + data[start - 4 : start] + payload
    return None
