"""A cut or damaged GIF, as browsers show it. Pillow's lenient decode of a GIF cut short fills the rows that
never came with one colour, and gives an interlaced GIF's early passes one row in eight; an animated GIF
cut in a later frame fails altogether. Browsers (Chromium's Wuffs decoder, Firefox's) draw what arrived:
- the first frame's rows as they come, the rest transparent; an interlaced frame's passes with each row
  repeated down over the rows later passes have not filled yet (8, 4, 2 rows), as Chromium draws them;
- an animation cut in a later frame: the frames that arrived whole (`whole_frames` writes the file again
  with those only, and its trailer; the blocks are read by their sizes, no decoder).
The LZW stream is gifclip's decoder (a bad code ends the frame there, as in a browser); bounded by the
pixel limit and gifclip.MAX_STREAM_BYTES. Runs in the decoder worker processes like every decode."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mirror_scan.scan.decoders.gifclip import (
    GIF_SIGNATURES,
    MAX_STREAM_BYTES,
    data_start,
    interlaced_row,
    layout,
    lzw,
    sub_blocks,
)

PASS_REPEAT = (8, 4, 2, 1)  # rows an interlaced pass's row covers until later passes fill them (Chromium)


@dataclass
class _Frame:
    start: int  # its first extension (or its descriptor)
    descriptor: int
    end: int  # after its sub-blocks' terminator (when whole)
    whole: bool
    transparent: int | None


def _walk(data: bytes) -> tuple[list[_Frame], bool] | None:
    """The frames by their blocks, and whether the trailer arrived (None: not a GIF)."""
    if len(data) < 13 or data[:6] not in GIF_SIGNATURES:
        return None
    flags = data[10]
    at = 13 + (3 * (2 << (flags & 0x07)) if flags & 0x80 else 0)
    frames: list[_Frame] = []
    pending, transparent = None, None  # the extensions before the next image
    while at < len(data):
        kind = data[at]
        if kind == 0x3B:
            return frames, True
        if kind == 0x21 and at + 1 < len(data):
            label = data[at + 1]
            body, end = sub_blocks(data, at + 2)
            if label == 0xF9 and len(body) >= 4:
                transparent = body[3] if body[0] & 1 else None
            pending = at if pending is None else pending
            at = end
            continue
        if kind != 0x2C or at + 10 > len(data):
            break
        start = data_start(data, at)
        if start >= len(data):
            frames.append(_Frame(pending if pending is not None else at, at, len(data), False, transparent))
            break
        end, whole = start + 1, False
        while end < len(data):
            size = data[end]
            end += 1 + size
            if size == 0:
                whole = end <= len(data)
                break
        frames.append(_Frame(pending if pending is not None else at, at, min(end, len(data)), whole, transparent))
        pending, transparent = None, None
        at = end
    return frames, False


def whole_frames(data: bytes) -> tuple[bytes, int] | None:
    """A cut animation written again with the frames that arrived whole and a trailer, and their count;
    None when the file is not a GIF cut after its first whole frame."""
    walked = _walk(data)
    if walked is None:
        return None
    frames, ended = walked
    whole = 0
    while whole < len(frames) and frames[whole].whole:
        whole += 1
    if whole == 0 or (ended and whole == len(frames)) or (whole == 1 and len(frames) == 1 and not ended):
        return None  # nothing whole, nothing cut, or a single picture whose trailer alone is missing
    return data[: frames[whole - 1].end] + b";", whole


def salvage(data: bytes, max_pixels: int) -> tuple[Image.Image, int, int] | None:
    """The first frame as browsers draw it, on the canvas: (RGBA picture, rows that arrived, frame height);
    None when it is not a GIF, nothing of it arrived, or it is over the limits."""
    walked = _walk(data)
    if walked is None or not walked[0]:
        return None
    frame = walked[0][0]
    left, top, width, height, flags = struct.unpack("<HHHHB", data[frame.descriptor + 1 : frame.descriptor + 10])
    found = layout(data, max_pixels)  # the canvas and where the first frame is drawn on it, as gifclip has it
    if found is not None:
        (screen_w, screen_h), (left, top) = found.canvas, found.origin
    else:
        screen_w, screen_h = left + width, top + height
    if not width or not height or width * height > max_pixels or screen_w * screen_h > max_pixels:
        return None
    start = data_start(data, frame.descriptor)
    if start + 1 >= len(data) or not 1 <= data[start] <= 11:
        return None
    stream, _ = sub_blocks(data, start + 1)
    pixels = bytearray()
    for piece in lzw(stream[:MAX_STREAM_BYTES], data[start]):
        pixels += piece
        if len(pixels) >= width * height:
            break
    count = min(len(pixels), width * height)
    whole_rows = count // width
    if count == 0:
        return None
    indices = np.zeros((height, width), np.uint8)
    shown = np.zeros((height, width), bool)
    stored = np.frombuffer(bytes(pixels[: whole_rows * width]), np.uint8).reshape(whole_rows, width)
    interlaced = bool(flags & 0x40)
    targets = interlaced_row(np.arange(whole_rows + 1), height) if interlaced else np.arange(whole_rows + 1)
    n1, n2, n3 = (height + 7) // 8, (height + 3) // 8, (height + 1) // 4
    for k in range(whole_rows):
        row = int(targets[k])
        repeat = PASS_REPEAT[(k >= n1) + (k >= n1 + n2) + (k >= n1 + n2 + n3)] if interlaced else 1
        indices[row : row + repeat] = stored[k]
        shown[row : row + repeat] = True
    if count % width and whole_rows < height:  # the last row, cut inside: the pixels that came
        row = int(targets[whole_rows])
        indices[row, : count % width] = np.frombuffer(bytes(pixels[whole_rows * width : count]), np.uint8)
        shown[row, : count % width] = True
    table = _colour_table(data, frame.descriptor)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = table[indices]
    opaque = shown if frame.transparent is None else shown & (indices != frame.transparent)
    rgba[..., 3] = np.where(opaque, 255, 0)
    drawn = np.zeros((screen_h, screen_w, 4), np.uint8)
    visible = rgba[: max(0, screen_h - top), : max(0, screen_w - left)]
    drawn[top : top + visible.shape[0], left : left + visible.shape[1]] = visible
    arrived = int(shown.any(axis=1).sum())
    return Image.fromarray(drawn, "RGBA"), arrived, height


def _colour_table(data: bytes, descriptor: int) -> np.ndarray:
    """The frame's colour table (its own, else the global one) as 256 RGB rows; missing entries black."""
    flags = data[descriptor + 9]
    if flags & 0x80:
        at, count = descriptor + 10, 2 << (flags & 0x07)
    elif data[10] & 0x80:
        at, count = 13, 2 << (data[10] & 0x07)
    else:  # no table at all: browsers draw nothing useful; greys keep the shapes
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    raw = np.frombuffer(data[at : at + 3 * count], np.uint8)
    raw = raw[: len(raw) // 3 * 3].reshape(-1, 3)
    return np.concatenate([raw, np.zeros((256 - len(raw), 3), np.uint8)])
