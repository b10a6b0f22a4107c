"""A progressive JPEG cut short, as browsers draw it. Cut in a later scan: the scans that arrived whole
(`whole_scans` ends the file before the cut one, for libjpeg). Cut in its first scan: that scan holds
every block's DC coefficient, its average colour. Browsers decode progressive JPEGs scan by scan and
draw each as it arrives, so a file cut inside that scan shows its arrived rows at one eighth of their
resolution (flat 8x8 blocks). libjpeg, through Pillow, draws nothing until a scan ends, so `first_scan`
reads that scan itself: markers by their lengths, the DC Huffman tables, the blocks' DC differences as
far as the bits go (restart intervals honoured), then YCbCr to RGB as JFIF defines it. The rows that never
arrived are transparent. Greyscale and three-component (YCbCr) frames; CMYK and others are left alone.
Bounded by the pixel limit. Read from the bytes, no decoder; runs in the decoder worker processes like
every decode."""

from __future__ import annotations

import re
import struct

import numpy as np
from PIL import Image

from mirror_scan.scan.decoders.bits import Bits

PROGRESSIVE = (0xC2, 0xC6, 0xCA, 0xCE)
RESTART = re.compile(rb"\xff[\xd0-\xd7]")


def _huffman(counts: bytes, symbols: bytes) -> dict[tuple[int, int], int]:
    """Canonical codes: (length, code) -> symbol."""
    table, code, at = {}, 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            if at < len(symbols):
                table[(length, code)] = symbols[at]
            code, at = code + 1, at + 1
        code <<= 1
    return table


def _segments(data: bytes) -> tuple[dict, bytes] | None:
    """The frame, the tables and the first scan's header from the markers, and the entropy-coded data
    after that header (to the next marker other than a restart, or the end)."""
    found: dict = {"quant": {}, "dc": {}, "interval": 0, "frame": None}
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        code = data[at + 1]
        if code == 0xFF:
            at += 1
            continue
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        body = data[at + 4 : at + 2 + length]
        if len(body) < length - 2:
            return None
        if code == 0xDB:  # quantisation tables: only each one's first (DC) value is needed
            i = 0
            while i < len(body):
                precision, ident = body[i] >> 4, body[i] & 15
                found["quant"][ident] = body[i + 1] if precision == 0 else struct.unpack(">H", body[i + 1 : i + 3])[0]
                i += 1 + 64 * (2 if precision else 1)
        elif code == 0xC4:
            i = 0
            while i + 17 <= len(body):
                kind, ident, counts = body[i] >> 4, body[i] & 15, body[i + 1 : i + 17]
                symbols = body[i + 17 : i + 17 + sum(counts)]
                if kind == 0:
                    found["dc"][ident] = _huffman(counts, symbols)
                i += 17 + sum(counts)
        elif code == 0xDD and len(body) >= 2:
            found["interval"] = struct.unpack(">H", body[:2])[0]
        elif 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
            if code not in PROGRESSIVE or len(body) < 6:
                return None
            _, height, width, count = struct.unpack(">BHHB", body[:6])
            parts = [struct.unpack(">BBB", body[6 + 3 * i : 9 + 3 * i]) for i in range(count)]
            found["frame"] = (width, height, [(ident, hv >> 4, hv & 15, tq) for ident, hv, tq in parts])
        elif code == 0xDA:
            count = body[0]
            found["scan"] = [(body[1 + 2 * i], body[2 + 2 * i] >> 4) for i in range(count)]
            found["spectral"] = tuple(body[1 + 2 * count : 4 + 2 * count])  # Ss, Se, Ah<<4|Al
            rest = data[at + 2 + length :]
            end = re.search(rb"\xff[^\x00\xd0-\xd7]", rest)
            return found, rest[: end.start()] if end else rest
        at += 2 + length
    return None


def whole_scans(data: bytes) -> tuple[bytes, int] | None:
    """A progressive JPEG cut inside a later scan, ended before that scan (with an end marker), and how
    many scans it keeps; None for other JPEGs. Markers are found by their bytes: inside entropy-coded data
    0xFF is followed by 0x00 or a restart marker, never by another marker's code."""
    scans, progressive = [], False
    for found in re.finditer(rb"\xff[\xc0-\xcf\xda\xd9]", data):
        code = data[found.start() + 1]
        if code == 0xD9:
            return None  # it has its end: not cut
        if code == 0xDA:
            scans.append(found.start())
        elif code in PROGRESSIVE:
            progressive = True
    if not progressive or len(scans) < 2:
        return None
    return data[: scans[-1]] + b"\xff\xd9", len(scans) - 1


def first_scan(data: bytes, max_pixels: int) -> tuple[Image.Image, int, int] | None:
    """(RGBA picture, rows drawn, rows in all) of a progressive JPEG cut inside its first scan; None when
    it is not one, or nothing of it arrived."""
    try:
        parsed = _segments(data) if data[:2] == b"\xff\xd8" else None
    except (struct.error, IndexError):  # segments whose lengths and counts do not fit their bytes
        return None
    if parsed is None or parsed[0]["frame"] is None or "scan" not in parsed[0]:
        return None
    found, entropy = parsed
    width, height, components = found["frame"]
    ss, se, approx = found["spectral"]
    if ss != 0 or se != 0 or approx >> 4 or len(components) not in (1, 3) or not width or not height:
        return None
    if width * height > max_pixels or len(found["scan"]) != len(components):
        return None  # the DC scan of one component at a time (rare) is not read here
    hmax, vmax = max(c[1] for c in components), max(c[2] for c in components)
    if any(not (1 <= h <= 4 and 1 <= v <= 4) or hmax % h or vmax % v for _, h, v, _ in components):
        return None  # sampling factors libjpeg refuses too
    mcux, mcuy = -(-width // (8 * hmax)), -(-height // (8 * vmax))
    tables = {ident: table for ident, table in found["scan"]}
    if any(c[0] not in tables or tables[c[0]] not in found["dc"] or c[3] not in found["quant"] for c in components):
        return None
    planes = [np.zeros((mcuy * c[2], mcux * c[1]), np.float64) for c in components]
    interval = found["interval"] or mcux * mcuy
    pieces = RESTART.split(entropy) if found["interval"] else [entropy]  # restart markers are never stuffed
    decoded = 0
    for number, piece in enumerate(pieces):
        bits, predictors = Bits(piece.replace(b"\xff\x00", b"\xff")), [0] * 3
        try:
            for mcu in range(number * interval, min((number + 1) * interval, mcux * mcuy)):
                my, mx = divmod(mcu, mcux)
                for index, (ident, h, v, _) in enumerate(components):
                    codes = found["dc"][tables[ident]]
                    for by in range(v):
                        for bx in range(h):
                            predictors[index] += _difference(bits, codes)
                            planes[index][my * v + by, mx * h + bx] = predictors[index] << (approx & 15)
                decoded = mcu + 1
        except (EOFError, KeyError):  # the data's end, or bits that are no code: drawn as far as here
            break
    if decoded == 0:
        return None
    blocks = np.zeros((mcuy, mcux), np.uint8)  # the MCUs that arrived are drawn, the rest transparent
    blocks.reshape(-1)[:decoded] = 255
    rgba = np.dstack([_colours(planes, components, found["quant"], hmax, vmax),
                      np.repeat(np.repeat(blocks, vmax, axis=0), hmax, axis=1)])  # fmt: skip
    pixels = np.repeat(np.repeat(rgba, 8, axis=0), 8, axis=1)[:height, :width]  # flat 8x8 blocks
    rows = min(height, -(-decoded // mcux) * 8 * vmax)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGBA"), rows, height


def _difference(bits: Bits, codes: dict[tuple[int, int], int]) -> int:
    code = 0
    for length in range(1, 17):
        code = (code << 1) | bits.bit()
        if (length, code) in codes:
            size = codes[(length, code)]
            if size == 0:
                return 0
            value = bits.bits(size)
            return value if value >= 1 << (size - 1) else value - (1 << size) + 1
    raise KeyError("no such code")


def _colours(planes, components, quant, hmax, vmax) -> np.ndarray:
    """Each block's colour as 8-bit RGB, on the grid of the finest component's blocks (a DC-only IDCT is a
    flat block: the level is DC * quantiser / 8 + 128; coarser components repeated over the grid)."""
    grid = []
    for plane, (_, h, v, tq) in zip(planes, components, strict=True):
        levels = plane * quant[tq] / 8.0 + 128.0
        grid.append(np.repeat(np.repeat(levels, vmax // v, axis=0), hmax // h, axis=1))
    if len(grid) == 1:
        grey = np.clip(np.round(grid[0]), 0, 255).astype(np.uint8)
        return np.dstack([grey, grey, grey])
    y, cb, cr = grid[0], grid[1] - 128.0, grid[2] - 128.0
    rgb = np.dstack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
