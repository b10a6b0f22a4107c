"""Legal holds: an item held is never purged (`quarantine purge`, the daily purge timer, a purge through
pict-rs) until its hold ends. Reported material must be kept for a set time (a year in the US since the
REPORT Act of 2024; other countries differ): an explicit hold (`quarantine hold`, with who and why), or the
configured one (`hold_labels` held `hold_days` from the quarantine). A release ends either early, with
who and why. Pure: the ledger's record and the settings in, the hold out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

DAY_S = 86400.0


@dataclass(frozen=True)
class Hold:
    until: float | None  # None: until released
    why: str

    def says(self) -> str:
        when = "until released" if self.until is None else f"until {stamp(self.until)}"
        return f"held {when} ({self.why})"


def stamp(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def hold_on(
    created: float,
    labels: list[str],
    explicit: tuple[float | None, str, str, float] | None,
    hold_labels: tuple[str, ...],
    hold_days: int,
    now: float,
) -> Hold | None:
    """The item's hold now, or None. `explicit`: (until, why, who, at) from the ledger; a release is an
    explicit hold that ended when it was made (until == at), and it ends the configured hold too."""
    if explicit is not None:
        until, why, who, at = explicit
        if until is not None and until == at:  # released: nothing holds it any more
            return None
        if until is None or until > now:
            return Hold(until, f"{why}; by {who}")
    held = sorted(set(labels) & set(hold_labels))
    if held:
        until = created + hold_days * DAY_S
        if until > now:
            return Hold(until, f"the configured hold of {', '.join(held)} items, {hold_days} days from the quarantine")
    return None


def item_hold(ledger, row, settings, now: float | None = None) -> Hold | None:
    """The hold on a ledger row now: its explicit hold (the ledger's) or the configured one (`settings`)."""
    import json
    import time

    try:
        labels = list((json.loads(row.reason) if row.reason else {}).get("labels") or [])
    except (ValueError, AttributeError):
        labels = []
    return hold_on(row.created, labels, ledger.reviews.hold_of(row.id), tuple(settings.hold_labels),
                   int(settings.hold_days), time.time() if now is None else now)  # fmt: skip
