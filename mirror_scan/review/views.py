"""What the console and its API show, built from a workspace (read-only): the queue, an item, the history,
the dashboard. Plain dicts, the same for the pages and the JSON API. Never the picture: no path to the
quarantined bytes, no thumbnail, no link to where the picture is served; context only."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from mirror_scan.kinds import ItemEvent
from mirror_scan.lists.canary import CANARY_LIST
from mirror_scan.review.people import Reviewer, communities_of, visible_to, why_not_allowed
from mirror_scan.scan.decide import gravest_first
from mirror_scan.store.lifecycle import RESTORABLE_STATES, states_allowing
from mirror_scan.text import one_line, printable

AGES = {"1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
HELD = ("quarantined", "upstream_pending")
# The queue's state filter: what needs a decision first (held and not confirmed), then wider views.
STATE_CHOICES = (
    ("open", "needs a decision"),
    ("held", "held (quarantined or removal pending)"),
    ("quarantined", "quarantined"),
    ("upstream_pending", "upstream removal pending"),
    ("restored", "restored"),
    ("purged", "purged"),
    ("on_hold", "on a legal hold (reported, or kept by a hold)"),
    ("any", "any"),
)
_URL = re.compile(r"\b(?:https?|ftp)://\S+", re.I)
_MARKDOWN = re.compile(r"[!*_`~#>\[\]()|]")


def inert(text: object, limit: int = 300) -> str:
    """Text that other people chose (post titles, names), as plain words: no markdown, no links, no control
    characters. The page escapes HTML as well (autoescape); this keeps what a title could smuggle (an image
    embed, a link to the picture) out of a reviewer's screen as anything but text."""
    plain = _MARKDOWN.sub("", _URL.sub("[link]", one_line(str(text or ""))))
    return plain[:limit] + ("\u2026" if len(plain) > limit else "")


@dataclass(frozen=True)
class Filters:
    label: str = ""
    source: str = ""
    hash_list: str = ""
    state: str = ""
    age: str = ""
    limit: int = 100
    offset: int = 0

    @classmethod
    def from_query(cls, query) -> Filters:
        def number(name: str, default: int, top: int) -> int:
            try:
                return max(0, min(top, int(query.get(name, default))))
            except ValueError:
                return default

        age = str(query.get("age", ""))
        return cls(
            label=str(query.get("label", ""))[:40],
            source=str(query.get("source", ""))[:20],
            hash_list=str(query.get("list", ""))[:100],
            state=str(query.get("state", "open"))[:30],  # by default, what needs a decision
            age=age if age in AGES else "",
            limit=number("limit", 100, 500) or 100,
            offset=number("offset", 0, 10**9),
        )


def _labels(reason: dict | None) -> list[str]:
    return [x for x in (reason or {}).get("labels") or [] if x != "subject"]


def _hash_lists(reason: dict | None) -> list[str]:
    reason = reason or {}
    found = [reason["hash_list"]] if reason.get("hash_list") else []
    review = reason.get("hash_list_review")
    if isinstance(review, dict) and review.get("list"):
        found.append(str(review["list"]))
    return found


def uploader_of(attribution: dict | None) -> dict[str, Any] | None:
    uploads = [u["uploader"] for u in (attribution or {}).get("uploads", []) if u.get("uploader")]
    who = uploads[0] if uploads else None
    if who is None:
        who = next((p["creator"] for p in (attribution or {}).get("posts", []) if p.get("creator")), None)
    if who is None:
        return None
    return {
        "name": inert(who.get("name"), 80),
        "instance": inert(who.get("instance") or "?", 120),
        "account_age_days": who.get("account_age_days"),
        "local": who.get("local"),
        "bot": who.get("bot"),
        "person_id": who.get("id"),
    }


def places_of(attribution: dict | None) -> list[dict[str, Any]]:
    """Where the picture was used: posts (inert titles), comments, private messages, with the community."""
    data = attribution or {}
    places = []
    for kind, uses, title in (("post", "posts", "title"), ("comment", "comments", "post_title")):
        for use in data.get(uses, []):
            places.append(
                {
                    "kind": kind,
                    "id": use.get("id"),
                    "title": inert(use.get(title)),
                    "community": _community(use.get("community")),
                    "removed": use.get("removed"),
                }
            )
    for message in data.get("private_messages", []):
        places.append(
            {"kind": "private message", "id": message.get("id"), "title": "", "community": "", "removed": False}
        )
    return places


def _community(community: dict | None) -> str:
    if not community:
        return ""
    return f"!{inert(community.get('name'), 80)}@{inert(community.get('instance') or '?', 120)}"


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class Views:
    def __init__(self, workspace) -> None:
        self.workspace = workspace
        self.ledger = workspace.ledger

    def _visible(self, reviewer: Reviewer, item_id: str, attribution: dict | None = None) -> bool:
        """Admins see every item; a moderator only the items they may decide (the rest is not theirs to see:
        uploader names and places of other communities)."""
        if reviewer.admin:
            return True
        if attribution is None:
            attribution = self.ledger.follow_ups.attribution(item_id)
        return visible_to(reviewer, attribution)

    # ------------------------------------------------------------------ queue

    def queue(self, reviewer: Reviewer, filters: Filters, now: float) -> dict[str, Any]:
        since = now - AGES[filters.age] if filters.age else None
        confirmed = self.ledger.reviews.confirmed_items()
        rows = []
        labels: set[str] = set()
        for entry in self.workspace.quarantine.entries(since):
            reason = entry["reason"] or {}
            labels.update(_labels(reason))
            if filters.state == "on_hold":
                row = self.ledger.item(entry["id"])
                if row is None or not self._hold(row):
                    continue
            elif not _state_matches(filters.state, entry, confirmed):
                continue
            if filters.source and entry["source"] != filters.source:
                continue
            if filters.label and filters.label not in _labels(reason):
                continue
            if filters.hash_list and filters.hash_list not in _hash_lists(reason):
                continue
            attribution = self.ledger.follow_ups.attribution(entry["id"])
            if not self._visible(reviewer, entry["id"], attribution):
                continue
            rows.append((entry, attribution))
        rows.sort(key=lambda pair: pair[0]["quarantined_at"], reverse=True)
        total = len(rows)
        page = rows[filters.offset : filters.offset + filters.limit]
        items = [self._line(entry, attribution, entry["id"] in confirmed) for entry, attribution in page]
        for item in items:  # the page's rows only: a hold is one lookup each
            row = self.ledger.item(item["id"])
            item["hold"] = self._hold(row) if row is not None else ""
        return {
            "items": items,
            "total": total,
            "filters": filters,
            "labels": gravest_first(labels),  # the filter offers the labels items have, gravest first
            "states": STATE_CHOICES,
            "attribution_configured": _attribution_configured(self.workspace.settings),
        }

    def _line(self, entry: dict, attribution: dict | None, confirmed: bool) -> dict[str, Any]:
        from mirror_scan.scan.decide import short_reason
        from mirror_scan.store.selection import short_id

        reason = entry["reason"] or {}
        places = places_of(attribution)
        return {
            "id": entry["id"],
            "short_id": short_id(entry["id"]),
            "quarantined_at": entry["quarantined_at"],
            "state": entry["state"],
            "source": entry["source"],
            "labels": _labels(reason),
            "hash_lists": _hash_lists(reason),
            "why": one_line(short_reason(reason))[:300],
            "uploader": uploader_of(attribution),
            "communities": sorted({p["community"] for p in places if p["community"]}),
            "uses": len(places),
            "confirmed": confirmed,
            "original": one_line(entry["original"])[-300:],
        }

    def chosen(self, reviewer: Reviewer, item_ids: list[str]) -> list[dict[str, Any]]:
        """The items a decision is about, as the confirmation lists them (an id that names no item this
        reviewer may see is listed as such: the decision refuses it the same way)."""
        confirmed = self.ledger.reviews.confirmed_items()
        lines = []
        for item_id in dict.fromkeys(item_ids):
            row = self.ledger.item(item_id)
            attribution = self.ledger.follow_ups.attribution(item_id) if row is not None else None
            if row is None or not self._visible(reviewer, item_id, attribution):
                lines.append({"id": item_id, "short_id": inert(item_id, 80), "missing": True})
                continue
            entry = self.workspace.quarantine.entry(row)
            lines.append(self._line(entry, attribution, item_id in confirmed))
        return lines

    # ------------------------------------------------------------------ one item

    def item(self, reviewer: Reviewer, item_id: str) -> dict[str, Any] | None:
        """None when there is no such item or the reviewer may not see it."""
        from mirror_scan.moderation.catalogue import describe_action
        from mirror_scan.scan.decide import reason_text

        row = self.ledger.item(item_id)
        if row is None:
            return None
        attribution = self.ledger.follow_ups.attribution(item_id)
        if not self._visible(reviewer, item_id, attribution):
            return None
        entry = self.workspace.quarantine.entry(row)  # this item's row only, not every entry
        line = self._line(entry, attribution, item_id in self.ledger.reviews.confirmed_items())
        reason = entry["reason"] or {}
        checks = [
            {
                "label": label,
                "prompt": one_line(str(f.get("prompt")))[:200],
                "similarity": f.get("similarity"),
                "threshold": f.get("threshold"),
                "margin": f.get("margin"),
            }
            for label, fired in (reason.get("checks") or {}).items()
            for f in fired
        ]
        history = self.workspace.quarantine.history(item_id)
        canary = reason.get("hash_list") == CANARY_LIST
        return {
            **line,
            "made_by": self._made_by(item_id),
            "hold": self._hold(row),
            "sealed_to": row.sealed_to or "",
            "canary": canary,
            "attribution_configured": _attribution_configured(self.workspace.settings),
            "sha256": row.sha256,
            "size": row.size,
            "seen_count": row.seen_count,
            "remote": one_line(row.remote or ""),
            "reason_text": one_line(reason_text(reason))[:2000],
            "checks": checks,
            "notes": [one_line(str(n))[:300] for n in reason.get("notes") or []],
            "partial": bool(reason.get("partial")),
            "places": places_of(attribution),
            "attribution_unknown": [one_line(u)[:300] for u in _unknowns(attribution)],
            "actions": [
                {
                    "action": describe_action(f.action, f.target),
                    "state": f.state,
                    "attempts": f.attempts,
                    "error": one_line(f.error or "")[:300],
                    "updated": _when(f.updated),
                }
                for f in self.ledger.follow_ups.followups(item_id)
            ],  # fmt: skip
            "history": [{"at": one_line(h["at"]), "event": one_line(h["event"])[:300]} for h in history],
            "decisions": [decision_json(d) for d in self.ledger.reviews.decisions(item_id)],
            "objects": [  # the upload's other objects (its thumbnails), held with it: keys and names only
                {"key": one_line(o.key)[-300:], "what": one_line(o.variant or o.role)[:100], "state": o.state}
                for o in self.ledger.objects.of(item_id)
            ],
            "may": {
                d: why_not_allowed(
                    reviewer, attribution, d, reason, self.workspace.settings.console_moderators_may_restore
                )
                for d in ("restore", "confirm", "ban")
            },
            # What the item's state allows (store/lifecycle.py's table): the buttons shown. The canary is
            # never restored or confirmed (app/item_ops.py): no button offers it.
            "can": {d: row.state in states and not (canary and d != "ban") for d, states in DECISION_STATES.items()},
            "used_in_communities": sorted(communities_of(attribution) or ()),
        }

    def _hold(self, row) -> str:
        """The item's legal hold as the page says it ("" when none): store/holds.py."""
        from mirror_scan.store.holds import item_hold

        hold = item_hold(self.ledger, row, self.workspace.settings)
        return "" if hold is None else inert(hold.says(), 300)

    def _made_by(self, item_id: str) -> dict[str, Any]:
        """Which model, policy and severity made the verdict (from the item's metadata file, which records
        them when the item is made), and whether the model had random weights (a test bundle)."""
        try:
            meta = self.workspace.quarantine.read_meta(item_id)
        except Exception:  # noqa: BLE001 - a missing or damaged file: said as unknown, the page still shows
            meta = {}
        model = str(meta.get("model_id") or "")
        severity = meta.get("severity")
        return {
            "model": inert(model or "not recorded", 200),
            "policy": inert(meta.get("policy_id") or "not recorded", 200),
            "severity": f"{severity:+g}" if isinstance(severity, int | float) else "not recorded",
            # model ids read ARCH/PRETRAINED@HASH:PRECISION; "none" is a bundle exported with random weights
            "random_weights": "/none@" in model,
        }

    # ------------------------------------------------------------------ history and dashboard

    def history(self, reviewer: Reviewer, limit: int = 200) -> list[dict[str, Any]]:
        from mirror_scan.store.selection import short_id

        shown = []
        for decision in self.ledger.reviews.decisions(limit=limit):
            if not self._visible(reviewer, decision.item):
                continue
            shown.append({**decision_json(decision), "short_id": short_id(decision.item)})
        return shown

    def dashboard(self, now: float, days: int = 14) -> dict[str, Any]:
        from mirror_scan.app.daemon import running_daemons
        from mirror_scan.app.validator import running_validators

        start = dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=days - 1)
        per_day: dict[str, Counter] = defaultdict(Counter)
        columns: Counter = Counter()
        states: Counter = Counter()
        since = dt.datetime.combine(start, dt.time(), dt.UTC).timestamp()
        for entry in self.workspace.quarantine.entries():
            states[entry["state"]] += 1
            when = dt.datetime.fromisoformat(entry["quarantined_at"])
            if when.timestamp() < since:
                continue
            labels = gravest_first(_labels(entry["reason"])) or ["-"]  # a csam item counts as csam, never nsfw
            column = f"{labels[0]} / {entry['source']}"
            per_day[when.date().isoformat()][column] += 1
            columns[column] += 1
        day_rows = []
        for offset in range(days):
            day = (start + dt.timedelta(days=offset)).isoformat()
            day_rows.append({"day": day, "counts": [per_day[day][c] for c in sorted(columns)]})
        counts = self.ledger.summary_counts()
        confirmed = self.ledger.reviews.confirmed_items()
        open_items = sum(1 for e in self.workspace.quarantine.entries(states=HELD) if e["id"] not in confirmed)
        return {
            "open": open_items,
            "columns": sorted(columns),
            "days": list(reversed(day_rows)),
            "states": dict(states),
            "upstream_pending": states.get("upstream_pending", 0),
            "errors": counts.get("errors", 0),
            "files": counts.get("files", 0),
            "follow_ups_pending": self.ledger.follow_ups.pending_followup_count(),
            "daemons": [printable(str(d)) for d in running_daemons(self.workspace.settings.state)],
            "validators": [printable(str(v)) for v in running_validators(self.workspace.settings.state)],
        }


def _state_matches(wanted: str, entry: dict, confirmed: set[str]) -> bool:
    if wanted == "open":
        return entry["state"] in HELD and entry["id"] not in confirmed
    if wanted == "held":
        return entry["state"] in HELD
    return wanted in ("", "any") or entry["state"] == wanted


def _attribution_configured(settings) -> bool:
    """Whether anything can say who uploaded a picture: pict-rs's or Lemmy's database, or pict-rs's API."""
    return bool(settings.pictrs_database_url or settings.lemmy_database_url
                or (settings.pictrs_url and settings.pictrs_api_key))  # fmt: skip


def _unknowns(attribution: dict | None) -> list[str]:
    unknown = (attribution or {}).get("unknown") or []
    return [f"{u.get('part')}: {u.get('reason')}" if isinstance(u, dict) else str(u) for u in unknown]


DECISION_STATES = {
    "restore": RESTORABLE_STATES,
    "confirm": states_allowing(ItemEvent.CONFIRMED),
    "ban": states_allowing(ItemEvent.BANNED),
}


def decision_json(decision) -> dict[str, Any]:
    return {
        "item": decision.item,
        "decision": decision.decision,
        "who": one_line(decision.who)[:200],
        "via": decision.via,
        "at": _when(decision.at),
        "outcome": decision.outcome,
        "note": one_line(decision.note or "")[:300],
    }
