"""The decode-worker stage: read a discovered file safely, hash it, reuse a stored result for the same
bytes, or decode it into model-ready frames. Runs in a thread pool; returns an outcome value, never
raises for a problem with the file."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from mirror_scan.hashing import sha256_bytes
from mirror_scan.model.bundle import Preprocess
from mirror_scan.scan.decoders.decode import Limits, decode
from mirror_scan.scan.record import Picture, picture_of
from mirror_scan.store.discover import Found
from mirror_scan.store.paths import MissingParent, UnsafePath, reach_file


@dataclass
class ToScore:
    """Read, hashed and decoded: waits for the model."""

    found: Found
    picture: Picture
    pixels: np.ndarray  # float32 [rows, 3, H, W]
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by stage: read, hash and the decode's


@dataclass
class Reused:
    found: Found
    sha256: str
    result_id: int


@dataclass
class Failed:
    found: Found
    sha256: str | None
    reason: str


@dataclass
class Changed:
    """The file was being written or replaced while we read it: retry later, not an error."""

    found: Found


@dataclass
class Vanished:
    found: Found


Outcome = ToScore | Reused | Failed | Changed | Vanished


def read_stable(found: Found, max_bytes: int) -> bytes | Changed | Vanished | Failed:
    """The file's bytes, if it is still the file that was discovered and did not change while read.
    Reached from its scan root component by component without following links (paths.reach): a file
    or any directory above it swapped for a symlink after discovery is refused, never followed.
    O_NONBLOCK and fstat on the open descriptor: a FIFO or device swapped in is refused without ever
    blocking."""
    try:
        fd = _open_found(found)
    except (FileNotFoundError, MissingParent):
        return Vanished(found)
    except PermissionError:
        return Failed(found, None, "permission denied: file cannot be read")
    except UnsafePath as err:
        return Failed(found, None, f"not read: {err}")
    except OSError as err:
        if err.errno == errno.ELOOP:
            return Failed(found, None, "symbolic link: never followed, not scanned")
        return Failed(found, None, f"cannot open: {os.strerror(err.errno or 0) or err}")
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return Failed(found, None, "not a regular file (device, socket or pipe): not scanned")
        if before.st_size != found.size or before.st_mtime_ns != found.mtime_ns:
            return Changed(found)
        if before.st_size > max_bytes:
            return Failed(found, None, f"file is {before.st_size:,} bytes, over the limit of {max_bytes:,}")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0 and (chunk := os.read(fd, min(1 << 20, remaining))):
            chunks.append(chunk)
            remaining -= len(chunk)
        after = os.fstat(fd)
    except OSError as err:
        return Failed(found, None, f"read error: {err.strerror or err}")
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) != found.size or after.st_mtime_ns != found.mtime_ns or after.st_size != found.size:
        return Changed(found)
    return data


def _open_found(found: Found) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if not found.root:
        return os.open(found.path, flags)
    with reach_file(found.root, found.path) as place:
        return place.open(flags)


# Reads still hanging after their deadline (a stalled FUSE or network mount). Their threads cannot be
# cancelled, so past this many no new read is started: the files are recorded as errors and retried later.
MAX_HANGING_READS = 8
_hanging_lock = threading.Lock()
_hanging = 0


def read_with_deadline(
    found: Found, max_bytes: int, timeout_s: float | None, spent: dict[str, float] | None = None
) -> bytes | Outcome:
    """read_stable() in its own thread, given up after timeout_s: a read on a stalled mount can block
    for minutes (or for ever), and must not take a decode worker with it. spent["read"]: its CPU seconds."""
    global _hanging
    spent = {} if spent is None else spent
    if timeout_s is None:
        started = time.thread_time()
        try:
            return read_stable(found, max_bytes)
        finally:
            spent["read"] = time.thread_time() - started
    with _hanging_lock:
        if _hanging >= MAX_HANGING_READS:
            return Failed(found, None, f"not read: {_hanging} earlier reads still hang (stalled mount?); retried later")
    box: list = []
    state = {"abandoned": False}
    finished = threading.Event()

    def run() -> None:
        global _hanging
        started = time.thread_time()
        outcome = read_stable(found, max_bytes)
        spent["read"] = time.thread_time() - started
        with _hanging_lock:
            box.append(outcome)
            if state["abandoned"]:
                _hanging -= 1  # the mount came back: this thread is free again
            finished.set()

    threading.Thread(target=run, name="read", daemon=True).start()
    finished.wait(timeout_s)
    with _hanging_lock:
        if finished.is_set():
            return box[0]
        state["abandoned"] = True
        _hanging += 1
    return Failed(
        found, None, f"read timed out after {timeout_s:g} s (stalled mount or network filesystem?); retried later"
    )


def fetch(
    found: Found,
    *,
    prep: Preprocess,
    limits: Limits,
    max_bytes: int,
    lookup_result,
    read_timeout_s: float | None = None,
    decoder=decode,
) -> Outcome:
    """lookup_result(sha256) -> result id already stored for these bytes with this model, or None."""
    spent: dict[str, float] = {}
    data = read_with_deadline(found, max_bytes, read_timeout_s, spent)
    if not isinstance(data, bytes):
        return data
    started = time.thread_time()
    sha = sha256_bytes(data)
    spent["hash"] = time.thread_time() - started
    result_id = lookup_result(sha)
    if result_id is not None:
        return Reused(found, sha, result_id)
    decoded = decoder(data, prep, limits)
    if isinstance(decoded, str):
        return Failed(found, sha, decoded)
    started = time.thread_time()
    picture = picture_of(sha, data, decoded)  # its md5 (hash lists name files by md5 too)
    spent["hash"] += time.thread_time() - started
    for stage, seconds in decoded.cpu_s.items():
        spent[stage] = spent.get(stage, 0.0) + seconds
    return ToScore(found, picture, decoded.pixels, spent)
