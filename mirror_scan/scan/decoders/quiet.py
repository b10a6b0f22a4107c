"""Native decoders that print to stderr: libjxl 0.7 a line per failure ("frame processing failed"),
nvImageCodec a paragraph per codec library it cannot find. In a decoder worker process (one decode at a
time, nothing else writing) those lines are kept out of the daemon's log; the notes say what happened.
In-process decodes (decoders = "thread") leave stderr alone, except where `always` says the lines are
never the admin's to read (a library listing the optional parts it lacks as it loads)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager

WORKER_NAME = "mirror-scan-decoder"  # decodepool names its processes so


@contextmanager
def _stderr_into(sink: int) -> Iterator[None]:
    """File descriptor 2 pointed at `sink` inside the block, then back where it was."""
    saved = os.dup(2)
    try:
        os.dup2(sink, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def worker_stderr_quiet(always: bool = False) -> Iterator[None]:
    if not always and not in_worker():
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        with _stderr_into(null):
            yield
    finally:
        os.close(null)


def in_worker() -> bool:
    return multiprocessing.current_process().name == WORKER_NAME


class Captured:
    """What native code wrote to stderr inside `stderr_captured()` (the first 4 KiB)."""

    text: bytes = b""


@contextmanager
def stderr_captured() -> Iterator[Captured]:
    """stderr kept out of the log and handed back, for libraries that report a damaged file only by
    printing (nvImageCodec returns the pixels and prints libjpeg's error). Decoder worker processes only:
    one thread, nothing else writing to the descriptor."""
    captured = Captured()
    sink = os.memfd_create("mirror-scan-stderr")
    try:
        with _stderr_into(sink):
            yield captured
    finally:
        os.lseek(sink, 0, os.SEEK_SET)
        captured.text = os.read(sink, 4096)
        os.close(sink)
