"""act: what happens to a flagged file. The actor reads the decision already recorded for the path
(so `scan` and a later `apply` act identically) and returns the action to record, or None when it
could not act (the file stays where it is and `apply` retries it)."""

from __future__ import annotations

import json
import logging
from typing import Protocol

from .errors import MirrorScanError
from .quarantine import Quarantine
from .state import FileAction, ItemState, Ledger, display_path

log = logging.getLogger(__name__)


class Actor(Protocol):
    def act(self, path: bytes) -> str | None: ...


class QuarantineActor:
    def __init__(self, ledger: Ledger, quarantine: Quarantine) -> None:
        self.ledger = ledger
        self.quarantine = quarantine
        self.failures = 0

    def act(self, path: bytes) -> str | None:
        row = self.ledger.act_context(path)
        if row is None or row[1] is None:
            return None
        root, sha256, reason, model_id, policy_id, severity = row
        evidence = {
            "verdict": json.loads(reason) if reason else None,
            "model_id": model_id,
            "policy_id": policy_id,
            "severity": severity,
        }
        try:
            state = self._move(path, root, sha256, evidence)
        except MirrorScanError as err:
            self.failures += 1
            log.error("not quarantined: %s: %s", display_path(path), err)
            return None
        return FileAction.QUARANTINED if state == ItemState.QUARANTINED else FileAction.UPSTREAM_PENDING

    def _move(self, path: bytes, root: bytes | None, sha256: str, evidence: dict) -> str:
        _, state = self.quarantine.quarantine(path, root or path.rsplit(b"/", 1)[0], sha256, evidence)
        return state


class BucketActor(QuarantineActor):
    """For objects scanned in their bucket (path NAME:bucket/key, root NAME:bucket): no mirror copy, so the
    object itself is read into the quarantine, verified against the scanned sha256, and removed upstream."""

    def _move(self, path: bytes, root: bytes | None, sha256: str, evidence: dict) -> str:
        remote = (root or b"").decode()
        if not remote or not path.startswith(root + b"/"):  # type: ignore[operator]
            raise MirrorScanError(f"{display_path(path)} is not an object of a scanned bucket")
        key = path[len(root) + 1 :].decode()  # type: ignore[arg-type]
        _, state = self.quarantine.quarantine_object(remote, key, sha256, evidence)
        return state
