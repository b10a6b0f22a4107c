"""The colours a browser draws: what the model sees is what a viewer shows, not the samples as stored.

Browsers colour-manage: an embedded ICC profile (PNG iCCP, JPEG APP2, WebP, TIFF, AVIF/HEIF) is converted to
the screen's sRGB, and a PNG with a gAMA chunk and neither iCCP nor sRGB has that gamma applied (Chromium:
Skia's transfer function from gAMA). Pillow does neither, so an uploader could store samples the model
reads as a washed-out blank while every browser draws the picture (gAMA 0.1: mean 196 as stored, 110/85/76
drawn). The PDQ hash stays Meta's, computed from the samples as stored (hashes.reference_pixels): only the
model's views pass through here.

A profile that cannot be read, or that does not fit the picture's colours (a grey profile on an RGB
picture), is ignored, as browsers ignore it. CMYK pictures keep Pillow's conversion; cICP (HDR signalling)
is not applied (a known gap: docs/architecture.md)."""

from __future__ import annotations

import functools
import hashlib
import io
import logging

import numpy as np
from PIL import Image, ImageCms

log = logging.getLogger(__name__)

SCREEN_GAMMA = 2.2  # the display exponent Chromium's gAMA handling assumes (sRGB's, near enough)


def displayed(image: Image.Image, info: dict) -> Image.Image:
    """An RGB or RGBA picture as a browser draws it, given the decoded file's `info` (Pillow's)."""
    if image.mode not in ("RGB", "RGBA"):
        return image
    icc = info.get("icc_profile")
    if icc:
        transform = _to_srgb(hashlib.sha256(icc).digest(), icc, image.mode)
        return image if transform is None else ImageCms.applyTransform(image, transform)
    gamma = info.get("gamma")
    if isinstance(gamma, (int, float)) and "srgb" not in info and 0.01 <= gamma <= 10.0:
        exponent = 1.0 / (gamma * SCREEN_GAMMA)
        if abs(exponent - 1.0) > 0.01:
            return _with_exponent(image, exponent)
    return image


@functools.lru_cache(maxsize=64)
def _to_srgb(digest: bytes, icc: bytes, mode: str):
    """A littlecms transform from the embedded profile to sRGB (cached by the profile's bytes), or None
    when the profile cannot be used for this picture."""
    del digest  # the cache key: profiles repeat across a bucket's files
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.buildTransform(source, _SRGB, mode, mode, renderingIntent=ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as err:
        log.debug("an embedded colour profile is ignored: %s", err)
        return None


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _with_exponent(image: Image.Image, exponent: float) -> Image.Image:
    """Each colour sample v (0-255) as 255 * (v / 255) ** exponent; alpha untouched."""
    table = np.round(255.0 * (np.arange(256) / 255.0) ** exponent).astype(np.uint8).tolist()
    bands = len(image.getbands())
    lut = table * 3 + (list(range(256)) if bands == 4 else [])
    return image.point(lut)
