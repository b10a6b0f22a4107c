"""The HEIF item structure of an AVIF (ISO/IEC 23008-12 on ISOBMFF), read without a decoder: items, their
properties and associations, references and payloads. For avif.py, which decodes what libavif refuses.

Untrusted bytes: every size is checked against its box, a malformed box raises ValueError (the caller
records an error), and payloads are capped (many items may point at the same large extent)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from mirror_scan.scan.decoders.bits import Bits

MAX_ITEMS = 4096
MAX_EXTENTS = 65536  # all items together (a file of 64 MB has no need of more)
MAX_PAYLOAD_FACTOR = 4  # all item payloads together: at most this many times the file


@dataclass
class Parsed:
    primary: int | None
    items: dict[int, bytes]  # item id -> item type (b"av01", b"grid", b"iovl", b"tmap", ...)
    props: list[bytes]  # property boxes, whole (header included); ipma indices are 1-based
    ipma: dict[int, list[tuple[int, bool]]]  # item id -> [(property index, essential)]
    iref: list[tuple[bytes, int, list[int]]]  # (type, from, [to, ...])
    payloads: dict[int, bytes] = field(default_factory=dict)

    def properties(self, item: int) -> dict[bytes, bytes]:
        """Property type -> its body, the first of each type associated with the item."""
        found: dict[bytes, bytes] = {}
        for index, _ in self.ipma.get(item, []):
            if 1 <= index <= len(self.props):
                raw = self.props[index - 1]
                found.setdefault(raw[4:8], raw[8:])
        return found

    def derived_from(self, item: int) -> list[int]:
        for kind, source, targets in self.iref:
            if kind == b"dimg" and source == item:
                return targets
        return []


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in data[start:end]."""
    end = len(data) if end is None else min(end, len(data))
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        header = 8
        if size == 1:
            if at + 16 > end:
                raise ValueError(f"box {kind!r} at {at}: truncated large size")
            (size,) = struct.unpack(">Q", data[at + 8 : at + 16])
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise ValueError(f"box {kind!r} at {at} claims {size} bytes")
        yield kind, at + header, at + size
        at += size


class _Reader:
    def __init__(self, data: bytes, at: int, end: int) -> None:
        self.data, self.at, self.end = data, at, end

    def int(self, size: int) -> int:
        if size == 0:
            return 0
        if self.at + size > self.end:
            raise ValueError("a field runs past its box")
        value = int.from_bytes(self.data[self.at : self.at + size], "big")
        self.at += size
        return value


def parse(data: bytes) -> Parsed:
    meta = next(((s + 4, e) for kind, s, e in boxes(data) if kind == b"meta"), None)
    if meta is None:
        raise ValueError("no meta box")
    parsed = Parsed(None, {}, [], {}, [])
    idat, locations, extent_count = b"", [], 0
    for kind, s, e in boxes(data, *meta):
        version = data[s] if s < e else 0
        r = _Reader(data, s + 4, e)
        if kind == b"pitm":
            parsed.primary = r.int(2 if version == 0 else 4)
        elif kind == b"idat":
            idat = data[s:e]
        elif kind == b"iinf":
            r.int(2 if version == 0 else 4)
            for entry, s2, e2 in boxes(data, r.at, e):
                if entry != b"infe" or len(parsed.items) >= MAX_ITEMS:
                    continue
                item = _Reader(data, s2 + 4, e2)
                if data[s2] < 2:
                    continue  # infe v0/v1 (no item type): not an image item
                item_id = item.int(2 if data[s2] < 3 else 4)
                item.int(2)  # protection index
                parsed.items[item_id] = data[item.at : item.at + 4]
        elif kind == b"iloc":
            sizes = r.int(1)
            more = r.int(1)
            offset_size, length_size, base_size = sizes >> 4, sizes & 15, more >> 4
            index_size = (more & 15) if version in (1, 2) else 0
            for _ in range(min(r.int(2 if version < 2 else 4), MAX_ITEMS)):
                item_id = r.int(2 if version < 2 else 4)
                method = r.int(2) & 15 if version in (1, 2) else 0
                r.int(2)  # data reference index
                base = r.int(base_size)
                extents = []
                count = r.int(2)
                extent_count += count
                if extent_count > MAX_EXTENTS:
                    raise ValueError("more item extents than any picture needs")
                for _ in range(count):
                    r.int(index_size)
                    extents.append((base + r.int(offset_size), r.int(length_size)))
                locations.append((item_id, method, extents))
        elif kind == b"iprp":
            for part, s2, e2 in boxes(data, s, e):
                if part == b"ipco":
                    parsed.props += [data[s3 - (16 if data[s3 - 16 : s3 - 12] == b"\0\0\0\1" else 8) : e3]
                                     for _, s3, e3 in boxes(data, s2, e2)]  # fmt: skip
                elif part == b"ipma":
                    assoc = _Reader(data, s2 + 4, e2)
                    wide = data[s2 + 3] & 1
                    for _ in range(min(assoc.int(4), MAX_ITEMS)):
                        item_id = assoc.int(2 if data[s2] < 1 else 4)
                        for _ in range(assoc.int(1)):
                            value = assoc.int(2 if wide else 1)
                            top = 0x8000 if wide else 0x80
                            parsed.ipma.setdefault(item_id, []).append((value & (top - 1), bool(value & top)))
        elif kind == b"iref":
            width = 2 if version == 0 else 4
            for ref, s2, e2 in boxes(data, s + 4, e):
                refs = _Reader(data, s2, e2)
                source = refs.int(width)
                parsed.iref.append((ref, source, [refs.int(width) for _ in range(refs.int(2))]))
    budget = MAX_PAYLOAD_FACTOR * len(data)
    for item_id, method, extents in locations:
        source = idat if method == 1 else data
        if method not in (0, 1):
            continue
        payload = b"".join(source[o : o + n] if n else source[o:] for o, n in extents)  # 0: to the end
        budget -= len(payload)
        if budget < 0:
            raise ValueError("item payloads add up to more than the file could hold")
        parsed.payloads[item_id] = payload
    return parsed


def stated_size(data: bytes) -> tuple[int, int] | None:
    """The primary picture's size as the file states it before any decoding: its `ispe`, else (an HEVC
    item without one, which libheif still decodes) the luma size in its HEVC sequence parameter set, else
    (a grid) the grid's output size. For the pixel limit, so a file without `ispe` is no way past it."""
    try:
        parsed = parse(data)
    except ValueError:
        return None
    if parsed.primary is None:
        return None
    props = parsed.properties(parsed.primary)
    if b"ispe" in props and len(props[b"ispe"]) >= 12:
        return struct.unpack(">II", props[b"ispe"][4:12])
    kind = parsed.items.get(parsed.primary)
    if kind == b"hvc1" and b"hvcC" in props:
        return hevc_size(props[b"hvcC"])
    payload = parsed.payloads.get(parsed.primary, b"")
    if kind == b"grid" and len(payload) >= 8:
        wide = payload[1] & 1
        return struct.unpack(">II" if wide else ">HH", payload[4 : 12 if wide else 8])
    return None


def hevc_size(hvcc: bytes) -> tuple[int, int] | None:
    """pic_width/height_in_luma_samples of the first SPS in an HEVCDecoderConfigurationRecord (ISO/IEC
    14496-15 8.3.3.1; the SPS syntax of ITU-T H.265 7.3.2.2), or None where it cannot be read."""
    at, end = 23, len(hvcc)
    if end < at:
        return None
    for _ in range(hvcc[22]):
        if at + 3 > end:
            return None
        nal_type, count = hvcc[at] & 0x3F, int.from_bytes(hvcc[at + 1 : at + 3], "big")
        at += 3
        for _ in range(count):
            if at + 2 > end:
                return None
            size = int.from_bytes(hvcc[at : at + 2], "big")
            nal = hvcc[at + 2 : at + 2 + size]
            at += 2 + size
            if nal_type == 33 and len(nal) > 2:
                try:
                    return _sps_size(nal[2:].replace(b"\0\0\3", b"\0\0"))  # emulation prevention removed
                except EOFError:  # the parameter set ends before its sizes
                    return None
    return None


def _sps_size(rbsp: bytes) -> tuple[int, int] | None:
    bits = Bits(rbsp)
    bits.bits(4)  # sps_video_parameter_set_id
    sub_layers = bits.bits(3)  # sps_max_sub_layers_minus1
    bits.bits(1)
    bits.bits(96)  # profile_tier_level: the general profile (88 bits) and level (8)
    present = [(bits.bits(1), bits.bits(1)) for _ in range(sub_layers)]
    if sub_layers:
        bits.bits(2 * (8 - sub_layers))
    for profile, level in present:
        bits.bits(88 * profile + 8 * level)
    bits.golomb()  # sps_seq_parameter_set_id
    if bits.golomb() == 3:  # chroma_format_idc 4:4:4: separate_colour_plane_flag
        bits.bits(1)
    width, height = bits.golomb(), bits.golomb()
    return (width, height) if width and height else None
