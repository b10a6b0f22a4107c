"""act: what happens to a flagged file. An Actor takes the decision and returns the action recorded.

Until the quarantine is wired in, acting only records the decision ("recorded"): no file is moved or
deleted by a scan, and `mirror-scan apply` can act on the recorded verdicts later.
"""

from __future__ import annotations

from typing import Protocol


class Actor(Protocol):
    def act(self, path: bytes, sha256: str | None, reason: str | None) -> str: ...


class RecordOnly:
    """Records the decision; touches no file."""

    def act(self, path: bytes, sha256: str | None, reason: str | None) -> str:
        return "recorded"
