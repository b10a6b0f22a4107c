"""PNG's chunk structure, read without a decoder: what a viewer skips, mirror-scan must skip too.

Browsers and image viewers ignore metadata they cannot read (an iCCP profile or a zTXt comment that
inflates past a limit, XMP that does not parse) and show the pixels; Pillow stops at the first such
chunk. So when a PNG fails, it is decoded again without its metadata chunks: the pixels are scored, the
skip is said. Only metadata is dropped (never IHDR, PLTE, tRNS, IDAT or APNG's acTL/fcTL/fdAT)."""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text, colour profile, EXIF and time: nothing in them changes which pixels are shown.
METADATA_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf", b"tIME", b"dSIG"})


ANIMATION_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _without(data: bytes, kinds: frozenset[bytes], cut: bool = False) -> tuple[bytes, list[str]]:
    """The PNG without the chunks of `kinds`, and the chunk types dropped (in order, once each). A chunk that
    runs past the end of the file ends the walk: the rest is kept as it is, unless it is one of `kinds` and
    `cut`: then it goes too, and the PNG is ended there (an APNG cut inside a later frame: its default image
    is whole, and browsers show it)."""
    if not data.startswith(PNG_SIGNATURE):
        return data, []
    kept, dropped = [data[:8]], []
    at = 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        end = at + 12 + length
        if end > len(data):
            if cut and kind in kinds:
                name = kind.decode("latin-1")
                dropped += [] if name in dropped else [name]
                return b"".join(kept) + IEND, dropped
            break
        if kind in kinds:
            name = kind.decode("latin-1")
            if name not in dropped:
                dropped.append(name)
        else:
            kept.append(data[at:end])
        at = end
        if kind == b"IEND":
            break
    if cut and dropped and at < len(data) and at + 12 > len(data):  # cut inside a chunk's header: ended here
        return b"".join(kept) + IEND, dropped
    kept.append(data[at:])
    return b"".join(kept), dropped


def default_image(data: bytes) -> bytes | None:
    """An APNG as the plain PNG of its default image (IHDR, PLTE, tRNS, IDAT...: every chunk but acTL, fcTL
    and fdAT), which browsers show when the animation is broken; None when the file is not an APNG."""
    still, dropped = _without(data, ANIMATION_CHUNKS, cut=True)
    return still if dropped else None


def strip_metadata(data: bytes) -> tuple[bytes, list[str]]:
    """The PNG without its metadata chunks, and the chunk types dropped."""
    return _without(data, METADATA_CHUNKS)
