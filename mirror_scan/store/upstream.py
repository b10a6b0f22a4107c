"""The bucket side of a quarantine move: remove an object (reversibly) and put it back, through rclone.

One `Upstream` per remote and process. Every call goes through a circuit breaker that half-opens: after a
failure the remote is left alone for a backoff (1 s, 2 s, 4 s ... up to 60 s), then one call is tried
again; a success closes it. So a dead remote costs one fast-failing call per backoff, not one per file,
and an outage heals by itself inside a running daemon.

A removal proves it removes the right object: the object must hold the quarantined bytes (its MD5, where
the remote keeps one, else its bytes read back) before it is deleted, and must be gone after. An object
that is not there counts as already gone only with evidence that this is the mirror's bucket: other files
of the mirror are there (a wrong bucket that exists, or a wrong prefix, holds none of them). Otherwise the
item waits as upstream pending, loudly. The first call of each process also checks that the bucket exists.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mirror_scan.clients.rclone import UpstreamError
from mirror_scan.errors import MirrorScanError
from mirror_scan.hashing import md5_file, sha256_bytes, sha256_file

log = logging.getLogger(__name__)


class UpstreamUnavailable(MirrorScanError):
    """The remote failed recently; calls wait for the breaker's backoff to pass."""


class RemoteNotConfigured(MirrorScanError):
    """An item's recorded remote is not configured in this environment."""


@dataclass
class Breaker:
    base_s: float = 1.0
    cap_s: float = 60.0
    failures: int = 0
    open_until: float = 0.0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allow(self) -> bool:
        """Closed, or open with its backoff elapsed (half-open: this call is the trial)."""
        with self._lock:
            return time.monotonic() >= self.open_until

    def success(self) -> None:
        with self._lock:
            self.failures, self.open_until, self.last_error = 0, 0.0, None

    def failure(self, error: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error
            self.open_until = time.monotonic() + min(self.cap_s, self.base_s * 2 ** (self.failures - 1))

    @property
    def state(self) -> str:
        if not self.failures:
            return "closed"
        return "open" if time.monotonic() < self.open_until else "half-open"


@dataclass
class Upstream:
    """Remote object operations. Both are idempotent: removing a missing object (in a bucket that exists)
    is success, and restoring writes the same bytes to the same key and verifies them."""

    remote: str
    remove_object: Callable[[str, str, str, Callable[[], list[str] | None]], str]  # key, sha256, md5, evidence
    restore_object: Callable[[Path, str], None]  # local file, key
    check_bucket: Callable[[], None] | None = None  # raises if the bucket is not there
    read_object: Callable[[str], bytes] | None = None  # key -> bytes (quarantining an object with no mirror copy)
    holds_object: Callable[[str, str, str], bool | None] | None = None  # key, sha256, md5 -> same / other / none
    breaker: Breaker = field(default_factory=Breaker)
    _bucket_ok: bool = False

    @classmethod
    def rclone(cls, remote: str, rclone) -> Upstream:
        def same(found: dict, key: str, sha256: str, md5: str) -> bool:
            """The object rclone stat'ed holds these bytes: its MD5, else its bytes read back (multipart
            uploads have no MD5)."""
            stored_md5 = found.get("Hashes", {}).get("md5")
            if stored_md5:
                return stored_md5 == md5
            return sha256_bytes(rclone.read_object(remote, key)) == sha256

        def holds(key: str, sha256: str, md5: str) -> bool | None:
            """True: the object holds these bytes; False: other bytes; None: no such object."""
            found = rclone.stat_object(remote, key)
            return None if found is None else same(found, key, sha256, md5)

        def restore(local: Path, key: str) -> None:
            there = holds(key, sha256_file(local), md5_file(local))
            if there is False:  # never over another object: pict-rs may serve it now
                raise UpstreamError(f"{remote}/{key} holds other bytes now: not overwritten", kind="mismatch",
                                    hint="look at what is there; the item waits (`quarantine show`)")  # fmt: skip
            if there:
                return  # already back (a restore finished by recovery)
            rclone.put_object(remote, local, key)
            if sha256_bytes(rclone.read_object(remote, key)) != sha256_file(local):
                raise MirrorScanError(f"upstream copy of {key} did not verify after the upload")

        def remove(key: str, sha256: str, md5: str, evidence: Callable[[], list[str] | None]) -> str:
            found = rclone.stat_object(remote, key)
            if found is None:
                others = evidence()
                if others is None:
                    return "already gone upstream (read from there when it was quarantined)"
                if any(rclone.stat_object(remote, other) is not None for other in others):
                    return "already gone upstream (the bucket holds the mirror's other files)"
                raise UpstreamError(
                    f"{key} is not in {remote}, and neither is any of {len(others)} other file(s) of the mirror "
                    "checked there: is --remote the wrong bucket or prefix? nothing counts as removed",
                    kind="unproven",
                    hint="check --remote (`mirror-scan mirror remote MIRROR`); the item waits as upstream pending",
                )
            if not same(found, key, sha256, md5):
                raise UpstreamError(
                    f"{remote}/{key} holds other bytes than the quarantined ones: not removed (wrong bucket, or "
                    "replaced since)",
                    kind="mismatch",
                    hint="check --remote; the item waits as upstream pending",
                )
            rclone.delete_object(remote, key)
            if rclone.stat_object(remote, key) is not None:
                raise UpstreamError(f"{remote}/{key} is still there after its deletion", kind="other")
            return "deleted upstream (its bytes checked first)"

        return cls(
            remote=remote,
            remove_object=remove,
            restore_object=restore,
            check_bucket=lambda: rclone.check_bucket(remote),
            read_object=lambda key: rclone.read_object(remote, key),
            holds_object=holds,
        )

    @classmethod
    def direct_s3(cls, remote: str, rclone) -> Upstream:
        """For objects scanned in their bucket: the S3 client that listed them removes, reads and puts them
        back, with keys exactly as listed (rclone maps control characters to look-alikes in its names, so a
        key with a newline or ESC read through rclone is another key)."""
        from mirror_scan.bucket.s3 import Bucket, S3Settings

        bucket = Bucket(S3Settings.from_rclone(remote, rclone))

        def read(key: str) -> bytes:
            data = bucket.read(key)
            if data is None:
                raise UpstreamError(f"no object {key!r} in {remote}", kind="missing")
            return data

        def remove(key: str, sha256: str, md5: str, evidence: Callable[[], list[str] | None]) -> str:
            found = bucket.head(key)
            if found is None:
                return "already gone upstream (read from there when it was quarantined)"
            etag = found["etag"]
            same = etag == md5 if len(etag) == 32 else sha256_bytes(read(key)) == sha256
            if not same:
                raise UpstreamError(
                    f"{remote}/{key!r} holds other bytes than the quarantined ones: not removed", kind="mismatch"
                )
            bucket.delete(key)
            if bucket.head(key) is not None:
                raise UpstreamError(f"{remote}/{key!r} is still there after its deletion", kind="other")
            return "deleted upstream (its bytes checked first)"

        def holds(key: str, sha256: str, md5: str) -> bool | None:
            found = bucket.head(key)
            if found is None:
                return None
            etag = found["etag"]
            return etag == md5 if len(etag) == 32 else sha256_bytes(read(key)) == sha256

        def restore(local: Path, key: str) -> None:
            data = local.read_bytes()
            there = holds(key, sha256_bytes(data), hashlib.md5(data).hexdigest())  # noqa: S324 - S3's ETag
            if there is False:  # never over another object: pict-rs may serve it now
                raise UpstreamError(f"{remote}/{key!r} holds other bytes now: not overwritten", kind="mismatch")
            if there:
                return
            bucket.put(key, data)
            if sha256_bytes(read(key)) != sha256_bytes(data):
                raise MirrorScanError(f"upstream copy of {key!r} did not verify after the upload")

        return cls(remote=remote, remove_object=remove, restore_object=restore, check_bucket=None, read_object=read,
                   holds_object=holds)  # fmt: skip

    def _call(self, what: str, fn: Callable, *args):
        if not self.breaker.allow():
            raise UpstreamUnavailable(
                f"{self.remote} is unavailable (last error: {self.breaker.last_error}); retried after a backoff"
            )
        try:
            if not self._bucket_ok and self.check_bucket is not None:
                self.check_bucket()
                self._bucket_ok = True
            result = fn(*args)
        except MirrorScanError as err:
            if isinstance(err, UpstreamError) and err.kind == "mismatch":  # an answer: other bytes are there
                self.breaker.success()
                raise
            self.breaker.failure(str(err).splitlines()[0])
            log.warning("%s on %s failed (retried after %s s): %s", what, self.remote, self.backoff_s, err)
            raise
        self.breaker.success()
        return result

    @property
    def backoff_s(self) -> float:
        return round(max(0.0, self.breaker.open_until - time.monotonic()), 1)

    def remove(self, key: str, sha256: str, md5: str, evidence: Callable[[], list[str] | None]) -> str:
        """Remove the object at `key` if it holds these bytes; `evidence()`: other keys of the mirror, which
        prove the bucket is the mirror's when the object is not there (None: no proof needed)."""
        return self._call("removal", self.remove_object, key, sha256, md5, evidence)

    def restore(self, local: Path, key: str) -> None:
        self._call("restore", self.restore_object, local, key)

    def read(self, key: str) -> bytes:
        if self.read_object is None:
            raise MirrorScanError(f"objects cannot be read from {self.remote} here")
        return self._call("read", self.read_object, key)

    def holds(self, key: str, sha256: str, md5: str) -> bool | None:
        """Whether the object at `key` holds these bytes (None: there is no such object); before any removal
        of an upload, every object of it is checked, so none leaves unless all can."""
        if self.holds_object is None:
            raise MirrorScanError(f"objects cannot be checked in {self.remote} here")
        return self._call("check", self.holds_object, key, sha256, md5)

    def read_if_there(self, key: str) -> bytes | None:
        """The object's bytes, or None when the bucket has no such object (an answer, not a failure: the
        breaker stays closed)."""
        if self.read_object is None:
            raise MirrorScanError(f"objects cannot be read from {self.remote} here")

        def read(key: str) -> bytes | None:
            try:
                return self.read_object(key)  # type: ignore[misc]
            except UpstreamError as err:
                if err.kind == "missing":
                    return None
                raise

        return self._call("read", read, key)


class Upstreams:
    """The Upstream for each remote an item names, made on first use (one breaker per remote and process).
    `default` is the remote new quarantine moves remove from (`--remote`); restores and retries use the
    remote each item recorded, which must be configured here (rclone config or RCLONE_CONFIG_* variables)."""

    def __init__(
        self,
        default: str | None = None,
        make: Callable[[str], Upstream] | None = None,
        configured: Callable[[str], bool] | None = None,
        make_direct: Callable[[str], Upstream] | None = None,
    ) -> None:
        self.default = default
        self._make = make
        self._make_direct = make_direct
        self._configured = configured
        self._by_remote: dict[str | tuple[str, str], Upstream] = {}
        self._lock = threading.Lock()

    @classmethod
    def rclone(cls, default: str | None, binary: str | None = None) -> Upstreams:
        from mirror_scan.clients.rclone import Rclone

        locate = functools.cache(lambda: Rclone.locate(binary))  # found once, on first use
        return cls(
            default,
            make=lambda remote: Upstream.rclone(remote, locate()),
            configured=lambda remote: locate().has_remote(remote),
            make_direct=lambda remote: Upstream.direct_s3(remote, locate()),
        )

    def get(self, remote: str, direct: bool = False) -> Upstream:
        """The remote's Upstream; direct=True: through the S3 client itself (objects scanned in the bucket,
        keys exactly as listed), else through rclone (mirrored files, keys as rclone names them)."""
        if direct:
            self.get(remote)  # the same checks: configured here, or refused with the hint
            with self._lock:
                if (remote, "direct") not in self._by_remote:
                    if self._make_direct is None:
                        raise RemoteNotConfigured(f"no direct S3 access to {remote} here")
                    self._by_remote[(remote, "direct")] = self._make_direct(remote)  # type: ignore[index]
                return self._by_remote[(remote, "direct")]  # type: ignore[index]
        with self._lock:
            if remote not in self._by_remote:
                if self._make is None:
                    raise RemoteNotConfigured(f"no upstream is available for {remote}")
                if remote != self.default and self._configured is not None and not self._configured(remote):
                    name = remote.split(":", 1)[0]
                    raise RemoteNotConfigured(
                        f"the item came from {remote}, but no rclone remote '{name}' is configured here",
                        hint=f"configure '{name}' (rclone config, or RCLONE_CONFIG_{name.upper()}_* variables), "
                        "or restore locally only with --no-upstream",
                    )
                self._by_remote[remote] = self._make(remote)
            return self._by_remote[remote]

    def known(self) -> list[Upstream]:
        with self._lock:
            return [u for k, u in self._by_remote.items() if isinstance(k, str)]
