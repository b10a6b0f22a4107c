"""Every state and action name, once: what the ledger stores, meta.json records and commands print.
Ground floor: no imports from the package, so the settings, the ledger and the commands share it."""

from __future__ import annotations

from enum import StrEnum


class ItemState(StrEnum):
    """The state of a quarantine item (stored in `quarantine.state` and in its meta.json)."""

    QUARANTINING = "quarantining"
    UPSTREAM_PENDING = "upstream_pending"  # bytes safe in quarantine; the upstream removal waits
    QUARANTINED = "quarantined"
    RESTORING = "restoring"
    RESTORED = "restored"
    PURGED = "purged"
    DAMAGED = "damaged"


# Items whose bytes a pull must not bring back and whose sha256 a hash export lists.
HELD_STATES = (ItemState.QUARANTINING, ItemState.UPSTREAM_PENDING, ItemState.QUARANTINED, ItemState.RESTORING)
RESTORABLE_STATES = (ItemState.QUARANTINED, ItemState.UPSTREAM_PENDING)


class MoveKind(StrEnum):
    QUARANTINE = "quarantine"
    RESTORE = "restore"


class Step(StrEnum):
    INTENT = "intent"
    COPIED = "copied"
    PLACED = "placed"
    UPSTREAM_REMOVED = "upstream_removed"
    LOCAL_REMOVED = "local_removed"
    UPSTREAM_RESTORED = "upstream_restored"
    DONE = "done"
    ROLLED_BACK = "rolled_back"


FINISHED_STEPS = (Step.DONE, Step.ROLLED_BACK)  # a move with either step needs nothing more


class FileStatus(StrEnum):
    SCORED = "scored"
    REUSED = "reused"
    ERROR = "error"


class FileVerdict(StrEnum):
    FLAGGED = "flagged"
    CLEAN = "clean"


class FileAction(StrEnum):
    """What was done to a flagged file (`files.action`); the names are the item states they follow."""

    QUARANTINED = ItemState.QUARANTINED.value
    UPSTREAM_PENDING = ItemState.UPSTREAM_PENDING.value
    RESTORED = ItemState.RESTORED.value


DECIDED_STATUSES = (FileStatus.SCORED, FileStatus.REUSED)  # a file with a stored result and a verdict
# Items whose sha256 a hash export lists (held, or purged: once judged bad).
EXPORTED_STATES = (ItemState.QUARANTINED, ItemState.UPSTREAM_PENDING, ItemState.PURGED)
PURGEABLE_STATES = (ItemState.QUARANTINED, ItemState.RESTORED, ItemState.UPSTREAM_PENDING)  # bytes still kept
MOVING_STATES = (ItemState.QUARANTINING, ItemState.UPSTREAM_PENDING, ItemState.RESTORING)  # a move owns the path


ACTION_NAMES = ("remove", "report", "notify")  # what [actions] may name per label; bans are never automatic
