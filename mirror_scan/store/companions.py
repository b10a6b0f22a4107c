"""The other objects of a pict-rs upload: what pict-rs made from the original and serves in its place.

pict-rs 0.5 serves a recorded variant (a thumbnail, a resize, another format: `variants`) straight from the
store without reading the original, and keeps the first frame of an animation or video as a still
(`hashes.motion_identifier`), from which it makes more variants (robinst/pict-rs v0.5.17-pre.2 src/lib.rs
`async fn process`, src/generate.rs). Removing only the original leaves them served. So a quarantine item
is the upload: the original and every object of its hash, each copied and verified into the item before
any of them leaves the bucket or the mirror, and all put back by one restore.

Nothing in a variant's key ties it to its original: only pict-rs's repo does. Where the repo is Postgres
(`[pictrs] database_url`) the objects of a hash are read from it (`UploadSource`, moderation/uploads.py);
where it is sled, nothing outside pict-rs can list them, and an item holds its original alone (said by
`status`, `selftest` and the README).

On disk an item keeps each companion's bytes as `companions/<sha256>` (no extension); the ledger's
`item_objects` rows say which key each came from, its role and state:

    listed   known from the repo, not copied yet (the quarantine's next attempt copies it)
    held     copied into the item and verified (from the bucket, what pict-rs serves), still to leave
    taken    out of the bucket and the mirror: the item holds the only copy
    missing  the bucket (or, with no bucket, the mirror) did not hold it when it was copied (pict-rs lost it,
             or its retention cleaned it); taken when it is seen again
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

COMPANIONS = "companions"  # the folder in an item that holds the companions' bytes


@dataclass(frozen=True)
class Companion:
    """An object of an upload besides its original."""

    key: str  # its key in the bucket (pict-rs's identifier) and its path under the mirror root
    role: str  # "variant" (variants.identifier), "motion" (hashes.motion_identifier) or "original" (when a
    # variant was what was flagged: the item's own file is then that variant)
    variant: str | None = None  # pict-rs's variant path, e.g. "thumbnail/256/webp"


@dataclass(frozen=True)
class Upload:
    """A pict-rs upload as its repo records it: the hash, the original's key, its other objects and its
    aliases (the names in Lemmy's URLs)."""

    hash: str  # pict-rs's hash (base64 of sha256, size and format), as the repo stores it
    identifier: str  # the original's key
    companions: tuple[Companion, ...]
    aliases: tuple[str, ...] = ()


class UploadSource(Protocol):
    """pict-rs as the quarantine asks it: its Postgres repo for the objects of an upload (a sled repo has
    no outside reader), its API for whether an alias still resolves and to upload again."""

    def upload_of(self, key: str) -> Upload | None:
        """The upload an object key belongs to (its original, a variant or its motion still); None when
        pict-rs has no record of the key. Raises MirrorScanError when the repo cannot answer."""

    def uploads_of(self, hashes: list[str]) -> list[Upload]:
        """The uploads of these hashes that pict-rs still records (one query, for the held items)."""

    def served(self, key: str | None, aliases: list[str]) -> bool | None:
        """Whether pict-rs still records the upload: by its repo (its hash, else the key of one of its objects,
        else one of the aliases), or by its API (an alias still resolves); None when nothing here can tell."""

    def recorded(self, keys: list[str]) -> set[str] | None:
        """Those of these keys pict-rs still records as an object of some upload; None when only its API is
        there (it cannot tell)."""

    def alias_hash(self, alias: str) -> str | None:
        """pict-rs's hash an alias names now (None: the alias is free); raises when only the API is there."""

    def reimport(self, alias: str, data: bytes) -> str:
        """Upload the bytes again through pict-rs under this alias; returns what pict-rs said."""


@dataclass(frozen=True)
class ItemObject:
    """A companion as the ledger records it for an item."""

    item: str
    key: str
    role: str
    variant: str | None
    path: bytes  # its copy in the mirror (b"" for items with no mirror)
    sha256: str | None  # of the bytes held in the item (None while listed or missing)
    size: int | None
    state: str  # listed | held | taken | missing
    md5: str | None = None  # of the plaintext held
    sealed_sha256: str | None = None  # sealed: of companions/<sha256>.age as written
