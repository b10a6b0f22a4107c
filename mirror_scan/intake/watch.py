"""The watch daemon's event sources, all feeding one deduplicating, bounded queue of paths:

- a watchdog observer on the mirror (inotify where it works; polling for FUSE and network mounts,
  where inotify sees nothing; none when the tree needs more inotify watches than the system allows);
- with a remote, an rclone pull every interval, whose list of arrived keys goes straight in;
- a periodic reconciliation walk (stat only, against the state database) that catches whatever the
  others missed: dropped events, queue overflow, files that arrived while the daemon was down.

A file is queued only when complete: `*.partial` is ignored; a move to the final name or a
close-after-write completes a file at once; files written in place wait until size and mtime have
been stable for `settle_s`. A full queue drops (and the next reconciliation picks the path up), so
memory stays bounded under any burst.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from mirror_scan.intake.pathqueue import PathQueue
from mirror_scan.kinds import FileStatus
from mirror_scan.store.discover import Found, discover, is_partial
from mirror_scan.store.fsinfo import filesystem_type, is_remote_or_fuse
from mirror_scan.store.rows import path_key

log = logging.getLogger(__name__)


class Settler(threading.Thread):
    """Files written in place: queued once size and mtime have not moved for `settle_s`."""

    def __init__(self, sink: PathQueue, settle_s: float = 1.0, max_tracked: int = 100_000) -> None:
        super().__init__(name="settle")
        self.sink, self.settle_s, self.max_tracked = sink, settle_s, max_tracked
        self._seen: dict[str, tuple[int, int, float]] = {}
        self._lock = threading.Lock()
        self.stop_event = threading.Event()

    def touch(self, path: str) -> None:
        with self._lock:
            if path in self._seen or len(self._seen) < self.max_tracked:
                self._seen[path] = (-1, -1, time.monotonic())

    def forget(self, path: str) -> None:
        with self._lock:
            self._seen.pop(path, None)

    def run(self) -> None:
        while not self.stop_event.wait(min(0.2, self.settle_s / 2)):
            now = time.monotonic()
            with self._lock:
                items = list(self._seen.items())
            for path, (size, mtime, since) in items:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    self.forget(path)
                    continue
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    with self._lock:
                        if path in self._seen:
                            self._seen[path] = (st.st_size, st.st_mtime_ns, now)
                elif now - since >= self.settle_s:
                    self.forget(path)
                    self.sink.offer(path)


class MirrorEvents(FileSystemEventHandler):
    """A plain handler (watchdog 7's pattern handler mis-matches '*.partial'): never raises."""

    def __init__(self, sink: PathQueue, settler: Settler) -> None:
        self.sink, self.settler = sink, settler

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            super().dispatch(event)
        except Exception:  # noqa: BLE001 - a handler exception would silently stop the observer
            log.exception("event handling failed for %s", event)

    def _path(self, raw) -> str | None:
        path = os.fsdecode(raw)
        return None if is_partial(path) else path

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (path := self._path(event.src_path)):
            self.settler.touch(path)

    on_modified = on_created

    def on_closed(self, event: FileSystemEvent) -> None:  # IN_CLOSE_WRITE: the writer is done
        if not event.is_directory and (path := self._path(event.src_path)):
            self.settler.forget(path)
            self.sink.offer(path)

    def on_moved(self, event: FileSystemEvent) -> None:  # rclone: x.<hex>.partial -> x
        if not event.is_directory and (path := self._path(event.dest_path)):
            self.settler.forget(path)
            self.sink.offer(path)

    def on_deleted(self, event: FileSystemEvent) -> None:
        self.settler.forget(os.fsdecode(event.src_path))


def inotify_limit() -> int:
    try:
        return int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return 8192


def count_directories(root: Path, stop_after: int) -> int:
    count = 0
    stack = [str(root)]
    while stack and count <= stop_after:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        count += 1
                        stack.append(entry.path)
        except OSError:
            continue
    return count


def choose_observer(mirror: Path, wanted: str) -> tuple[str, str]:
    """('inotify' | 'polling' | 'none', why). inotify needs one watch per directory: a pict-rs 0.5.7+
    mirror makes about 7 directories per file, so big trees would exceed the system's limit."""
    if wanted in ("inotify", "polling", "none"):
        return wanted, "chosen with --observer"
    kind = filesystem_type(mirror)
    if is_remote_or_fuse(kind):
        return "polling", f"{mirror} is on {kind}: inotify sees no changes made elsewhere"
    budget = inotify_limit() // 2  # leave room for other programs' watches
    directories = count_directories(mirror, budget)
    if directories > budget:
        return "none", (
            f"{mirror} has more than {budget:,} directories, over half the inotify limit "
            f"({inotify_limit():,}): relying on pulls and reconciliation walks"
        )
    return "inotify", f"{directories:,} directories to watch (limit {inotify_limit():,})"


def start_observer(kind: str, mirror: Path, handler: MirrorEvents, poll_s: float = 2.0):
    if kind == "none":
        return None
    if kind == "polling":
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=poll_s)
    else:
        from watchdog.observers.inotify import InotifyObserver

        observer = InotifyObserver()
    observer.schedule(handler, str(mirror), recursive=True)
    observer.start()
    return observer


class OverflowSignal(logging.Handler):
    """watchdog handles a kernel inotify queue overflow (events silently lost) by rebuilding its watches
    and logging a warning, without telling the event handler. This turns that warning into a call, so
    the daemon reconciles at once instead of at the next scheduled walk."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self.on_overflow = on_overflow
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.count += 1
            self.on_overflow()

    def install(self) -> OverflowSignal:
        logging.getLogger("watchdog.observers").addHandler(self)
        return self

    def uninstall(self) -> None:
        logging.getLogger("watchdog.observers").removeHandler(self)


def reconcile(mirror: Path, state: Path, sink: PathQueue, error_retry_s: float = 60.0, act: bool = False) -> int:
    """Stat-only walk: queue every file the ledger does not know at its size and mtime, and every file
    recorded as an error whose retry time has come (after error_retry_s, doubling per failure, at most a
    day): a permission fixed with chmod does not change the mtime. With `act`, also every flagged file no
    action was taken on (a move a kill rolled back, a dry run's verdict): the runner acts on it unchanged."""
    from mirror_scan.store.ledger import Ledger

    queued = 0
    ledger = Ledger(state, readonly=True) if state.exists() else None
    now = time.time()
    try:
        for found in discover([mirror]):
            if not isinstance(found, Found):
                continue
            row = ledger.file_signature(path_key(found.path)) if ledger is not None else None
            if row is None or (row.size, row.mtime_ns) != (found.size, found.mtime_ns):
                due = True
            else:
                wait = min(86_400.0, error_retry_s * 2 ** max(0, (row.error_count or 1) - 1))
                due = row.status == FileStatus.ERROR and now - (row.scanned_at or 0) >= wait
                due = due or (act and bool(row.unacted))
            if due and sink.offer(found.path):
                queued += 1
    finally:
        if ledger is not None:
            ledger.close()
    return queued
