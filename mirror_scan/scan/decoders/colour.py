"""The colours a browser draws: what the model sees is what a viewer shows, not the samples as stored.

Browsers colour-manage: an embedded ICC profile (PNG iCCP, JPEG APP2, WebP, TIFF, AVIF/HEIF) is converted to
the screen's sRGB, and a PNG with a gAMA chunk and neither iCCP nor sRGB has that gamma applied (Chromium:
Skia's transfer function from gAMA). Pillow does neither, so an uploader could store samples the model
reads as a washed-out blank while every browser draws the picture (gAMA 0.1: mean 196 as stored, 110/85/76
drawn). The PDQ hash stays Meta's, computed from the samples as stored (hashes.reference_pixels): only the
model's views pass through here.

A PNG's cICP chunk comes first, as in Chromium (it overrides iCCP and gAMA): its SDR transfer functions
(BT.709/601/2020 drawn as BT.1886's gamma 2.4, gamma 2.2 and 2.8, linear, sRGB) and its primaries (BT.709,
BT.601, BT.2020, Display P3) are converted to sRGB, measured against headless Chromium; the HDR transfers
(PQ, HLG), which Chromium tone-maps across channels, are not applied (a known gap: docs/architecture.md).

A CMYK JPEG with a CMYK profile is drawn as Chromium draws it (measured): its black folded into the
other three inks first (c + k(1 - c), ...; no black left), then the profile to sRGB; without a profile,
Pillow's conversion, which is Chromium's too.

A profile that cannot be read, or that does not fit the picture's colours (a grey profile on an RGB
picture), is ignored, as browsers ignore it."""

from __future__ import annotations

import functools
import hashlib
import io
import logging

import numpy as np
from PIL import Image, ImageCms, ImageFile, PngImagePlugin

log = logging.getLogger(__name__)


def _chunk_cicp(self, pos: int, length: int) -> bytes:
    """Pillow keeps a PNG's cICP chunk only when writing; read, it is kept in `info["cicp"]` here."""
    del pos
    data = ImageFile._safe_read(self.fp, length)
    if length == 4:
        self.im_info["cicp"] = tuple(data)
    return data


PngImagePlugin.PngStream.chunk_cICP = _chunk_cicp  # process-wide, like decode.py's other Pillow settings

SCREEN_GAMMA = 2.2  # the display exponent Chromium's gAMA handling assumes (sRGB's, near enough)


def displayed(image: Image.Image, info: dict) -> Image.Image:
    """An RGB or RGBA picture (or a CMYK one, drawn as RGB) as a browser draws it, given the decoded
    file's `info` (Pillow's)."""
    if image.mode == "CMYK":
        return _cmyk_displayed(image, info.get("icc_profile"))
    if image.mode not in ("RGB", "RGBA"):
        return image
    cicp = info.get("cicp")
    if cicp is not None:
        drawn = _with_cicp(image, *cicp)
        if drawn is not None:
            return drawn
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


def _cmyk_displayed(image: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB as Chromium draws a CMYK picture: with a CMYK profile, black folded into C, M and Y, then the
    profile (see the module's text); without one, or with one that cannot be used, Pillow's conversion."""
    transform = _cmyk_to_srgb(hashlib.sha256(icc).digest(), icc) if icc else None
    if transform is None:
        return image.convert("RGB")
    inks = np.asarray(image).astype(np.uint16)
    black = inks[..., 3:4]
    folded = inks[..., :3] + (black * (255 - inks[..., :3]) + 127) // 255
    flat = np.concatenate([folded, np.zeros_like(black)], axis=-1).astype(np.uint8)
    return ImageCms.applyTransform(Image.fromarray(flat, "CMYK"), transform)


@functools.lru_cache(maxsize=16)
def _cmyk_to_srgb(digest: bytes, icc: bytes):
    del digest
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if source.profile.xcolor_space.strip() != "CMYK":
            return None
        return ImageCms.buildTransform(source, _SRGB, "CMYK", "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as err:
        log.debug("an embedded CMYK profile is ignored: %s", err)
        return None


def _with_exponent(image: Image.Image, exponent: float) -> Image.Image:
    """Each colour sample v (0-255) as 255 * (v / 255) ** exponent; alpha untouched."""
    table = np.round(255.0 * (np.arange(256) / 255.0) ** exponent).astype(np.uint8).tolist()
    bands = len(image.getbands())
    lut = table * 3 + (list(range(256)) if bands == 4 else [])
    return image.point(lut)


# cICP (ITU-T H.273 code points): what Chromium (skcms) draws each SDR transfer as, and the primaries it
# converts from (CIE xy of red, green, blue; every one here has the D65 white point).
CICP_EXPONENT = {1: 2.4, 6: 2.4, 14: 2.4, 15: 2.4, 4: 2.2, 5: 2.8, 8: 1.0}  # 13: sRGB itself
CICP_PRIMARIES = {
    1: ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)),  # BT.709, sRGB's
    5: ((0.64, 0.33), (0.29, 0.60), (0.15, 0.06)),  # BT.601 625
    6: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070)),  # BT.601 525
    7: ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070)),  # SMPTE 240M
    9: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),  # BT.2020
    12: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),  # Display P3
}
D65 = (0.3127, 0.3290)


def _with_cicp(image: Image.Image, primaries: int, transfer: int, matrix: int, full_range: int) -> Image.Image | None:
    """The picture drawn from its cICP code points, or None where Chromium's drawing is not reproduced
    here (HDR transfers, unknown code points, a matrix other than RGB's)."""
    del full_range  # Chromium draws a PNG's samples full range whatever the flag says (measured)
    if matrix != 0 or primaries not in CICP_PRIMARIES or (transfer != 13 and transfer not in CICP_EXPONENT):
        return None
    if primaries == 1:
        if transfer == 13:
            return image
        return _with_exponent_then_srgb(image, CICP_EXPONENT[transfer])
    levels = np.arange(256) / 255.0
    linear = _srgb_to_linear(levels) if transfer == 13 else levels ** CICP_EXPONENT[transfer]
    arr = np.asarray(image)
    rgb = linear[arr[..., :3]].astype(np.float32) @ _to_srgb_primaries(primaries).T.astype(np.float32)
    out = np.round(255.0 * _linear_to_srgb(np.clip(rgb, 0.0, 1.0))).astype(np.uint8)
    if arr.shape[-1] == 4:
        out = np.concatenate([out, arr[..., 3:]], axis=-1)
    return Image.fromarray(out, image.mode)


def _with_exponent_then_srgb(image: Image.Image, exponent: float) -> Image.Image:
    table = np.round(255.0 * _linear_to_srgb((np.arange(256) / 255.0) ** exponent)).astype(np.uint8).tolist()
    lut = table * 3 + (list(range(256)) if len(image.getbands()) == 4 else [])
    return image.point(lut)


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1 / 2.4) - 0.055)


@functools.lru_cache(maxsize=8)
def _to_srgb_primaries(primaries: int) -> np.ndarray:
    """The 3x3 matrix from linear RGB in these primaries to linear sRGB (through XYZ, same white)."""
    return np.linalg.inv(_rgb_to_xyz(CICP_PRIMARIES[1])) @ _rgb_to_xyz(CICP_PRIMARIES[primaries])


def _rgb_to_xyz(xy: tuple) -> np.ndarray:
    columns = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in xy]).T
    white = np.array([D65[0] / D65[1], 1.0, (1 - D65[0] - D65[1]) / D65[1]])
    return columns * np.linalg.solve(columns, white)
