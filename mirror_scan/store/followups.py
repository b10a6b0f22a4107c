"""What happens after a quarantine or a restore, decided without I/O: which moderation actions an item
gets from its labels and its attribution, and which action undoes each one.

Follow-ups are rows in the ledger (`followups`), one per (item, action, target), written in the same
transaction as the quarantine or restore that causes them, so a `kill -9` never loses one. The
moderation runner (moderation.py) carries them out, retries the ones that failed for a passing reason
and records the ones Lemmy refused.

    attribute            find the uploader and the posts, comments and messages using the image
    remove_post ID       a post using the image, removed with a reason naming the item
    remove_comment ID
    report_post ID       a report in the moderators' queue
    report_comment ID
    report_private_message ID
    notify USERNAME      a private message to an admin
    webhook              a JSON POST to the configured webhook
  after a restore, each done action gets its undo: restore_post, restore_comment, resolve_*_report (target:
  the report's id), notify_restored, webhook_restored; actions not yet done are cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNDO = {
    "remove_post": "restore_post",
    "remove_comment": "restore_comment",
    "report_post": "resolve_post_report",
    "report_comment": "resolve_comment_report",
    "report_private_message": "resolve_private_message_report",
    "notify": "notify_restored",
    "webhook": "webhook_restored",
}
# Undo actions whose target is the result of the action they undo (a report's id), not its target.
UNDO_TARGETS_RESULT = frozenset({"resolve_post_report", "resolve_comment_report", "resolve_private_message_report"})
LEMMY_ACTIONS = frozenset(
    {
        "remove_post",
        "remove_comment",
        "report_post",
        "report_comment",
        "report_private_message",
        "notify",
        "restore_post",
        "restore_comment",
        "resolve_post_report",
        "resolve_comment_report",
        "resolve_private_message_report",
        "notify_restored",
    }
)


def label_key(label: str) -> str:
    """Verdict labels as [actions] keys: 'hash list' -> 'hash_list'."""
    return label.strip().replace(" ", "_")


def configured_actions(labels: list[str], actions: dict[str, tuple[str, ...]]) -> list[str]:
    """The union, in order, of the actions configured for the item's labels ('*': every flagged item)."""
    chosen: dict[str, None] = {}
    for label in [*map(label_key, labels), "*"]:
        for name in actions.get(label, ()):
            chosen[name] = None
    return list(chosen)


@dataclass(frozen=True)
class Planned:
    """What an item's labels and attribution call for: rows to carry out, and the actions Lemmy would
    refuse, each with why (recorded as `skipped`, shown by `quarantine show`)."""

    rows: list[tuple[str, str]]
    skipped: list[tuple[str, str, str]]


NOT_RECIPIENT = (
    "not reported: Lemmy lets only the recipient report a private message (0.19.1+, 1.0), and the bot is "
    "not its recipient; the admins' notice names it"
)
REMOVED_INSTEAD = (
    "not reported: removed instead (Lemmy refuses reports of removed posts and comments from 0.19.4, and "
    "resolves the open ones when it removes); the removal is in the modlog, the admins are notified"
)


def plan(
    labels: list[str],
    attribution: dict[str, Any],
    actions: dict[str, tuple[str, ...]],
    admins: tuple[str, ...],
    webhook: bool,
    reporter: int | None = None,
) -> Planned:
    """The follow-ups of one item, only actions Lemmy accepts. Removing or reporting needs to know where the
    image is used; posts and comments already removed are left alone. `reporter`: the bot's person id
    (None: unknown), since only a private message's recipient may report it."""
    rows: list[tuple[str, str]] = []
    skipped: list[tuple[str, str, str]] = []
    wanted = configured_actions(labels, actions)
    posts = [p for p in attribution.get("posts", []) if not p.get("removed")]
    comments = [c for c in attribution.get("comments", []) if not c.get("removed")]
    messages = attribution.get("private_messages", [])
    if "remove" in wanted:
        rows += [("remove_post", str(p["id"])) for p in posts]
        rows += [("remove_comment", str(c["id"])) for c in comments]
    notify_admins = "notify" in wanted
    if "report" in wanted:
        for kind, objects in (("post", posts), ("comment", comments)):
            for obj in objects:
                if "remove" in wanted:
                    skipped.append((f"report_{kind}", str(obj["id"]), REMOVED_INSTEAD))
                else:
                    rows.append((f"report_{kind}", str(obj["id"])))
        for message in messages:
            recipient = message.get("recipient_id", (message.get("recipient") or {}).get("id"))
            if reporter is not None and recipient == reporter:
                rows.append(("report_private_message", str(message["id"])))
            else:
                skipped.append(("report_private_message", str(message["id"]), NOT_RECIPIENT))
                notify_admins = True  # what cannot be reported reaches the admins
    if notify_admins:
        rows += [("notify", admin) for admin in admins]
        if webhook:
            rows.append(("webhook", ""))
    return Planned(rows, skipped)


def undo_rows(done: list[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
    """For (action, target, result) rows that were carried out: the rows that undo them."""
    rows = []
    for action, target, result in done:
        undo = UNDO.get(action)
        if undo is None:
            continue
        if undo in UNDO_TARGETS_RESULT:
            if not result:
                continue  # a report whose id Lemmy did not return cannot be resolved by id
            target = result
        rows.append((undo, target))
    return rows


def backoff_s(attempts: int) -> float:
    """A failed follow-up waits 10 s, 20 s, 40 s ... at most an hour before its next try."""
    return float(min(3600, 10 * 2 ** max(0, attempts - 1)))


def plan_undo(ledger, item_id: str) -> None:
    """In the restore's transaction: cancel what is not done yet, queue the undo of what was done."""
    for action, target in undo_rows(ledger.follow_ups.cancel_followups(item_id, "the item was restored first")):
        ledger.follow_ups.add_followup(item_id, action, target)
