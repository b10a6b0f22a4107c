"""Which quarantine items a command acts on: pure, from the listed entries and what the operator named.
Shared by restore, purge and the hash export, so "no such item" reads the same everywhere."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mirror_scan.errors import UsageError

Entry = dict[str, Any]


MIN_ID_FRAGMENT = 4


def expand_ids(names: list[str], known: Iterable[str], fragments: bool = True) -> list[str]:
    """Item ids as people type them: a whole id, or a unique part of one (a prefix, or the short form
    `quarantine list` shows: the content hash and suffix), at least 4 characters. An ambiguous part is an
    error naming the candidates; an unknown one is kept as typed (the caller says it does not exist).
    fragments=False (irreversible actions): only a whole id or the short form, never any part of one."""
    ids = list(known)
    whole = set(ids)
    expanded = []
    for name in names:
        if name in whole or len(name) < MIN_ID_FRAGMENT:
            expanded.append(name)
            continue
        matches = [i for i in ids if (fragments and name in i) or short_id(i) == name]
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (f" (+{len(matches) - 5})" if len(matches) > 5 else "")
            raise UsageError(f"{name!r} matches {len(matches)} items: {shown}", hint="give more of the id")
        expanded.append(matches[0] if matches else name)
    return expanded


def short_id(item_id: str) -> str:
    """The part of an id that tells items apart in practice: content hash start and random suffix
    (20261201T074758Z-3f2a9c1b7e4d-1a2b -> 3f2a9c1b-1a2b). Accepted wherever an id is (expand_ids)."""
    parts = item_id.split("-")
    return f"{parts[1][:8]}-{parts[2]}" if len(parts) == 3 and len(parts[1]) >= 8 else item_id


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
    fragments: bool = True,
) -> list[Entry]:
    """The entries in `states`; narrowed to the named ids (each must be one of them), to a label, to items
    quarantined before older_than_ts (a Unix time). With `remote`, every chosen item must have come from
    it (or from no remote). Raises UsageError naming the first id that does not fit."""
    import datetime as dt

    every = {e["id"]: e for e in entries}
    ids = expand_ids(ids, every, fragments) if ids else ids
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
