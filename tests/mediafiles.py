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

from mirror_scan.model.synthetic import generated_image


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

# Cut short: a browser shows the part that arrived, so the scanner scores it ("partial" in the reason).
PARTIAL = {
    "truncated.jpg": lambda: image_bytes("JPEG", 20, size=(400, 300))[:3000],
    "truncated.png": lambda: image_bytes("PNG", 21, size=(400, 300))[:2000],
}


def _jpeg_headers_only() -> bytes:
    data = image_bytes("JPEG", 22, size=(400, 300))
    return data[: data.index(b"\xff\xda") + 12]


BAD = {
    "zero-bytes.jpg": (lambda: b"", "empty file"),
    "headers-only.jpg": (_jpeg_headers_only, "corrupt or truncated"),
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
    for rel, make in PARTIAL.items():
        written[rel] = make()
    for rel, (make, _) in BAD.items():
        written[rel] = make()
    written[os.fsdecode(NON_UTF8_NAME)] = image_bytes("PNG", 14)
    for rel, data in written.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return written


def jpeg(img: Image.Image, xmp: bytes | None = None, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, **({"xmp": xmp} if xmp else {}))
    return buf.getvalue()


def multi_picture_jpeg(pictures: list[bytes], types: list[int] | None = None) -> bytes:
    """A multi-picture JPEG as CIPA DC-007 lays it out (MPO; Ultra HDR uses the same container for its
    gain map): an APP2 'MPF' segment in the first picture lists every picture's size and offset (from the
    MP header), and the other pictures follow the first one's EOI."""
    count = len(pictures)
    types = types or [0x030000] + [0x000000] * (count - 1)
    entries_at = 8 + 2 + 3 * 12 + 4  # TIFF header, entry count, 3 entries, next-IFD offset

    def tiff(sizes: list[int], offsets: list[int]) -> bytes:
        entries = b"".join(struct.pack("<IIIHH", types[i], sizes[i], offsets[i], 0, 0) for i in range(count))
        ifd = struct.pack("<H", 3)
        ifd += struct.pack("<HHI4s", 0xB000, 7, 4, b"0100")
        ifd += struct.pack("<HHII", 0xB001, 4, 1, count)
        ifd += struct.pack("<HHII", 0xB002, 7, 16 * count, entries_at)
        return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + entries

    placeholder = tiff([0] * count, [0] * count)
    segment_len = 2 + 4 + len(placeholder)
    first_len = len(pictures[0]) + 2 + segment_len
    header_at = 2 + 2 + 2 + 4  # SOI, APP2 marker, length, "MPF\0": where offsets count from
    sizes = [first_len] + [len(p) for p in pictures[1:]]
    offsets, position = [0], first_len
    for picture in pictures[1:]:
        offsets.append(position - header_at)
        position += len(picture)
    app2 = b"\xff\xe2" + struct.pack(">H", segment_len) + b"MPF\x00" + tiff(sizes, offsets)
    return pictures[0][:2] + app2 + pictures[0][2:] + b"".join(pictures[1:])


def psd(img: Image.Image) -> bytes:
    """A minimal Photoshop file: RGB, 8 bits, raw planar image data, no layers."""
    rgb = np.asarray(img.convert("RGB"))
    height, width = rgb.shape[:2]
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers: all empty
    planes = b"".join(rgb[..., c].tobytes() for c in range(3))
    return header + sections + struct.pack(">H", 0) + planes


def gif(frames: list[Image.Image], duration: int = 20) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return buf.getvalue()


def video_of(frames: list[Image.Image], rate: int = 10, codec: str = "mpeg4", container: str = "mp4") -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 10_000  # one keyframe: only decoding every frame finds a short cut
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
