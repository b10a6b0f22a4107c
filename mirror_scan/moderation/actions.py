"""Carries out the follow-ups the ledger holds (see catalogue.py): attribution, then the moderation
actions configured per label (plan.py), and their undo after a restore.

Each follow-up runs under its item's lock (so never beside a move or another runner on the same item),
and its outcome is committed to the ledger (the authority) and written to the item's history in
meta.json (for people). A passing failure (a database or Lemmy down, a 5xx, a rate limit) leaves it
pending with a backoff; a refusal (the bot lacks a right, the post is gone) is recorded as 'refused' with
Lemmy's words and not retried by itself. Nothing here touches the quarantined bytes: a follow-up that
fails never loses or delays a quarantine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from mirror_scan.clients.http import Redirected, Unreachable, exchange
from mirror_scan.clients.lemmy import Lemmy, LemmyRefused
from mirror_scan.clients.pgsource import PgSource, read_secret_file
from mirror_scan.errors import MirrorScanError
from mirror_scan.kinds import HELD_STATES, ItemState
from mirror_scan.kinds import FollowUp as F
from mirror_scan.moderation import plan as planning
from mirror_scan.moderation.attribution import Attributor, LemmyRepo, PictrsRepo, summary
from mirror_scan.moderation.catalogue import Runner, action, describe_action, undo_rows
from mirror_scan.redact import redact_url, scrub
from mirror_scan.settings import Settings
from mirror_scan.store.items import ItemBusy, item_origin
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.quarantine import Quarantine
from mirror_scan.store.rows import FollowupRow
from mirror_scan.text import printable

log = logging.getLogger(__name__)

TOOL = "mirror-scan"


class WebhookFailed(MirrorScanError):
    """The webhook did not take the notice (retried)."""


@dataclass
class Webhook:
    url: str  # secret: its path or query usually holds a token
    timeout: float = 10.0

    @property
    def shown(self) -> str:
        """Scheme, host and port only: the rest may be the token."""
        return "/".join(redact_url(self.url).split("/", 3)[:3])

    def send(self, payload: dict[str, Any]) -> None:
        # Control characters, C1 and bidi overrides as \u escapes: names and keys come from uploaders.
        body = printable(json.dumps(payload, ensure_ascii=False)).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": TOOL}
        try:
            status, _ = exchange("POST", self.url, headers, body, self.timeout, limit=100_000)
        except Redirected as err:
            raise WebhookFailed(f"the webhook at {self.shown}: {err}") from None
        except Unreachable as err:
            raise WebhookFailed(f"the webhook at {self.shown} is unreachable: {scrub(str(err), [self.url])}") from None
        if not 200 <= status < 300:
            raise WebhookFailed(f"the webhook at {self.shown} answered {status}")


def build_attributor(settings: Settings) -> Attributor:
    from mirror_scan.clients.pictrs import Pictrs

    pictrs_repo = lemmy_repo = pictrs_api = None
    if settings.pictrs_database_url:
        password = settings.pictrs_database_password or read_secret_file(
            settings.pictrs_database_password_file, "[pictrs] database"
        )
        pictrs_repo = PictrsRepo(PgSource(settings.pictrs_database_url, password, "pict-rs database"))
    if settings.lemmy_database_url:
        password = settings.lemmy_database_password or read_secret_file(
            settings.lemmy_database_password_file, "[lemmy] database"
        )
        lemmy_repo = LemmyRepo(PgSource(settings.lemmy_database_url, password, "Lemmy database"))
    if settings.pictrs_url and settings.pictrs_api_key:
        pictrs_api = Pictrs(settings.pictrs_url, settings.pictrs_api_key)
    return Attributor(pictrs_repo, pictrs_api, lemmy_repo)


def build_lemmy(settings: Settings) -> Lemmy | None:
    if not settings.lemmy_url:
        return None
    password = settings.lemmy_password or read_secret_file(settings.lemmy_password_file, "[lemmy] bot")
    if not settings.lemmy_username or not password:
        raise MirrorScanError(
            "[lemmy] url is set but the bot account is not",
            hint="set [lemmy] username and password_file (or MIRROR_SCAN_LEMMY_PASSWORD)",
        )
    return Lemmy(
        settings.lemmy_url,
        settings.lemmy_username,
        password,
        token_file=settings.state.with_name(settings.state.name + ".lemmy-token"),
    )


def follow_up_enabled(settings: Settings) -> bool:
    """Whether new quarantine items get an attribution follow-up."""
    return bool(
        settings.pictrs_database_url
        or settings.lemmy_database_url
        or (settings.pictrs_url and settings.pictrs_api_key)
        or settings.lemmy_url
        or settings.notify_webhook
    )


class Moderation:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        quarantine: Quarantine,
        attributor: Attributor | None = None,
        lemmy: Lemmy | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.quarantine = quarantine
        self.attributor = attributor or Attributor()
        self.lemmy = lemmy
        self.webhook = webhook
        self._down: dict[str, str] = {}  # service -> its failure, within one run_due
        self._bot_id: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, ledger: Ledger, quarantine: Quarantine) -> Moderation:
        webhook = Webhook(settings.notify_webhook) if settings.notify_webhook else None
        return cls(settings, ledger, quarantine, build_attributor(settings), build_lemmy(settings), webhook)

    # ------------------------------------------------------------------ the runner

    def run_due(self, limit: int = 100, budget_s: float | None = None) -> list[str]:
        """Carry out the follow-ups that are due; one line per outcome. With a budget, no follow-up starts
        after `budget_s` seconds (each exchange has its own deadline): what is left stays due, for the
        watch daemon or the next command."""
        notes: list[str] = []
        seen: set[int] = set()
        self._down = {}
        self.attributor.down.clear()
        started = time.monotonic()
        while True:  # an attribution plans actions that are due at once: take them in the same call
            rows = [r for r in self.ledger.follow_ups.due_followups(time.time(), limit) if r.id not in seen]
            if not rows or len(seen) >= limit:
                return notes
            for row in rows:
                if budget_s is not None and time.monotonic() - started >= budget_s:
                    left = self.ledger.follow_ups.pending_followup_count()
                    notes.append(
                        f"{left} follow-up(s) left for later: this command's {budget_s:g} s for them are used "
                        "(the watch daemon, `lemmy retry` or the next command takes them)"
                    )
                    return notes
                seen.add(row.id)
                try:
                    with self.quarantine.item_lock(row.item):
                        current = self.ledger.follow_ups.followup(row.id)
                        if current is None or current.state != "pending":
                            continue
                        note = self._run(current)
                except ItemBusy:
                    continue  # a move or another runner holds the item: next round
                if note:
                    notes.append(note)

    def _run(self, row: FollowupRow) -> str:
        item = self.ledger.item(row.item)
        if item is None:
            self.ledger.follow_ups.finish_followup(row.id, "cancelled", error="the item is gone", attempted=False)
            return ""
        known = action(row.action)
        if known is None or known.runner == Runner.REVIEWER:  # a person's decision is recorded, never run
            self.ledger.follow_ups.finish_followup(
                row.id, "cancelled", error=f"{row.action} is not a follow-up this runner carries out", attempted=False
            )
            return f"{row.item}: {row.action} {row.target} cancelled (not carried out by the runner)"
        if known.runner == Runner.ATTRIBUTOR:
            return self._attribute(row, item)
        # The undo of moderation still runs for a restored item purged since: the image was a false positive.
        after = (ItemState.RESTORED, ItemState.PURGED)
        wanted_state = item.state in after if known.after_restore else item.state in HELD_STATES
        if not wanted_state:
            self.ledger.follow_ups.finish_followup(
                row.id, "cancelled", error=f"the item is {item.state}", attempted=False
            )
            return f"{row.item}: {row.action} {row.target} cancelled (item {item.state})"
        if known.runner == Runner.PLANNER:
            return self._plan_undo(row, item)
        lemmy_action = known.runner == Runner.LEMMY
        handler = self._lemmy_action if lemmy_action else self._webhook_action
        service = str(known.runner)
        missing = (lemmy_action and self.lemmy is None) or (not lemmy_action and self.webhook is None)
        if missing or service in self._down:
            why = (
                f"waiting: {'[lemmy] url' if lemmy_action else '[notify] webhook'} is not configured here"
                if missing
                else f"waiting: {self._down[service]}"
            )
            self.ledger.follow_ups.finish_followup(
                row.id, "pending", error=why, next_try=time.time() + (300 if missing else 30), attempted=False
            )
            return ""
        what = describe_action(row.action, row.target)
        try:
            result = handler(row, item)
        except MirrorScanError as err:
            refused = isinstance(err, LemmyRefused)
            text = str(err).splitlines()[0]
            if refused:
                self.ledger.follow_ups.finish_followup(row.id, "refused", error=text)
                self._history(row.item, f"{what}: refused: {text}")
                fallback = self._report_instead(row)
                return f"{row.item}: {what} refused: {text}" + (f"; {fallback}" if fallback else "")
            self.ledger.follow_ups.finish_followup(
                row.id, "pending", error=text, next_try=time.time() + planning.backoff_s(row.attempts + 1)
            )
            self._down[service] = text  # the rest of this round waits instead of timing out one by one
            log.warning("%s: %s failed, retried later: %s", row.item, what, text)
            return f"{row.item}: {what} failed, retried later: {text}"
        self.ledger.follow_ups.finish_followup(row.id, "done", result=result)
        self._history(row.item, f"{what}: done" + (f" (report {result})" if result else ""))
        return f"{row.item}: {what}"

    def _plan_undo(self, row: FollowupRow, item) -> str:
        """After a restore: the undo of every action that was done, due at once (the same round runs them)."""
        done = [(f.action, f.target, f.result) for f in self.ledger.follow_ups.followups(item.id) if f.state == "done"]
        rows = undo_rows(done)
        with self.ledger.transaction():
            for name, target in rows:
                self.ledger.follow_ups.add_followup(item.id, name, target)
            self.ledger.follow_ups.finish_followup(row.id, "done")
        return f"{item.id}: {len(rows)} undo action(s) planned" if rows else ""

    def _report_instead(self, row: FollowupRow) -> str:
        """A removal Lemmy refused (the bot is no moderator there): the report that was skipped for it
        ("removed instead") is filed after all, so the community's moderators still hear of it."""
        report = _REPORT_INSTEAD.get(row.action)
        if report is None:
            return ""
        skipped = next(
            (
                f
                for f in self.ledger.follow_ups.followups(row.item)
                if (f.action, f.target, f.state) == (report, row.target, "skipped")
            ),
            None,
        )
        if skipped is None:
            return ""
        self.ledger.follow_ups.finish_followup(skipped.id, "pending", next_try=time.time(), attempted=False)
        return f"{describe_action(report, row.target)} instead"

    def _history(self, item_id: str, event: str, **fields: Any) -> None:
        self.quarantine.note_held(item_id, event, **fields)  # the runner holds the item lock

    # ------------------------------------------------------------------ attribution

    def attribution_key(self, item) -> str | None:
        if item.key:
            return item.key
        if item.original:
            return os.fsdecode(os.path.relpath(item.original, item.mirror_root))
        return None

    def look_up(self, item) -> dict[str, Any]:
        """The item's attribution from the configured sources (stores nothing)."""
        return self.attributor.attribute(self.attribution_key(item), item.sha256, item_origin(item))

    def _attribute(self, row: FollowupRow, item) -> str:
        data = self.look_up(item)
        with self.ledger.transaction():
            self.ledger.follow_ups.put_attribution(item.id, data)
        brief = summary(data)
        self._history(item.id, f"attributed: uploader {brief['uploader']}; {brief['where']}", attribution=data)
        planned = self._plan(item, data) if row.plan else []
        if data["retry"]:
            reason = next((u["reason"] for u in data["unknown"]), "a source was unavailable")
            self.ledger.follow_ups.finish_followup(
                row.id, "pending", error=reason, next_try=time.time() + planning.backoff_s(row.attempts + 1)
            )
            return f"{item.id}: attribution incomplete, retried later: {reason}"
        self.ledger.follow_ups.finish_followup(row.id, "done")
        return f"{item.id}: attributed (uploader {brief['uploader']}; {brief['where']})" + (
            f"; {len(planned)} action(s) planned" if planned else ""
        )

    def labels(self, item) -> list[str]:
        try:
            reason = json.loads(item.reason) if item.reason else {}
        except json.JSONDecodeError:
            reason = {}
        return list((reason or {}).get("labels") or [])

    def planned_actions(self, item, data: dict[str, Any]) -> planning.Planned:
        from mirror_scan.lists.canary import CANARY_LABEL

        s = self.settings
        reporter = self._bot_person_id() if data.get("private_messages") else None
        actions = {CANARY_LABEL: ("notify",), **s.actions}  # the canary tells the admins unless told otherwise
        return planning.plan(
            self.labels(item), data, actions, s.lemmy_notify, bool(s.notify_webhook), reporter=reporter
        )

    def _bot_person_id(self) -> int | None:
        """The bot's own person id (only a private message's recipient may report it); None if unknown."""
        if self.lemmy is None:
            return None
        if self._bot_id is None:
            try:
                self._bot_id = self.lemmy.person_id(self.lemmy.username)
            except MirrorScanError as err:
                log.info("the bot's person id is not known (%s): private messages are not reported", err)
                return None
        return self._bot_id

    def _plan(self, item, data: dict[str, Any]) -> list[tuple[str, str]]:
        if item.state not in HELD_STATES:
            return []
        planned = self.planned_actions(item, data)
        rows = planned.rows
        from mirror_scan.lists.canary import CANARY_LABEL

        canary_test = CANARY_LABEL in self.labels(item) and self.settings.canary_dry_run
        state = "dry_run" if self.settings.actions_dry_run or canary_test else "pending"
        with self.ledger.transaction():
            for action, target in rows:
                self.ledger.follow_ups.add_followup(item.id, action, target, state=state)
            for action, target, why in planned.skipped:
                self.ledger.follow_ups.add_followup(item.id, action, target, state="skipped", error=why)
        if rows and state == "dry_run":
            self._history(item.id, "dry run: would " + "; ".join(describe_action(a, t) for a, t in rows))
        return rows

    def attribute_now(self, item_id: str, *, plan: bool = False, wait_s: float = 5.0) -> dict[str, Any]:
        """`quarantine attribute`: attribute one item now (queued if it never was), then run what is due."""
        item = self.ledger.item(item_id)
        if item is None:
            raise MirrorScanError(f"no quarantine item {item_id}", hint="see `mirror-scan quarantine list`")
        with self.ledger.transaction():
            self.ledger.follow_ups.add_followup(item_id, F.ATTRIBUTE, plan=plan)
        with self.quarantine.item_lock(item_id, wait_s=wait_s):
            row = next(r for r in self.ledger.follow_ups.followups(item_id) if r.action == F.ATTRIBUTE)
            self.ledger.follow_ups.finish_followup(row.id, "pending", next_try=time.time(), attempted=False)
            self._run(self.ledger.follow_ups.followup(row.id))  # type: ignore[arg-type]
        return self.ledger.follow_ups.attribution(item_id) or {}

    # ------------------------------------------------------------------ actions

    def _lemmy_action(self, row: FollowupRow, item) -> str | None:
        lemmy = self.lemmy
        assert lemmy is not None
        labels = ", ".join(self.labels(item)) or "flagged"
        name, target = F(row.action), row.target
        if name in _REMOVALS:
            kind, removed = _REMOVALS[name]
            # Public (the modlog, federated to every instance): it accuses nobody and names no label; the
            # label and the scores go to admin channels only (the notice, the webhook, the report queue).
            template = self.settings.lemmy_removal_reason if removed else self.settings.lemmy_restore_reason
            lemmy.remove(kind, int(target), removed, public_reason(template, item.id))
            return None
        if name in _REPORTS:
            return lemmy.report(_REPORTS[name], int(target), f"{TOOL}: image quarantined as {labels} (item {item.id})")
        if name in _RESOLVES:
            lemmy.resolve_report(_RESOLVES[name], int(target))
            return None
        if name in (F.NOTIFY, F.NOTIFY_RESTORED):
            lemmy.private_message(target, self.notice(item, restored=name == F.NOTIFY_RESTORED))
            return None
        raise MirrorScanError(f"unknown follow-up {row.action}")

    def _webhook_action(self, row: FollowupRow, item) -> str | None:
        assert self.webhook is not None
        data = self.ledger.follow_ups.attribution(item.id) or {}
        brief = summary(data)
        self.webhook.send(
            {
                "tool": TOOL,
                "event": "restored" if row.action == F.WEBHOOK_RESTORED else "quarantined",
                "item": item.id,
                "labels": self.labels(item),
                "sha256": item.sha256,
                "key": self.attribution_key(item),
                "uploader": brief["uploader"],
                "where": brief["where"],
                "posts": [{"id": p["id"], "link": p.get("link")} for p in data.get("posts", [])],
                "comments": [{"id": c["id"], "link": c.get("link")} for c in data.get("comments", [])],
                "actions": [
                    {"action": f.action, "target": f.target, "state": f.state}
                    for f in self.ledger.follow_ups.followups(item.id)
                    if f.action not in (F.ATTRIBUTE, F.UNDO, F.WEBHOOK, F.WEBHOOK_RESTORED)
                ],
            }
        )
        return None

    def notice(self, item, restored: bool = False) -> str:
        """The private message to admins: who, where, what was done; never the image or a link to it."""
        data = self.ledger.follow_ups.attribution(item.id) or {}
        brief = summary(data)
        labels = ", ".join(self.labels(item)) or "flagged"
        if restored:
            return (
                f"{TOOL}: quarantine item {item.id} ({labels}) was a false positive and has been restored; "
                "the removals and reports made for it are being undone."
            )
        lines = [f"{TOOL} quarantined an image as **{md_text(labels)}** (item `{item.id}`)."]
        lines.append(f"Uploader: {md_text(brief['uploader'])}")
        for post in data.get("posts", [])[:10]:
            community = post.get("community") or {}
            lines.append(
                f"- post {int(post['id'])} \u201c{md_text(post.get('title'))}\u201d in "
                f"!{md_text(community.get('name'))}@{md_text(community.get('instance'))}: {md_url(post.get('link'))}"
            )
        for comment in data.get("comments", [])[:10]:
            lines.append(
                f"- comment {int(comment['id'])} on post {int(comment['post_id'])}: {md_url(comment.get('link'))}"
            )
        done = [
            describe_action(f.action, f.target)
            for f in self.ledger.follow_ups.followups(item.id)
            if f.action not in (F.ATTRIBUTE, F.UNDO)
        ]
        if done:
            lines.append("Actions: " + "; ".join(done))
        lines.append(
            f"Review with `mirror-scan quarantine show {item.id}`; a false positive is put back with "
            f"`mirror-scan quarantine restore {item.id}`, which undoes these actions."
        )
        return "\n".join(lines)


_MARKDOWN = re.compile(r"[\\`*_\[\]()<>!#|~{}\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SAFE_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/%@:+=-]*)?$")


def md_text(value: object, limit: int = 80) -> str:
    """Text from the databases (post titles, names: chosen by whoever posted, possibly federated) made inert
    for Lemmy's markdown: no links, images, emphasis or line breaks an attacker could slip into an admin's
    message (an inline image would show the very content that was quarantined)."""
    text = _MARKDOWN.sub(" ", str(value if value is not None else "?")).strip()
    text = re.sub(r"\s+", " ", text).replace("://", ": //")  # no bare URL for Lemmy to link either
    return (text[:limit] + ("\u2026" if len(text) > limit else "")) or "?"


def md_url(value: object) -> str:
    """A post's address, only if it is a plain http(s) URL (then Lemmy links it, never embeds it)."""
    text = str(value or "")
    return text if _SAFE_URL.match(text) and len(text) < 300 else "(address withheld: not a plain URL)"


def public_reason(template: str, item_id: str) -> str:
    """A removal or restore reason as the public sees it: the template with {item} filled in, one line,
    within Lemmy's limits."""
    text = " ".join(template.replace("{item}", item_id).split())
    return text[:1000] or f"ref {item_id}"


# The Lemmy objects each action acts on (catalogue.py names the actions; Lemmy's API names the objects).
_REMOVALS = {
    F.REMOVE_POST: ("post", True),
    F.REMOVE_COMMENT: ("comment", True),
    F.RESTORE_POST: ("post", False),
    F.RESTORE_COMMENT: ("comment", False),
}
_REPORTS = {F.REPORT_POST: "post", F.REPORT_COMMENT: "comment", F.REPORT_PRIVATE_MESSAGE: "private_message"}
_RESOLVES = {
    F.RESOLVE_POST_REPORT: "post",
    F.RESOLVE_COMMENT_REPORT: "comment",
    F.RESOLVE_PRIVATE_MESSAGE_REPORT: "private_message",
}
_REPORT_INSTEAD = {F.REMOVE_POST: F.REPORT_POST, F.REMOVE_COMMENT: F.REPORT_COMMENT}
