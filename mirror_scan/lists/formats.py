"""Hash-list files as other tools write and read them. Pure: text in, entries out; entries in, text out.

Read (every line checked; on any bad line nothing is imported):
- ours: CSV `type,hash[,quality][,note][,source]` (pdq, md5, sha256 of the file);
- ThreatExchange's `threatexchange dataset -P --csv`: `signal_type,signal_str,collab,category,tags`
  (python-threatexchange cli/dataset_cmd.py);
- HMA/ThreatExchange signal type names: `pdq`, `video_md5`, `video_sha256` (the md5/sha256 of the file:
  what our md5/sha256 are), `vpdq` (signal_type/md5.py, sha256.py, extensions/vpdq);
- the local-file exchange: one `TYPE VALUE` per line (exchanges/impl/file_api.py);
- a file with one column named pdq, md5 or sha256.
Signal types that are not about pictures (raw_text, url, url_md5, trend_query) are skipped and counted.
Degenerate hashes (all zero, one repeated digit) and PDQ of quality under 50 are refused with their line.

Written: our CSV (with quality), ThreatExchange's dataset CSV and the local-file format. Neither
ThreatExchange nor HMA has a photo md5 or sha256 type: those go only into our own CSV.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from mirror_scan.text import peer_json

HEX = re.compile(r"^[0-9a-f]+$")
LENGTHS = {"pdq": 64, "sha256": 64, "md5": 32}
KINDS = (*LENGTHS, "vpdq")
MIN_QUALITY = 50  # PdqSignal.QUALITY_THRESHOLD, VPDQ_QUALITY_THRESHOLD
# Upstream names -> ours. video_md5/video_sha256 are the md5/sha256 of a file's bytes, as ours are.
UPSTREAM_TYPES = {"pdq": "pdq", "video_md5": "md5", "video_sha256": "sha256", "vpdq": "vpdq", "pdq_hash": "pdq",
                  "photo_pdq": "pdq", "md5": "md5", "sha256": "sha256"}  # fmt: skip
NOT_PICTURES = ("raw_text", "url", "url_md5", "trend_query", "tlsh", "pdf_text", "ocr_text")
TYPE_COLUMNS = ("type", "signal_type", "hash_type")
VALUE_COLUMNS = ("hash", "signal_str", "signal_value", "signal", "value")

Entry = tuple[str, str, str | None, str | None]  # (kind, value, note, source)


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # signal types that are not about pictures


def merge_duplicates(entries: list[Entry]) -> tuple[list[Entry], int]:
    """One entry per (type, hash), the first one's note and source kept; returns (entries, how many merged)."""
    seen: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        seen.setdefault((entry[0], entry[1]), entry)
    return list(seen.values()), len(entries) - len(seen)


def degenerate(value: str) -> bool:
    """All zero, or one digit repeated: no picture hashes to that (a placeholder, a broken hasher)."""
    return len(set(value)) == 1


def check_value(kind: str, value: str, quality: int | None = None) -> tuple[str, str | None]:
    """(normalised value, None) or (value, why it is refused)."""
    if kind == "vpdq":
        try:
            return encode_vpdq(decode_vpdq(value)), None
        except ValueError as err:
            return value, f"vpdq: {err}"
    value = value.strip().lower()
    length = LENGTHS[kind]
    if len(value) != length or not HEX.match(value):
        return value, f"{kind} must be {length} hex digits, got {value[:80]!r}"
    if degenerate(value):
        return value, f"{kind} {value[:16]}... is degenerate (one digit repeated): no picture hashes to it"
    if kind == "pdq" and quality is not None and quality < MIN_QUALITY:
        return value, f"pdq of quality {quality}, under {MIN_QUALITY}: too unreliable to match on"
    return value, None


def parse(text: str) -> Parsed:
    text = text.lstrip("\ufeff")
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    kind, _, value = first.partition(" ")
    if value and kind.lower() in (*UPSTREAM_TYPES, *NOT_PICTURES):  # `TYPE VALUE` lines (values may hold commas)
        return _parse_lines(text)
    return _parse_csv(text)


def _parse_lines(text: str) -> Parsed:
    """The local-file exchange: `TYPE VALUE` per line (python-threatexchange file_api.py splits at the first
    space). It has no comments; lines starting with # are taken as such here and skipped."""
    parsed = Parsed()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind_name, _, value = line.partition(" ")
        _take(parsed, number, kind_name.strip().lower(), value.strip(), None, None, None)
    return parsed


def _take(parsed: Parsed, line: int, name: str, value: str, note, source, quality) -> None:
    if name in NOT_PICTURES:
        parsed.skipped[name] = parsed.skipped.get(name, 0) + 1
        return
    kind = UPSTREAM_TYPES.get(name)
    if kind is None:
        parsed.errors.append(
            f"line {line}: unknown hash type {name!r} (pdq, md5, sha256, video_md5, video_sha256, vpdq)"
        )
        return
    value, problem = check_value(kind, value, quality)
    if problem:
        parsed.errors.append(f"line {line}: {problem}")
    else:
        parsed.entries.append((kind, value, note or None, source or None))


def _parse_csv(text: str) -> Parsed:
    parsed = Parsed()
    rows = csv.reader(io.StringIO(text), strict=True)  # bad quoting is an error, not a guess
    try:
        header = [column.strip().lower() for column in next(rows)]
    except StopIteration:
        parsed.errors.append("line 1: the file is empty (a header such as 'type,hash' is needed)")
        return parsed
    except csv.Error as err:
        parsed.errors.append(f"line 1: not readable as CSV ({err})")
        return parsed
    kind_at = next((header.index(c) for c in TYPE_COLUMNS if c in header), None)
    value_at = next((header.index(c) for c in (*VALUE_COLUMNS, *LENGTHS) if c in header), None)
    fixed_kind = next((k for k in LENGTHS if k in header and header.index(k) == value_at), None)
    if value_at is None or (kind_at is None and fixed_kind is None):
        parsed.errors.append(
            f"line 1: header {','.join(header)!r} names no hash type and value (use 'type,hash', "
            "ThreatExchange's 'signal_type,signal_str,...', or a column named pdq, md5 or sha256)"
        )
        return parsed
    note_at = next((header.index(c) for c in ("note", "tags") if c in header), None)
    source_at = next((header.index(c) for c in ("source", "collab") if c in header), None)
    quality_at = header.index("quality") if "quality" in header else None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as err:  # an over-long field, a stray quote at the end: the rest is not trusted
            parsed.errors.append(f"line {rows.line_num}: not readable as CSV ({err}); nothing after it was read")
            break
        line = rows.line_num  # a quoted field may span lines: report where the row ends
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            name = fixed_kind or row[kind_at].strip().lower()  # type: ignore[index]
            value = row[value_at]
        except IndexError:
            parsed.errors.append(f"line {line}: too few columns")
            continue
        quality = None
        if quality_at is not None and quality_at < len(row) and row[quality_at].strip():
            try:
                quality = int(row[quality_at])
            except ValueError:
                parsed.errors.append(f"line {line}: quality {row[quality_at][:20]!r} is not a number")
                continue
        _take(parsed, line, name, value, _cell(row, note_at), _cell(row, source_at), quality)
    return parsed


def _cell(row: list[str], at: int | None) -> str | None:
    return row[at].strip() if at is not None and at < len(row) else None


# ---------------------------------------------------------------- vPDQ values


def decode_vpdq(text: str) -> list[tuple[str, int, float]]:
    """python-threatexchange's vPDQ signal string: a JSON list of "hash,quality,timestamp" (vpdq_util.py
    json_to_vpdq; timestamps may be in exponent notation, as `:.3` formatting writes them)."""
    items = peer_json(text, max_depth=2)
    if items is None:
        raise ValueError("not a JSON list of 'hash,quality,timestamp' strings")
    if not isinstance(items, list) or not items:
        raise ValueError("not a non-empty JSON list")
    features = []
    for item in items:
        parts = str(item).split(",")
        if len(parts) != 3:
            raise ValueError(f"{str(item)[:80]!r} is not 'hash,quality,timestamp'")
        digest, quality, timestamp = parts[0].strip().lower(), parts[1].strip(), parts[2].strip()
        if len(digest) != 64 or not HEX.match(digest):
            raise ValueError(f"frame hash {digest[:80]!r} is not 64 hex digits")
        try:
            q, t = int(quality), float(timestamp)
        except ValueError:
            raise ValueError(f"{str(item)[:80]!r}: quality and timestamp must be numbers") from None
        if not 0 <= q <= 100 or t < 0:
            raise ValueError(f"{str(item)[:80]!r}: quality 0-100 and a timestamp >= 0")
        features.append((digest, q, t))
    if all(q < MIN_QUALITY or degenerate(h) for h, q, _ in features):
        raise ValueError("every frame is degenerate or of quality under 50: nothing to match on")
    return features


def encode_vpdq(features: Iterable[tuple[str, int, float]]) -> str:
    return json.dumps([f"{h},{q},{round(float(t), 3)}" for h, q, t in features], separators=(",", ":"))


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class Signal:
    """One exported value: kind in our terms, and whether the picture is a video (for upstream names)."""

    kind: str  # pdq | md5 | sha256 | vpdq
    value: str
    video: bool = False
    quality: int | None = None


def upstream_name(signal: Signal) -> str | None:
    """ThreatExchange/HMA's signal type for a value of ours, or None where they have none (a photo's
    md5 or sha256)."""
    if signal.kind in ("pdq", "vpdq"):
        return signal.kind
    return f"video_{signal.kind}" if signal.video else None


def write(signals: Iterable[Signal], fmt: str, out) -> dict[str, int]:
    """csv (ours), te (ThreatExchange dataset CSV) or local (local-file exchange). Returns counts of what was
    written and of what the format has no type for."""
    counts = {"written": 0, "no_upstream_type": 0}
    writer = csv.writer(out, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(["type", "hash", "quality"])
    elif fmt == "te":
        writer.writerow(["signal_type", "signal_str", "collab", "category", "tags"])
    for signal in signals:
        if fmt == "csv":
            writer.writerow([signal.kind, signal.value, "" if signal.quality is None else signal.quality])
            counts["written"] += 1
            continue
        name = upstream_name(signal)
        if name is None:
            counts["no_upstream_type"] += 1
            continue
        if fmt == "te":
            writer.writerow([name, signal.value, "mirror-scan", "POSITIVE_CLASS", ""])
        else:
            out.write(f"{name} {signal.value}\n")
        counts["written"] += 1
    return counts
