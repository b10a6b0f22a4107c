"""act: what happens to a flagged file. The recorder (scan, watch, bucket ingest) hands the actor the
decision it has just made, and `apply` the decision the ledger recorded earlier, so both act alike; the
actor answers with what it did (the item and its state) or None when it could not act. The quarantine
records the file's action (`files.action`, written only by store/lifecycle.py). A file it could not act
on stays where it is and `apply` retries it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from mirror_scan.errors import MirrorScanError
from mirror_scan.store.mover import Moved
from mirror_scan.store.quarantine import Quarantine
from mirror_scan.store.rows import display_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flagged:
    """A flagged file as the actor needs it: where it is, the bytes that were decided, and why."""

    path: bytes
    root: bytes | None
    sha256: str
    verdict: dict[str, Any] | None  # the reason of the verdict (labels, prompts, margins)
    model_id: str | None
    policy_id: str | None
    severity: float | None

    @classmethod
    def recorded(cls, path: bytes, root: bytes | None, sha256: str, reason: str | None, model_id: str | None,
                 policy_id: str | None, severity: float | None) -> Flagged:  # fmt: skip
        """From the ledger's file row (`apply` acts on what an earlier scan decided)."""
        return cls(path, root, sha256, json.loads(reason) if reason else None, model_id, policy_id, severity)

    def evidence(self) -> dict[str, Any]:
        """What the item keeps of the decision (its meta.json and ledger row)."""
        return {"verdict": self.verdict, "model_id": self.model_id, "policy_id": self.policy_id,
                "severity": self.severity}  # fmt: skip


class Actor(Protocol):
    def act(self, flagged: Flagged) -> Moved | None: ...

    def act_on_returned(self, flagged: Flagged) -> Moved | None: ...


class QuarantineActor:
    def __init__(self, quarantine: Quarantine) -> None:
        self.quarantine = quarantine
        self.failures = 0

    def act(self, flagged: Flagged) -> Moved | None:
        try:
            return self._move(flagged)
        except MirrorScanError as err:
            self.failures += 1
            log.error("not quarantined: %s: %s", display_path(flagged.path), err)
            return None

    def _move(self, flagged: Flagged) -> Moved:
        root = flagged.root or flagged.path.rsplit(b"/", 1)[0]
        return self.quarantine.quarantine(flagged.path, root, flagged.sha256, flagged.evidence())

    def act_on_returned(self, flagged: Flagged) -> Moved | None:
        """A flagged file whose bytes were quarantined from its path before and that is here again (a
        re-upload pulled, a copy put back by hand): taken back (Mover.take_back_returned), or None."""
        root = flagged.root or flagged.path.rsplit(b"/", 1)[0]
        try:
            return self.quarantine.take_back_returned(flagged.path, root, flagged.sha256, flagged.evidence())
        except MirrorScanError as err:
            self.failures += 1
            log.error("not quarantined again: %s: %s", display_path(flagged.path), err)
            return None


class BucketActor(QuarantineActor):
    """For objects scanned in their bucket (path NAME:bucket/key, root NAME:bucket): no mirror copy, so the
    object itself is read into the quarantine, verified against the scanned sha256, and removed upstream."""

    def _move(self, flagged: Flagged) -> Moved:
        remote, key = self._object(flagged)
        return self.quarantine.quarantine_object(remote, key, flagged.sha256, flagged.evidence())

    def act_on_returned(self, flagged: Flagged) -> Moved | None:
        """An object listed again with bytes quarantined from its key (uploaded again): taken again."""
        try:
            remote, key = self._object(flagged)
            return self.quarantine.take_back_returned_object(remote, key, flagged.sha256, flagged.evidence())
        except MirrorScanError as err:
            self.failures += 1
            log.error("not quarantined again: %s: %s", display_path(flagged.path), err)
            return None

    @staticmethod
    def _object(flagged: Flagged) -> tuple[str, str]:
        path, root = flagged.path, flagged.root or b""
        remote = root.decode()
        if not remote or not path.startswith(root + b"/"):
            raise MirrorScanError(f"{display_path(path)} is not an object of a scanned bucket")
        return remote, path[len(root) + 1 :].decode()
