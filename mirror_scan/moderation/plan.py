"""What an item's labels and attribution call for, decided without I/O: the moderation actions Lemmy
accepts (read from LemmyNet/lemmy 0.19.x and 1.0: see the reasons below), and the backoff of a follow-up
that failed for a passing reason. The actions themselves are in catalogue.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mirror_scan.kinds import FollowUp as F


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
        rows += [(F.REMOVE_POST, str(p["id"])) for p in posts]
        rows += [(F.REMOVE_COMMENT, str(c["id"])) for c in comments]
    notify_admins = "notify" in wanted
    if "report" in wanted:
        for report, objects in ((F.REPORT_POST, posts), (F.REPORT_COMMENT, comments)):
            for obj in objects:
                if "remove" in wanted:
                    skipped.append((report, str(obj["id"]), REMOVED_INSTEAD))
                else:
                    rows.append((report, str(obj["id"])))
        for message in messages:
            recipient = message.get("recipient_id", (message.get("recipient") or {}).get("id"))
            if reporter is not None and recipient == reporter:
                rows.append((F.REPORT_PRIVATE_MESSAGE, str(message["id"])))
            else:
                skipped.append((F.REPORT_PRIVATE_MESSAGE, str(message["id"]), NOT_RECIPIENT))
                notify_admins = True  # what cannot be reported reaches the admins
    if notify_admins:
        rows += [(F.NOTIFY, admin) for admin in admins]
        if webhook:
            rows.append((F.WEBHOOK, ""))
    return Planned(rows, skipped)


def backoff_s(attempts: int) -> float:
    """A failed follow-up waits 10 s, 20 s, 40 s ... at most an hour before its next try."""
    return float(min(3600, 10 * 2 ** max(0, attempts - 1)))
