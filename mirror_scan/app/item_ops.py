"""What a person does to quarantine items, the same whoever asks: the shell's commands, the review console
and its API, and the self-test all call these operations.

    restore   the bytes back where they came from (and upstream), allowlisted, what moderation did undone
    confirm   the flag was right: kept, and its hashes shared by `hashlist export/push` (confirmed items are shared)
    purge     the bytes deleted for good (a tombstone stays)
    ban       the uploader banned from the instance (or the ban lifted), through the moderation bot
    apply     the files flagged earlier (a dry run, a rescore) quarantined now

Each decision is checked first against what its maker may decide (`Permits`: the shell may decide
everything; the console passes its reviewers' rules), then carried out by the quarantine, which records the
decision (who, via what, when) in the transaction that finishes it, with its line of history. A decision
that does not happen as asked is recorded with its outcome. The follow-ups it causes (the undo of
moderation, the attribution of new items) run once, when the operations end (`with ItemOps(...)`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mirror_scan.errors import MirrorScanError
from mirror_scan.kinds import Decision, ItemEvent
from mirror_scan.lists.live import LiveMatcher
from mirror_scan.moderation.attribution import sole_uploader
from mirror_scan.scan.act import BucketActor, QuarantineActor
from mirror_scan.scan.rescore import apply_verdicts
from mirror_scan.store.items import UpstreamRestorePending
from mirror_scan.store.lifecycle import By, NotPermitted
from mirror_scan.store.rows import ItemRow, display_path


@dataclass(frozen=True)
class Outcome:
    item: str
    decision: str
    outcome: str  # done | pending | failed | refused
    detail: str = ""
    target: str = ""  # where a restore put the bytes

    @property
    def ok(self) -> bool:
        return self.outcome == "done"

    def as_json(self) -> dict:
        return {"item": self.item, "decision": self.decision, "outcome": self.outcome, "detail": self.detail}


class Permits(Protocol):
    def why_not(self, item_id: str, row: ItemRow | None, attribution: dict | None, decision: Decision) -> str | None:
        """None when the decision may be made on this item, else why not (said as a refusal). `row` is None
        for an item the ledger does not know: how that is said is the permits' (a moderator is told the
        same of an item that is not theirs, so nothing says whether it exists)."""


class Everything:
    """Whoever runs mirror-scan on the machine decides every item, as an admin does."""

    def why_not(self, item_id: str, row: ItemRow | None, attribution: dict | None, decision: Decision) -> str | None:
        return f"no quarantine item {item_id}" if row is None else None


def shell_by() -> By:
    """Whoever runs a command on the machine, named by their login."""
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown user"
    return By(f"{name} (shell)", "shell")


def default_ban_reason(item_id: str) -> str:
    return f"mirror-scan: uploaded quarantined image (item {item_id})"


class ItemOps:
    """Decisions on items through one writer workspace (app/workspace.Workspace), made `by` someone."""

    def __init__(
        self,
        workspace,
        by: By,
        permits: Permits | None = None,
        say: Callable[[str], None] | None = None,
        follow_up_budget_s: float | None = None,
    ) -> None:
        from mirror_scan.app.workspace import COMMAND_FOLLOW_UP_BUDGET_S

        self.workspace = workspace
        self.by = by
        self.permits = permits or Everything()
        self.say = say
        self.budget_s = COMMAND_FOLLOW_UP_BUDGET_S if follow_up_budget_s is None else follow_up_budget_s
        self._follow_ups_due = False
        self._lists: LiveMatcher | None = None

    @property
    def ledger(self):
        return self.workspace.ledger

    @property
    def quarantine(self):
        return self.workspace.quarantine

    def __enter__(self) -> ItemOps:
        return self

    def __exit__(self, *exc) -> None:
        if self._follow_ups_due:
            self.run_follow_ups()

    def run_follow_ups(self) -> list[str]:
        """What the decisions so far caused (attribution, the undo of moderation), once."""
        self._follow_ups_due = False
        return self.workspace.run_follow_ups(say=self.say, budget_s=self.budget_s)

    # ------------------------------------------------------------------ checks

    def refusal(self, item_id: str, decision: Decision) -> str | None:
        """Why `by` may not make this decision on this item (None: they may)."""
        row = self.ledger.item(item_id)
        attribution = self.ledger.follow_ups.attribution(item_id) if row is not None else None
        return self.permits.why_not(item_id, row, attribution, decision)

    def _record(self, item_id: str, decision: Decision, outcome: str, detail: str) -> Outcome:
        self.quarantine.lifecycle.record(item_id, decision, self.by, outcome, detail)
        return Outcome(item_id, decision, outcome, detail)

    # ------------------------------------------------------------------ decisions

    def restore(
        self, item_id: str, to: Path | None = None, upstream: bool = True, reimport: bool = False,
        canary: bool = False,
    ) -> Outcome:  # fmt: skip
        """reimport: an upload pict-rs no longer records goes back through pict-rs under its aliases;
        canary: `selftest` restores the canary in its own throwaway state (nowhere else is one restored)."""
        why = (self.refusal(item_id, Decision.RESTORE) or (None if canary else self._canary(item_id, "restored"))
               or self._listed_companion(item_id))  # fmt: skip
        if why:
            return Outcome(item_id, Decision.RESTORE, "refused", why)
        try:
            target = self.quarantine.restore(item_id, to=to, upstream=upstream, by=self.by, reimport=reimport)
        except NotPermitted as error:
            return Outcome(item_id, Decision.RESTORE, "refused", str(error))
        except UpstreamRestorePending as error:
            self._follow_ups_due = True
            return self._record(item_id, Decision.RESTORE, "pending", str(error))
        except MirrorScanError as error:
            return self._record(item_id, Decision.RESTORE, "failed", str(error))
        except OSError as error:  # the disk under the mirror or the quarantine: said, recorded, never a traceback
            return self._record(item_id, Decision.RESTORE, "failed", f"{error.strerror or error}: {error.filename}")
        self._follow_ups_due = True
        row = self.ledger.item(item_id)
        where = ""
        if row is not None and row.remote and row.key and upstream and to is None:
            where = f"{row.remote}/{row.key} is in the bucket again"
        return Outcome(item_id, Decision.RESTORE, "done", where, target=display_path(target))

    def extract(self, item_id: str, to_dir: Path, record: dict) -> Outcome:
        """A copy of the item's bytes and `record` in a private directory under `to_dir`, for a lawful
        request; the item stays held, allowlisted nowhere, with a line of history saying who took it."""
        from mirror_scan.store.extract import extract

        why = self.refusal(item_id, Decision.EXTRACT)
        if why:
            return Outcome(item_id, Decision.EXTRACT, "refused", why)
        try:
            where = extract(self.quarantine, item_id, to_dir, record, self.by)
        except MirrorScanError as error:
            return Outcome(item_id, Decision.EXTRACT, "refused", str(error))
        except OSError as error:
            return Outcome(item_id, Decision.EXTRACT, "failed", f"{error.strerror or error}: {error.filename}")
        return Outcome(item_id, Decision.EXTRACT, "done", target=str(where))

    def _listed_companion(self, item_id: str) -> str | None:
        """A restore allowlists the upload's other objects with the item: one a hash list flags by its exact
        bytes refuses it (the person decided on the item, not on what a list names)."""
        objects = [o for o in self.ledger.objects.of(item_id) if o.sha256]
        if not objects:
            return None
        if self._lists is None:  # built once (lists can be large), rebuilt when one changes
            self._lists = LiveMatcher(self.ledger)
        matcher = self._lists.refresh()
        for obj in objects:
            md5 = self.quarantine.journal.content.object_md5(self.ledger.item(item_id), obj)  # type: ignore[arg-type]
            found = matcher.match(obj.sha256, md5, [])
            if found is not None and found.action == "flag":
                what = f"{obj.key} ({obj.variant or obj.role})"
                return (f"item {item_id}'s upload holds {what}, which hash list {found.list_name} flags: not "
                        "restored (if the list is wrong there, remove the entry first)")  # fmt: skip
        return None

    def _canary(self, item_id: str, done: str) -> str | None:
        """Canary items are never restored (that would allowlist the canary: it would never be flagged
        again, silently) nor confirmed (they are not findings); an explicit purge is their only end."""
        from mirror_scan.lists.canary import CANARY_LIST

        row = self.ledger.item(item_id)
        if row is None or reason_of(row).get("hash_list") != CANARY_LIST:
            return None
        return (f"item {item_id} is the canary (the harmless test picture): it is never {done} (a restore "
                "would allowlist it and the canary would stop working); purge it: mirror-scan quarantine purge "
                f"{item_id}")  # fmt: skip

    def confirm(self, item_id: str) -> Outcome:
        why = self.refusal(item_id, Decision.CONFIRM) or self._canary(item_id, "confirmed")
        if why:
            return Outcome(item_id, Decision.CONFIRM, "refused", why)
        return self._decide(item_id, Decision.CONFIRM, ItemEvent.CONFIRMED, once=True)

    def held(self, item_id: str, now: float | None = None):
        """The item's legal hold now (store/holds.py), or None."""
        from mirror_scan.store.holds import item_hold

        row = self.ledger.item(item_id)
        return None if row is None else item_hold(self.ledger, row, self.workspace.settings, now)

    def _held_refusal(self, item_id: str) -> str | None:
        hold = self.held(item_id)
        if hold is None:
            return None
        return (f"item {item_id} is {hold.says()}: it is not purged; `mirror-scan quarantine release {item_id} "
                "--why TEXT` ends the hold")  # fmt: skip

    def hold(self, item_id: str, until: float | None, why: str) -> Outcome:
        """Hold the item from purge until `until` (None: until released), with who and why in its history."""
        from mirror_scan.store.holds import Hold

        refused = self.refusal(item_id, Decision.HOLD)
        if refused:
            return Outcome(item_id, Decision.HOLD, "refused", refused)
        if not why.strip():
            return Outcome(item_id, Decision.HOLD, "refused", "a hold needs a reason (--why), kept in the history")
        with self.quarantine.item_lock(item_id, wait_s=5.0):
            self.ledger.reviews.hold(item_id, until, why, self.by.who)
            said = Hold(until, why).says()
            self.quarantine.note_held(item_id, f"{said} by {self.by.who} via {self.by.via}")
        return Outcome(item_id, Decision.HOLD, "done", said)

    def release(self, item_id: str, why: str) -> Outcome:
        """End the item's hold now (an explicit one, or the configured one), with who and why."""
        import time

        refused = self.refusal(item_id, Decision.RELEASE)
        if refused:
            return Outcome(item_id, Decision.RELEASE, "refused", refused)
        if not why.strip():
            return Outcome(item_id, Decision.RELEASE, "refused", "a release needs a reason (--why)")
        if self.held(item_id) is None:
            return Outcome(item_id, Decision.RELEASE, "refused", f"item {item_id} is not held")
        with self.quarantine.item_lock(item_id, wait_s=5.0):
            now = time.time()
            self.ledger.reviews.hold(item_id, now, f"released: {why}", self.by.who, at=now)  # until == at: released
            self.quarantine.note_held(item_id, f"hold released by {self.by.who} via {self.by.via}: {why}")
        return Outcome(item_id, Decision.RELEASE, "done", "released")

    def purge(self, item_id: str) -> Outcome:
        why = self.refusal(item_id, Decision.PURGE) or self._held_refusal(item_id)
        if why:
            return Outcome(item_id, Decision.PURGE, "refused", why)
        try:
            self.quarantine.purge(item_id, by=self.by)
        except NotPermitted as error:
            return Outcome(item_id, Decision.PURGE, "refused", str(error))
        except MirrorScanError as error:
            return self._record(item_id, Decision.PURGE, "failed", str(error))
        return Outcome(item_id, Decision.PURGE, "done")

    def purge_from_pictrs(self, item_id: str, alias: str, pictrs, lemmy=None) -> Outcome:
        """The upload purged in pict-rs, for good (the quarantined bytes stay as evidence): through Lemmy 1.0's
        admin image delete where the bot may (it also deletes Lemmy's `local_image` rows, which a purge in
        pict-rs alone leaves), else pict-rs's own `/internal/purge`. Written into the item's history."""
        from mirror_scan.clients.lemmy import LemmyRefused, LemmyUnavailable

        why = self.refusal(item_id, Decision.PURGE) or self._held_refusal(item_id)
        if why:
            return Outcome(item_id, Decision.PURGE, "refused", why)
        through_lemmy, lemmy_note = False, ""
        if lemmy is not None:
            try:
                lemmy.delete_image(alias)
                through_lemmy = True
            except LemmyRefused:
                pass  # 0.19 (no such route) or a bot that is no admin: pict-rs's own purge
            except LemmyUnavailable as error:  # 1.0's image rate bucket: 6 an hour per address by default
                lemmy_note = f"; Lemmy could not purge it now ({str(error).splitlines()[0]}): its local_image rows stay"
        try:
            detail = ("purged through Lemmy 1.0 (pict-rs's purge, and Lemmy's local_image rows deleted)"
                      if through_lemmy else pictrs.purge(alias) + lemmy_note)  # fmt: skip
        except MirrorScanError as error:
            return Outcome(item_id, Decision.PURGE, "failed", str(error))
        self.quarantine.record_pictrs_purge(item_id, alias, f"{detail} (by {self.by.who} via {self.by.via})")
        return Outcome(item_id, Decision.PURGE, "done", detail)

    def ban(self, item_id: str, reason: str, lemmy, undo: bool = False) -> Outcome:
        """Ban the item's one uploader from the instance (undo: lift the ban). `lemmy`: the moderation bot's
        client (moderation.actions.build_lemmy), or None when it is not configured."""
        decision = Decision.UNBAN if undo else Decision.BAN
        why = self.refusal(item_id, decision)
        if why:
            return Outcome(item_id, decision, "refused", why)
        person = sole_uploader(self.ledger.follow_ups.attribution(item_id))
        if person is None:
            return Outcome(item_id, decision, "refused", "the item has no single known uploader")
        if lemmy is None:
            return Outcome(item_id, decision, "refused", "[lemmy] url and the bot account are not configured")
        if not reason.strip():
            return Outcome(item_id, decision, "refused", "a ban needs a reason (it is shown in Lemmy's modlog)")
        event = ItemEvent.UNBANNED if undo else ItemEvent.BANNED
        detail = f"{person['name']}@{person.get('instance') or '?'}: {reason.strip()[:200]}"

        def ban_in_lemmy() -> None:  # under the item's lock: no move can begin between the ban and its record
            lemmy.ban(int(person["id"]), reason.strip()[:1000], ban=not undo)

        # The ban is done in Lemmy: the follow-up row says so (Lemmy's side of it) with the decision.
        return self._decide(item_id, decision, event, detail, follow_up=(str(decision), str(person["id"])),
                            first=ban_in_lemmy)  # fmt: skip

    def _decide(
        self,
        item_id: str,
        decision: Decision,
        event: ItemEvent,
        detail: str = "",
        follow_up: tuple[str, str] | None = None,
        first: Callable[[], None] | None = None,
        once: bool = False,
    ) -> Outcome:
        """A decision that changes no state, under the item's lock: allowed by the table, then `first` (what
        it does outside, e.g. the ban in Lemmy), then recorded in one transaction. once: a decision made
        before on the item is not made again (two confirms at once record one)."""
        lifecycle = self.quarantine.lifecycle
        try:
            with self.quarantine.item_lock(item_id, wait_s=5.0):
                lifecycle.check(self.ledger.item(item_id), event, item_id)
                if once and any(d.decision == decision and d.outcome == "done"
                                for d in self.ledger.reviews.decisions(item_id)):  # fmt: skip
                    return Outcome(item_id, decision, "done", f"{decision} made before")
                if first is not None:
                    first()
                with self.ledger.transaction():
                    if follow_up is not None:
                        self.ledger.follow_ups.add_followup(item_id, *follow_up, state="done")
                    lifecycle.apply(item_id, event, by=self.by, detail=detail or None)
        except NotPermitted as error:
            return Outcome(item_id, decision, "refused", str(error))
        except MirrorScanError as error:
            return self._record(item_id, decision, "failed", str(error))
        return Outcome(item_id, decision, "done", detail)

    # ------------------------------------------------------------------ files flagged earlier

    def apply(self, bucket_root: bytes | None = None, on_each: Callable[[], None] | None = None) -> int:
        """Quarantine the files flagged earlier and not acted on (and, with a bucket root NAME:bucket, the
        objects `bucket scan` flagged there); returns how many were acted on."""
        acted = apply_verdicts(self.ledger, QuarantineActor(self.quarantine), on_each=on_each)
        if bucket_root is not None:  # objects scanned in that bucket (`bucket scan`) that have no mirror copy
            acted += apply_verdicts(self.ledger, BucketActor(self.quarantine), "bucket", bucket_root, on_each=on_each)
        self._follow_ups_due = self._follow_ups_due or acted > 0
        return acted


def reason_of(row: ItemRow) -> dict:
    """The item's verdict reason as a dict ({} when it does not parse)."""
    try:
        reason = json.loads(row.reason) if row.reason else {}
    except ValueError:
        return {}
    return reason if isinstance(reason, dict) else {}
