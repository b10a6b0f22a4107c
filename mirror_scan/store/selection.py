"""Which quarantine items a command acts on: pure, from the listed entries and what the operator named.
Shared by restore, purge and the hash export, so "no such item" reads the same everywhere."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mirror_scan.errors import UsageError

Entry = dict[str, Any]


def select_items(
    entries: Iterable[Entry],
    states: Iterable[str],
    *,
    ids: list[str] | None = None,
    label: str | None = None,
    remote: str | None = None,
    older_than_ts: float | None = None,
    what: str = "restorable",
    expected: str = "quarantined",
    hint: str = "see `mirror-scan quarantine list`",
) -> list[Entry]:
    """The entries in `states`; narrowed to the named ids (each must be one of them), to a label, to items
    quarantined before older_than_ts (a Unix time). With `remote`, every chosen item must have come from
    it (or from no remote). Raises UsageError naming the first id that does not fit."""
    import datetime as dt

    every = {e["id"]: e for e in entries}
    wanted = set(states)
    chosen = [e for e in every.values() if e["state"] in wanted]
    if ids:
        known = {e["id"] for e in chosen}
        missing = [i for i in ids if i not in known]
        if len(missing) == 1 and missing[0] in every:
            raise UsageError(f"item {missing[0]} is {every[missing[0]]['state']}, not {expected}")
        if missing:
            raise UsageError(
                f"no {what} quarantine item {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                hint=hint,
            )
        chosen = [e for e in chosen if e["id"] in set(ids)]
    if label is not None:
        chosen = [e for e in chosen if label in ((e.get("reason") or {}).get("labels") or [])]
    if older_than_ts is not None:
        chosen = [e for e in chosen if dt.datetime.fromisoformat(e["quarantined_at"]).timestamp() < older_than_ts]
    if remote is not None:
        others = [e["id"] for e in chosen if e.get("remote") not in (None, remote)]
        if others:
            raise UsageError(f"item {others[0]} came from another remote, not {remote}")
    return chosen
