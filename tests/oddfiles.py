"""Damaged and edge-case files made in code (issue 25): each is something a browser displays, and each must be
scored. Benign generated pixels only (gradients and shapes), then the bytes are damaged the way real files
found by image libraries' fuzzers and bug trackers are: broken APNG sequences, metadata that does not
parse, GIF frames larger than their canvas, a short Ultra HDR JPEG, TGA origins, extreme shapes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from .mediafiles import multi_picture_jpeg


def picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * (3 + seed)) % 256, (y * (5 + seed)) % 256, ((x + y) * 7 + seed * 40) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def noisy(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """Seeded noise over a pattern: a picture that does not compress to almost nothing."""
    rng = np.random.default_rng(seed)
    base = np.asarray(picture(seed, size), dtype=np.int16)
    return Image.fromarray(np.clip(base + rng.integers(-24, 25, base.shape), 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------- PNG chunks


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, at = [], 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        out.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return out


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(kind, body) for kind, body in parts)


def apng_bytes(frames: int = 3, images: list[Image.Image] | None = None) -> bytes:
    images = images or [picture(i) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", save_all=True, append_images=images[1:], duration=100, default_image=False)
    return buf.getvalue()


def _with_sequence(parts, fix):
    out = []
    for kind, body in parts:
        if kind in (b"fcTL", b"fdAT"):
            (number,) = struct.unpack(">I", body[:4])
            body = struct.pack(">I", fix(number)) + body[4:]
        out.append((kind, body))
    return out


def apng_out_of_sequence(images: list[Image.Image] | None = None) -> bytes:
    """Sequence numbers that skip and repeat ("APNG contains frame sequence errors")."""
    return assemble(_with_sequence(chunks(apng_bytes(images=images)), lambda n: n * 2 if n else 0))


def apng_missing_fdat() -> bytes:
    parts = chunks(apng_bytes())
    first_fdat = next(i for i, (kind, _) in enumerate(parts) if kind == b"fdAT")
    return assemble(parts[:first_fdat] + parts[first_fdat + 1 :])


def apng_repeated_fctl() -> bytes:
    parts = chunks(apng_bytes())
    second = [i for i, (kind, _) in enumerate(parts) if kind == b"fcTL"][1]
    return assemble([*parts[: second + 1], parts[second], *parts[second + 1 :]])


# ---------------------------------------------------------------------- metadata that does not parse


def png_with_bad_xmp() -> bytes:
    buf = io.BytesIO()
    picture(4).save(buf, format="PNG")
    parts = chunks(buf.getvalue())
    junk = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta><rdf:RDF><<<not xml" + bytes(range(1, 40))
    return assemble([*parts[:1], (b"iTXt", junk), *parts[1:]])


def png_with_bad_exif() -> bytes:
    buf = io.BytesIO()
    picture(5).save(buf, format="PNG")
    parts = chunks(buf.getvalue())
    junk = b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x01\x12\x00\x03" * 5  # an IFD claiming 65535 entries
    return assemble([*parts[:1], (b"eXIf", junk), *parts[1:]])


def png_with_huge_text() -> bytes:
    """A zTXt that inflates far past Pillow's text limit (a metadata bomb): the pixels stay fine."""
    buf = io.BytesIO()
    picture(6).save(buf, format="PNG")
    parts = chunks(buf.getvalue())
    bomb = b"Comment\x00\x00" + zlib.compress(b"A" * (80 << 20), 9)
    return assemble([*parts[:1], (b"zTXt", bomb), *parts[1:]])


# ---------------------------------------------------------------------- GIF


def gif_frame_beyond_canvas(claimed: tuple[int, int] = (4000, 3000)) -> bytes:
    """A 100x100 canvas whose one frame claims to be `claimed` (12 M pixels by its extents); its data covers
    only what fits. Chromium grows the canvas to hold a first frame (it loads this one as 4000x3000 with the
    rows that arrived) and refuses one claiming 40000x30000, which the scanner clips to the screen."""
    canvas = (100, 100)
    image = picture(7, canvas).quantize(64)
    buf = io.BytesIO()
    image.save(buf, format="GIF", interlace=False)
    data = bytearray(buf.getvalue())
    at = data.index(b"\x2c")  # the image descriptor: ',' left top width height flags
    while struct.unpack("<HHHH", data[at + 1 : at + 9]) != (0, 0, *canvas):
        at = data.index(b"\x2c", at + 1)
    data[at + 5 : at + 9] = struct.pack("<HH", *claimed)
    return bytes(data)


def _descriptors(data: bytes) -> list[int]:
    """Where each image descriptor of a GIF starts."""
    at = 13 + (3 * (2 << (data[10] & 7)) if data[10] & 0x80 else 0)
    found = []

    def skip(at: int) -> int:
        while data[at]:
            at += 1 + data[at]
        return at + 1

    while data[at] != 0x3B:
        if data[at] == 0x21:
            at = skip(at + 2)
            continue
        found.append(at)
        flags = data[at + 9]
        at += 10 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
        at = skip(at + 1)
    return found


def gif_claiming(frames: list[Image.Image], index: int, claimed: tuple[int, int]) -> bytes:
    """An animated GIF (not interlaced) whose frame `index` claims extents `claimed`."""
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, interlace=False,
                   optimize=False, disposal=1)  # fmt: skip
    data = bytearray(buf.getvalue())
    at = _descriptors(bytes(data))[index]
    data[at + 5 : at + 9] = struct.pack("<HH", *claimed)
    return bytes(data)


def gif_interlaced_beyond_canvas(
    image: Image.Image, canvas: tuple[int, int], claimed: tuple[int, int] | None = None
) -> bytes:
    """An interlaced GIF whose one frame is `image` (its data all there) on a smaller screen `canvas`:
    Chromium grows the canvas to hold it; the scanner clips it to the screen where that canvas is over the
    pixel limit. With `claimed`, the frame's descriptor claims those extents instead
    (a "bomb" by its extents, with the data of a small frame)."""
    buf = io.BytesIO()
    image.quantize(64).save(buf, format="GIF", interlace=True)
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", *canvas)
    at = _descriptors(bytes(data))[0]
    assert data[at + 9] & 0x40, "Pillow wrote the frame interlaced"
    if claimed:
        data[at + 5 : at + 9] = struct.pack("<HH", *claimed)
    return bytes(data)


# ---------------------------------------------------------------------- JPEG


def ultra_hdr_short(missing: int = 7) -> bytes:
    """A phone's Ultra HDR picture: the primary JPEG plus a gain map (marked with hdrgm: XMP), the file cut
    short by a few bytes (the gain map's tail): the primary picture is whole."""
    from .mediafiles import jpeg

    primary = jpeg(picture(8, (160, 120)))
    marker = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description hdrgm:Version="1.0"/></x:xmpmeta>'
    gain = jpeg(picture(9, (80, 60)).convert("L").convert("RGB"), xmp=marker)
    return multi_picture_jpeg([primary, gain])[:-missing]


def jpeg_tall(width: int = 3, height: int = 62_728) -> bytes:
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(rows, (height, width, 3)).astype(np.uint8).copy()
    pixels[::50, :, 0] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ---------------------------------------------------------------------- TGA


def tga(origin: str) -> bytes:
    """A TGA whose first pixel is at `origin` (bottom-left, top-left, bottom-right or top-right)."""
    image = picture(10, (40, 30))
    pixels = np.asarray(image)[:, :, ::-1]  # BGR
    if origin.startswith("bottom"):
        pixels = pixels[::-1]
    if origin.endswith("right"):
        pixels = pixels[:, ::-1]
    bits = (0x20 if origin.startswith("top") else 0) | (0x10 if origin.endswith("right") else 0)
    header = struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, 40, 30, 24, bits)
    return header + np.ascontiguousarray(pixels).tobytes()


def webp_cut(lossless: bool = False, keep: float = 0.6, image: Image.Image | None = None) -> bytes:
    """A still WebP cut short (an upload that stopped): browsers draw the rows that arrived."""
    buf = io.BytesIO()
    (image or picture(11, (320, 240))).save(buf, format="WEBP", quality=90, lossless=lossless)
    data = buf.getvalue()
    return data[: int(len(data) * keep)]


def webp_animated(frames: list[Image.Image], lossless: bool = False) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=lossless,
                   quality=90, minimize_size=False, allow_mixed=False, kmin=0, kmax=0)  # fmt: skip
    return buf.getvalue()


def webp_frame_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each ANMF chunk of an animated WebP."""
    found, at = [], 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        if data[at : at + 4] == b"ANMF":
            found.append((at, at + 8 + size))
        at += 8 + size + (size & 1)
    return found


def webp_animated_cut(frames: list[Image.Image], cut_in: int, keep: float = 0.5, lossless: bool = False) -> bytes:
    """An animated WebP cut short inside frame `cut_in` (0-based), `keep` of that frame's chunk arrived."""
    data = webp_animated(frames, lossless)
    start, end = webp_frame_offsets(data)[cut_in]
    return data[: start + int((end - start) * keep)]


def jxl_cut(lossless: bool = False, keep: float = 0.6, image: Image.Image | None = None) -> bytes:
    """A JPEG XL cut short: viewers that support it draw what arrived (it is progressive by design)."""
    import pillow_jxl  # noqa: F401 - registers the encoder

    buf = io.BytesIO()
    (image or picture(19, (320, 240))).save(buf, format="JXL", quality=90, lossless=lossless)
    data = buf.getvalue()
    return data[: int(len(data) * keep)]


def bmp_bitfields(
    image: Image.Image, masks: tuple[int, int, int, int], depth: int = 32, alpha_bitfields: bool = False
) -> bytes:
    """A BMP with the pixels in bit fields of any position and width (what Pillow refuses and browsers draw):
    a 40-byte header and the masks after it (three, or four with BI_ALPHABITFIELDS)."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
    height, width = rgba.shape[:2]
    value = np.zeros((height, width), np.uint64)
    for channel, mask in enumerate(masks):
        if mask:
            shift = (mask & -mask).bit_length() - 1
            value |= np.round(rgba[:, :, channel] * (mask >> shift) / 255.0).astype(np.uint64) << np.uint64(shift)
    rows = value.astype("<u4" if depth == 32 else "<u2")[::-1]  # bottom-up
    stride = (width * depth + 31) // 32 * 4
    pixels = b"".join(row.tobytes().ljust(stride, b"\0") for row in rows)
    fields = struct.pack("<4I", *masks) if alpha_bitfields else struct.pack("<3I", *masks[:3])
    offset = 14 + 40 + len(fields)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, depth, 6 if alpha_bitfields else 3, len(pixels), 2835,
                       2835, 0, 0)  # fmt: skip
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + fields + pixels


def bmp_two_bit(image: Image.Image) -> bytes:
    """A 2-bit palette BMP (Windows CE): four greys."""
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 4 // 256
    height, width = grey.shape
    stride = (width * 2 + 31) // 32 * 4
    padded = np.zeros((height, -(-width // 4) * 4), np.uint8)
    padded[:, :width] = grey
    packed = (padded[:, 0::4] << 6 | padded[:, 1::4] << 4 | padded[:, 2::4] << 2 | padded[:, 3::4]).astype(np.uint8)
    pixels = b"".join(row.tobytes().ljust(stride, b"\0") for row in packed[::-1])
    palette = b"".join(bytes([v, v, v, 0]) for v in (0, 85, 170, 255))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 2, 0, len(pixels), 2835, 2835, 4, 4)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def bmp_rle8(image: Image.Image, keep: float = 1.0) -> bytes:
    """An RLE8 BMP of the picture (runs of one index, end of line, end of bitmap), `keep` of its runs sent."""
    indexed = image.quantize(64)
    rows = np.asarray(indexed)[::-1]  # bottom-up
    height, width = rows.shape
    runs = bytearray()
    for row in rows:
        x = 0
        while x < width:
            n = 1
            while x + n < width and n < 255 and row[x + n] == row[x]:
                n += 1
            runs += bytes([n, int(row[x])])
            x += n
        runs += b"\x00\x00"
    runs += b"\x00\x01"
    runs = runs[: int(len(runs) * keep) // 2 * 2]
    palette = bytes(indexed.getpalette()[: 3 * 256])
    table = b"".join(bytes([palette[i + 2], palette[i + 1], palette[i], 0]) for i in range(0, len(palette), 3))
    offset = 14 + 40 + len(table)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(runs), 2835, 2835, len(table) // 4, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + info + table + bytes(runs)


def corpus() -> dict[str, bytes]:
    """name -> bytes: every case, for the corpus test and the benchmark."""
    return {
        "apng-out-of-sequence.png": apng_out_of_sequence(),
        "apng-missing-fdat.png": apng_missing_fdat(),
        "apng-repeated-fctl.png": apng_repeated_fctl(),
        "png-bad-xmp.png": png_with_bad_xmp(),
        "png-bad-exif.png": png_with_bad_exif(),
        "png-huge-text.png": png_with_huge_text(),
        "gif-frame-beyond-canvas.gif": gif_frame_beyond_canvas(),
        "gif-frame-far-beyond-canvas.gif": gif_frame_beyond_canvas((40000, 30000)),
        "gif-interlaced-beyond-canvas.gif": gif_interlaced_beyond_canvas(picture(12, (120, 900)), (120, 90)),
        "gif-interlaced-far-beyond-canvas.gif": gif_interlaced_beyond_canvas(
            picture(13, (100, 100)), (100, 100), (40000, 30000)
        ),
        "ultra-hdr-short.jpg": ultra_hdr_short(),
        "jpeg-3x62728.jpg": jpeg_tall(),
        "webp-cut.webp": webp_cut(),
        "webp-lossless-cut.webp": webp_cut(lossless=True, keep=0.85),
        "bmp-bitfields-11-11-10.bmp": bmp_bitfields(picture(21, (127, 64)), (0xFFE00000, 0x001FFC00, 0x3FF, 0)),
        "bmp-bitfields-4444.bmp": bmp_bitfields(picture(22, (127, 64)), (0xF00, 0xF0, 0xF, 0xF000), depth=16),
        "bmp-alpha-bitfields.bmp": bmp_bitfields(
            picture(23, (127, 64)), (0xFF00, 0xFF0000, 0xFF000000, 0xFF), alpha_bitfields=True
        ),
        "bmp-2-bit.bmp": bmp_two_bit(picture(24, (127, 64))),
        "bmp-rle8-cut.bmp": bmp_rle8(picture(26, (127, 64)), keep=0.6),
        "jxl-cut.jxl": jxl_cut(),
        "jxl-lossless-cut.jxl": jxl_cut(lossless=True, keep=0.8, image=noisy(20, (640, 480))),
        "webp-animated-cut.webp": webp_animated_cut(
            [picture(14, (160, 120)), picture(15, (160, 120)), picture(16, (160, 120))], cut_in=2
        ),
        "webp-animated-cut-first-frame.webp": webp_animated_cut(
            [picture(17, (160, 120)), picture(18, (160, 120))], cut_in=0, keep=0.7
        ),
        **{f"tga-{o}.tga": tga(o) for o in ("bottom-left", "top-left", "bottom-right", "top-right")},
    }
