"""The life of a quarantine item, in one place: which events may happen in which state, what each leads to,
and what it writes besides: the file row's action, the allowlist, follow-ups, superseded moves, a line of
history and the reviewer's decision. `Lifecycle.apply` is the only writer of an item's state and of
`files.action` (tests/test_house.py fails any other caller), and writes all of it in one transaction, so a
`kill -9` leaves either the whole transition or none of it. docs/architecture.md draws its diagram from
TRANSITIONS (`python -m mirror_scan.store.lifecycle`), so the two cannot disagree.

What does the work of an event (copying bytes, removing the original, talking to the remote) is the
mover, the restorer and recovery (store/mover.py, store/restorer.py, store/recovery.py); they hold the
item's lock and call `apply` at each point where the item's state changes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from mirror_scan.faults import checkpoint
from mirror_scan.kinds import EXPORTED_STATES, Decision, FileAction, FollowUp, ItemEvent, ItemState, MoveKind, Step
from mirror_scan.store.items import QuarantineError, file_key
from mirror_scan.store.journal import Journal
from mirror_scan.store.rows import ItemRow

S, E = ItemState, ItemEvent


class NotPermitted(QuarantineError):
    """The item's state does not allow this event (it was restored, purged, or is being moved)."""


@dataclass(frozen=True)
class Transition:
    """What an event does to an item in a given state."""

    to: ItemState | None  # None: the item is forgotten (its quarantine was rolled back before it was safe)
    line: str | None = None  # the line of history it writes (None: a step nobody needs to read about)
    action: FileAction | None = None  # the file row's `files.action` (the file the item came from)
    follow_up: FollowUp | None = None  # ATTRIBUTE (when attribution is configured) or UNDO (of what was done)
    allowlist: bool = False  # the item's sha256 is never flagged again
    supersedes: str | None = None  # unfinished moves of the item end as rolled back, with this note
    decision: Decision | None = None  # the reviewer's decision this event records (who, via, when)


def _decided(decision: Decision, states: tuple[ItemState, ...]) -> dict[tuple[ItemState, ItemEvent], Transition]:
    """A reviewer's decision that changes no state: allowed in exactly these states."""
    event = {Decision.CONFIRM: E.CONFIRMED, Decision.BAN: E.BANNED, Decision.UNBAN: E.UNBANNED}[decision]
    return {(state, event): Transition(state, decision=decision) for state in states}


# A ban concerns the uploader, not the bytes: any item not being moved names one.
BANNABLE_STATES = (S.QUARANTINED, S.UPSTREAM_PENDING, S.RESTORED, S.PURGED, S.DAMAGED)

TRANSITIONS: dict[tuple[ItemState | None, ItemEvent], Transition] = {
    # The quarantine move (moves.py): intent -> copied -> placed -> [upstream removed] -> local removed -> done
    (None, E.QUARANTINE_BEGUN): Transition(S.QUARANTINING, follow_up=FollowUp.ATTRIBUTE),
    (S.QUARANTINING, E.QUARANTINE_ROLLED_BACK): Transition(None),
    (S.QUARANTINING, E.UPSTREAM_WAITS): Transition(
        S.UPSTREAM_PENDING, "quarantined; the removal upstream waits (retried)", FileAction.UPSTREAM_PENDING
    ),
    (S.QUARANTINING, E.QUARANTINED): Transition(S.QUARANTINED, "quarantined", FileAction.QUARANTINED),
    (S.UPSTREAM_PENDING, E.QUARANTINED): Transition(
        S.QUARANTINED, "removed upstream (retried)", FileAction.QUARANTINED
    ),
    (S.QUARANTINING, E.DAMAGED): Transition(S.DAMAGED, "the quarantined bytes do not verify; the original is kept"),
    (S.UPSTREAM_PENDING, E.DAMAGED): Transition(S.DAMAGED, "the quarantined bytes do not verify; the original is kept"),
    # The validator keeps what it rejects (no original, no move).
    (None, E.UPLOAD_KEPT): Transition(S.QUARANTINED, "rejected at upload", follow_up=FollowUp.ATTRIBUTE),
    # The restore move (restorer.py): intent -> copied -> placed -> [upstream restored] -> done
    (S.QUARANTINED, E.RESTORE_BEGUN): Transition(S.RESTORING, supersedes="superseded by a restore"),
    (S.UPSTREAM_PENDING, E.RESTORE_BEGUN): Transition(S.RESTORING, supersedes="superseded by a restore"),
    (S.RESTORING, E.RESTORE_ROLLED_BACK): Transition(S.QUARANTINED, "restore interrupted; rolled back"),
    (S.RESTORING, E.RESTORED): Transition(
        S.RESTORED, "restored", FileAction.RESTORED, FollowUp.UNDO, allowlist=True, decision=Decision.RESTORE
    ),
    (S.QUARANTINED, E.RELEASED): Transition(
        S.RESTORED, "released (allowlisted)", follow_up=FollowUp.UNDO, allowlist=True, decision=Decision.RESTORE
    ),
    # Reviewers' decisions that keep the state.
    **_decided(Decision.CONFIRM, EXPORTED_STATES),
    **_decided(Decision.BAN, BANNABLE_STATES),
    **_decided(Decision.UNBAN, BANNABLE_STATES),
    # The bytes deleted for good (a tombstone stays); a removal still pending upstream is given up.
    **{
        (state, E.PURGED): Transition(S.PURGED, "purged", supersedes="superseded by a purge", decision=Decision.PURGE)
        for state in (S.QUARANTINED, S.RESTORED, S.UPSTREAM_PENDING)
    },
}

# Items rebuilt from their metadata files (`quarantine reindex`, `state rebuild`) enter in the state their
# metadata records, except that a move in flight cannot be: its journal was lost with the ledger.
REINDEXED_AS = {
    S.QUARANTINING: S.QUARANTINING,  # its bytes verified: recovery finishes the move (see Lifecycle.import_item)
    S.UPSTREAM_PENDING: S.QUARANTINING,
    S.RESTORING: S.QUARANTINED,  # restore it again: a target that holds the bytes already is fine
    **{state: state for state in (S.QUARANTINED, S.RESTORED, S.PURGED, S.DAMAGED)},
}


def states_allowing(*events: ItemEvent) -> tuple[ItemState, ...]:
    """The states in which any of these events may happen, in ItemState's order."""
    allowed = {state for (state, event) in TRANSITIONS if event in events}
    return tuple(state for state in ItemState if state in allowed)


RESTORABLE_STATES = states_allowing(E.RESTORE_BEGUN, E.RELEASED)
PURGEABLE_STATES = states_allowing(E.PURGED)


@dataclass(frozen=True)
class By:
    """Who made a decision, and through what: the console, its API, the shell, the self-test."""

    who: str
    via: str
    note: str = ""  # why, in the decider's words (the console's confirmation asks for it)

    def as_json(self) -> str:
        return json.dumps({"who": self.who, "via": self.via, **({"note": self.note} if self.note else {})})

    @classmethod
    def from_json(cls, text: str | None) -> By | None:
        try:
            data = json.loads(text) if text else None
            if not isinstance(data, dict):
                return None
            return cls(str(data["who"]), str(data["via"]), str(data.get("note") or ""))
        except (ValueError, KeyError):
            return None

    def noted(self, detail: str | None) -> str | None:
        """The decision's note column: the decider's own words, then what happened."""
        return "; ".join(x for x in (self.note, detail) if x) or None


class Lifecycle:
    """Applies events to items through one journal; the caller holds the item's lock."""

    def __init__(self, journal: Journal, follow_up: bool = False) -> None:
        self.journal = journal
        self.ledger = journal.ledger
        # Attribution (and the moderation actions it plans) is queued with each new item, in the same
        # transaction, when a pict-rs or Lemmy source is configured.
        self.follow_up = follow_up

    def check(self, row: ItemRow | None, event: ItemEvent, item_id: str = "") -> Transition:
        """The transition, or NotPermitted saying why not (the one place that decides whether an item may
        be restored, confirmed, purged ...)."""
        transition = TRANSITIONS.get((ItemState(row.state) if row else None, event))
        if transition is not None:
            return transition
        if row is None:
            raise NotPermitted(f"quarantine item {item_id} is not in the ledger",
                               hint="see `mirror-scan quarantine list`")  # fmt: skip
        if row.state in (S.QUARANTINING, S.RESTORING):
            raise NotPermitted(f"item {row.id} is being moved right now ({row.state}); try again afterwards")
        raise _refusal(row, event)

    def begin(self, fields: dict, event: ItemEvent) -> None:
        """A new item's ledger row (QUARANTINE_BEGUN, UPLOAD_KEPT), in the caller's open transaction: the
        first durable fact of the item, committed with its move's intent by the caller."""
        transition = self.check(None, event, fields["id"])
        now = time.time()
        self.ledger.insert_item({**fields, "state": str(transition.to), "created": now, "updated": now})
        if self.follow_up and transition.follow_up:
            self.ledger.follow_ups.add_followup(fields["id"], transition.follow_up, plan=True)
        if transition.line:
            self.ledger.history.add(fields["id"], transition.line, now)

    def apply(
        self,
        item_id: str,
        event: ItemEvent,
        *,
        by: By | None = None,
        detail: str | None = None,
        step: tuple[int, Step, str] | None = None,
        note: str | None = None,
    ) -> Transition:
        """Apply an event in one transaction: state, file action, allowlist, follow-ups, superseded moves,
        history, the decision (with `by`), and the move's step (move id, step, checkpoint kind) when the
        event ends a step of a move. Then meta.json catches up (for people and `reindex`)."""
        with self.ledger.transaction():
            row = self.ledger.item(item_id)
            transition = self.check(row, event, item_id)
            assert row is not None  # only the first events have no row, and they go through begin()
            now = time.time()
            self._write(row, transition, now)
            lines = [transition.line] if transition.line else []
            if by is not None and transition.decision is not None:
                self.ledger.reviews.record_decision(item_id, transition.decision, by.who, by.via, "done",
                                                    by.noted(detail))  # fmt: skip
                lines.append(decision_line(transition.decision, by))
            for line in lines:
                self.ledger.history.add(item_id, line, now)
            if step is not None:
                self.ledger.set_step(step[0], step[1], note)
            if transition.to is not None:  # when this transaction commits, or the caller's around it
                self.ledger.history.mark_behind(item_id)
                self.ledger.after_commit(lambda: self.journal.sync_meta(item_id))
        if step is not None:
            checkpoint(f"{step[2]}:{step[1]}")
        return transition

    def _write(self, row: ItemRow, transition: Transition, now: float) -> None:
        item_id = row.id
        if transition.to is None:
            self.ledger.delete_item(item_id)  # its history and companions with it
            return
        self.ledger.set_item_state(item_id, transition.to)
        companions = [o for o in self.ledger.objects.of(item_id) if o.sha256]  # the upload's other objects
        if transition.action == FileAction.RESTORED:
            # Every file row that holds these bytes and was quarantined (copies share the item's fate).
            for sha256 in {row.sha256, *(o.sha256 for o in companions)}:
                self.ledger.mark_action_by_sha(sha256, transition.action, only_if=FileAction.QUARANTINED)
        elif transition.action is not None:
            for key in [file_key(row), *(o.path for o in companions if o.path)]:
                self.ledger.mark_action(key, transition.action)
        if transition.allowlist:
            # Its thumbnails with it, those the scanner has scored: bytes taken into the item unscored (stored
            # at a thumbnail's key by anyone) are scored like any file once back, never waved through.
            for sha256 in [row.sha256, *sorted(self.ledger.scored([o.sha256 for o in companions]))]:
                self.ledger.allow(sha256, note=f"{transition.line} from quarantine item {item_id}")
        if transition.follow_up == FollowUp.UNDO:
            # What is not done yet is cancelled; what was done is undone (the runner plans the undo rows).
            done = self.ledger.follow_ups.cancel_followups(item_id, "the item was restored first")
            if any(action not in (FollowUp.ATTRIBUTE, FollowUp.BAN) for action, _, _ in done):
                self.ledger.follow_ups.add_followup(item_id, FollowUp.UNDO)
        if transition.supersedes:
            for move in self.ledger.unfinished_moves(item_id):
                self.ledger.set_step(move.id, Step.ROLLED_BACK, note=transition.supersedes)

    def record(self, item_id: str, decision: Decision, by: By, outcome: str, detail: str | None = None) -> None:
        """A decision that did not happen as asked (pending upstream, failed, refused): recorded with who,
        and a line of history when it is under way."""
        with self.ledger.transaction():
            self.ledger.reviews.record_decision(item_id, decision, by.who, by.via, outcome, by.noted(detail))
            if outcome == "pending" and self.ledger.item(item_id) is not None:
                self.ledger.history.add(item_id, f"{decision_line(decision, by)}: {outcome}", time.time())
                self.ledger.after_commit(lambda: self.journal.sync_meta(item_id))

    def import_item(self, fields: dict, lines: list[tuple[float, str]]) -> None:
        """An item rebuilt from its metadata file: the state it records (REINDEXED_AS), its history, and
        for a quarantine that was in flight, a move at 'placed' that recovery finishes (its bytes were
        checked by the caller). Inside the caller's transaction."""
        state = REINDEXED_AS[ItemState(fields["state"])]
        self.ledger.insert_item({**fields, "state": str(state)})
        for at, line in lines:
            self.ledger.history.add(fields["id"], line, at)
        self.ledger.history.add(fields["id"], "indexed from its metadata file", time.time())
        if state == S.QUARANTINING:
            move_id = self.ledger.start_move(fields["id"], MoveKind.QUARANTINE)
            self.ledger.set_step(move_id, Step.PLACED, note="rebuilt from its metadata file")


def decision_line(decision: Decision, by: By) -> str:
    return f"{decision} by {by.who} via {by.via}" + (f": {by.note}" if by.note else "")


def _refusal(row: ItemRow, event: ItemEvent) -> NotPermitted:
    if event in (E.RESTORE_BEGUN, E.RELEASED):
        hint = "see `mirror-scan quarantine list` (restored and purged items cannot be restored)"
        return NotPermitted(f"item {row.id} is {row.state}, not quarantined", hint=hint)
    if event == E.CONFIRMED:
        return NotPermitted(f"item {row.id} is {row.state}: only a held or purged item is confirmed")
    if event == E.PURGED:  # the words `quarantine purge`'s selection uses too
        return NotPermitted(f"item {row.id} is {row.state}, not purgeable")
    return NotPermitted(f"item {row.id} is {row.state}: it cannot be {event.replace('_', ' ')}")


def diagram() -> str:
    """TRANSITIONS as docs/architecture.md shows them, generated (`python -m mirror_scan.store.lifecycle`):
    a state diagram of the moves and a table of every event, rows that differ only in the state they start
    from written once."""
    moves = ["```mermaid", "stateDiagram-v2"]
    for (state, event), t in TRANSITIONS.items():
        if t.to != state:
            moves.append(f"    {_node(state)} --> {_node(t.to)}: {event}")
    moves.append("```")
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for (state, event), t in TRANSITIONS.items():
        besides = [f"files.action={t.action}"] if t.action else []
        besides += [f"follow-up {t.follow_up}"] if t.follow_up else []
        besides += ["allowlisted"] if t.allowlist else []
        besides += [f"moves: {t.supersedes}"] if t.supersedes else []
        besides += [f"decision {t.decision}"] if t.decision else []
        besides += [f'history "{t.line}"'] if t.line else []
        to = "(unchanged)" if t.to == state else str(t.to or "(forgotten)")
        grouped.setdefault((event, to, "; ".join(besides) or "-"), []).append(str(state or "(new)"))
    rows = ["| from | event | to | writes besides the state |", "|---|---|---|---|"]
    for (event, to, besides), states in grouped.items():
        rows.append(f"| {', '.join(states)} | {event} | {to} | {besides} |")
    in_flight = ", ".join(f"{a} as {b}" for a, b in REINDEXED_AS.items() if a != b)
    rows.append(f"| (new) | reindexed | as its meta.json says; a move in flight: {in_flight} | history imported |")
    return "\n".join([*moves, "", *rows])


def _node(state: ItemState | None) -> str:
    return str(state) if state is not None else "[*]"


BEGIN, END = "<!-- lifecycle: generated by `python -m mirror_scan.store.lifecycle --write` -->", "<!-- /lifecycle -->"


def write_into(doc: Path) -> None:
    """Replace what stands between the markers in `doc` with the diagram."""
    text = doc.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{BEGIN}\n{diagram()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_into(Path(sys.argv[2] if len(sys.argv) > 2 else "docs/architecture.md"))
    else:
        print(diagram())
