"""The ledger's rows, named: what its queries return (and paths as the ledger stores them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


def path_key(path: str | os.PathLike) -> bytes:
    return os.fsencode(path)


def display_path(key: bytes) -> str:
    """Printable form of a stored path: undecodable bytes become \\x escapes."""
    return key.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class StoredResult:
    id: int
    frames: int
    prompt_set: str
    sims: np.ndarray  # float32 [frames, P]
    embedding: np.ndarray  # float16 [frames, D]
    detail: dict | None = None  # the decode's row labels and notes


@dataclass(frozen=True)
class FileRow:
    """What the ledger knows about one path."""

    path: bytes
    root: bytes | None
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    status: str
    verdict: str | None
    reason: str | None
    result_id: int | None
    model_id: str | None
    policy_id: str | None
    severity: float | None
    format: str | None
    scanned_at: float | None
    action: str | None
    error_count: int
    etag: str | None = None
    origin: str | None = None


@dataclass(frozen=True)
class ItemRow:
    """One quarantine item as the ledger (the authority) records it."""

    id: str
    dir: bytes
    sha256: str
    size: int
    original: bytes  # absolute path of the original (b"" for uploads rejected at validation)
    mirror_root: bytes
    remote: str | None
    key: str | None
    state: str
    reason: str | None
    created: float
    updated: float
    seen_count: int
    last_seen: float | None
    md5: str | None = None  # of the plaintext (None for items older than schema 11)
    sealed_to: str | None = None  # the age recipient data.age is sealed to; None: held plain as `data`
    sealed_sha256: str | None = None  # of data.age as written


@dataclass(frozen=True)
class FollowupRow:
    id: int
    item: str
    action: str
    target: str
    state: str  # pending, done, refused, cancelled, dry_run, skipped (Lemmy would refuse it: error says why)
    plan: int
    attempts: int
    next_try: float
    result: str | None
    error: str | None
    created: float
    updated: float


FOLLOWUP_COLUMNS = "id, item, action, target, state, plan, attempts, next_try, result, error, created, updated"


class FileSignature(NamedTuple):
    """What the reconciliation walk compares with the disk."""

    size: int | None
    mtime_ns: int | None
    status: str
    scanned_at: float | None
    error_count: int
    unacted: bool  # flagged, and no action taken (a dry run's, or a move a kill rolled back)


class Unacted(NamedTuple):
    """A flagged file not acted on, with the decision `apply` acts on."""

    path: bytes
    sha256: str | None
    reason: str | None
    root: bytes | None
    model_id: str | None
    policy_id: str | None
    severity: float | None


@dataclass(frozen=True)
class RescoreRow:
    """A decided file with its stored result, as `rescore` reads it."""

    rowid: int
    verdict: str | None
    sha256: str
    frames: int
    prompt_set: str
    sims: bytes
    embedding: bytes | None
    policy_id: str | None
    severity: float | None
    detail: str | None
    decided_at: float | None
    mentions_list: int  # the stored reason names a hash list (a list decided it, or a review match)


@dataclass(frozen=True)
class MoveRow:
    id: int
    item: str
    kind: str
    step: str
    target: bytes | None
    started: float
    updated: float
    note: str | None
    method: str | None
    decided_by: str | None = None  # who asked for a restore (JSON who, via)


FILE_COLUMNS = ", ".join(f.name for f in FileRow.__dataclass_fields__.values())
ITEM_COLUMNS = ", ".join(f.name for f in ItemRow.__dataclass_fields__.values())
MOVE_COLUMNS = ", ".join(f.name for f in MoveRow.__dataclass_fields__.values())
