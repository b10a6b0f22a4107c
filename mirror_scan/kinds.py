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


class ItemEvent(StrEnum):
    """What happens to a quarantine item; store/lifecycle.py's table says from which states each may happen,
    the state it leads to and what it writes besides."""

    QUARANTINE_BEGUN = "quarantine_begun"  # the move's intent: the item exists, its bytes are not yet safe
    QUARANTINE_ROLLED_BACK = "quarantine_rolled_back"  # the original was never touched: the item is forgotten
    UPSTREAM_WAITS = "upstream_waits"  # bytes verified in quarantine; the upstream removal failed for now
    QUARANTINED = "quarantined"  # removed upstream (if it had a remote) and from the mirror
    DAMAGED = "damaged"  # the quarantined bytes do not verify: the original is kept
    UPLOAD_KEPT = "upload_kept"  # the validator rejected an upload and kept its bytes
    REINDEXED = "reindexed"  # imported from its meta.json after losing the ledger
    RESTORE_BEGUN = "restore_begun"
    RESTORE_ROLLED_BACK = "restore_rolled_back"
    RESTORED = "restored"  # back in place (and upstream), allowlisted, moderation undone
    RELEASED = "released"  # a rejected upload allowlisted: it may be uploaded again
    CONFIRMED = "confirmed"  # a reviewer says the flag was right: its hashes may be shared
    BANNED = "banned"  # a reviewer banned the uploader
    UNBANNED = "unbanned"  # a reviewer lifted that ban
    PURGED = "purged"  # the bytes deleted for good; a tombstone stays


class FollowUp(StrEnum):
    """Every follow-up action's name (the `followups` table's `action`); moderation/catalogue.py says what
    each does, which undoes it and who runs it."""

    ATTRIBUTE = "attribute"
    UNDO = "undo"  # queued by a restore: the done actions' undo rows are planned from the catalogue
    REMOVE_POST = "remove_post"
    REMOVE_COMMENT = "remove_comment"
    REPORT_POST = "report_post"
    REPORT_COMMENT = "report_comment"
    REPORT_PRIVATE_MESSAGE = "report_private_message"
    NOTIFY = "notify"
    WEBHOOK = "webhook"
    RESTORE_POST = "restore_post"
    RESTORE_COMMENT = "restore_comment"
    RESOLVE_POST_REPORT = "resolve_post_report"
    RESOLVE_COMMENT_REPORT = "resolve_comment_report"
    RESOLVE_PRIVATE_MESSAGE_REPORT = "resolve_private_message_report"
    NOTIFY_RESTORED = "notify_restored"
    WEBHOOK_RESTORED = "webhook_restored"
    BAN = "ban"
    UNBAN = "unban"


class Decision(StrEnum):
    """What a reviewer decides on an item (`decisions.decision`)."""

    RESTORE = "restore"
    CONFIRM = "confirm"
    BAN = "ban"
    UNBAN = "unban"
    PURGE = "purge"
    EXTRACT = "extract"  # a copy taken for a lawful request: no state changes, a line of history
    HOLD = "hold"  # a legal hold: purge refuses the item until it ends (no state changes)
    RELEASE = "release"  # a hold ended early


class MoveKind(StrEnum):
    QUARANTINE = "quarantine"
    RESTORE = "restore"
    ADOPT = "adopt"  # an object of an upload held in quarantine, seen after the item was made, taken into it
    EXTRACT = "extract"  # a private copy for a lawful request (store/extract.py): its work directory, placed


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
