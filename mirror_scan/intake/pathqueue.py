"""The queue between the event sources and the runner: paths to scan, each at most once at a time,
bounded. get() gives None once closed: the end of the stream, the runner drains and returns."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from mirror_scan.store.discover import Found


class PathQueue:
    """Paths to scan: each at most once at a time, bounded; get() stats it into a Found."""

    def __init__(self, root: Path, maxsize: int = 10_000) -> None:
        self.root = str(root)
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self.dropped = 0
        self.closed = False

    def offer(self, path: str) -> bool:
        with self._lock:
            if self.closed or path in self._pending:
                return True
            try:
                self._queue.put_nowait(path)
            except queue.Full:
                self.dropped += 1  # reconciliation will find it
                return False
            self._pending.add(path)
            return True

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self._queue.put(None)  # blocks while full: the consumer is draining

    def qsize(self) -> int:
        return self._queue.qsize()

    def get_nowait(self):
        return self.get(timeout=0)

    def get(self, timeout: float | None = None):
        while True:
            item = self._queue.get(block=timeout != 0, timeout=timeout or None)
            if item is None:
                return None
            with self._lock:
                self._pending.discard(item)
            try:
                st = os.lstat(item)
            except FileNotFoundError:
                continue  # gone before we got to it
            if not os.path.isfile(item) or os.path.islink(item):
                continue
            return Found(item, st.st_size, st.st_mtime_ns, self.root)
