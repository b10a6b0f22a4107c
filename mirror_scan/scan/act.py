"""act: what happens to a flagged file. The actor reads the decision already recorded for the path
(so `scan` and a later `apply` act identically) and answers whether it acted; the quarantine records
the file's action (`files.action`, its only writer). A file it could not act on stays where it is and
`apply` retries it."""

from __future__ import annotations

import json
import logging
from typing import Protocol

from mirror_scan.errors import MirrorScanError
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.quarantine import Quarantine
from mirror_scan.store.rows import display_path

log = logging.getLogger(__name__)


class Actor(Protocol):
    def act(self, path: bytes) -> bool: ...


class QuarantineActor:
    def __init__(self, ledger: Ledger, quarantine: Quarantine) -> None:
        self.ledger = ledger
        self.quarantine = quarantine
        self.failures = 0

    def act(self, path: bytes) -> bool:
        context = self.ledger.act_context(path)
        if context is None or context.sha256 is None:
            return False
        root, sha256 = context.root, context.sha256
        reason, model_id, policy_id, severity = context.reason, context.model_id, context.policy_id, context.severity
        evidence = {
            "verdict": json.loads(reason) if reason else None,
            "model_id": model_id,
            "policy_id": policy_id,
            "severity": severity,
        }
        try:
            self._move(path, root, sha256, evidence)
        except MirrorScanError as err:
            self.failures += 1
            log.error("not quarantined: %s: %s", display_path(path), err)
            return False
        return True

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
