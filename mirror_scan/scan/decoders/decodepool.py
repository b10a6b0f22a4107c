"""Decoding in worker processes: a file that crashes a decoder or never finishes costs one worker, not
the scan.

Pillow's plugins, libjpeg, libwebp, libheif and FFmpeg are C code fed bytes from strangers. A crash file
(a fuzzer's find, not yet fixed in the installed version) would kill the scanner with a segfault, and a
decoder stuck in a loop cannot be interrupted in a thread. So each decode runs in a worker process with
a deadline: a worker that dies or overruns is killed and replaced, and the file is recorded as an error
that says so (never deleted, retried later like every error). Workers are started lazily, one per decode
thread, with the "spawn" method (no fork of a process that runs onnxruntime's threads).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

from mirror_scan.model.bundle import Preprocess
from mirror_scan.scan.decoders.decode import Decoded, Limits, decode, quick_reject
from mirror_scan.scan.decoders.quiet import WORKER_NAME

DEFAULT_TIMEOUT_S = 60.0
STOPPING = "not decoded: mirror-scan was stopping (retried later)"
TEST_HOOK = "MIRROR_SCAN_TEST_DECODER"  # tests only: "crash" or "hang" on bytes marked b"MIRROR-SCAN-TEST"


def _worker(conn: Connection) -> None:
    hook = os.environ.get(TEST_HOOK)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        data, prep, limits = job
        if hook and b"MIRROR-SCAN-TEST" in data[:64]:
            if hook == "crash":
                os.abort()
            if hook == "hang":
                threading.Event().wait()
        result = decode(data, prep, limits)
        started = time.thread_time()
        payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        # Its own CPU for pickling first (a header), then the result: the benchmarks count the pipe's cost.
        conn.send_bytes(struct.pack("<d", time.thread_time() - started))
        conn.send_bytes(payload)


class _Process:
    def __init__(self, context) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child,), name=WORKER_NAME, daemon=True)
        self.process.start()
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class DecoderPool:
    """decode(data, prep, limits) -> Decoded | reason, from any thread; at most `size` worker processes."""

    def __init__(self, size: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.size, self.timeout_s = size, timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.LifoQueue[_Process] = queue.LifoQueue()
        self._started = 0
        self._lock = threading.Lock()
        self._all: list[_Process] = []
        self.replaced = 0  # workers killed after a crash or a timeout
        self.closed = False  # once closed, a decode waiting for a worker returns at once (a clean stop never
        # waits for a hung decoder: its worker is killed, and so is the wait)

    def _take(self) -> _Process | None:
        """A worker (started lazily, at most `size`), or None once the pool is closed."""
        while not self.closed:
            with self._lock:
                if self._idle.empty() and self._started < self.size:
                    self._started += 1
                    worker = _Process(self._context)
                    self._all.append(worker)
                    return worker
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue
        return None

    def _replace(self, worker: _Process) -> None:
        worker.kill()
        with self._lock:
            self._all.remove(worker)
            self._started -= 1
            self.replaced += 1

    def decode(self, data: bytes, prep: Preprocess, limits: Limits) -> Decoded | str:
        if (reason := quick_reject(data)) is not None:
            return reason
        worker = self._take()
        if worker is None:
            return STOPPING
        try:
            worker.conn.send((data, prep, limits))
            if not worker.conn.poll(self.timeout_s):
                self._replace(worker)
                return f"decoding took longer than {self.timeout_s:g} s (stopped; retried later)"
            (pickled_s,) = struct.unpack("<d", worker.conn.recv_bytes())
            payload = worker.conn.recv_bytes()
            started = time.thread_time()
            result = pickle.loads(payload)
            if isinstance(result, Decoded):
                result.cpu_s["pipe"] = pickled_s + time.thread_time() - started
        except (EOFError, OSError):
            if self.closed:  # killed by close(): not the file's fault
                return STOPPING
            worker.process.join(5)  # reap it: the exit code says how it died
            code = worker.process.exitcode
            self._replace(worker)
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return f"the decoder crashed on this file ({how}); not scanned, retried later"
        self._idle.put(worker)
        return result

    def close(self) -> None:
        """Every worker killed (a decode in flight returns STOPPING), and no new decode starts."""
        self.closed = True
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.kill()

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def decoders(kind: str, workers: int, timeout_s: float) -> Iterator[Callable]:
    """The one choice of decoder (the scan, the validator, the bucket workers, `hashlist rehash`): worker
    processes, crash- and hang-proof, or in-process decode() with kind "thread"."""
    if kind != "process":
        yield decode
        return
    with DecoderPool(workers, timeout_s) as pool:
        yield pool.decode
