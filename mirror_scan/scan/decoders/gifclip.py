"""GIF frames larger than their canvas, as browsers show them: clipped to it. The canvas is the logical
screen grown to hold the first frame (measured with headless Chromium, and Pillow's rule: a first frame
placed or sized beyond the screen is drawn whole, see `layout`); later frames beyond it are clipped.

A GIF's frames may claim extents far beyond the canvas (a 100x100 screen with a later 40000x30000 frame,
or a first one so large that the canvas to hold it is over the pixel limit, which Chromium refuses to
draw): Pillow grows the image to the frame (a decompression bomb by its claimed size, or a vast mostly
empty picture in which the visible corner is too small for the model to see), while browsers draw only
what falls inside the canvas. So, before Pillow sees the file:
- a frame wholly outside the canvas is dropped (with its graphic control extension): it is never shown;
- a frame stored row by row that only reaches below the canvas has its height clamped (dropping a frame's
  last rows keeps every other row in place);
- any other frame beyond the canvas (too wide, or interlaced: its rows are stored in four passes, every
  8th from 0, from 4, every 4th from 2, every 2nd from 1, so the visible ones are spread through the whole
  stream) is LZW-decoded here, its visible rows kept, and written again clipped and not interlaced (9-bit
  LZW literals: larger, always valid), as many rows as arrived. A frame of which nothing visible arrived
  is dropped. The work is bounded: at most MAX_STREAM_BYTES of LZW data per frame and `max_pixels`
  rewritten pixels in all, else the file is an error that says so (ClipRefused).
Frames are also cropped to the canvas after decoding (decode.py), whatever got past this.

Read without an image decoder: header, logical screen, colour tables, extension and image blocks by sizes."""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

import numpy as np

GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
BLOCK_START = re.compile(rb"[\x21\x2c\x3b]")  # extension, image, trailer: what Pillow looks for after junk
MAX_CODE_BITS = 12
FLUSH_PIXELS = 1 << 20


class Layout(NamedTuple):
    canvas: tuple[int, int]  # what browsers draw on
    origin: tuple[int, int]  # where the first frame is drawn on it
    moved: int | None  # the first frame's descriptor when it is drawn at 0,0 instead of where it claims


def layout(data: bytes, max_pixels: int | None = None) -> Layout | None:
    """The canvas browsers draw on: the logical screen, grown to hold the first frame (measured with
    headless Chromium, and Pillow's rule too: a 1x1 screen with a 48x48 first frame at 20,20 is drawn
    68x68). A grown canvas over `max_pixels` (a frame placed at 9000,9000) is grown to the frame's size
    only and the frame drawn at its origin: the same picture, without the empty space; a frame whose own
    size is over the limit leaves the screen as it is (clip_frames clips it). None: not a GIF."""
    if len(data) < 10 or data[:6] not in GIF_SIGNATURES:
        return None
    screen = struct.unpack("<HH", data[6:10])
    found, first = (screen, (0, 0), None), _first_descriptor(data)
    if first is not None and first + 9 <= len(data):
        left, top, frame_w, frame_h = struct.unpack("<HHHH", data[first + 1 : first + 9])
        if frame_w and frame_h:
            grown = (max(screen[0], left + frame_w), max(screen[1], top + frame_h))
            sized = (max(screen[0], frame_w), max(screen[1], frame_h))
            if max_pixels is None or grown[0] * grown[1] <= max_pixels:
                found = (grown, (left, top), None)
            elif sized[0] * sized[1] <= max_pixels:
                found = (sized, (0, 0), first if (left, top) != (0, 0) else None)
            else:
                found = (screen, (left, top), None)
    return Layout(*found) if found[0][0] and found[0][1] else None


def canvas(data: bytes, max_pixels: int | None = None) -> tuple[int, int] | None:
    found = layout(data, max_pixels)
    return None if found is None else found.canvas


def _first_descriptor(data: bytes) -> int | None:
    """Where the first image descriptor is (blocks read by their sizes; stray bytes skipped as Pillow does)."""
    at = 13 + (3 * (2 << (data[10] & 0x07)) if len(data) > 10 and data[10] & 0x80 else 0)
    while at < len(data):
        block = data[at]
        if block == 0x2C:
            return at
        if block == 0x3B:
            return None
        if block == 0x21:
            at = _skip_sub_blocks(data, at + 2)
            continue
        found = BLOCK_START.search(data, at + 1)
        if found is None:
            return None
        at = found.start()
    return None


def _skip_sub_blocks(data: bytes, at: int) -> int:
    while at < len(data):
        size = data[at]
        at += 1 + size
        if size == 0:
            break
    return at


def sub_blocks(data: bytes, at: int) -> tuple[bytes, int]:
    """The data of the sub-blocks starting at `at`, and where they end."""
    parts = []
    while at < len(data):
        size = data[at]
        parts.append(data[at + 1 : at + 1 + size])
        at += 1 + size
        if size == 0:
            break
    return b"".join(parts), at


class ClipRefused(Exception):
    """Clipping would take more than the limits allow, or leaves nothing to draw (the message says which):
    the file is an error."""


def clip_frames(data: bytes, max_pixels: int) -> tuple[bytes, int]:
    """The GIF with every frame clipped to the canvas (see the module's text), and how many frames were
    clipped or dropped (0: the bytes are returned as they are). A canvas over `max_pixels` is left to the
    decoder's own bomb check; rewriting more than `max_pixels` pixels in all, or an LZW stream over
    MAX_STREAM_BYTES, raises ClipRefused."""
    found = layout(data, max_pixels)
    if found is None or len(data) < 13 or found.canvas[0] * found.canvas[1] > max_pixels:
        return data, 0
    moved = found.moved is not None
    if moved:  # a first frame far beyond the screen: drawn at its origin (see layout)
        data = data[: found.moved + 1] + b"\0\0\0\0" + data[found.moved + 5 :]
    screen_w, screen_h = found.canvas
    out = bytearray(data)
    at = 13
    if data[10] & 0x80:  # global colour table
        at += 3 * (2 << (data[10] & 0x07))
    clipped, rewritten, images, dropped = 0, 0, 0, 0
    control: tuple[int, int | None] | None = None  # the graphic control extension before the next image
    replaced: list[tuple[int, int, bytes]] = []  # (start, end, new bytes) of frames written again or dropped
    while at < len(data):
        block = data[at]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            begin = at
            at = _skip_sub_blocks(data, at + 2)
            if data[begin + 1 : begin + 3] == b"\xf9\x04" and begin + 7 <= len(data):
                control = (begin, data[begin + 6] if data[begin + 3] & 0x01 else None)
            continue
        if block != 0x2C:  # stray bytes: Pillow skips them and reads on, so a frame after them is clipped too
            found = BLOCK_START.search(data, at + 1)
            if found is None:
                break
            at = found.start()
            continue
        if at + 10 > len(data):
            break
        start = at
        left, top, width, height = struct.unpack("<HHHH", data[at + 1 : at + 9])
        flags = data[at + 9]
        interlaced = bool(flags & 0x40)
        at += 10
        if flags & 0x80:  # local colour table
            at += 3 * (2 << (flags & 0x07))
        if at >= len(data):
            break
        min_code = data[at]
        end = _skip_sub_blocks(data, at + 1)
        wide = max(0, min(width, screen_w - left))
        tall = max(0, min(height, screen_h - top))
        transparent = control[1] if control else None
        first = control[0] if control and control[0] < start else start
        control = None  # a graphic control extension applies to the one image after it
        at = end
        images += 1
        if wide == width and tall == height:
            continue  # inside the canvas
        clipped += 1
        if not wide or not tall:  # wholly outside the canvas, or no pixels: never drawn (nor grown into)
            replaced.append((first, end, b""))
            dropped += 1
            continue
        if wide == width and not interlaced:  # rows below the canvas: the frame's last rows, dropped in place
            out[start + 7 : start + 9] = struct.pack("<H", tall)
            continue
        if not 2 <= min_code <= 8:  # no valid LZW stream: nothing a browser draws of it
            replaced.append((first, end, b""))
            dropped += 1
            continue
        stream, _ = sub_blocks(data, data_start(data, start) + 1)
        if len(stream) > MAX_STREAM_BYTES:
            raise ClipRefused(f"a GIF frame beyond the canvas has {len(stream):,} bytes of LZW data, over the "
                              f"{MAX_STREAM_BYTES:,} this clipping decodes (possible decompression bomb)")  # fmt: skip
        rows, arrived = _visible_rows(stream, min_code, width, height, tall, wide, interlaced,
                                      0 if transparent is None else transparent)  # fmt: skip
        if not arrived:
            replaced.append((first, end, b""))  # nothing of what is visible arrived
            dropped += 1
            continue
        rewritten += wide * arrived
        if rewritten > max_pixels:
            raise ClipRefused(f"GIF frames beyond the canvas: clipping them would write more than {max_pixels:,} "
                              "pixels (possible decompression bomb)")  # fmt: skip
        head = bytearray(data[start : data_start(data, start)])
        head[5:9] = struct.pack("<HH", wide, arrived)
        head[9] = flags & ~0x40
        replaced.append((start, end, bytes(head) + _literal_stream(rows[:arrived])))
    if not clipped:
        return (data, 1) if moved else (data, 0)
    if dropped == images:
        raise ClipRefused(f"no frame of this GIF has a pixel inside its {screen_w}x{screen_h} canvas that arrived: "
                          "nothing a browser would draw")  # fmt: skip
    for begin, end, new in sorted(replaced, reverse=True):
        out[begin:end] = new
    return bytes(out), clipped + moved


MAX_STREAM_BYTES = 16 << 20  # about 12 s of this module's LZW decoding at worst


def data_start(data: bytes, descriptor: int) -> int:
    """Where an image's LZW minimum code size byte is (after its descriptor and local colour table)."""
    flags = data[descriptor + 9]
    return descriptor + 10 + (3 * (2 << (flags & 0x07)) if flags & 0x80 else 0)


def interlaced_row(k: np.ndarray, height: int) -> np.ndarray:
    """The picture row of each stored row k of an interlaced frame `height` rows tall."""
    n1, n2, n3 = (height + 7) // 8, (height + 3) // 8, (height + 1) // 4
    return np.select(
        [k < n1, k < n1 + n2, k < n1 + n2 + n3],
        [8 * k, 4 + 8 * (k - n1), 2 + 4 * (k - n1 - n2)],
        1 + 2 * (k - n1 - n2 - n3),
    )


def _visible_rows(
    stream: bytes, min_code: int, width: int, height: int, room: int, wide: int, interlaced: bool, fill: int
) -> tuple[np.ndarray, int]:
    """The first `room` rows (first `wide` columns) of a frame, from its LZW stream, and how many of them
    are drawn: up to the last visible row that arrived (rows never sent are not drawn, as in a browser;
    holes between interlaced rows that did arrive are `fill`, the transparent index when there is one)."""
    if interlaced:
        n1, n2, n3 = (height + 7) // 8, (height + 3) // 8, (height + 1) // 4
        last = n1 + n2 + n3 + room // 2 if room > 1 else 1  # stored rows needed: to pass 4's last visible row
    else:
        last = room
    rows = np.full((room, wide), fill, np.uint8)
    arrived = 0
    buffer = bytearray()
    first_row = 0  # the stored row buffer[0] belongs to

    def flush() -> bool:
        nonlocal buffer, first_row, arrived
        whole = len(buffer) // width
        if whole:
            k = np.arange(first_row, first_row + whole)
            target = interlaced_row(k, height) if interlaced else k
            keep = target < room
            if keep.any():
                block = np.frombuffer(bytes(buffer[: whole * width]), np.uint8).reshape(whole, width)
                rows[target[keep]] = block[keep, :wide]
                arrived = max(arrived, int(target[keep].max()) + 1)
            del buffer[: whole * width]
            first_row += whole
        return first_row >= last

    for piece in lzw(stream, min_code):
        buffer += piece
        if len(buffer) >= max(width, FLUSH_PIXELS) and flush():
            return rows, arrived
    if buffer:  # a last, partial row: its pixels that came
        buffer += bytes([fill]) * (width - len(buffer) % width)
    flush()
    return rows, arrived


def lzw(stream: bytes, min_code: int):
    """GIF's LZW: the strings of the stream's codes, in order, until its end code, the data's end or a bad
    code (a damaged frame keeps what came before, as browsers do)."""
    clear, end = 1 << min_code, (1 << min_code) + 1
    size, table, previous = min_code + 1, [bytes([i]) for i in range(clear)] + [b"", b""], b""
    acc = nbits = at = 0
    while True:
        while nbits < size:
            if at >= len(stream):
                return
            acc |= stream[at] << nbits
            at, nbits = at + 1, nbits + 8
        code = acc & ((1 << size) - 1)
        acc, nbits = acc >> size, nbits - size
        if code == clear:
            size, table, previous = min_code + 1, table[: clear + 2], b""
            continue
        if code == end:
            return
        if code < len(table) and code not in (clear, end):
            entry = table[code]
            if previous and len(table) < 1 << MAX_CODE_BITS:
                table.append(previous + entry[:1])
        elif code == len(table) and previous:
            entry = previous + previous[:1]
            if len(table) < 1 << MAX_CODE_BITS:
                table.append(entry)
        else:
            return
        if len(table) == 1 << size and size < MAX_CODE_BITS:
            size += 1
        previous = entry
        yield entry


def _literal_stream(rows: np.ndarray) -> bytes:
    """The pixels as an LZW stream of 9-bit literal codes (minimum code size 8: any index fits), with a
    clear code every 254 literals so that the code width never grows: (minimum code size, sub-blocks,
    terminator). Packed eight codes to nine bytes, with no array per bit."""
    clear, per_clear = 256, 254  # after a clear, 254 literals leave the decoder's table short of 512
    pixels = rows.reshape(-1).astype(np.uint16)
    groups = -(-len(pixels) // per_clear)
    codes = np.full(groups * (per_clear + 1), clear, np.uint16)
    slots = np.ones(len(codes), bool)
    slots[:: per_clear + 1] = False
    codes[np.flatnonzero(slots)[: len(pixels)]] = pixels
    codes = np.append(codes[: groups + len(pixels)], np.uint16(clear + 1))  # end of information
    codes = np.concatenate([codes, np.zeros(-len(codes) % 8, np.uint16)]).reshape(-1, 8).astype(np.uint64)
    low = np.zeros(len(codes), np.uint64)
    for i in range(7):
        low |= codes[:, i] << np.uint64(9 * i)
    low |= (codes[:, 7] & np.uint64(1)) << np.uint64(63)
    packed = np.empty((len(codes), 9), np.uint8)
    packed[:, :8] = low.astype("<u8").view(np.uint8).reshape(-1, 8)
    packed[:, 8] = (codes[:, 7] >> np.uint64(1)).astype(np.uint8)
    data = packed.tobytes()
    blocks = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    return b"\x08" + blocks + b"\x00"
