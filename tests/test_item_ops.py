"""Every entry point acts on items the same way (issue 38): a restore, a confirm and a purge made from the
shell and the same made from the review console (its pages and its API) leave the same ledger rows and the
same history lines, in the ledger and in each item's meta.json, differing only in who, via what and when.
Real parts throughout: the real CLI and console in subprocesses, a real `rclone serve s3` bucket (the
restores put the objects back), a real SQLite ledger read directly."""

from __future__ import annotations

import getpass
import json
import sqlite3
import time

import pytest

from .console_client import Client, add_user
from .test_review_console import Site


def _rows(state, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return db.execute(sql, params).fetchall()


def _trace(site: Site, item: dict, who: str, via: str) -> dict:
    """What the ledger and the item's metadata file hold about one item, with its id, who and via replaced
    by placeholders, so that two items decided alike compare equal."""
    state, item_id = site.state, item["id"]

    def same(text):
        return None if text is None else str(text).replace(item_id, "ITEM").replace(who, "WHO").replace(via, "VIA")

    (row,) = _rows(state, "SELECT state, remote IS NOT NULL, key IS NOT NULL FROM quarantine WHERE id=?", item_id)
    files = _rows(state, "SELECT action, verdict, reason LIKE '%allowlisted%' FROM files WHERE sha256=?",
                  item["sha256"])  # fmt: skip
    decisions = _rows(state, "SELECT decision, who, via, outcome, note FROM decisions WHERE item=? ORDER BY id",
                      item_id)  # fmt: skip
    history = _rows(state, "SELECT line FROM item_history WHERE item=? ORDER BY id", item_id)
    moves = _rows(state, "SELECT kind, step, method, note FROM moves WHERE item=? ORDER BY id", item_id)
    followups = _rows(state, "SELECT action, target, state FROM followups WHERE item=? ORDER BY id", item_id)
    allowlisted = _rows(state, "SELECT count(*) FROM allowlist WHERE sha256=?", item["sha256"])[0][0]
    meta = json.loads((site.quarantine / "items" / item_id / "meta.json").read_text())
    return {
        "item": row,
        "files": files,
        "decisions": [tuple(same(v) for v in d) for d in decisions],
        "history": [same(line) for (line,) in history],
        "meta_history": [same(h["state"]) for h in meta["history"] if "n" in h],
        "meta_state": meta["state"],
        "moves": moves,
        "followups": followups,
        "allowlisted": allowlisted,
    }


def _times(site: Site, item_id: str) -> list[float]:
    """When each decision and each line of history after the quarantine was recorded."""
    return [t for (t,) in _rows(site.state, "SELECT at FROM decisions WHERE item=?", item_id)] + [
        t for (t,) in _rows(site.state, "SELECT at FROM item_history WHERE item=? AND line != 'quarantined'", item_id)
    ]


@pytest.fixture
def site(tmp_path, s3, tiny_bundle_master, flag_all):
    return Site(tmp_path, s3, tiny_bundle_master, flag_all, count=7)


def test_the_shell_and_the_console_leave_the_same_rows_and_history(site, tmp_path):
    add_user(site.people, "alice", tmp_path)
    token = site.people("console", "token", "create", "nightly").stdout.strip()
    items = site.items()
    shell = f"{getpass.getuser()} (shell)"
    by_shell = {"restore": items["pic-0.png"], "confirm": items["pic-2.png"], "purge": items["pic-4.png"]}
    by_console = {"restore": items["pic-1.png"], "confirm": items["pic-3.png"], "purge": items["pic-5.png"]}

    started = time.time()
    assert site.cli("quarantine", "restore", by_shell["restore"]["id"]).returncode == 0
    assert site.cli("quarantine", "confirm", by_shell["confirm"]["id"]).returncode == 0
    purged = site.cli("quarantine", "purge", by_shell["purge"]["id"], "--yes")
    assert purged.returncode == 0, purged.stderr
    server = site.console()
    try:
        alice = Client(server)
        alice.login("alice")
        queue = alice.get("/")
        for decision in ("restore", "confirm"):
            page = alice.post("/decide", {"csrf": queue.csrf(), "decision": decision, "confirmed": "yes",
                                          "item": [by_console[decision]["id"]]})  # fmt: skip
            assert page.status == 200 and "outcome-done" in page.body, page.body
        api = {"Authorization": f"Bearer {token}"}
        answer = Client(server).request("POST", f"/api/items/{by_console['purge']['id']}/purge", headers=api)
        assert answer.status == 200 and answer.json()["outcome"] == "done", answer.body
    finally:
        server.stop()
    ended = time.time()

    vias = {"restore": ("alice (local account)", "console"), "confirm": ("alice (local account)", "console"),
            "purge": ("nightly (api token)", "api")}  # fmt: skip
    for decision in ("restore", "confirm", "purge"):
        from_shell = _trace(site, by_shell[decision], shell, "shell")
        from_console = _trace(site, by_console[decision], *vias[decision])
        assert from_shell == from_console, decision
        # Who, via what: named in the decision and in the history, the same words in the ledger and meta.json.
        assert from_shell["decisions"] == [(decision, "WHO", "VIA", "done", None)], from_shell
        assert f"{decision} by WHO via VIA" in from_shell["history"], from_shell
        assert from_shell["meta_history"] == from_shell["history"]
        for item in (by_shell[decision], by_console[decision]):  # when: during the commands, in order
            times = _times(site, item["id"])
            assert times and all(started <= t <= ended for t in times), (decision, times)

    restored = _trace(site, by_shell["restore"], shell, "shell")
    assert restored["item"][0] == "restored" and restored["allowlisted"] == 1 and restored["meta_state"] == "restored"
    assert restored["history"] == ["quarantined", "restored", "restore by WHO via VIA"]
    assert [m[:2] for m in restored["moves"]] == [("quarantine", "done"), ("restore", "done")]
    assert restored["files"] == [("restored", "clean", 1)]
    confirmed = _trace(site, by_shell["confirm"], shell, "shell")
    assert confirmed["item"][0] == "quarantined" and confirmed["history"] == ["quarantined", "confirm by WHO via VIA"]
    gone = _trace(site, by_shell["purge"], shell, "shell")
    assert gone["item"][0] == "purged" and gone["history"] == ["quarantined", "purged", "purge by WHO via VIA"]
    for item in (by_shell["purge"], by_console["purge"]):
        assert not (site.quarantine / "items" / item["id"] / "data").exists()
    # Both restores put the object back in the bucket.
    for key in ("pic-0.png", "pic-1.png"):
        assert site.s3.get(key) == site.objects[key]


def test_a_decision_the_state_forbids_is_refused_alike(site, tmp_path):
    """The transition table decides once whether an item may be restored, confirmed or purged: the same
    refusal, in the same words, whichever way it is asked; nothing is recorded for it."""
    add_user(site.people, "alice", tmp_path)
    token = site.people("console", "token", "create", "nightly").stdout.strip()
    item = site.items()["pic-0.png"]
    assert site.cli("quarantine", "purge", item["id"], "--yes").returncode == 0
    decisions_before = _rows(site.state, "SELECT count(*) FROM decisions")
    shell = site.cli("quarantine", "restore", item["id"])
    assert shell.returncode == 2 and "is purged" in shell.stderr, shell.stderr
    server = site.console()
    try:
        answer = Client(server).request("POST", f"/api/items/{item['id']}/restore",
                                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert answer.status == 409 and f"item {item['id']} is purged, not quarantined" in answer.json()["detail"]
        again = Client(server).request("POST", f"/api/items/{item['id']}/purge",
                                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert again.status == 409 and f"item {item['id']} is purged, not purgeable" in again.json()["detail"]
    finally:
        server.stop()
    assert _rows(site.state, "SELECT count(*) FROM decisions") == decisions_before
