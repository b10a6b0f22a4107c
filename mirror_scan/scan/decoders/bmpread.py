"""BMP files that browsers draw and Pillow refuses: a second reader for uncompressed BMP.

Pillow's BMP plugin refuses layouts that Chrome's and Firefox's BMP decoders draw (the BMP Suite's
"questionable" files, and one of its "good" ones): bit fields in any order and width (16-bit 2-3-1 or
4-4-4-4, 32-bit 11-11-10 or with the alpha mask after the header, BI_ALPHABITFIELDS), 2-bit palettes
(Windows CE), palettes that claim more entries than the depth allows (the first 2^depth are used), and
OS/2 2.x headers shorter than 40 bytes, and run-length files that are cut short or run past their rows
(RLE4, RLE8, and OS/2's RLE24: what arrived is drawn, the rest transparent, as browsers leave it). It
takes uncompressed pixels (BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS) and those run lengths (embedded
JPEG/PNG stay with Pillow), checks the pixel count before anything is allocated, and reads rows in numpy
(runs in a loop, at most MAX_RLE_BYTES of them). An alpha channel that is zero everywhere is taken as
opaque, as browsers do. Read from the bytes, no decoder; runs in the decoder worker processes like every decode."""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

BI_RGB, BI_RLE8, BI_RLE4, BI_BITFIELDS, BI_RLE24, BI_ALPHABITFIELDS = 0, 1, 2, 3, 4, 6
CLAIM_PIXELS = 16 << 20  # a cut file's canvas past this, with under 1/16 of its rows, is refused
MAX_RLE_BYTES = 16 << 20  # the run loop is Python: about 5 s at most
DEFAULT_MASKS = {16: (0x7C00, 0x03E0, 0x001F, 0), 32: (0xFF0000, 0x00FF00, 0x0000FF, 0)}


class BmpRefused(Exception):
    """Not a BMP this reader takes (the message says why)."""


def read_bmp(data: bytes, max_pixels: int) -> Image.Image:
    """The picture, as browsers draw it; BmpRefused when the layout is not one this reader takes."""
    try:
        return _read(data, max_pixels)
    except (struct.error, ValueError, IndexError) as err:  # sizes and offsets that do not fit the bytes
        raise BmpRefused(f"malformed BMP: {err}") from None


def _read(data: bytes, max_pixels: int) -> Image.Image:
    if len(data) < 26 or data[:2] != b"BM":
        raise BmpRefused("not a BMP")
    offset, header = struct.unpack("<I", data[10:14])[0], struct.unpack("<I", data[14:18])[0]
    compression, colours, masks = BI_RGB, 0, None
    if header == 12:  # OS/2 1.x: 16-bit sizes, 3-byte palette entries
        width, height, _, depth = struct.unpack("<HHHH", data[18:26])
        entry = 3
    elif 16 <= header < 40 or header == 64:  # OS/2 2.x: 32-bit sizes, the rest optional
        width, height, _, depth = struct.unpack("<iiHH", data[18:30])
        if header >= 20:
            compression = struct.unpack("<I", data[30:34])[0]
        if header >= 36:
            colours = struct.unpack("<I", data[46:50])[0]
        entry = 4
    elif header >= 40 and len(data) >= 54:
        width, height, _, depth, compression = struct.unpack("<iiHHI", data[18:34])
        colours = struct.unpack("<I", data[46:50])[0]
        entry = 4
        if compression in (BI_BITFIELDS, BI_ALPHABITFIELDS):
            count = 4 if compression == BI_ALPHABITFIELDS or header >= 56 else 3
            # inside a V2+ header, or just after a 40-byte one: the same place
            masks = struct.unpack(f"<{count}I", data[54 : 54 + 4 * count]) + ((0,) if count == 3 else ())
    else:
        raise BmpRefused(f"unknown BMP header size {header}")
    run_length = (compression, depth) in ((BI_RLE8, 8), (BI_RLE4, 4), (BI_RLE24, 24))
    if compression not in (BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS) and not run_length:
        raise BmpRefused(f"BMP compression {compression} is left to Pillow")
    top_down = height < 0
    width, height = abs(width), abs(height)
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise BmpRefused(f"BMP of {width}x{height} pixels: none, or over the limit of {max_pixels:,}")
    if run_length:
        palette = None
        if depth <= 8:
            palette = _palette(data, 14 + header, offset, colours, depth, entry)
        return _run_lengths(data[offset : offset + MAX_RLE_BYTES], width, height, depth, palette, top_down)
    stride = (width * depth + 31) // 32 * 4
    arrived = min(height, max(0, len(data) - offset) // stride) if depth in (1, 2, 4, 8, 16, 24, 32) else 0
    if arrived == 0:
        raise BmpRefused(f"BMP of depth {depth} with {len(data) - offset:,} bytes of pixels for {height} rows")
    if arrived < height and width * height > CLAIM_PIXELS and height > 16 * arrived:
        # a size claimed, not sent: a few rows in a vast canvas is a bomb's shape, not a picture cut short
        raise BmpRefused(f"BMP claiming {height:,} rows of which {arrived:,} arrived")
    raw = np.frombuffer(data, np.uint8, stride * arrived, offset).reshape(arrived, stride)
    picture = _rows(data, raw, header, offset, colours, depth, entry, masks, width)
    if arrived == height:
        return picture.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if not top_down else picture
    # cut short: the rows that arrived (a bottom-up file's bottom rows), the rest transparent, as browsers draw
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    canvas.paste(picture.convert("RGBA"), (0, 0))
    return canvas.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if not top_down else canvas


def _rows(data: bytes, raw: np.ndarray, header: int, offset: int, colours: int, depth: int, entry: int,
          masks: tuple | None, width: int) -> Image.Image:  # fmt: skip
    """The stored rows as a picture, in the order they are stored."""
    height = raw.shape[0]
    if depth <= 8:
        table = _palette(data, 14 + header + (12 if masks is not None and header == 40 else 0), offset, colours,
                         depth, entry)  # fmt: skip
        shifts = np.arange(8 - depth, -1, -depth, dtype=np.uint8)
        indices = ((raw[:, :, None] >> shifts) & ((1 << depth) - 1)).reshape(height, -1)[:, :width]
        return Image.fromarray(np.ascontiguousarray(table[indices]), "RGB")
    if depth == 24:
        return Image.fromarray(np.ascontiguousarray(raw[:, : width * 3].reshape(height, width, 3)[:, :, ::-1]), "RGB")
    pixels = raw[:, : width * depth // 8].copy().view("<u2" if depth == 16 else "<u4").astype(np.uint32)
    red, green, blue, alpha = masks or DEFAULT_MASKS[depth]
    channels = [_field(pixels, mask) for mask in (red, green, blue)]
    if alpha and (a := _field(pixels, alpha)).any():
        return Image.fromarray(np.stack([*channels, a], axis=-1), "RGBA")
    return Image.fromarray(np.stack(channels, axis=-1), "RGB")


def _palette(data: bytes, at: int, offset: int, colours: int, depth: int, entry: int) -> np.ndarray:
    """The colour table as 256 RGB rows (entries it does not have: black), at most 2^depth of its own."""
    count = min(colours or 1 << depth, 1 << depth, max(0, (min(offset, len(data)) - at) // entry))
    table = np.frombuffer(data, np.uint8, count * entry, at).reshape(count, entry)[:, 2::-1]
    return np.concatenate([table, np.zeros((256 - count, 3), np.uint8)])


def _run_lengths(
    stream: bytes, width: int, height: int, depth: int, palette: np.ndarray | None, top_down: bool = False
) -> Image.Image:
    """RLE8, RLE4 or RLE24 (bottom-up, or top-down as Pillow reads a negative height), drawn as far as the
    runs go: pixels no run reached stay transparent, runs past a row's end are clipped to it."""
    rgba = np.zeros((height, width, 4), np.uint8)
    x = y = at = 0
    size = len(stream)
    unit = 3 if depth == 24 else 1

    def put(pixels: np.ndarray) -> None:  # RGB pixels from x on row y, clipped to the row
        nonlocal x
        if y < height and x < width:
            shown, row = pixels[: width - x], y if top_down else height - 1 - y
            rgba[row, x : x + len(shown), :3] = shown
            rgba[row, x : x + len(shown), 3] = 255
        x += len(pixels)

    def colours(raw: np.ndarray) -> np.ndarray:
        return raw.reshape(-1, 3)[:, ::-1] if palette is None else palette[raw]

    while at + 1 < size and y < height:
        count, value = stream[at], stream[at + 1]
        at += 2
        if count:  # a run: one colour (RLE4: two, alternating)
            if depth == 24:
                if at - 1 + 3 > size:
                    break
                run = np.frombuffer(stream, np.uint8, 3, at - 1)
                at += 2
                put(np.tile(colours(run), (count, 1)))
            elif depth == 4:
                put(colours(np.resize(np.array([value >> 4, value & 15], np.uint8), count)))
            else:
                put(colours(np.full(count, value, np.uint8)))
        elif value == 0:  # end of line
            x, y = 0, y + 1
        elif value == 1:  # end of bitmap
            break
        elif value == 2:  # delta
            if at + 1 >= size:
                break
            x, y, at = x + stream[at], y + stream[at + 1], at + 2
        else:  # absolute: `value` pixels as they are, padded to a 16-bit boundary
            length = (value + 1) // 2 if depth == 4 else value * unit
            raw = np.frombuffer(stream, np.uint8, min(length, size - at), at)
            at += length + (length & 1)
            if depth == 4:
                raw = np.stack([raw >> 4, raw & 15], axis=1).reshape(-1)[:value]
            put(colours(raw))
    return Image.fromarray(rgba, "RGBA")


def _field(pixels: np.ndarray, mask: int) -> np.ndarray:
    """One channel in 0-255 from its bit field (any position and width; an empty mask is black): fields of
    up to 8 bits scaled to the full range, wider ones by their top 8 bits (as browsers read them)."""
    if not mask:
        return np.zeros(pixels.shape, np.uint8)
    shift = (mask & -mask).bit_length() - 1
    bits = (mask >> shift).bit_length()
    values = (pixels & np.uint32(mask)) >> np.uint32(shift + max(0, bits - 8))
    top = (1 << min(bits, 8)) - 1
    scale = np.round(np.arange(top + 1) * (255.0 / top)).astype(np.uint8)
    return scale[np.minimum(values, top)]
