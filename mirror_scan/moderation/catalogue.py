"""Every follow-up action, once: what it does, on what, which action undoes it, and who carries it out.

Follow-ups are rows in the ledger (`followups`), one per (item, action, target). The quarantine writes the
first (`attribute`) with the item, and a restore writes `undo` in the transaction that finishes it
(store/lifecycle.py); the runner (actions.py) carries every row out, and plans the rest from here: the
actions an item's labels call for after its attribution (plan.py), and the undo of each done action.

    attribute            find the uploader and the posts, comments and messages using the image
    remove_post ID       a post using the image, removed with a reason naming the item
    report_post ID       a report in the moderators' queue (and the same for comments, private messages)
    notify USERNAME      a private message to an admin
    webhook              a JSON POST to the configured webhook
    undo                 after a restore: each done action's undo (restore_post, resolve_*_report with the
                         report's id, notify_restored, webhook_restored)
    ban ID               a reviewer's ban of the uploader (never automatic; recorded as done)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mirror_scan.kinds import FollowUp as F


class Runner(StrEnum):
    ATTRIBUTOR = "attributor"  # the pict-rs and Lemmy databases, read-only
    LEMMY = "lemmy"  # the moderation bot's account
    WEBHOOK = "webhook"
    PLANNER = "planner"  # the runner itself: plans more rows
    REVIEWER = "reviewer"  # done by a person through a decision, only recorded here


@dataclass(frozen=True)
class Action:
    name: F
    words: str  # how people read it: "{}" is the target
    runner: Runner
    undo: F | None = None
    undo_targets_result: bool = False  # its undo acts on what it returned (a report's id), not on its target
    after_restore: bool = False  # it belongs to a restored item (an undo); every other action to a held one


CATALOGUE: dict[F, Action] = {
    action.name: action
    for action in (
        Action(F.ATTRIBUTE, "attribute", Runner.ATTRIBUTOR),
        Action(F.UNDO, "undo what moderation did", Runner.PLANNER, after_restore=True),
        Action(F.REMOVE_POST, "remove post {}", Runner.LEMMY, undo=F.RESTORE_POST),
        Action(F.REMOVE_COMMENT, "remove comment {}", Runner.LEMMY, undo=F.RESTORE_COMMENT),
        Action(F.REPORT_POST, "report post {}", Runner.LEMMY, F.RESOLVE_POST_REPORT, undo_targets_result=True),
        Action(
            F.REPORT_COMMENT, "report comment {}", Runner.LEMMY, F.RESOLVE_COMMENT_REPORT, undo_targets_result=True
        ),  # fmt: skip
        Action(
            F.REPORT_PRIVATE_MESSAGE,
            "report private message {}",
            Runner.LEMMY,
            F.RESOLVE_PRIVATE_MESSAGE_REPORT,
            undo_targets_result=True,
        ),  # fmt: skip
        Action(F.NOTIFY, "notify {}", Runner.LEMMY, undo=F.NOTIFY_RESTORED),
        Action(F.WEBHOOK, "post to the webhook", Runner.WEBHOOK, undo=F.WEBHOOK_RESTORED),
        Action(F.RESTORE_POST, "restore post {}", Runner.LEMMY, after_restore=True),
        Action(F.RESTORE_COMMENT, "restore comment {}", Runner.LEMMY, after_restore=True),
        Action(F.RESOLVE_POST_REPORT, "resolve post report {}", Runner.LEMMY, after_restore=True),
        Action(F.RESOLVE_COMMENT_REPORT, "resolve comment report {}", Runner.LEMMY, after_restore=True),
        Action(
            F.RESOLVE_PRIVATE_MESSAGE_REPORT, "resolve private message report {}", Runner.LEMMY, after_restore=True
        ),  # fmt: skip
        Action(F.NOTIFY_RESTORED, "tell {} about the restore", Runner.LEMMY, after_restore=True),
        Action(F.WEBHOOK_RESTORED, "post the restore to the webhook", Runner.WEBHOOK, after_restore=True),
        Action(F.BAN, "ban {}", Runner.REVIEWER),
        Action(F.UNBAN, "unban {}", Runner.REVIEWER),
    )
}


def action(name: str) -> Action | None:
    try:
        return CATALOGUE[F(name)]
    except ValueError:
        return None


def describe_action(name: str, target: str) -> str:
    """An action as people read it: 'remove post 12', 'notify admin'."""
    known = action(name)
    return (known.words if known else name + " {}").format(target).strip()


def undo_rows(done: list[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
    """For (action, target, result) rows that were carried out: the rows that undo them."""
    rows = []
    for name, target, result in done:
        known = action(name)
        if known is None or known.undo is None:
            continue
        if known.undo_targets_result:
            if not result:
                continue  # a report whose id Lemmy did not return cannot be resolved by id
            target = result
        rows.append((str(known.undo), target))
    return rows
