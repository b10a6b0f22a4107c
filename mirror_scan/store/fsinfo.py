"""What kind of filesystem a path is on: the watch daemon picks its observer by it (inotify sees nothing
of changes made elsewhere on FUSE and network mounts) and restore picks its method (no hard links there,
and on `rclone mount` every new name becomes an object in the bucket)."""

from __future__ import annotations

import os

# Filesystem types (prefixes) where inotify misses remote changes and hard links are not to be relied on.
REMOTE_OR_FUSE = ("fuse", "nfs", "cifs", "smb", "9p", "sshfs", "ceph", "glusterfs", "afs", "vboxsf")


def filesystem_type(path: bytes | str | os.PathLike) -> str:
    """The type of the filesystem holding `path`, from /proc/mounts (longest matching mount point)."""
    best, kind = "", "unknown"
    target = os.path.realpath(os.fsdecode(path))
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) >= 3:
                    point = parts[1].replace("\\040", " ")
                    if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                        best, kind = point, parts[2]
    except OSError:
        pass
    return kind


def is_remote_or_fuse(kind: str) -> bool:
    return any(kind.startswith(prefix) for prefix in REMOTE_OR_FUSE)
