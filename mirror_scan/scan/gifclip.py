"""GIF frames larger than their canvas, as browsers show them: clipped to the logical screen.

A GIF's frames may claim extents far beyond the canvas (a 100x100 screen with a 40000x30000 frame): Pillow
grows the image to the frame (a decompression bomb by its claimed size, or a vast mostly empty picture in
which the visible corner is too small for the model to see), while browsers draw only what falls inside
the canvas. So:
- a frame stored row by row has its height clamped to the canvas (the rows below it are never shown, and
  dropping a frame's last rows keeps every other row in place); the decoded frames are then cropped to the
  canvas (widths are kept: the rows must keep their length);
- an interlaced frame stores its rows in four passes (every 8th row from 0, from 4, every 4th from 2, every
  2nd from 1), so the rows inside the canvas are spread through the whole stream: its LZW stream is
  decoded here, the rows inside the canvas kept, and the frame written again clipped and not interlaced
  (LZW literals only: larger, always valid). The decode is bounded by the data that is really there (an
  LZW code yields at most 4,096 pixels) and stops once the last visible row has arrived.

Read without an image decoder: header, logical screen, colour tables, extension and image blocks by sizes."""

from __future__ import annotations

import struct

import numpy as np

GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
MAX_CODE_BITS = 12
FLUSH_PIXELS = 1 << 20


def canvas(data: bytes) -> tuple[int, int] | None:
    if len(data) < 10 or data[:6] not in GIF_SIGNATURES:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return (width, height) if width and height else None


def _skip_sub_blocks(data: bytes, at: int) -> int:
    while at < len(data):
        size = data[at]
        at += 1 + size
        if size == 0:
            break
    return at


def _sub_blocks(data: bytes, at: int) -> tuple[bytes, int]:
    """The data of the sub-blocks starting at `at`, and where they end."""
    parts = []
    while at < len(data):
        size = data[at]
        parts.append(data[at + 1 : at + 1 + size])
        at += 1 + size
        if size == 0:
            break
    return b"".join(parts), at


def clip_frames(data: bytes, max_pixels: int) -> tuple[bytes, int]:
    """The GIF with every frame clipped to the canvas (see the module's text), and how many frames were
    clipped (0: the bytes are returned as they are). A canvas over `max_pixels` is left to the decoder's
    own bomb check."""
    screen = canvas(data)
    if screen is None or len(data) < 13:
        return data, 0
    screen_w, screen_h = screen
    out = bytearray(data)
    at = 13
    if data[10] & 0x80:  # global colour table
        at += 3 * (2 << (data[10] & 0x07))
    clamped = 0
    transparent = 0  # the index of the last graphic control extension's transparent colour
    replaced: list[tuple[int, int, bytes]] = []  # (start, end, new bytes) of re-written interlaced frames
    while at < len(data):
        block = data[at]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            if data[at + 1 : at + 3] == b"\xf9\x04" and at + 7 <= len(data):
                transparent = data[at + 6] if data[at + 3] & 0x01 else 0
            at = _skip_sub_blocks(data, at + 2)
            continue
        if block != 0x2C or at + 10 > len(data):
            break  # not a GIF block: Pillow decides what the rest is
        start = at
        left, top, width, height = struct.unpack("<HHHH", data[at + 1 : at + 9])
        flags = data[at + 9]
        interlaced = bool(flags & 0x40)
        room = max(1, screen_h - top) if top < screen_h else 1
        at += 10
        if flags & 0x80:  # local colour table
            at += 3 * (2 << (flags & 0x07))
        if at >= len(data):
            break
        if interlaced and height > room:
            min_code = data[at]
            stream, end = _sub_blocks(data, at + 1)
            wide = min(width, max(1, screen_w - left) if left < screen_w else 1)
            if width and 2 <= min_code <= 8 and screen_w * screen_h <= max_pixels:
                rows = _visible_rows(stream, min_code, width, height, room, wide, transparent)
                head = bytearray(data[start:at])
                head[5:9] = struct.pack("<HH", wide, room)
                head[9] = flags & ~0x40
                replaced.append((start, end, bytes(head) + _literal_stream(rows, min_code)))
                clamped += 1
            at = end
            continue
        if height > room and not interlaced:
            out[start + 7 : start + 9] = struct.pack("<H", room)
            clamped += 1
        at = _skip_sub_blocks(data, at + 1)  # LZW minimum code size, then the data sub-blocks
    if not clamped:
        return data, 0
    for begin, end, new in reversed(replaced):
        out[begin:end] = new
    return bytes(out), clamped


def _interlaced_row(k: np.ndarray, height: int) -> np.ndarray:
    """The picture row of each stored row k of an interlaced frame `height` rows tall."""
    n1, n2, n3 = (height + 7) // 8, (height + 3) // 8, (height + 1) // 4
    return np.select(
        [k < n1, k < n1 + n2, k < n1 + n2 + n3],
        [8 * k, 4 + 8 * (k - n1), 2 + 4 * (k - n1 - n2)],
        1 + 2 * (k - n1 - n2 - n3),
    )


def _visible_rows(stream: bytes, min_code: int, width: int, height: int, room: int, wide: int, fill: int) -> np.ndarray:
    """The first `room` rows (first `wide` columns) of an interlaced frame, from its LZW stream. Rows that
    never arrive stay `fill` (the transparent index, when the frame has one)."""
    n1, n2, n3 = (height + 7) // 8, (height + 3) // 8, (height + 1) // 4
    last = n1 + n2 + n3 + room // 2 if room > 1 else 1  # stored rows needed: through pass 4's last visible row
    rows = np.full((room, wide), fill, np.uint8)
    buffer = bytearray()
    first_row = 0  # the stored row buffer[0] belongs to

    def flush() -> bool:
        nonlocal buffer, first_row
        whole = len(buffer) // width
        if whole:
            k = np.arange(first_row, first_row + whole)
            target = _interlaced_row(k, height)
            keep = target < room
            if keep.any():
                block = np.frombuffer(bytes(buffer[: whole * width]), np.uint8).reshape(whole, width)
                rows[target[keep]] = block[keep, :wide]
            del buffer[: whole * width]
            first_row += whole
        return first_row >= last

    for piece in _lzw(stream, min_code):
        buffer += piece
        if len(buffer) >= max(width, FLUSH_PIXELS) and flush():
            return rows
    flush()
    return rows


def _lzw(stream: bytes, min_code: int):
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


def _literal_stream(rows: np.ndarray, min_code: int) -> bytes:
    """The pixels as an LZW stream of literal codes, with a clear code often enough that the code width
    never grows: (minimum code size, sub-blocks, terminator)."""
    clear = 1 << min_code
    per_clear = clear - 2  # literals after a clear before the decoder's table would reach 2 * clear
    pixels = rows.reshape(-1).astype(np.uint16)
    groups = -(-len(pixels) // per_clear)
    codes = np.full(groups * (per_clear + 1), clear, np.uint16)
    slots = np.ones(len(codes), bool)
    slots[:: per_clear + 1] = False
    codes[np.flatnonzero(slots)[: len(pixels)]] = pixels
    codes = codes[: groups + len(pixels)]
    codes = np.append(codes, clear + 1)  # end of information
    width = min_code + 1
    bits = ((codes[:, None] >> np.arange(width, dtype=np.uint16)) & 1).astype(np.uint8).reshape(-1)
    packed = np.packbits(bits, bitorder="little").tobytes()
    blocks = b"".join(bytes([len(packed[i : i + 255])]) + packed[i : i + 255] for i in range(0, len(packed), 255))
    return bytes([min_code]) + blocks + b"\x00"
