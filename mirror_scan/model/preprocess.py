"""open_clip's inference transform in Pillow + numpy (no torch at scan time).

open_clip (mode 'shortest', square target): torchvision Resize(S) on the shortest side with PIL
resampling, CenterCrop(S), convert to RGB, ToTensor (/255), Normalize(mean, std). Mode 'squash':
Resize((S, S)). Tests compare this module with open_clip's own transform on generated images.

Three ways to the model's view (the setting `resize`, RESIZE_MODES): "exact" (open_clip's transform on the
whole picture), "reduced" (REDUCING_GAP) and "thumbnail512" (THUMBNAIL_SIDE: fedi-safety's path).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from mirror_scan.model.bundle import Preprocess

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# Up to this many pixels the intermediate resize is done whole, matching open_clip bit for bit.
MAX_EXACT_RESIZE_PIXELS = 8_000_000
# The "reduced" resize (setting `resize`): Pillow's reducing_gap, a box reduction by a whole factor that
# leaves at least twice the target size, then the bicubic. A 2318x1838 JPEG's view in a third of the CPU
# (7 ms against 20 here), its pixels a mean 0.3 of 255 from open_clip's (scripts/bench_scan.py --floor).
REDUCING_GAP = 2.0
# The "thumbnail512" resize: fedi-safety's path (db0/fedi-safety 4ec5574, fedi_safety/check.py: check_image
# calls image.thumbnail((512, 512)) on the file as Image.open left it, then horde-safety hands it to
# clip_interrogator 0.6.0's image_to_features, open_clip's transform), so scores are comparable with the
# thresholds as fedi-safety applies them. The thumbnail is Pillow 9.3's, the version fedi-safety pins
# (pillow~=9.3.0): a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 size (draft) when that still leaves twice
# the thumbnail's size. Pillow >= 10.4 asks for twice the requested box (1024x1024) instead, a smaller or no
# reduction for pictures that are not square (python-pillow/Pillow cc83cc8, "Updated type hints").
THUMBNAIL_SIDE = 512
THUMBNAIL_GAP = 2.0
RESIZE_MODES = ("exact", "reduced", "thumbnail512")


def _round_aspect(number: float, key) -> int:
    return max(min(math.floor(number), math.ceil(number), key=key), 1)


def thumbnail_size(width: int, height: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int] | None:
    """The size Pillow's thumbnail((side, side)) gives (its preserve_aspect_ratio); None: it fits already."""
    if side >= width and side >= height:
        return None
    aspect = width / height
    x = y = side
    if x / y >= aspect:
        x = _round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = _round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def draft_request(width: int, height: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int] | None:
    """The size Pillow 9.3's thumbnail asks a JPEG's draft for (twice the thumbnail's); None: no thumbnail."""
    final = thumbnail_size(width, height, side)
    return None if final is None else (int(final[0] * THUMBNAIL_GAP), int(final[1] * THUMBNAIL_GAP))


def draft_scale(width: int, height: int, side: int = THUMBNAIL_SIDE) -> int:
    """The reduction libjpeg decodes a JPEG at in that thumbnail (JpegImagePlugin.draft): 1, 2, 4 or 8."""
    request = draft_request(width, height, side)
    if request is None:
        return 1
    scale = min(width // request[0], height // request[1])
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def thumbnail(img: Image.Image, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """Pillow 9.3's img.thumbnail((side, side)) (bicubic, reducing_gap 2.0) as a function: a new picture, or
    img itself when it fits. A JPEG not yet loaded is drafted first, which changes img (its decode is then
    the reduced one): the draft is what makes the thumbnail cheap, and it only works before load()."""
    final = thumbnail_size(img.width, img.height, side)
    if final is None:
        return img
    drafted = img.draft(None, (int(final[0] * THUMBNAIL_GAP), int(final[1] * THUMBNAIL_GAP)))
    box = drafted[1] if drafted is not None else None
    if box is None:
        img.load()
        final = thumbnail_size(img.width, img.height, side)  # load() may change the size (Pillow's comment)
        if final is None:
            return img
    if img.size == final:
        return img
    return img.resize(final, Image.Resampling.BICUBIC, box=box, reducing_gap=THUMBNAIL_GAP)


def _shortest_side_size(width: int, height: int, target: int) -> tuple[int, int]:
    """torchvision's _compute_resized_output_size for an int size (long side truncates)."""
    if width <= height:
        return target, int(target * height / width)
    return int(target * width / height), target


def resize_and_crop(img: Image.Image, prep: Preprocess, resize: str = "exact") -> Image.Image:
    """The geometric part: an RGB image of exactly prep.size (resize: one of RESIZE_MODES)."""
    if resize == "thumbnail512":
        img = thumbnail(img)
    elif resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}")
    gap = REDUCING_GAP if resize == "reduced" else None
    if img.mode != "RGB":
        img = img.convert("RGB")
    resample = _RESAMPLE[prep.interpolation]
    height, width = prep.size
    if prep.resize_mode == "squash":
        return img.resize((width, height), resample, reducing_gap=gap)
    if height != width:
        raise ValueError("resize mode 'shortest' is supported for square inputs only")
    new_w, new_h = _shortest_side_size(img.width, img.height, height)
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    if new_w * new_h <= MAX_EXACT_RESIZE_PIXELS:
        return img.resize((new_w, new_h), resample, reducing_gap=gap).crop((left, top, left + width, top + height))
    # A strip (e.g. 1 x 10000 -> 224 x 2,240,000): resize only the crop window. Pillow's `box` keeps the
    # filter scale, so this is close to (not bit-equal with) resize-then-crop, in bounded memory.
    scale_x, scale_y = img.width / new_w, img.height / new_h
    box = (left * scale_x, top * scale_y, (left + width) * scale_x, (top + height) * scale_y)
    return img.resize((width, height), resample, box=box)


def normalise(img: Image.Image, prep: Preprocess) -> np.ndarray:
    """RGB image -> float32 CHW array, scaled to [0, 1] then normalised with the model's mean/std."""
    pixels = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def to_model_input(img: Image.Image, prep: Preprocess) -> np.ndarray:
    return normalise(resize_and_crop(img, prep), prep)
