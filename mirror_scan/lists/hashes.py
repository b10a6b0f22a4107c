"""Perceptual hashes (PDQ) and hash-list matching. Pure but for LiveMatcher, which reloads lists from the
ledger it is given: pictures and lists in, distances out.

PDQ (Meta's perceptual hash, the one ThreatExchange and Hasher-Matcher-Actioner share) survives
re-encoding and resizing, which sha256 does not: pict-rs re-encodes uploads, and another instance holds
another encoding of the same picture. A PDQ hash is written as 64 lowercase hex digits, the 256-bit
vector read as one big-endian number (ThreatExchange's form: python-threatexchange pdq_hasher.py, the C++
Hash256::format). Two hashes match within 31 differing bits (PDQ_CONFIDENT_MATCH_THRESHOLD); hashes of
quality under 50 (flat or featureless pictures) are neither matched, stored for export nor imported
(PdqSignal.QUALITY_THRESHOLD). Videos are also hashed by vPDQ: a PDQ per second of video, matched as a
bag of frames (80% of the query's frames within 31 bits of the list entry's; vpdq_util.py).
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mirror_scan.lists.formats import LENGTHS, decode_vpdq, degenerate

try:
    import pdqhash  # noqa: F401

    AVAILABLE = True
except ImportError:  # pragma: no cover - a dependency; scanning works without it
    AVAILABLE = False

MATCH_DISTANCE = 31
MIN_QUALITY = 50
HEX_DIGITS = set("0123456789abcdef")
VPDQ_QUERY_MATCH_PERCENT = 80.0
VPDQ_INDEX_MATCH_PERCENT = 0.0


REFERENCE_SIZE = 512


def flatten_depth(frame: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale -> 8-bit greyscale (Pillow's own conversion clips them); greyscale
    with premultiplied alpha (TIFF's associated alpha, Pillow's "La") -> LA, the only mode Pillow converts
    it to (what a viewer shows: the grey divided by the alpha)."""
    if frame.mode == "La":
        return frame.convert("LA")
    if frame.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(frame, dtype=np.float64)
        top = 65535.0 if frame.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if frame.mode == "F":
        arr = np.nan_to_num(np.asarray(frame, dtype=np.float64))
        return Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    return frame


def reference_pixels(image: Image.Image) -> np.ndarray:
    """The picture as Meta's reference hasher prepares it (facebook/ThreatExchange pdq/cpp/io/pdqio.cpp):
    the pixels as stored, with no EXIF rotation (the reference, python-threatexchange and HMA all ignore
    the tag, so a hash of the rotated view would miss theirs by ~128 bits); in RGB (palette, CMYK,
    greyscale and 16-bit converted properly; alpha dropped and the colour under it kept, as pdqhash and
    ImageMagick's PNM conversion do); and when either side is over 512, sampled to exactly 512x512 by
    nearest neighbour at floor(x*W/512), CImg's resize (pdqio.cpp:102-103). The samples are taken before
    the conversion to RGB (each conversion is per pixel, so the order does not change a value) and by
    Pillow, without a copy of the whole picture (see _nearest)."""
    image = flatten_depth(image)
    width, height = image.size
    if width > REFERENCE_SIZE or height > REFERENCE_SIZE:
        image = _nearest(image if image.mode in POINTWISE_MODES else image.convert("RGB"))
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb))


# Modes whose conversion to RGB is per pixel (palette lookups included), so sampling first is exact.
POINTWISE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})


def _nearest(image: Image.Image) -> Image.Image:
    """image sampled to 512x512 at floor(x*W/512), floor(y*H/512): Pillow's affine NEAREST transform
    samples at floor(a*(x+0.5)+c), so c = -a/2 plus a margin far below the 1/512 steps of x*W/512; the
    columns and rows it picks are checked against the formula (once per side length), and numpy gathers
    them instead where they would differ."""
    width, height = image.size
    if _pillow_samples_exactly(width) and _pillow_samples_exactly(height):
        return image.transform((REFERENCE_SIZE, REFERENCE_SIZE), Image.Transform.AFFINE,
                               _sampling(width, height), Image.Resampling.NEAREST)  # fmt: skip
    arr = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    rows = (np.arange(REFERENCE_SIZE) * height) // REFERENCE_SIZE
    cols = (np.arange(REFERENCE_SIZE) * width) // REFERENCE_SIZE
    return Image.fromarray(np.ascontiguousarray(arr[np.ix_(rows, cols)]), "RGB")


def _sampling(width: int, height: int) -> tuple[float, ...]:
    sx, sy = width / REFERENCE_SIZE, height / REFERENCE_SIZE
    return (sx, 0.0, -0.5 * sx + 1e-6, 0.0, sy, -0.5 * sy + 1e-6)


@functools.lru_cache(maxsize=4096)
def _pillow_samples_exactly(side: int) -> bool:
    indices = Image.fromarray(np.arange(side, dtype=np.int32).reshape(1, side), "I")
    picked = indices.transform((REFERENCE_SIZE, 1), Image.Transform.AFFINE, (*_sampling(side, 1)[:3], 0.0, 1.0, 0.0),
                               Image.Resampling.NEAREST)  # fmt: skip
    return bool((np.asarray(picked).reshape(-1) == (np.arange(REFERENCE_SIZE) * side) // REFERENCE_SIZE).all())


def pdq(image: Image.Image) -> tuple[str, int]:
    """(hash as 64 hex digits, quality 0-100) of a picture as stored (see reference_pixels)."""
    import pdqhash

    bits, quality = pdqhash.compute(reference_pixels(image))
    return bits_to_hex(bits), int(quality)


def pdq_dihedral(image: Image.Image) -> tuple[str, int, list[str]]:
    """(hash, quality, the hashes of its 8 rotations and mirror images). The first is the hash that is
    stored and shared. The variants are ours: HMA compares the plain hash only; comparing every variant of
    a picture with the lists also catches rotated and mirrored re-uploads (and EXIF-rotated copies)."""
    import pdqhash

    variants, quality = pdqhash.compute_dihedral(reference_pixels(image))
    hexes = [bits_to_hex(bits) for bits in variants]
    return hexes[0], int(quality), hexes


def pdq_frame(rgb: np.ndarray) -> tuple[str, int]:
    """PDQ of one video frame as vPDQ hashes it (facebook/ThreatExchange vpdq: the frame's RGB at its
    decoded size, straight into pdqHash256FromFloatLuma, no 512 step)."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return bits_to_hex(bits), int(quality)


def queries(pdq: list[tuple[str, int]] | None, variants: list[str] | None) -> list[tuple[str, int]]:
    """Every rotation and mirror image of every frame (8 per frame, in frame order), with its frame's
    quality: what is compared with the lists."""
    pdq, variants = pdq or [], variants or []
    if len(variants) != 8 * len(pdq):
        return list(pdq)
    return [(variants[8 * i + k], quality) for i, (_, quality) in enumerate(pdq) for k in range(8)]


def bits_to_hex(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def pack(hashes: list[str]) -> np.ndarray:
    """Hex PDQ hashes -> uint8 [N, 32] for fast Hamming distances."""
    if not hashes:
        return np.zeros((0, 32), dtype=np.uint8)
    return np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint8).reshape(len(hashes), 32)


def valid_pdq(text: str) -> bool:
    return len(text) == 64 and set(text) <= HEX_DIGITS


@dataclass(frozen=True)
class Match:
    list_name: str
    action: str  # "flag" | "review"
    kind: str  # "pdq" | "sha256" | "md5" | "vpdq"
    distance: int  # 0 for exact matches; vpdq: the share of the query's frames NOT matched, in percent
    note: str | None = None
    frames_matched_percent: float | None = None  # vpdq

    def reason(self) -> dict:
        return {
            "hash_list": self.list_name,
            "match": self.kind,
            "distance": self.distance,
            "action": self.action,
            **({"frames_matched_percent": self.frames_matched_percent} if self.kind == "vpdq" else {}),
            **({"note": self.note} if self.note else {}),
        }


def words(hashes: list[str]) -> np.ndarray:
    """Hex PDQ hashes -> uint64 [N, 4] (XOR and popcount a word at a time)."""
    return pack(hashes).view(np.uint64).reshape(len(hashes), 4) if hashes else np.zeros((0, 4), np.uint64)


class BruteForce:
    """Every hash compared with the query: numpy XOR + popcount over the whole list."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def within(self, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        distances = np.bitwise_count(self.table ^ query).sum(axis=1, dtype=np.int32)
        ids = np.flatnonzero(distances <= radius)
        return ids, distances[ids]

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


class MultiIndex:
    """Multi-index hashing (Norouzi et al.; what faiss's binary multi-hash index does): the 256 bits cut
    into 16 chunks of 16 bits, each chunk's values sorted with the ids. Two hashes within 31 bits differ in
    at most 1 bit in some chunk (pigeonhole: 31 < 2 x 16), so probing each chunk's value and its 16
    one-bit neighbours finds every candidate; only those are compared in full. 96 bytes per hash besides
    the table."""

    CHUNKS = 16
    FLIPS = np.array([0] + [1 << bit for bit in range(16)], dtype=np.uint16)

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        chunks = table.view(np.uint16).reshape(len(table), self.CHUNKS)
        self.order = []
        self.values = []
        for c in range(self.CHUNKS):
            order = np.argsort(chunks[:, c], kind="stable").astype(np.int32)
            self.order.append(order)
            self.values.append(chunks[order, c])

    def within(self, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        if radius >= 2 * self.CHUNKS:
            return BruteForce(self.table).within(query, radius)  # the pigeonhole bound no longer holds
        parts = query.view(np.uint16)
        found = []
        for c in range(self.CHUNKS):
            probes = parts[c] ^ self.FLIPS
            low = np.searchsorted(self.values[c], probes, side="left")
            high = np.searchsorted(self.values[c], probes, side="right")
            found.extend(self.order[c][lo:hi] for lo, hi in zip(low, high, strict=True) if hi > lo)
        if not found:
            return np.zeros(0, np.intp), np.zeros(0, np.int32)
        ids = np.unique(np.concatenate(found))
        distances = np.bitwise_count(self.table[ids] ^ query).sum(axis=1, dtype=np.int32)
        keep = distances <= radius
        return ids[keep], distances[keep]

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + sum(o.nbytes + v.nbytes for o, v in zip(self.order, self.values, strict=True))


INDEX_ABOVE = 10_000  # brute force is quicker below this many hashes (measured: 3 ms per query at 100k)


def pdq_index(table: np.ndarray):
    return MultiIndex(table) if len(table) > INDEX_ABOVE else BruteForce(table)


class Matcher:
    """Every imported list in memory: exact sets for sha256/md5, and the PDQ hashes behind one small
    interface (`within(query, radius)`): brute force up to 10,000 hashes, a multi-index above."""

    def __init__(
        self, entries: Iterable[tuple[str, str, str, str, str | None]], distance: int = MATCH_DISTANCE
    ) -> None:
        """entries: (list name, action, type, value, note), streamed: 10 million PDQ hashes take 32 bytes
        each plus 4 for their list (and the index's 96), never a Python object each."""
        self.distance = distance
        self.skipped = 0
        self.exact: dict[tuple[str, str], tuple[str, str, str | None]] = {}
        self.lists: list[tuple[str, str]] = []  # (name, action) by list number
        numbers: dict[str, int] = {}
        owners = array("i")
        table = bytearray()
        self.notes: dict[int, str] = {}  # PDQ entry -> its note, for the few that have one
        self.videos: list[tuple[str, str, str | None, np.ndarray]] = []  # vPDQ entries: (list, action, note, frames)
        for name, action, kind, value, note in entries:
            if kind == "vpdq":
                try:
                    frames = [h for h, q, _ in decode_vpdq(value) if q >= MIN_QUALITY and not degenerate(h)]
                except ValueError:
                    self.skipped += 1
                    continue
                self.videos.append((name, action, note, words(sorted(set(frames)))))
                continue
            if kind not in LENGTHS or len(value) != LENGTHS[kind] or not set(value) <= HEX_DIGITS:
                self.skipped += 1  # a row edited in the ledger by hand: never matched, never a crash
                continue
            if kind != "pdq":
                self.exact.setdefault((kind, value), (name, action, note))
                continue
            if name not in numbers:
                numbers[name] = len(self.lists)
                self.lists.append((name, action))
            if note:
                self.notes[len(owners)] = note
            owners.append(numbers[name])
            table += bytes.fromhex(value)
        self.owners = np.frombuffer(owners, dtype=np.int32) if owners else np.zeros(0, np.int32)
        self.index = pdq_index(np.frombuffer(bytes(table), dtype=np.uint64).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self.exact) + len(self.index.table) + len(self.videos)

    def match(
        self,
        sha256: str | None,
        md5: str | None,
        pdqs: list[tuple[str, int]],
        video: list[tuple[str, int, float]] | None = None,
    ) -> Match | None:
        """The first exact match, else the closest PDQ match within the distance (flag lists before review
        lists at equal distance), else a vPDQ match of the video."""
        for kind, value in (("sha256", sha256), ("md5", md5)):
            if value and (hit := self.exact.get((kind, value))):
                return Match(hit[0], hit[1], kind, 0, hit[2])
        found = self._match_pdq(pdqs)
        if found is None and video and self.videos:
            found = self.match_video(video)
        return found

    def match_video(self, features: list[tuple[str, int, float]]) -> Match | None:
        """vPDQ's rule, with python-threatexchange's constants (extensions/vpdq/vpdq_util.py): unique frames
        of quality 50 and more on both sides, a frame matches within 31 bits, and the video matches when at
        least 80% of the query's frames match the entry's (VPDQ_QUERY_MATCH_THRESHOLD_PERCENT; 0% of the
        entry's, VPDQ_INDEX_MATCH_THRESHOLD_PERCENT)."""
        query = sorted({h for h, q, _ in features if q >= MIN_QUALITY and valid_pdq(h) and not degenerate(h)})
        if not query:
            return None
        asked = words(query)
        best: Match | None = None
        for name, action, note, frames in self.videos:
            if not len(frames):
                continue
            distances = np.bitwise_count(asked[:, None, :] ^ frames[None, :, :]).sum(axis=2)
            close = distances <= self.distance
            share = 100.0 * close.any(axis=1).mean()
            if share < VPDQ_QUERY_MATCH_PERCENT or 100.0 * close.any(axis=0).mean() < VPDQ_INDEX_MATCH_PERCENT:
                continue
            candidate = Match(name, action, "vpdq", round(100 - share), note, round(share, 1))
            if best is None or (candidate.distance, action != "flag") < (best.distance, best.action != "flag"):
                best = candidate
        return best

    def _match_pdq(self, pdqs: list[tuple[str, int]]) -> Match | None:
        best: Match | None = None
        asked = [h for h, quality in pdqs if quality >= MIN_QUALITY and valid_pdq(h)]
        if not asked or not len(self.index.table):
            return None
        for query in words(asked):
            ids, distances = self.index.within(query, self.distance)
            for index, distance in zip(ids, distances, strict=True):
                name, action = self.lists[self.owners[index]]
                candidate = Match(name, action, "pdq", int(distance), self.notes.get(int(index)))
                if best is None or (candidate.distance, action != "flag") < (best.distance, best.action != "flag"):
                    best = candidate
        return best
