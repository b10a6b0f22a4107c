"""A truncated JPEG XL, as viewers that support it show it: what arrived. JPEG XL is progressive by design
(every frame's 1:8 DC image comes before its detail, and lossless files come group by group), and libjxl
draws what has arrived (JxlDecoderFlushImage) where Pillow's plugin decodes a file whole or not at all.
This is libjxl's decoder (its stable C API) through ctypes, on the system's libjxl (Debian's libjxl0.7,
installed by scripts/install.sh). Only the first frame; the orientation as stored, then turned the way the
file says (as the JXL header's orientation, the same eight values as EXIF's). What never arrived is
neutral grey. Runs in the decoder worker processes like every decode."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np
from PIL import Image

from mirror_scan.scan.decoders.quiet import worker_stderr_quiet

SUCCESS, ERROR, NEED_MORE_INPUT, NEED_IMAGE_OUT_BUFFER = 0, 1, 2, 5
BASIC_INFO, FULL_IMAGE = 0x40, 0x1000
UINT8 = 2  # JxlDataType
BASIC_INFO_BYTES = 512  # JxlBasicInfo is 204 bytes in libjxl 0.7-0.11: room to spare
ORIENTATION_OFFSET = 48  # JxlBasicInfo.orientation (after 12 four-byte fields)
TRANSPOSE = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
             4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_270],
             7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_90]}  # fmt: skip


class _PixelFormat(ctypes.Structure):
    _fields_ = [("num_channels", ctypes.c_uint32), ("data_type", ctypes.c_int), ("endianness", ctypes.c_int),
                ("align", ctypes.c_size_t)]  # fmt: skip


@functools.cache
def _libjxl() -> ctypes.CDLL | None:
    names = ["libjxl.so.0.7", ctypes.util.find_library("jxl")]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if not hasattr(lib, "JxlDecoderFlushImage"):
            continue
        lib.JxlDecoderCreate.restype = ctypes.c_void_p
        lib.JxlDecoderCreate.argtypes = [ctypes.c_void_p]
        lib.JxlDecoderDestroy.argtypes = [ctypes.c_void_p]
        for name_ in ("JxlDecoderSubscribeEvents", "JxlDecoderSetKeepOrientation"):
            getattr(lib, name_).argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.JxlDecoderSetInput.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.JxlDecoderProcessInput.argtypes = [ctypes.c_void_p]
        lib.JxlDecoderGetBasicInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.JxlDecoderImageOutBufferSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(_PixelFormat),
                                                     ctypes.POINTER(ctypes.c_size_t)]  # fmt: skip
        lib.JxlDecoderSetImageOutBuffer.argtypes = [ctypes.c_void_p, ctypes.POINTER(_PixelFormat), ctypes.c_void_p,
                                                    ctypes.c_size_t]  # fmt: skip
        lib.JxlDecoderFlushImage.argtypes = [ctypes.c_void_p]
        return lib
    return None


def available() -> bool:
    return _libjxl() is not None


def salvage(data: bytes, max_pixels: int) -> tuple[Image.Image, bool] | None:
    """(the first frame as far as it arrived, whether it is whole) of a JPEG XL, or None when nothing can be
    drawn (no libjxl, not JPEG XL, nothing of the picture arrived)."""
    lib = _libjxl()
    if lib is None:
        return None
    with worker_stderr_quiet():
        return _decode(lib, data, max_pixels, 3)  # RGB: libjxl converts greyscale, drops alpha (its colour kept)


def _decode(lib: ctypes.CDLL, data: bytes, max_pixels: int, channels: int) -> tuple[Image.Image, bool] | None:
    decoder = lib.JxlDecoderCreate(None)
    if not decoder:
        return None
    fmt = _PixelFormat(channels, UINT8, 0, 0)
    info = ctypes.create_string_buffer(BASIC_INFO_BYTES)
    pixels: np.ndarray | None = None
    size = (0, 0)
    orientation = 1
    try:
        if lib.JxlDecoderSubscribeEvents(decoder, BASIC_INFO | FULL_IMAGE) != SUCCESS:
            return None
        lib.JxlDecoderSetKeepOrientation(decoder, 1)
        if lib.JxlDecoderSetInput(decoder, data, len(data)) != SUCCESS:
            return None
        while True:
            status = lib.JxlDecoderProcessInput(decoder)
            if status == BASIC_INFO:
                if lib.JxlDecoderGetBasicInfo(decoder, info) != SUCCESS:
                    return None
                width, height = (int.from_bytes(info.raw[at : at + 4], "little") for at in (4, 8))
                orientation = int.from_bytes(info.raw[ORIENTATION_OFFSET : ORIENTATION_OFFSET + 4], "little")
                if width <= 0 or height <= 0 or width * height > max_pixels:
                    return None
                size = (width, height)
            elif status == NEED_IMAGE_OUT_BUFFER:
                needed = ctypes.c_size_t()
                if lib.JxlDecoderImageOutBufferSize(decoder, ctypes.byref(fmt), ctypes.byref(needed)) != SUCCESS:
                    return None
                if needed.value != size[0] * size[1] * channels:
                    return None  # not the layout asked for
                pixels = np.full((size[1], size[0], channels), 128, np.uint8)
                if lib.JxlDecoderSetImageOutBuffer(decoder, ctypes.byref(fmt), pixels.ctypes.data, pixels.nbytes):
                    return None
            elif status == FULL_IMAGE:
                return _image(pixels, orientation), True
            elif status == NEED_MORE_INPUT:
                if pixels is None or lib.JxlDecoderFlushImage(decoder) != SUCCESS:
                    return None  # nothing of the picture arrived
                return _image(pixels, orientation), False
            else:  # an error, or the end without a frame
                return None
    finally:
        lib.JxlDecoderDestroy(decoder)


def _image(pixels: np.ndarray, orientation: int) -> Image.Image:
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    for step in TRANSPOSE.get(orientation, []):
        image = image.transpose(step)
    return image
