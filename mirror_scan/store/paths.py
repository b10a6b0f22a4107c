"""Paths under the mirror root, reached without ever following a link.

Pure checks on a stored relative path, then `reach()`: a walk from the root's descriptor, one component
at a time with O_NOFOLLOW (openat), to the directory that holds the name. Every read, move, unlink and
restore of a mirror file then goes through that directory's descriptor, so a directory swapped for a
symlink while mirror-scan works (or tampered metadata) can never make it read, move or write a file
outside the mirror root: the swap is refused, not followed. The root itself is followed once (the
admin named it)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

from mirror_scan.errors import MirrorScanError


class UnsafePath(MirrorScanError):
    """A stored path that would lead outside the mirror root."""


class MissingParent(UnsafePath):
    """A directory on the way to the name does not exist (removed meanwhile, or never made)."""


def check_relative(rel: bytes) -> list[bytes]:
    """The path's components, or UnsafePath: absolute, empty, '.', '..', NUL, or a trailing slash."""
    if not rel:
        raise UnsafePath("stored path is empty")
    if b"\x00" in rel:
        raise UnsafePath("stored path contains a NUL byte")
    if rel.startswith(b"/"):
        raise UnsafePath(f"stored path {rel!r} is absolute")
    parts = rel.split(b"/")
    for part in parts:
        if part in (b"", b".", b".."):
            raise UnsafePath(f"stored path {rel!r} has a '{part.decode() or '//'}' component")
    return parts


def check_operator_target(target: bytes) -> bytes:
    """`restore --to PATH`: the operator's own path, outside any mirror, so there is no root to contain it
    in; but it is never written through a symbolic link: every parent must be a real directory that
    exists, and the target itself must not be a link."""
    if b"\x00" in target:
        raise UnsafePath("target path contains a NUL byte")
    target = os.path.abspath(target)
    current = b"/"
    for part in [p for p in os.path.dirname(target).split(b"/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise UnsafePath(f"directory {os.fsdecode(current)} does not exist; create it first") from None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(
                f"--to goes through the symbolic link {os.fsdecode(current)}; give the real path "
                f"({os.fsdecode(os.path.realpath(current))})"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{os.fsdecode(current)} is not a directory")
    if os.path.islink(target):
        raise UnsafePath(f"{os.fsdecode(target)} is a symbolic link; refusing to write through it")
    return target


NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Place:
    """A name in a directory reached from a root without following links; every operation on the name
    goes through the directory's descriptor. Close it (or use it as a context manager)."""

    dirfd: int
    name: bytes
    path: bytes  # the absolute path, for messages and the journal only

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1

    def lstat(self, name: bytes | None = None) -> os.stat_result | None:
        try:
            return os.stat(name or self.name, dir_fd=self.dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: bytes | None = None) -> bool:
        return self.lstat(name) is not None

    def open(self, flags: int, mode: int = 0o600, name: bytes | None = None) -> int:
        return os.open(name or self.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.dirfd)

    def sha256(self, name: bytes | None = None) -> str | None:
        """The sha256 of the regular file at the name (never through a link), or None if there is none."""
        try:
            fd = self.open(os.O_RDONLY | os.O_NONBLOCK, name=name)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                return None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return sha256_fd(fd)
        finally:
            os.close(fd)

    def unlink(self, name: bytes | None = None) -> None:
        os.unlink(name or self.name, dir_fd=self.dirfd)

    def fsync_dir(self) -> None:
        try:
            os.fsync(self.dirfd)
        except OSError as err:  # FUSE and some network filesystems have no directory fsync
            if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
                raise


def sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def relative_to(root: bytes | str, path: bytes | str) -> bytes:
    """`path` relative to `root`, checked (UnsafePath if it leaves the root)."""
    rel = os.path.relpath(os.fsencode(path), os.fsencode(root))
    check_relative(rel)
    return rel


def is_link_at(name: bytes | str, dir_fd: int) -> bool:
    """O_DIRECTORY|O_NOFOLLOW on a symlink fails with ELOOP or ENOTDIR, depending on the kernel: ask."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def reach(root: bytes | str, rel: bytes, *, create_parents: bool = False) -> Place:
    """The directory holding `rel` under `root`, reached component by component without following a
    link: UnsafePath if a parent is a symbolic link or not a directory, or (create_parents False) is
    missing. Missing parents are created 0755 one at a time, each opened the same way."""
    parts = check_relative(rel)
    root = os.fsencode(root)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MissingParent(f"root {os.fsdecode(root)} does not exist") from None
    except OSError as err:
        raise UnsafePath(f"root {os.fsdecode(root)} cannot be opened as a directory: {err.strerror}") from None
    current = os.path.realpath(root)
    try:
        for part in parts[:-1]:
            current = os.path.join(current, part)
            try:
                child = os.open(part, NOFOLLOW_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create_parents:
                    raise MissingParent(f"parent directory {os.fsdecode(current)} does not exist") from None
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # made by another process meanwhile: opened (and checked) below
                child = os.open(part, NOFOLLOW_DIR, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ELOOP or (err.errno == errno.ENOTDIR and is_link_at(part, fd)):
                    raise UnsafePath(
                        f"parent {os.fsdecode(current)} is a symbolic link; refusing to go through it"
                    ) from None
                if err.errno == errno.ENOTDIR:
                    raise UnsafePath(f"parent {os.fsdecode(current)} is not a directory") from None
                raise UnsafePath(f"parent {os.fsdecode(current)} cannot be opened: {err.strerror}") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return Place(fd, parts[-1], os.path.join(current, parts[-1]))


def reach_file(root: bytes | str, path: bytes | str) -> Place:
    """The place of a file found under `root` (its absolute or root-relative path)."""
    return reach(root, relative_to(root, path))
