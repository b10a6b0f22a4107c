"""Benign images generated in code: gradients, shapes and noise. Used by the export parity check,
the tests and the benchmarks, so no fixture ever holds a real photo of anyone."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def generated_image(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            (x / max(width - 1, 1)) * rng.uniform(80, 255),
            (y / max(height - 1, 1)) * rng.uniform(80, 255),
            ((x + y) / max(width + height - 2, 1)) * rng.uniform(80, 255),
        ],
        axis=-1,
    )
    base += rng.normal(0, 12, size=base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(4, max(5, width // 2))), y0 + int(rng.integers(4, max(5, height // 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=color)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=color)
    return img


def parity_images(count: int = 6) -> list[Image.Image]:
    """Varied sizes and aspect ratios, including ones that need up- and down-scaling."""
    sizes = [(320, 240), (240, 320), (224, 224), (97, 61), (640, 360), (33, 500), (1000, 1000), (50, 50)]
    return [generated_image(seed, *sizes[seed % len(sizes)]) for seed in range(count)]
