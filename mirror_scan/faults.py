"""Fault injection for the crash tests: MIRROR_SCAN_KILL_AT=<kind>:<step>[#N] kills the process with SIGKILL
right after that step (the Nth time it is reached, default the first), exactly like a power cut or an OOM
kill would. Unset, it costs one dictionary lookup."""

from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def checkpoint(step: str) -> None:
    wanted = os.environ.get("MIRROR_SCAN_KILL_AT")
    if not wanted:
        return
    name, _, nth = wanted.partition("#")
    if name != step:
        return
    _reached[step] = _reached.get(step, 0) + 1
    if _reached[step] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
