"""Process-wide exclusive locks (flock on a file beside the state): one watch daemon per state and mirror,
one bucket scan per bucket and state; and one watch per mirror whatever its state (flock on the mirror's
directory itself: nothing is written into the mirror). The kernel frees a lock when its holder dies,
however it dies, so a lock is never stale; the file says who holds it, so the refusal can name the
process."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mirror_scan.errors import MirrorScanError

log = logging.getLogger(__name__)


class Held(MirrorScanError):
    """Another live process holds this lock."""


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])}, started {started}"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "a process that did not say who it is"


@contextlib.contextmanager
def exclusive(path: Path, refusal: str, hint: str, **about: str) -> Iterator[None]:
    """Hold `path`'s lock for the block; Held(refusal + who holds it) if another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Held(f"{refusal} ({_holder(fd)})", hint=hint) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.time(), **about}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def directory_lock(path: Path, refusal: str, hint: str) -> Iterator[None]:
    """Hold an exclusive flock on the directory itself for the block; Held(refusal) if another process
    has it. A filesystem that cannot lock (some network mounts) is said once and not locked."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Held(refusal, hint=hint) from None
        except OSError as err:
            log.warning("%s cannot be locked (%s): another watch of it would not be refused", path, err.strerror)
        yield
    finally:
        os.close(fd)


def holder_of(path: Path) -> str | None:
    """Who holds `path`'s lock now ("pid 123, started ..."), or None when nobody does (or no such file).
    Takes the lock for an instant only when it is free: never disturbs a holder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
