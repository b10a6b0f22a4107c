"""Where a restored file may go. Pure checks on the stored relative path, then a walk from the mirror
root that refuses symlinked or non-directory parents, so tampered metadata can never make a restore
write outside the mirror root."""

from __future__ import annotations

import os
import stat

from .errors import MirrorScanError


class UnsafePath(MirrorScanError):
    """A stored path that would lead outside the mirror root."""


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


def contained_target(root: bytes, rel: bytes, create_parents: bool = True) -> bytes:
    """The absolute target for `rel` under `root`. Every parent must be a real directory (not a
    symlink); missing parents are created (0755) one at a time, checking each."""
    parts = check_relative(rel)
    current = os.path.realpath(root)
    if not os.path.isdir(current):
        raise UnsafePath(f"mirror root {os.fsdecode(root)} is not a directory")
    for part in parts[:-1]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if not create_parents:
                raise UnsafePath(f"parent directory {os.fsdecode(current)} does not exist") from None
            os.mkdir(current, 0o755)
            st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"parent {os.fsdecode(current)} is a symbolic link; refusing to write through it")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"parent {os.fsdecode(current)} is not a directory")
    return os.path.join(current, parts[-1])


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
