"""Streaming sha256, shared by bundles, the scanner and (later) the quarantine."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_bytes(data: bytes) -> str:
    """md5 for matching shared hash lists that use it (not for integrity: sha256 is the identity)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path | str) -> str:
    """md5 of a file, for comparing with an object's ETag (S3 keeps the MD5 of single-part uploads)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
