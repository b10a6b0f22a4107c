"""Perceptual hashes (PDQ) and hash-list matching. Pure: pictures and lists in, distances out.

PDQ (Meta's perceptual hash, the one ThreatExchange and Hasher-Matcher-Actioner share) survives
re-encoding and resizing, which sha256 does not: pict-rs re-encodes uploads, and another instance holds
another encoding of the same picture. A PDQ hash is written as 64 lowercase hex digits, the 256-bit
vector read as one big-endian number (ThreatExchange's form). Two hashes match within 31 differing bits
(HMA's default); hashes of quality under 50 (flat or featureless pictures) are not matched.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

try:
    import pdqhash  # noqa: F401

    AVAILABLE = True
except ImportError:  # pragma: no cover - a dependency; scanning works without it
    AVAILABLE = False

MATCH_DISTANCE = 31
MIN_QUALITY = 50
HEX_DIGITS = set("0123456789abcdef")


def _hashable(image: Image.Image) -> np.ndarray:
    """RGB pixels, the long side at most 512: PDQ reduces to 64x64 anyway (its reference implementation
    downsamples big pictures first too), and hashing cost follows the pixel count."""
    image = image.convert("RGB")
    if max(image.size) > 512:
        scale = 512 / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BOX)
    return np.ascontiguousarray(np.asarray(image))


def pdq(image: Image.Image) -> tuple[str, int]:
    """(hash as 64 hex digits, quality 0-100) of a picture as a viewer sees it."""
    import pdqhash

    bits, quality = pdqhash.compute(_hashable(image))
    return bits_to_hex(bits), int(quality)


def pdq_dihedral(image: Image.Image) -> tuple[str, int, list[str]]:
    """(hash, quality, the hashes of its 8 rotations and mirror images): a mirrored copy is matched by
    comparing every variant of the query with the list (what HMA does)."""
    import pdqhash

    variants, quality = pdqhash.compute_dihedral(_hashable(image))
    hexes = [bits_to_hex(bits) for bits in variants]
    return hexes[0], int(quality), hexes


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
    kind: str  # "pdq" | "sha256" | "md5"
    distance: int  # 0 for exact matches
    note: str | None = None

    def reason(self) -> dict:
        return {
            "hash_list": self.list_name,
            "match": self.kind,
            "distance": self.distance,
            "action": self.action,
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
        for name, action, kind, value, note in entries:
            if kind not in KINDS or len(value) != KINDS[kind] or not set(value) <= HEX_DIGITS:
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
        return len(self.exact) + len(self.index.table)

    def match(self, sha256: str | None, md5: str | None, pdqs: list[tuple[str, int]]) -> Match | None:
        """The first exact match, else the closest PDQ match within the distance (flag lists before review
        lists at equal distance)."""
        for kind, value in (("sha256", sha256), ("md5", md5)):
            if value and (hit := self.exact.get((kind, value))):
                return Match(hit[0], hit[1], kind, 0, hit[2])
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


class LiveMatcher:
    """The matcher of a long run (scan, watch, serve): rebuilt when a list is imported, replaced or removed
    (`refresh()`: one small query), so a running daemon needs no restart. `ledger` gives
    `hash_lists_version()` and `hash_list_entries()`."""

    def __init__(self, ledger) -> None:
        self.ledger = ledger
        self.version = ledger.hash_lists_version()
        self.matcher = Matcher(ledger.hash_list_entries())

    def refresh(self) -> Matcher:
        version = self.ledger.hash_lists_version()
        if version != self.version:
            self.version, self.matcher = version, Matcher(self.ledger.hash_list_entries())
        return self.matcher

    def match_stored(self, sha256: str) -> Match | None:
        return match_stored(self.matcher, self.ledger, sha256)


def match_stored(matcher: Matcher, ledger, sha256: str) -> Match | None:
    """A match for bytes decided from the ledger (a copy, an unchanged file, rescore): their stored hashes
    with every rotation and mirror image, exactly what the scan compared."""
    if not matcher:
        return None
    md5, pdqs, variants = ledger.picture_hashes(sha256)
    return matcher.match(sha256, md5, queries(pdqs, variants))


# ---------------------------------------------------------------- shared list files

KINDS = {"pdq": 64, "sha256": 64, "md5": 32}
TYPE_COLUMNS = ("type", "signal_type", "hash_type")
VALUE_COLUMNS = ("hash", "signal_value", "signal", "value")


def merge_duplicates(
    entries: list[tuple[str, str, str | None, str | None]],
) -> tuple[list[tuple[str, str, str | None, str | None]], int]:
    """One entry per (type, hash), the first one's note and source kept; returns (entries, how many merged)."""
    seen: dict[tuple[str, str], tuple[str, str, str | None, str | None]] = {}
    for entry in entries:
        seen.setdefault((entry[0], entry[1]), entry)
    return list(seen.values()), len(entries) - len(seen)


def parse_list(text: str) -> tuple[list[tuple[str, str, str | None, str | None]], list[str]]:
    """A shared list as CSV with a header: ours (`type,hash[,note,source]`), HMA's bank export
    (`signal_type,signal_value`), or one column named for its kind (`pdq`, `md5`, `sha256`: ThreatExchange's
    PDQ CSV has a `pdq` or `hash` column). Returns (entries (kind, value, note, source), errors with line
    numbers); the caller imports nothing when there is any error."""
    import csv
    import io

    rows = csv.reader(io.StringIO(text.lstrip("\ufeff")), strict=True)  # bad quoting is an error, not a guess
    try:
        header = [column.strip().lower() for column in next(rows)]
    except StopIteration:
        return [], ["line 1: the file is empty (a header such as 'type,hash' is needed)"]
    except csv.Error as err:
        return [], [f"line 1: not readable as CSV ({err})"]
    kind_at = next((header.index(c) for c in TYPE_COLUMNS if c in header), None)
    value_at = next((header.index(c) for c in (*VALUE_COLUMNS, *KINDS) if c in header), None)
    fixed_kind = next((k for k in KINDS if k in header and header.index(k) == value_at), None)
    if value_at is None or (kind_at is None and fixed_kind is None):
        return [], [
            f"line 1: header {','.join(header)!r} names no hash type and value "
            "(use 'type,hash', HMA's 'signal_type,signal_value', or a column named pdq, md5 or sha256)"
        ]
    note_at = header.index("note") if "note" in header else None
    source_at = header.index("source") if "source" in header else None
    entries, errors = [], []
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as err:  # an over-long field, a stray quote at the end: the rest is not trusted
            errors.append(f"line {rows.line_num}: not readable as CSV ({err}); nothing after it was read")
            break
        line = rows.line_num  # a quoted field may span lines: report where the row ends
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            kind = fixed_kind or row[kind_at].strip().lower()  # type: ignore[index]
            value = row[value_at].strip().lower()
        except IndexError:
            errors.append(f"line {line}: too few columns")
            continue
        kind = {"pdq_hash": "pdq", "photo_pdq": "pdq"}.get(kind, kind)
        if kind not in KINDS:
            errors.append(f"line {line}: unknown hash type {kind!r} (pdq, sha256 or md5)")
        elif len(value) != KINDS[kind] or not set(value) <= HEX_DIGITS:
            errors.append(f"line {line}: {kind} must be {KINDS[kind]} hex digits, got {value[:80]!r}")
        else:
            note = row[note_at].strip() if note_at is not None and note_at < len(row) else None
            source = row[source_at].strip() if source_at is not None and source_at < len(row) else None
            entries.append((kind, value, note or None, source or None))
    return entries, errors
