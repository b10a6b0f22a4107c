"""The canary: a harmless picture every mirror-scan flags, as EICAR is for virus scanners. Abstract
shapes with "mirror-scan canary" written in the pixels, generated in code (the same pixels everywhere);
its sha256 (as `canary make` writes it) and its PDQ (which survives pict-rs re-encoding it) make a
built-in hash list named "canary" that flags whatever the model says, in every mode. Its items carry the
label "canary": `[actions] canary = [...]` chooses what follows, and hash exports leave them out."""

from __future__ import annotations

import functools
import hashlib
import io

CANARY_LIST = "canary"
CANARY_LABEL = "canary"
SIZE = (512, 384)


def canary_image():
    """The canary's pixels: deterministic (no randomness, no fonts from the system)."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([(x / width) * 255, (y / height) * 200 + 40, ((x + y) / (width + height)) * 255], axis=-1)
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for i in range(9):  # shapes with structure, so PDQ has a strong (high-quality) hash to match on
        left, top = 20 + i * 52, 30 + (i % 3) * 90
        draw.ellipse((left, top, left + 60, top + 60), fill=(250 - i * 25, 40 + i * 20, 120), outline=(0, 0, 0))
        draw.rectangle((width - left - 50, height - top - 40, width - left, height - top), fill=(20, 20 + i * 25, 230))
    _write(draw, "MIRROR-SCAN CANARY", (24, height - 70), scale=4)
    return image


def _write(draw, text: str, origin: tuple[int, int], scale: int) -> None:
    """Block letters from a built-in 5x7 font: the same pixels on every machine (no system fonts)."""
    x, y = origin
    for char in text:
        rows = FONT.get(char, FONT[" "])
        for r, bits in enumerate(rows):
            for c in range(5):
                if bits >> (4 - c) & 1:
                    draw.rectangle((x + c * scale, y + r * scale, x + (c + 1) * scale - 1, y + (r + 1) * scale - 1),
                                   fill=(255, 255, 255))  # fmt: skip
        x += 6 * scale


FONT = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "-": (0, 0, 0, 31, 0, 0, 0),
    "A": (14, 17, 17, 31, 17, 17, 17),
    "C": (14, 17, 16, 16, 16, 17, 14),
    "I": (14, 4, 4, 4, 4, 4, 14),
    "M": (17, 27, 21, 21, 17, 17, 17),
    "N": (17, 25, 21, 19, 17, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14),
    "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30),
    "Y": (17, 17, 10, 4, 4, 4, 4),
}


@functools.cache
def canary_bytes(fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    canary_image().save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"optimize": False}))
    return buf.getvalue()


@functools.cache
def canary_entries() -> tuple[tuple[str, str, str, str, str | None], ...]:
    """The built-in list, as (list, action, kind, value, note) rows for the matcher: the sha256 of the files
    `canary make` writes, and the picture's PDQ (re-encoded and resized copies match it)."""
    from mirror_scan.lists import hashes  # numpy, Pillow and pdqhash only when the list is built

    note = "the mirror-scan canary (harmless test picture)"
    rows = [
        (CANARY_LIST, "flag", "sha256", hashlib.sha256(canary_bytes(fmt)).hexdigest(), note) for fmt in ("PNG", "JPEG")
    ]
    if hashes.AVAILABLE:
        rows.append((CANARY_LIST, "flag", "pdq", hashes.pdq(canary_image())[0], note))
    return tuple(rows)


def with_canary(entries):
    """A matcher's entries with the built-in canary list first."""
    yield from canary_entries()
    yield from entries
