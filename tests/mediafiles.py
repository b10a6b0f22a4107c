"""Generated media for scan tests: valid files of every supported format and the bad inputs the scan
must record as errors. Everything is made in code (gradients, shapes, noise)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from mirror_scan.synthetic import generated_image


def image_bytes(fmt: str, seed: int = 0, size: tuple[int, int] = (160, 120), **save) -> bytes:
    buf = io.BytesIO()
    img = generated_image(seed, *size)
    if fmt == "JXL":
        import pillow_jxl  # noqa: F401
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def animated_gif(frames: int, size=(48, 32)) -> bytes:
    images = [generated_image(i, *size).convert("P", palette=Image.Palette.ADAPTIVE, colors=16) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=20, loop=0)
    return buf.getvalue()


def apng(frames: int = 4) -> bytes:
    images = [generated_image(i, 64, 48) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", save_all=True, append_images=images[1:], duration=50)
    return buf.getvalue()


def video(container: str, codec: str, frames: int = 30, size=(96, 64)) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_image(generated_image(i % 5, *size))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    generated_image(3, 120, 90).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


def png16() -> bytes:
    arr = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # uint16 -> mode I;16
    return buf.getvalue()


def palette_png_with_transparency() -> bytes:
    img = generated_image(5, 64, 64).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


GOOD = {
    "photo.jpg": lambda: image_bytes("JPEG", 1, quality=90),
    "big-photo.jpg": lambda: image_bytes("JPEG", 2, size=(1600, 1200), quality=85),
    "named-jpg-but-png.jpg": lambda: image_bytes("PNG", 3),
    "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d": lambda: image_bytes("JPEG", 4),  # old pict-rs key: no extension
    "01/a2/12/b0/13/d3/7d/c4/93/8e/3f40a5580bd6.webp": lambda: image_bytes("WEBP", 5),
    "still.avif": lambda: image_bytes("AVIF", 6),
    "still.jxl": lambda: image_bytes("JXL", 7),
    "anim.apng": lambda: apng(),
    "anim.gif": lambda: animated_gif(6),
    "thousand-frames.gif": lambda: animated_gif(1000, size=(24, 16)),
    "clip.mp4": lambda: video("mp4", "libx264"),
    "clip.webm": lambda: video("webm", "libvpx-vp9"),
    "cmyk.jpg": cmyk_jpeg,
    "sixteen-bit.png": png16,
    "palette-transparent.png": palette_png_with_transparency,
    "one-pixel.png": lambda: image_bytes("PNG", 8, size=(1, 1)),
    "strip-1x10000.png": lambda: image_bytes("PNG", 9, size=(1, 10000)),
    "with space.png": lambda: image_bytes("PNG", 10),
    "quote'\"s.png": lambda: image_bytes("PNG", 11),
    "dollar$HOME.png": lambda: image_bytes("PNG", 12),
    "new\nline.png": lambda: image_bytes("PNG", 13),
}

BAD = {
    "zero-bytes.jpg": (lambda: b"", "empty file"),
    "truncated.jpg": (lambda: image_bytes("JPEG", 20, size=(400, 300))[:3000], "truncated"),
    "truncated.png": (lambda: image_bytes("PNG", 21, size=(400, 300))[:2000], "truncated"),
    "random-bytes.jpg": (lambda: np.random.default_rng(1).bytes(5000), "unsupported format"),
    "notes.txt": (lambda: b"just some text, not an image\n" * 20, "unsupported format"),
    "bomb.png": (lambda: png_declaring(30000, 30000), "decompression bomb"),
    "corrupt.mp4": (lambda: b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x13\x37" * 500, "corrupt"),
}

NON_UTF8_NAME = b"bad-\xff\xfe-name.png"


def write_tree(root: Path) -> dict[str, bytes]:
    """Write every good and bad file under root; returns relative path -> bytes (str keys are
    surrogate-escaped for the non-UTF-8 name)."""
    written = {}
    for rel, make in GOOD.items():
        written[rel] = make()
    for rel, (make, _) in BAD.items():
        written[rel] = make()
    written[os.fsdecode(NON_UTF8_NAME)] = image_bytes("PNG", 14)
    for rel, data in written.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return written
