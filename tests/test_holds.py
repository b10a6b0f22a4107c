"""Legal holds (issue 42, its first part): a held item survives every purge, the daily timer's selection
included, and says until when; its hold's end (expiry or a release, with who and why) lets it go. Through
the real CLI; verdicts driven by the policy (a group named csam labels every picture csam)."""

from __future__ import annotations

import json
import time

from mirror_scan.store.holds import DAY_S, hold_on

from .conftest import run_cli
from .mediafiles import image_bytes


def test_the_hold_rules():
    now = 1_000_000.0
    assert hold_on(now - 10 * DAY_S, ["csam"], None, ("csam",), 365, now).until == now + 355 * DAY_S
    assert hold_on(now - 400 * DAY_S, ["csam"], None, ("csam",), 365, now) is None  # its year is over
    assert hold_on(now, ["nsfw"], None, ("csam",), 365, now) is None
    explicit = (None, "report 7", "ana", now - 5)
    assert hold_on(now, [], explicit, (), 365, now).until is None  # until released
    released = (now - 1, "released: closed", "ana", now - 1)  # until == at: a release
    assert hold_on(now, ["csam"], released, ("csam",), 365, now) is None  # it ends the configured hold too
    expired = (now - 1, "30 days", "ana", now - 40 * DAY_S)
    assert hold_on(now, ["csam"], expired, ("csam",), 365, now).until == now + 365 * DAY_S  # the label's holds


def _held_site(tmp_path, bundle, write_policy, config: str = "") -> tuple[tuple[str, ...], dict]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.png").write_bytes(image_bytes("PNG", 5))
    policy = write_policy({"csam": {"cartoon": -1.0}}, {"csam": 1}, name="all-csam")
    (tmp_path / "config.toml").write_text(config)
    where = ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"), "--config",
             str(tmp_path / "config.toml"))  # fmt: skip
    proc = run_cli("scan", str(mirror), "--model", str(bundle), "--policy", str(policy), *where)
    assert proc.returncode == 1, proc.stderr
    (item,) = json.loads(run_cli("quarantine", "list", "--json", *where).stdout)
    return where, item


def test_a_held_item_survives_every_purge_until_its_hold_ends(tmp_path, tiny_bundle_master, write_policy):
    where, item = _held_site(tmp_path, tiny_bundle_master, write_policy)
    assert run_cli("quarantine", "hold", item["id"], *where).returncode == 2  # a hold needs a reason
    held = run_cli("quarantine", "hold", item["id"], "--why", "CyberTipline report 123", "--until", "2s", *where)
    assert held.returncode == 0 and "held until" in held.stdout, held
    timer = run_cli("quarantine", "purge", "--older-than", "0s", "--yes", *where)  # the timer's selection
    assert timer.returncode == 0 and f"kept {item['id']}: held until" in timer.stdout, timer
    assert "CyberTipline report 123" in timer.stdout and "nothing to purge" in timer.stdout
    named = run_cli("quarantine", "purge", item["id"], "--yes", *where)
    assert named.returncode == 2 and "is held until" in named.stderr and "quarantine release" in named.stderr
    assert (tmp_path / "q" / "items" / item["id"] / "data").exists()
    time.sleep(2.2)  # the hold's end lets it go
    gone = run_cli("quarantine", "purge", "--older-than", "0s", "--yes", *where)
    assert gone.returncode == 0 and "purged 1 item(s)" in gone.stdout, gone
    history = [
        h["state"] for h in json.loads(run_cli("quarantine", "show", item["id"], "--json", *where).stdout)["history"]
    ]
    assert any(line.startswith("held until") and "CyberTipline report 123" in line for line in history), history


def test_the_configured_hold_keeps_a_label_and_a_release_ends_it_with_who_and_why(
    tmp_path, tiny_bundle_master, write_policy
):
    where, item = _held_site(tmp_path, tiny_bundle_master, write_policy, '[scan]\nhold_labels = ["csam"]\n')
    kept = run_cli("quarantine", "purge", "--older-than", "0s", "--yes", *where)
    assert kept.returncode == 0 and "the configured hold of csam items, 365 days" in kept.stdout, kept
    shown = json.loads(run_cli("quarantine", "show", item["id"], "--json", *where).stdout)
    assert shown["hold"]["until"] > time.time() + 364 * 86400, shown["hold"]
    assert run_cli("quarantine", "release", item["id"], *where).returncode == 2  # a release needs a reason
    released = run_cli("quarantine", "release", item["id"], "--why", "not reportable after review", *where)
    assert released.returncode == 0, released.stderr
    gone = run_cli("quarantine", "purge", item["id"], "--yes", *where)
    assert gone.returncode == 0, gone.stderr
    history = [
        h["state"] for h in json.loads(run_cli("quarantine", "show", item["id"], "--json", *where).stdout)["history"]
    ]
    assert any("hold released by" in line and "not reportable after review" in line for line in history), history


def test_a_reported_item_is_held_a_year_and_the_console_says_so(tmp_path, tiny_bundle_master, write_policy):
    from .console_client import signed_in

    where, item = _held_site(tmp_path, tiny_bundle_master, write_policy)
    reported = run_cli("quarantine", "reported", item["id"], "--reference", "CT-987654", *where)
    assert reported.returncode == 0 and "reported to NCMEC CyberTipline, reference CT-987654" in reported.stdout
    shown = json.loads(run_cli("quarantine", "show", item["id"], "--json", *where).stdout)
    assert 364 * 86400 < shown["hold"]["until"] - time.time() <= 365 * 86400, shown["hold"]
    assert any("reference CT-987654" in h["state"] for h in shown["history"])
    with signed_in(tmp_path / "s.db", tmp_path / "q", tmp_path) as ana:
        page = ana.get(f"/items/{item['id']}")
        assert 'id="hold"' in page.body and "reference CT-987654" in page.body, page.body
        # The queue lists what is held, and who reported it (the hold says it).
        held = ana.get("/?state=on_hold")
        assert item["short_id"] in held.body and 'class="held"' in held.body, held.body
        assert "reference CT-987654; by" in held.body
        assert item["short_id"] not in ana.get("/?state=restored").body


def test_a_report_package_holds_what_its_text_names_privately_and_changes_only_the_history(
    tmp_path, tiny_bundle_master, write_policy
):
    """The attribution is the shape moderation/attribution.py assembles (its _assemble), stored as a
    lookup would store it: the report's text names the uploader, the post and its community from it."""
    import hashlib
    import stat

    from mirror_scan.store.ledger import Ledger

    where, item = _held_site(tmp_path, tiny_bundle_master, write_policy)
    attribution = {
        "aliases": ["abc.png"],
        "uploads": [{"alias": "abc.png", "uploaded_at": "2026-12-01T10:00:00Z", "thumbnail_for_post_id": None,
                     "uploader": {"id": 7, "name": "spammer", "instance": "bad.example", "account_age_days": 0,
                                  "actor_id": "https://bad.example/u/spammer"}}],
        "posts": [{"id": 42, "title": "hello", "published": "2026-12-01T10:01:00Z", "removed": False, "deleted": False,
                   "uses": ["url"], "link": "https://lemmy.test/post/42",
                   "community": {"name": "pics", "instance": "lemmy.test"}, "creator": None}],
        "comments": [], "private_messages": [], "unknown": [],
    }  # fmt: skip
    with Ledger(tmp_path / "s.db") as ledger:
        ledger.follow_ups.put_attribution(item["id"], attribution)
        ledger.commit()
    data = tmp_path / "q" / "items" / item["id"] / "data"
    before = (data.read_bytes(), json.loads(run_cli("quarantine", "list", "--json", *where).stdout))
    out = tmp_path / "for-ncmec"
    out.mkdir()
    made = run_cli("quarantine", "report", item["id"], "--to", str(out), *where)
    assert made.returncode == 0, made.stderr
    package = out / f"mirror-scan-{item['id']}"
    assert stat.S_IMODE(package.stat().st_mode) == 0o700
    assert sorted(p.name for p in package.iterdir()) == ["a.png", "hashes.txt", "item.json", "report.txt"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in package.iterdir())
    text = (package / "report.txt").read_text()
    sha = hashlib.sha256((package / "a.png").read_bytes()).hexdigest()
    md5 = hashlib.md5((package / "a.png").read_bytes()).hexdigest()  # noqa: S324 - what the form asks for
    for named in ("File name: a.png", f"sha256 {sha}", f"md5 {md5}", "spammer@bad.example",
                  "https://bad.example/u/spammer", "https://lemmy.test/post/42", "!pics@lemmy.test",
                  "2026-12-01T10:00:00Z", "never displayed"):  # fmt: skip
        assert named in text, (named, text)
    assert f"sha256  {sha}" in (package / "hashes.txt").read_text()
    sections = [line for line in text.splitlines() if line[:2] in {f"{n}." for n in range(1, 8)}]
    assert [s.split(".")[0] for s in sections] == [str(n) for n in range(1, 8)], sections  # the form's order
    # The quarantine is unchanged but for the history (and the hold until the report is recorded).
    after = (data.read_bytes(), json.loads(run_cli("quarantine", "list", "--json", *where).stdout))
    assert after == before
    shown = json.loads(run_cli("quarantine", "show", item["id"], "--json", *where).stdout)
    assert shown["hold"] is not None and "held until reported" in shown["hold"]["why"]
