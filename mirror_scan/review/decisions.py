"""A reviewer's decisions on quarantine items, the same for the console, its API and the shell: restore (the
file back in the mirror and upstream, its sha256 allowlisted, what moderation did undone), confirm (kept;
its hashes enter the exportable list with `hashlist export --confirmed`), ban the uploader (explicit, an
admin's). Each is checked against what the reviewer may decide, recorded in the ledger with who and how,
and written into the item's history in its meta.json."""

from __future__ import annotations

from dataclasses import dataclass

from mirror_scan.errors import MirrorScanError
from mirror_scan.kinds import EXPORTED_STATES, RESTORABLE_STATES
from mirror_scan.review.people import Reviewer, visible_to, why_not_allowed


class NotAllowed(MirrorScanError):
    """The reviewer may not make this decision on this item."""


@dataclass(frozen=True)
class Outcome:
    item: str
    decision: str
    outcome: str  # done | pending | failed | refused
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "done"

    def as_json(self) -> dict:
        return {"item": self.item, "decision": self.decision, "outcome": self.outcome, "detail": self.detail}


def ban_target(attribution: dict | None) -> dict | None:
    """The one uploader of an item (person dict), or None when there is none or more than one."""
    uploaders = {
        u["uploader"]["id"]: u["uploader"] for u in (attribution or {}).get("uploads", []) if u.get("uploader")
    }
    return next(iter(uploaders.values())) if len(uploaders) == 1 else None


def default_ban_reason(item_id: str) -> str:
    return f"mirror-scan: uploaded quarantined image (item {item_id})"


class Decisions:
    """Decisions through one writer workspace (app.workspace.Workspace)."""

    def __init__(self, workspace, via: str) -> None:
        self.workspace = workspace
        self.via = via  # console | api | shell

    @property
    def ledger(self):
        return self.workspace.ledger

    def check(self, reviewer: Reviewer, item_id: str, decision: str) -> None:
        """Raises NotAllowed (or MirrorScanError for an unknown item) before anything is done. An item a
        moderator may not see is answered like one that does not exist."""
        import json

        row = self.ledger.item(item_id)
        attribution = self.ledger.follow_ups.attribution(item_id) if row is not None else None
        if row is None or not visible_to(reviewer, attribution):
            raise MirrorScanError(f"no quarantine item {item_id}" + ("" if reviewer.admin else " of yours"))
        try:
            reason = json.loads(row.reason) if row.reason else {}
        except ValueError:
            reason = {}
        settings = getattr(self.workspace, "settings", None)
        may_restore = bool(getattr(settings, "console_moderators_may_restore", False))
        why = why_not_allowed(reviewer, attribution, decision, reason if isinstance(reason, dict) else {}, may_restore)
        if why:
            raise NotAllowed(f"{reviewer.name} may not {decision} item {item_id}: {why}")

    def _record(self, reviewer: Reviewer, item_id: str, decision: str, outcome: str, detail: str = "") -> Outcome:
        self.ledger.reviews.record_decision(item_id, decision, reviewer.who, self.via, outcome, detail or None)
        if outcome in ("done", "pending"):
            try:
                with self.workspace.quarantine.item_lock(item_id, wait_s=5.0):
                    self.workspace.quarantine.note_held(
                        item_id, f"{decision} by {reviewer.who} via {self.via}" + (f": {outcome}" if outcome != "done"
                                                                                  else "")
                    )  # fmt: skip
            except MirrorScanError:
                pass  # the ledger has it (the authority); meta.json is for people and rebuilding
        return Outcome(item_id, decision, outcome, detail)

    def restore(self, reviewer: Reviewer, item_id: str) -> Outcome:
        from mirror_scan.store.items import UpstreamRestorePending

        try:
            self.check(reviewer, item_id, "restore")
        except MirrorScanError as error:
            return Outcome(item_id, "restore", "refused", str(error))
        row = self.ledger.item(item_id)
        if row.state not in RESTORABLE_STATES:
            return Outcome(item_id, "restore", "refused", f"item {item_id} is {row.state}: it cannot be restored")
        try:
            self.workspace.quarantine.restore(item_id, upstream=True)
        except UpstreamRestorePending as error:
            return self._record(reviewer, item_id, "restore", "pending", str(error))
        except MirrorScanError as error:
            return self._record(reviewer, item_id, "restore", "failed", str(error))
        return self._record(reviewer, item_id, "restore", "done")

    def confirm(self, reviewer: Reviewer, item_id: str) -> Outcome:
        try:
            self.check(reviewer, item_id, "confirm")
        except MirrorScanError as error:
            return Outcome(item_id, "confirm", "refused", str(error))
        row = self.ledger.item(item_id)
        if row.state not in EXPORTED_STATES:
            return Outcome(
                item_id, "confirm", "refused", f"item {item_id} is {row.state}: only a held item is confirmed"
            )
        if item_id in self.ledger.reviews.confirmed_items():
            return Outcome(item_id, "confirm", "done", "confirmed before")
        return self._record(reviewer, item_id, "confirm", "done")

    def ban(self, reviewer: Reviewer, item_id: str, reason: str, lemmy) -> Outcome:
        """`lemmy`: the moderation bot's client (moderation.actions.build_lemmy), or None when not configured."""
        try:
            self.check(reviewer, item_id, "ban")
        except MirrorScanError as error:
            return Outcome(item_id, "ban", "refused", str(error))
        person = ban_target(self.ledger.follow_ups.attribution(item_id))
        if person is None:
            return Outcome(item_id, "ban", "refused", "the item has no single known uploader")
        if lemmy is None:
            return Outcome(item_id, "ban", "refused", "[lemmy] url and the bot account are not configured")
        if not reason.strip():
            return Outcome(item_id, "ban", "refused", "a ban needs a reason (it is shown in Lemmy's modlog)")
        try:
            lemmy.ban(int(person["id"]), reason.strip()[:1000], ban=True)
        except MirrorScanError as error:
            return self._record(reviewer, item_id, "ban", "failed", str(error))
        with self.ledger.transaction():
            self.ledger.follow_ups.add_followup(item_id, "ban", str(person["id"]), state="done")
        who = f"{person['name']}@{person.get('instance') or '?'}"
        return self._record(reviewer, item_id, "ban", "done", f"{who}: {reason.strip()[:200]}")
