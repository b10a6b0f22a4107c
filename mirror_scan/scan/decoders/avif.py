"""AVIF that libavif (Pillow's AVIF plugin) refuses, decoded by FFmpeg's libdav1d through PyAV: the second
decoder, tried only when the first fails (scan/decode.py; docs/architecture.md has the order).

Found in real files, refused by libavif 1.4: grids whose tiles are shared, a primary item without `ispe`,
transforms (`irot`, `imir`, `clap`) marked non-essential, a gain-map (`tmap`) or overlay (`iovl`) item as
the primary, layered pictures grouped in a `pymd` pyramid. Other viewers and decoders show them, so they
are scored. PyAV (18.1) gives no access to FFmpeg's grid layout (each coded item is a stream of its own),
so the item structure is read here (heif.py) and composed like libavif does: grid tiles row by row and
cropped to the grid's size, overlay inputs pasted at their offsets, a tone-mapped or identity item as its
first input (the base picture; the gain map is not applied), then `clap` (only a crop from the top-left,
as Chromium), `irot` and `imir`. The result is RGB (alpha is not composited: the colour under it is what
must be seen). Bounded: the declared size is checked against the pixel limit before anything is made.

Damaged coded data: dav1d refuses a frame whose symbol decoder reads past the end of a tile (a changed
byte in the AV1 data makes it need more bits than the tile has), while Chromium draws the picture. Given
zeros past the end (the tile's OBU padded, CONCEAL_PADDING), dav1d decodes it to within 0.3 levels of
Chromium's drawing (measured on the browser differential's damaged AVIFs), so that is tried last, and said."""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

from mirror_scan.scan.decoders.heif import Parsed, parse

MAX_DEPTH = 4  # derived items of derived items
CONCEAL_PADDING = (4096, 65536)  # zero bytes after a damaged frame's tile data, tried in turn
OBU_TILE_DATA = (4, 6)  # OBU_TILE_GROUP, OBU_FRAME


class AvifRefused(ValueError):
    """The file is not an AVIF this decoder can compose (the caller reports the first decoder's reason)."""


def _rgb(frame) -> np.ndarray:
    """Chroma upsampled bilinearly first: close to libavif's conversion (swscale's direct path is nearest)."""
    name = frame.format.name
    if name.startswith("gray"):
        return frame.reformat(format="rgb24").to_ndarray()
    middle = "yuv444p16le" if ("10" in name or "12" in name) else "yuv444p"
    if not name.startswith(middle):
        frame = frame.reformat(format=middle, interpolation="BILINEAR")
    return frame.reformat(format="rgb24").to_ndarray()


class _Composer:
    def __init__(self, parsed: Parsed, max_pixels: int) -> None:
        import av

        self.parsed, self.max_pixels = parsed, max_pixels
        self.decoded: dict[int, np.ndarray] = {}
        self.codec = av.CodecContext.create("libdav1d", "r")
        self.codec.thread_count = 1  # the decode pool is the parallelism
        self.pixels = 0
        self.concealed = False  # a damaged item was decoded from padded tile data (see the module's text)

    def _coded(self, item: int) -> np.ndarray:
        if item not in self.decoded:
            payload = self.parsed.payloads.get(item)
            if not payload:
                raise AvifRefused(f"item {item} has no data")
            try:
                frames = self._decode(payload)
            except ValueError:  # av's InvalidDataError is one: dav1d refused the coded data
                frames = self._concealed(payload)
            if not frames:
                raise AvifRefused(f"item {item}: no picture decoded")
            last = frames[-1]  # a layered item: its last (highest) layer
            self._spend(last.width * last.height)
            self.decoded[item] = _rgb(last)
        return self.decoded[item]

    def _decode(self, payload: bytes) -> list:
        import av

        try:
            return self.codec.decode(av.Packet(payload)) + self.codec.decode(None)
        finally:
            self.codec.flush_buffers()

    def _concealed(self, payload: bytes) -> list:
        """The item decoded with zeros after its tile data, as Chromium draws it; the first error again
        when that does not decode either."""
        import av

        for padding in CONCEAL_PADDING:
            padded = pad_tile_data(payload, padding)
            if padded is None:
                break
            self.codec = av.CodecContext.create("libdav1d", "r")  # a fresh decoder after the error
            self.codec.thread_count = 1
            try:
                frames = self._decode(padded)
            except ValueError:
                continue
            self.concealed = True
            return frames
        return self._decode(payload)  # raises the decoder's own error

    def _spend(self, pixels: int) -> None:
        self.pixels += pixels
        if self.pixels > self.max_pixels:
            raise AvifRefused(f"the picture needs more than {self.max_pixels:,} pixels (possible decompression bomb)")

    def render(self, item: int, depth: int = 0) -> np.ndarray:
        if depth > MAX_DEPTH:
            raise AvifRefused("derived items nest too deep")
        kind = self.parsed.items.get(item)
        if kind == b"av01":
            picture = self._coded(item)
        elif kind == b"grid":
            picture = self._grid(item, depth)
        elif kind == b"iovl":
            picture = self._overlay(item, depth)
        elif kind in (b"tmap", b"iden"):
            sources = self.parsed.derived_from(item)
            if not sources:
                raise AvifRefused(f"{kind.decode()} item {item} names no input")
            picture = self.render(sources[0], depth + 1)
        else:
            raise AvifRefused(f"item {item} is {kind!r}, not a picture")
        return _transform(picture, self.parsed.properties(item))

    def _grid(self, item: int, depth: int) -> np.ndarray:
        body = self.parsed.payloads.get(item, b"")
        if len(body) < 8:
            raise AvifRefused("grid item too short")
        rows, cols, wide = body[2] + 1, body[3] + 1, body[1] & 1
        if wide and len(body) < 12:
            raise AvifRefused("grid item too short")
        width, height = struct.unpack(">II", body[4:12]) if wide else struct.unpack(">HH", body[4:8])
        tiles = self.parsed.derived_from(item)
        if len(tiles) != rows * cols:
            raise AvifRefused(f"the grid wants {rows * cols} tiles and names {len(tiles)}")
        self._spend(width * height)
        pictures = [self.render(tile, depth + 1) for tile in tiles]
        tile_h, tile_w = pictures[0].shape[:2]
        if rows * tile_h < height or cols * tile_w < width:
            raise AvifRefused("the grid's tiles do not cover its size")
        canvas = np.zeros((height, width, 3), np.uint8)
        for index, picture in enumerate(pictures):
            top, left = (index // cols) * tile_h, (index % cols) * tile_w
            part = picture[: max(0, min(tile_h, height - top)), : max(0, min(tile_w, width - left))]
            canvas[top : top + part.shape[0], left : left + part.shape[1]] = part
        return canvas

    def _overlay(self, item: int, depth: int) -> np.ndarray:
        body = self.parsed.payloads.get(item, b"")
        wide = len(body) > 1 and body[1] & 1
        size = 4 if wide else 2
        at = 2 + 8
        if len(body) < at + 2 * size:
            raise AvifRefused("overlay item too short")
        fill = np.array(struct.unpack(">4H", body[2:10])[:3], float) / 65535 * 255
        width, height = struct.unpack(">II" if wide else ">HH", body[at : at + 2 * size])
        at += 2 * size
        self._spend(width * height)
        canvas = np.empty((height, width, 3), np.uint8)
        canvas[:] = fill.round().astype(np.uint8)
        for source in self.parsed.derived_from(item):
            if len(body) < at + 2 * size:
                raise AvifRefused("overlay offsets missing")
            x, y = struct.unpack(">ii" if wide else ">hh", body[at : at + 2 * size])
            at += 2 * size
            picture = self.render(source, depth + 1)
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + picture.shape[1], width), min(y + picture.shape[0], height)
            if x1 > x0 and y1 > y0:
                canvas[y0:y1, x0:x1] = picture[y0 - y : y1 - y, x0 - x : x1 - x]
        return canvas


def _clap(body: bytes, width: int, height: int) -> tuple[int, int, int, int] | None:
    if len(body) < 32:
        return None
    wn, wd, hn, hd, xn, xd, yn, yd = struct.unpack(">IIIIiIiI", body[:32])
    if 0 in (wd, hd, xd, yd):
        return None
    crop_w, crop_h = wn / wd, hn / hd
    x, y = xn / xd + (width - crop_w) / 2, yn / yd + (height - crop_h) / 2
    if not all(float(v).is_integer() for v in (crop_w, crop_h, x, y)):
        return None
    x, y, crop_w, crop_h = int(x), int(y), int(crop_w), int(crop_h)
    if x != 0 or y != 0 or crop_w <= 0 or crop_h <= 0 or crop_w > width or crop_h > height:
        return None  # only a crop from the top-left corner is applied (Chromium's rule)
    return x, y, crop_w, crop_h


def _transform(picture: np.ndarray, props: dict[bytes, bytes]) -> np.ndarray:
    if b"clap" in props and (box := _clap(props[b"clap"], picture.shape[1], picture.shape[0])):
        x, y, w, h = box
        picture = picture[y : y + h, x : x + w]
    if props.get(b"irot"):
        picture = np.rot90(picture, props[b"irot"][0] & 3)  # anti-clockwise quarter turns
    if props.get(b"imir"):
        picture = picture[::-1] if (props[b"imir"][0] & 1) == 0 else picture[:, ::-1]
    return np.ascontiguousarray(picture)


def pad_tile_data(payload: bytes, padding: int) -> bytes | None:
    """The AV1 item's OBUs written again, each holding tile data (a frame or a tile group) followed by
    `padding` zero bytes (sizes rewritten; every OBU given a size field); None when the OBUs cannot be
    read."""
    out, at = bytearray(), 0
    while at < len(payload):
        header = payload[at]
        start = at + 1 + ((header >> 2) & 1)  # the extension byte, when there is one
        if start > len(payload):
            return None
        if header & 0x02:
            size, start = _leb128(payload, start)
            if size is None:
                return None
        else:
            size = len(payload) - start
        if start + size > len(payload):
            return None
        extra = padding if (header >> 3) & 0x0F in OBU_TILE_DATA else 0
        out += bytes([header | 0x02]) + payload[at + 1 : at + 1 + ((header >> 2) & 1)]
        out += _to_leb128(size + extra) + payload[start : start + size] + bytes(extra)
        at = start + size
    return bytes(out)


def _leb128(data: bytes, at: int) -> tuple[int | None, int]:
    value = 0
    for i in range(8):
        if at + i >= len(data):
            return None, at
        value |= (data[at + i] & 0x7F) << (7 * i)
        if not data[at + i] & 0x80:
            return value, at + i + 1
    return None, at


def _to_leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def decode_avif(data: bytes, max_pixels: int) -> Image.Image:
    """The primary picture as RGB, `info["concealed"]` set when damaged coded data was read as Chromium
    reads it; raises AvifRefused (or ValueError) when it cannot be composed."""
    try:
        parsed = parse(data)
    except ValueError as error:
        raise AvifRefused(f"its item structure cannot be read: {error}") from None
    if parsed.primary is None or parsed.primary not in parsed.items:
        raise AvifRefused("no primary item")
    composer = _Composer(parsed, max_pixels)
    img = Image.fromarray(composer.render(parsed.primary), "RGB")
    img.info["concealed"] = composer.concealed
    return img
