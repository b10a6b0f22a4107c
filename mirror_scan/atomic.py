"""One way to replace a file: temp beside the target, fsync, os.replace, fsync the directory (or, for
status and scratch files, the same without the fsyncs)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries durable. FUSE and some network filesystems have no directory fsync
    (EINVAL/ENOSYS): there the filesystem itself decides, and that is not an error."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(target: Path, write: Callable[[Path], None], *, mode: int = 0o644, durable: bool = True) -> None:
    """Readers see the old file or the whole new one, never a part: `write(tmp)` fills a temp file beside
    the target (created with `mode`, never through a link), which then replaces it. durable: the file and
    the directory entry are fsynced too (survives a power cut); status and scratch files skip that."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode))
        write(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    atomic_write(target, lambda tmp: tmp.write_bytes(data), mode=mode, durable=durable)
