"""Discover files under the scan roots with os.scandir on directory descriptors, each opened from its
parent's with O_NOFOLLOW. Never follows a symbolic link below a root, not even a directory swapped for
one during the walk (a link is reported, never read or acted on); skips rclone's in-progress
`*.partial` downloads."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mirror_scan.store.paths import NOFOLLOW_DIR, is_link_at

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class Found:
    path: str
    size: int
    mtime_ns: int
    root: str = ""  # the scan root it was found under: quarantine keeps the path relative to it
    etag: str | None = None  # objects scanned in their bucket: the ETag a rerun compares
    origin: str | None = None  # "bucket" for objects scanned in place (path = "NAME:bucket/key", root = remote)


@dataclass(frozen=True)
class Unscannable:
    """Something at a path that is not scanned, with why (a symlink, an unreadable directory...)."""

    path: str
    reason: str


def is_partial(name: str) -> bool:
    return name.endswith(PARTIAL_SUFFIX)


def _walk(directory: str, fd: int, root: str, note: Callable[[str], None]) -> Iterator[Found | Unscannable]:
    """List the directory open at `fd` (opened without following a link): a directory swapped for a
    symlink while the walk runs is reported, never listed through."""
    try:
        note(directory)
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except PermissionError:
        yield Unscannable(directory, "permission denied: directory cannot be listed")
        return
    except (FileNotFoundError, NotADirectoryError):
        return  # removed while we walked: nothing to scan
    for entry in entries:
        path = os.path.join(directory, entry.name)
        try:
            if entry.is_symlink():
                yield Unscannable(path, "symbolic link: never followed, not scanned")
            elif entry.is_dir(follow_symlinks=False):
                try:
                    child = os.open(entry.name, NOFOLLOW_DIR, dir_fd=fd)
                except OSError as err:
                    if err.errno == errno.ELOOP or (err.errno == errno.ENOTDIR and is_link_at(entry.name, fd)):
                        yield Unscannable(path, "symbolic link: never followed, not scanned")
                    elif err.errno == errno.EACCES:
                        yield Unscannable(path, "permission denied: directory cannot be listed")
                    continue  # ENOENT: removed meanwhile; ENOTDIR: replaced by a file, the next walk sees it
                try:
                    yield from _walk(path, child, root, note)
                finally:
                    os.close(child)
            elif entry.is_file(follow_symlinks=False):
                if is_partial(entry.name):
                    continue
                note(path)
                st = entry.stat(follow_symlinks=False)
                yield Found(path, st.st_size, st.st_mtime_ns, root)
            else:
                yield Unscannable(path, "not a regular file (device, socket or pipe)")
        except FileNotFoundError:
            continue  # vanished between listing and stat: not an error


def discover(
    roots: Iterable[str | os.PathLike], note: Callable[[str], None] = lambda path: None
) -> Iterator[Found | Unscannable]:
    """Roots are followed if they are links (the admin named them); nothing below them is. `note` is told
    each path before a call that may block on it (a listing or a stat on a stalled mount)."""
    for root in roots:
        root = os.path.abspath(os.fspath(root))  # recorded paths must not depend on the working directory
        note(root)
        st = os.stat(root)
        if stat.S_ISDIR(st.st_mode):
            try:
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root itself is followed
            except PermissionError:
                yield Unscannable(root, "permission denied: directory cannot be listed")
                continue
            try:
                yield from _walk(root, fd, root, note)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode) and not is_partial(root):
            yield Found(root, st.st_size, st.st_mtime_ns, os.path.dirname(os.path.abspath(root)))
