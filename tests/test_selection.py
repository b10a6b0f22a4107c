"""Which items restore and purge act on: the pure selection, and the messages an operator reads."""

from __future__ import annotations

import pytest

from mirror_scan.errors import UsageError
from mirror_scan.kinds import PURGEABLE_STATES, RESTORABLE_STATES
from mirror_scan.store.selection import select_items


def _entry(item_id: str, state: str, labels=("csam",), remote=None, at="2026-11-01T00:00:00+00:00") -> dict:
    return {"id": item_id, "state": state, "reason": {"labels": list(labels)}, "remote": remote, "quarantined_at": at}


ENTRIES = [
    _entry("a", "quarantined"),
    _entry("b", "upstream_pending", labels=("nsfw",), remote="S3:pictrs"),
    _entry("c", "restored"),
    _entry("d", "purged", at="2026-01-01T00:00:00+00:00"),
]


def test_restore_selects_held_items_by_id_label_and_remote():
    assert [e["id"] for e in select_items(ENTRIES, RESTORABLE_STATES)] == ["a", "b"]
    assert [e["id"] for e in select_items(ENTRIES, RESTORABLE_STATES, ids=["b"])] == ["b"]
    assert [e["id"] for e in select_items(ENTRIES, RESTORABLE_STATES, label="nsfw")] == ["b"]
    assert [e["id"] for e in select_items(ENTRIES, RESTORABLE_STATES, ids=["a"], remote="S3:other")] == ["a"]
    with pytest.raises(UsageError, match="item b came from another remote, not S3:other"):
        select_items(ENTRIES, RESTORABLE_STATES, remote="S3:other")


def test_an_id_that_does_not_fit_is_named():
    with pytest.raises(UsageError, match="item c is restored, not quarantined"):
        select_items(ENTRIES, RESTORABLE_STATES, ids=["c"])
    with pytest.raises(UsageError, match=r"no restorable quarantine item x \(and 1 more\)"):
        select_items(ENTRIES, RESTORABLE_STATES, ids=["x", "y"])


def test_purge_selects_by_age():
    cutoff = 1767225600.0 + 86_400  # 2026-01-02
    chosen = select_items(ENTRIES, (*PURGEABLE_STATES, "purged"), older_than_ts=cutoff, what="purgeable")
    assert [e["id"] for e in chosen] == ["d"]


def test_fragments_name_items_except_where_the_action_cannot_be_undone():
    from mirror_scan.store.selection import expand_ids, short_id

    ids = ["20261201T074758Z-3f2a9c1b7e4d-1a2b", "20261201T074759Z-9e8d7c6b5a49-ffff"]
    assert short_id(ids[0]) == "3f2a9c1b-1a2b"
    assert expand_ids(["3f2a9c1b-1a2b", "9e8d7c"], ids) == ids
    assert expand_ids(["3f2a9c1b-1a2b", "9e8d7c"], ids, fragments=False) == [ids[0], "9e8d7c"]  # kept as typed
    with pytest.raises(UsageError, match="matches 2 items"):
        expand_ids(["20261201"], ids)
