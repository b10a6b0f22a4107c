"""A quarantine item on disk: its meta.json format (for people and for rebuilding; the ledger is the
authority), ids, the errors of the quarantine, and the small file operations its moves share."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

from mirror_scan.errors import MirrorScanError
from mirror_scan.hashing import CHUNK
from mirror_scan.kinds import ItemState
from mirror_scan.store.fsinfo import filesystem_type, is_remote_or_fuse
from mirror_scan.store.paths import (
    Place,
    UnsafePath,
    check_relative,
)
from mirror_scan.store.rows import ItemRow

log = logging.getLogger(__name__)


META_FORMAT = "mirror-scan-quarantine-item"
META_VERSION = 1
DATA, META = "data", "meta.json"
TMP_DATA, TMP_META = ".data.tmp", ".meta.json.tmp"
# The restore's temp file beside the target: a dot name ending in .partial, which discovery, the watch
# daemon and pulls all ignore (rclone's own in-progress suffix).
RESTORE_TMP_SUFFIX = ".mirror-scan-restore.partial"
NO_UPSTREAM = ";no-upstream"  # recorded with a restore's method: recovery must not put it back upstream either
# Items with no file in the mirror (uploads rejected at validation, objects scanned in their bucket).
NO_LOCAL_ORIGINAL = {"original": "", "original_b64": "", "mirror_root": "", "mirror_root_b64": ""}
LINK_UNSUPPORTED = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV)


class QuarantineError(MirrorScanError):
    """A quarantine operation that cannot be done as asked."""


class UpstreamRestorePending(QuarantineError):
    """The file is back in the mirror; putting the object back upstream failed and is retried."""


class PictrsSilent(QuarantineError):
    """pict-rs is configured and cannot answer now: a restore into its store waits for its answer."""


class ItemBusy(QuarantineError):
    """Another live process is working on this item."""


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def new_item_id(sha256: str) -> str:
    """Sortable by time, recognisable by content, unique by a random suffix."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{sha256[:12]}-{secrets.token_hex(2)}"


def item_meta(item_id: str, sha256: str, size: int, state: ItemState, **fields: Any) -> dict[str, Any]:
    """The metadata every quarantine item carries; callers add where it came from and why. Its state and
    history follow the ledger's (Journal.sync_meta)."""
    return {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "id": item_id,
        "state": str(state),
        "sha256": sha256,
        "size": size,
        "quarantined_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "history": [],
        **fields,
    }


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Every byte written (os.write may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_to_new(source_fd: int, target: bytes | Path, mode: int, dir_fd: int | None = None) -> str:
    """Copy from an open file into a new file (O_EXCL: never an existing one), fsync it, return the sha256
    of what was written."""
    import hashlib

    digest = hashlib.sha256()
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        while chunk := os.read(source_fd, CHUNK):
            digest.update(chunk)
            write_all(out, chunk)
        os.fsync(out)
    finally:
        os.close(out)
    return digest.hexdigest()


def is_prefix_of(place: Place, source: Path) -> bool:
    """True if the file at the place holds a leading part (possibly all) of `source`'s bytes: what an
    interrupted O_EXCL write of ours leaves behind."""
    try:
        fd = place.open(os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        with open(fd, "rb", buffering=0, closefd=False) as partial, open(source, "rb", buffering=0) as full:
            while chunk := partial.read(CHUNK):
                if full.read(len(chunk)) != chunk:
                    return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def restore_method(directory: bytes) -> str:
    """'link' (temp beside the target, then a hard link: atomic and never overwrites) where the filesystem
    has hard links; 'direct' (O_EXCL write of the target itself) on FUSE and network filesystems, where
    a temp name would be uploaded as a new object by `rclone mount`."""
    return "direct" if is_remote_or_fuse(filesystem_type(directory)) else "link"


def claims_of(meta: dict[str, Any]) -> dict[str, Any]:
    """What a metadata file says about the facts the ledger also records (ValueError if unusable)."""
    try:
        root = unb64(meta.get("mirror_root_b64", ""))
        original = unb64(meta["original_b64"]) if meta.get("original_b64") else b""
        return {
            "id": meta.get("id"),
            "sha256": meta.get("sha256"),
            "size": meta.get("size"),
            "remote": meta.get("remote"),
            "key": meta.get("key"),
            "mirror_root": root,
            "original": os.path.join(root, original) if original else b"",
            "origin": meta.get("origin"),
            "sealed": _sealed_claim(meta.get("sealed")),
            "md5": meta.get("md5"),
        }
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"metadata is unusable ({err})") from None


def _sealed_claim(sealed: Any) -> tuple[str, str] | None:
    """A metadata file's "sealed": (recipient, sha256 of data.age), or ValueError when it is not one."""
    if sealed is None:
        return None
    to, sha = sealed["to"], sealed["sha256"]
    if not (isinstance(to, str) and re.fullmatch(r"age1[0-9a-z]{58}", to)):
        raise ValueError("its 'sealed' names no age public key")
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError("its 'sealed' holds no sha256")
    return (to, sha)


def meta_disagreement(row: ItemRow, meta: dict[str, Any]) -> list[str]:
    """The facts on which an item's metadata file and the ledger (the authority) differ; every fact when
    the metadata cannot be read as such."""
    recorded = {
        "id": row.id,
        "sha256": row.sha256,
        "size": row.size,
        "remote": row.remote,
        "key": row.key,
        "mirror_root": row.mirror_root,
        "original": row.original,
        "origin": item_origin(row),
        "sealed": (row.sealed_to, row.sealed_sha256) if row.sealed_to else None,
        "md5": row.md5,
    }
    try:
        claimed = claims_of(meta)
    except ValueError as err:
        return [str(err)]
    return [name for name in recorded if claimed[name] != recorded[name]]


def item_origin(row: ItemRow) -> str | None:
    """Where an item came from, by the ledger: None (a mirror file), "bucket" (an object scanned in its
    bucket: no local original, a key) or "upload" (rejected at validation: neither)."""
    if row.original:
        return None
    return "bucket" if row.key else "upload"


def file_key(row: ItemRow) -> bytes:
    """The ledger's file row of an item: its mirror path, or NAME:bucket/key for an object scanned in its
    bucket (which has no local original), or b"" for an upload rejected at validation."""
    if row.original:
        return row.original
    if row.remote and row.key:
        return f"{row.remote}/{row.key}".encode()
    return b""


def check_item_id(item_id: str) -> None:
    """An item id names one directory under items/ (and one lock file): a single plain path component."""
    try:
        parts = check_relative(item_id.encode())
    except UnsafePath:
        parts = []
    if len(parts) != 1:
        raise QuarantineError(f"{item_id!r} is not a quarantine item id", hint="see `mirror-scan quarantine list`")


def restore_tmp_name(name: bytes) -> bytes:
    return b"." + name + RESTORE_TMP_SUFFIX.encode()
