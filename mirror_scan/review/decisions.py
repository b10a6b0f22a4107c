"""The console's side of a decision: what a reviewer may decide (the rules are in people.py), given to the
item operations (app/item_ops.py) that the shell and the self-test call too."""

from __future__ import annotations

from mirror_scan.app.item_ops import reason_of
from mirror_scan.kinds import Decision
from mirror_scan.review.people import Reviewer, visible_to, why_not_allowed
from mirror_scan.store.lifecycle import By
from mirror_scan.store.rows import ItemRow


class ReviewerPermits:
    """A reviewer's permits: admins decide everything; a moderator only the items of their communities, and
    restores only where the admins allowed it ([console] moderators_may_restore)."""

    def __init__(self, reviewer: Reviewer, moderators_may_restore: bool = False) -> None:
        self.reviewer = reviewer
        self.moderators_may_restore = moderators_may_restore

    def why_not(self, item_id: str, row: ItemRow | None, attribution: dict | None, decision: Decision) -> str | None:
        reviewer = self.reviewer
        if row is None or not visible_to(reviewer, attribution):  # the same words: existence is not told
            return f"no quarantine item {item_id}" + ("" if reviewer.admin else " of yours")
        why = why_not_allowed(reviewer, attribution, decision, reason_of(row), self.moderators_may_restore)
        return f"{reviewer.name} may not {decision} item {item_id}: {why}" if why else None


def by(reviewer: Reviewer, via: str, note: str = "") -> By:
    return By(reviewer.who, via, note)
