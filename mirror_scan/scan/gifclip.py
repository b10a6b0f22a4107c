"""GIF frames larger than their canvas, as browsers show them: clipped to the logical screen.

A GIF's frames may claim extents far beyond the canvas (a 100x100 screen with a 40000x30000 frame): Pillow
grows the image to the frame (a decompression bomb by its claimed size, or a vast mostly empty picture in
which the visible corner is too small for the model to see), while browsers draw only what falls inside
the canvas. So the frames' heights are clamped to the canvas (the rows below it are never shown, and a
frame's pixel stream is row by row, so dropping its last rows keeps every other row in place), and the
decoded frames are cropped to the canvas (widths are kept: the rows must keep their length).

Read without a decoder: header, logical screen, colour tables, extension and image blocks by their sizes."""

from __future__ import annotations

import struct

GIF_SIGNATURES = (b"GIF87a", b"GIF89a")


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


def clip_frames(data: bytes) -> tuple[bytes, int]:
    """The GIF with every frame's height clamped to the canvas, and how many frames were clamped (0: the
    bytes are returned as they are). Interlaced frames are left alone (their rows are not in order)."""
    screen = canvas(data)
    if screen is None or len(data) < 13:
        return data, 0
    screen_w, screen_h = screen
    out = bytearray(data)
    at = 13
    if data[10] & 0x80:  # global colour table
        at += 3 * (2 << (data[10] & 0x07))
    clamped = 0
    while at < len(data):
        block = data[at]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            at = _skip_sub_blocks(data, at + 2)
            continue
        if block != 0x2C or at + 10 > len(data):
            break  # not a GIF block: Pillow decides what the rest is
        left, top, width, height = struct.unpack("<HHHH", data[at + 1 : at + 9])
        flags = data[at + 9]
        interlaced = bool(flags & 0x40)
        room = max(1, screen_h - top) if top < screen_h else 1
        if height > room and not interlaced:
            out[at + 7 : at + 9] = struct.pack("<H", room)
            clamped += 1
        at += 10
        if flags & 0x80:  # local colour table
            at += 3 * (2 << (flags & 0x07))
        at = _skip_sub_blocks(data, at + 1)  # LZW minimum code size, then the data sub-blocks
    return (bytes(out), clamped) if clamped else (data, 0)
