"""open_clip's inference transform in Pillow + numpy (no torch at scan time).

open_clip (mode 'shortest', square target): torchvision Resize(S) on the shortest side with PIL
resampling, CenterCrop(S), convert to RGB, ToTensor (/255), Normalize(mean, std). Mode 'squash':
Resize((S, S)). Tests compare this module with open_clip's own transform on generated images.
"""

from __future__ import annotations

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


def _shortest_side_size(width: int, height: int, target: int) -> tuple[int, int]:
    """torchvision's _compute_resized_output_size for an int size (long side truncates)."""
    if width <= height:
        return target, int(target * height / width)
    return int(target * width / height), target


def resize_and_crop(img: Image.Image, prep: Preprocess, reduced: bool = False) -> Image.Image:
    """The geometric part: an RGB image of exactly prep.size (reduced: see REDUCING_GAP)."""
    gap = REDUCING_GAP if reduced else None
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
