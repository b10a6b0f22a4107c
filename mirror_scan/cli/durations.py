"""Durations and dates as an admin types them: 90d, 12h, 30s; 2026-11-01 or 2026-11-01T12:00."""

from __future__ import annotations

import datetime as dt
import re

from mirror_scan.errors import UsageError

DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    match = DURATION.match(text.strip().lower())
    if not match:
        raise UsageError(f"duration {text!r} is not understood", hint="use a number and a unit: 90d, 12h, 30m, 2w")
    return int(match.group(1)) * UNITS[match.group(2)]


def parse_interval(text: str) -> float:
    return float(parse_duration(text))


def parse_since(text: str) -> float:
    """A date (UTC unless it says otherwise) or a duration back from now, as a unix time."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return dt.datetime.now(dt.UTC).timestamp() - parse_duration(text)
        except UsageError:
            raise UsageError(
                f"--since {text!r} is not a date", hint="use 2026-11-01, 2026-11-01T12:00, or 7d"
            ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
