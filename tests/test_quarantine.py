"""Quarantine and restore through the real CLI: metadata, privacy, restore safety, allowlist, reindex,
purge, and SIGKILL at every step of both state machines."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from .conftest import run_cli
from .mediafiles import image_bytes

QUARANTINE_STEPS = ["intent", "copied", "placed", "local_removed", "done"]
RESTORE_STEPS = ["intent", "copied", "placed", "done"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Site:
    """A mirror, its state database and its quarantine, driven through the CLI."""

    def __init__(self, base: Path, bundle: Path) -> None:
        self.base, self.bundle = base, bundle
        self.tree, self.state, self.quarantine = base / "mirror", base / "state.db", base / "quarantine"
        self.env: dict[str, str] = {}
        self.identity: Path | None = None

    def seal(self, key_file: Path) -> None:
        """New items sealed (store/sealing.py): every command gets the public key; only the ways out (restore,
        extract) get the identity, so recovery and the quarantining commands run without it."""
        from mirror_scan.store.sealing import generate_identity

        self.env = {"MIRROR_SCAN_SEAL_TO": generate_identity(key_file)}
        self.identity = key_file

    def cli(self, *args: str, env: dict | None = None):
        env = {**self.env, **(env or {})}
        if self.identity is not None and args[:2] in (("quarantine", "restore"), ("quarantine", "extract")):
            env["MIRROR_SCAN_SEAL_IDENTITY"] = str(self.identity)
        if args[0] == "report":  # read-only: no quarantine involved
            return run_cli(*args, "--state", str(self.state), env=env)
        return run_cli(*args, "--state", str(self.state), "--quarantine", str(self.quarantine), env=env)

    def scan(self, *args: str):
        return self.cli("scan", str(self.tree), "--model", str(self.bundle), *args)

    def items(self) -> list[dict]:
        proc = self.cli("quarantine", "list", "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def meta(self, item_id: str) -> dict:
        return json.loads((self.quarantine / "items" / item_id / "meta.json").read_text())


@pytest.fixture
def site(tmp_path, tiny_bundle_master) -> Site:
    s = Site(tmp_path / "site", tiny_bundle_master)
    (s.tree / "01" / "a2").mkdir(parents=True)
    (s.tree / "01" / "a2" / "3f40a5580bd6.webp").write_bytes(image_bytes("WEBP", 1))
    (s.tree / "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d").write_bytes(image_bytes("JPEG", 2))
    (s.tree / "name with space.png").write_bytes(image_bytes("PNG", 3))
    (s.tree / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    return s


def originals(site: Site) -> dict[str, bytes]:
    return {str(p.relative_to(site.tree)): p.read_bytes() for p in site.tree.rglob("*") if p.is_file()}


def test_flag_everything_scan_quarantines_every_readable_file_with_metadata(site):
    before = originals(site)
    proc = site.scan("--severity=-1", "--json")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["flagged"] == 3
    assert sorted(str(p.relative_to(site.tree)) for p in site.tree.rglob("*") if p.is_file()) == ["broken.jpg"]
    items = site.items()
    assert len(items) == 3 and {i["state"] for i in items} == {"quarantined"}
    by_original = {}
    for item in items:
        meta = site.meta(item["id"])
        data = (site.quarantine / "items" / item["id"] / "data").read_bytes()
        rel = base64.b64decode(meta["original_b64"]).decode()
        by_original[rel] = meta
        assert data == before[rel] and meta["sha256"] == sha(data) and meta["size"] == len(data)
        assert meta["mirror_root"] == str(site.tree) and meta["original"] == rel
        assert meta["verdict"]["flagged"] and "csam" in meta["verdict"]["labels"]
        assert meta["verdict"]["checks"]["csam_predicates"][0]["margin"] > 0
        assert meta["model_id"].startswith("tiny-test/none@") and meta["policy_id"].startswith("horde-v2@")
        assert meta["severity"] == -1.0 and meta["state"] == "quarantined" and meta["quarantined_at"]
        assert isinstance(meta["mtime_ns"], int)
    assert set(by_original) == {
        "01/a2/3f40a5580bd6.webp",
        "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "name with space.png",
    }
    # Private from creation: every directory 0700, every file 0600; nothing carries an extension.
    for path in [site.quarantine, *site.quarantine.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert {p.name for p in (site.quarantine / "items").rglob("*") if p.is_file()} == {"data", "meta.json"}
    # Item locks (empty, named by item id) are the only other files: no content, no extension.
    locks = [p for p in (site.quarantine / "locks").iterdir()]
    assert locks and all(p.stat().st_size == 0 and (site.quarantine / "items" / p.name).is_dir() for p in locks)
    listing = site.cli("quarantine", "list")
    assert "3 item(s)" in listing.stdout and "csam" in listing.stdout


def test_restore_is_byte_identical_allowlists_and_is_not_flagged_again(site):
    before = originals(site)
    mtime = (site.tree / "name with space.png").stat().st_mtime_ns
    site.scan("--severity=-1", "--quiet")
    item = next(i for i in site.items() if i["original"].endswith("name with space.png"))
    proc = site.cli("quarantine", "restore", item["id"])
    assert proc.returncode == 0, proc.stderr
    restored = site.tree / "name with space.png"
    assert restored.read_bytes() == before["name with space.png"]
    assert restored.stat().st_mtime_ns == mtime
    allow = json.loads(site.cli("allowlist", "list", "--json").stdout)
    assert [a["sha256"] for a in allow] == [sha(before["name with space.png"])]
    # The next scan flags nothing, not even with every threshold crossable.
    summary = json.loads(site.scan("--severity=-1", "--json").stdout)
    assert summary["flagged"] == 0
    assert restored.exists()
    # Touched (read again, same bytes): still never flagged.
    os.utime(restored, ns=(1, 1))
    assert json.loads(site.scan("--severity=-1", "--json").stdout)["flagged"] == 0
    assert site.meta(item["id"])["state"] == "restored"
    proc = site.cli("quarantine", "restore", item["id"])
    assert proc.returncode == 2 and "is restored, not quarantined" in proc.stderr


def test_restore_refuses_collisions_and_unsafe_targets(site, tmp_path):
    site.scan("--severity=-1", "--quiet")
    items = {i["original"].rsplit("/", 1)[-1]: i["id"] for i in site.items()}
    # A different file now sits at the original path: refuse, say so, point to --to.
    target = site.tree / "name with space.png"
    target.write_bytes(b"someone else's file")
    proc = site.cli("quarantine", "restore", items["name with space.png"])
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--to" in proc.stderr
    assert target.read_bytes() == b"someone else's file"
    elsewhere = tmp_path / "elsewhere.png"
    assert site.cli("quarantine", "restore", items["name with space.png"], "--to", str(elsewhere)).returncode == 0
    assert sha(elsewhere.read_bytes()) == site.meta(items["name with space.png"])["sha256"]

    # Tampered metadata: the ledger is the authority, so a metadata file that disagrees is refused; a
    # reindex keeps the ledger's record; and a ledger rebuilt from the metadata files (after losing it)
    # does not import '..' or absolute paths: nothing is ever written outside the mirror root.
    item = items["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"]
    meta_path = site.quarantine / "items" / item / "meta.json"
    meta = json.loads(meta_path.read_text())
    for evil, message in ((b"../escaped.png", "'..'"), (b"/etc/evil.png", "absolute")):
        os.chmod(meta_path, 0o600)
        meta_path.write_text(json.dumps({**meta, "original_b64": base64.b64encode(evil).decode()}))
        proc = site.cli("quarantine", "restore", item)
        assert proc.returncode == 2, proc.stderr
        assert "disagrees with the ledger on original" in proc.stderr or "no restorable quarantine item" in proc.stderr
        proc = site.cli("quarantine", "reindex")
        assert proc.returncode == 0 and ("disagrees with the ledger on original" in proc.stderr
                                         or message in proc.stderr), proc.stderr  # fmt: skip
        proc = site.cli("state", "rebuild", "--yes")
        assert proc.returncode == 0 and f"{item}: stored path" in proc.stderr and message in proc.stderr, proc.stderr
        proc = site.cli("quarantine", "restore", item)
        assert proc.returncode == 2 and "no restorable quarantine item" in proc.stderr, proc.stderr
    assert not (site.base / "escaped.png").exists() and not Path("/etc/evil.png").exists()
    meta_path.write_text(json.dumps(meta))  # the true metadata back: the lost item is indexed again
    assert site.cli("quarantine", "reindex").returncode == 0

    # A symlinked parent directory is never written through.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(site.tree / "01")
    os.symlink(outside, site.tree / "01")
    proc = site.cli("quarantine", "restore", items["3f40a5580bd6.webp"])
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert list(outside.iterdir()) == []


def test_tampered_quarantine_bytes_are_not_restored(site):
    site.scan("--severity=-1", "--quiet")
    item = site.items()[0]
    data = site.quarantine / "items" / item["id"] / "data"
    original = data.read_bytes()
    data.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # one byte changed, whatever it was
    proc = site.cli("quarantine", "restore", item["id"])
    assert proc.returncode == 2 and "do not match their recorded sha256" in proc.stderr
    assert not (site.tree / site.meta(item["id"])["original"]).exists()


def test_reindex_rebuilds_the_index_after_losing_the_database(site):
    site.scan("--severity=-1", "--quiet")
    before = sorted((i["id"], i["sha256"], i["original"]) for i in site.items())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.state}{suffix}").unlink(missing_ok=True)
    # The database gone, the listing says so and how to rebuild it (issue 45: never "0 item(s)").
    lost = site.cli("quarantine", "list", "--json")
    assert lost.returncode == 2 and "does not exist" in lost.stderr and "quarantine reindex" in lost.stderr
    proc = site.cli("quarantine", "reindex")
    assert proc.returncode == 0 and "indexed 3 item(s)" in proc.stdout
    assert sorted((i["id"], i["sha256"], i["original"]) for i in site.items()) == before
    # And restore works from the rebuilt index.
    assert site.cli("quarantine", "restore", before[0][0]).returncode == 0


def test_purge_asks_first_and_export_hashes(site):
    site.scan("--severity=-1", "--quiet")
    items = site.items()
    hashes = site.cli("quarantine", "export-hashes").stdout.split()
    assert sorted(hashes) == sorted(i["sha256"] for i in items)
    csv_lines = site.cli("quarantine", "export-hashes", "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "sha256,size,quarantined_at" and len(csv_lines) == 4
    # Without --yes it asks; answering no (no input) deletes nothing.
    proc = site.cli("quarantine", "purge", items[0]["id"])
    assert proc.returncode == 1 and (site.quarantine / "items" / items[0]["id"] / "data").exists()
    proc = site.cli("quarantine", "purge", "--older-than", "90d", "--yes")
    assert "nothing to purge" in proc.stdout
    proc = site.cli("quarantine", "purge", items[0]["id"], "--yes")
    assert proc.returncode == 0 and "purged 1" in proc.stdout
    assert not (site.quarantine / "items" / items[0]["id"] / "data").exists()
    assert site.meta(items[0]["id"])["state"] == "purged"
    assert site.cli("quarantine", "purge", "--older-than", "soon").returncode == 2


def test_allowlist_commands(site):
    site.scan("--dry-run", "--severity=-1", "--quiet")
    flagged = [json.loads(line) for line in site.cli("report", "--flagged").stdout.splitlines()]
    assert len(flagged) == 3
    assert site.cli("allowlist", "add", flagged[0]["sha256"], "--note", "our logo").returncode == 0
    assert len(site.cli("report", "--flagged").stdout.splitlines()) == 2
    assert "our logo" in site.cli("allowlist", "list").stdout
    assert site.cli("allowlist", "add", "not-a-hash").returncode == 2
    assert site.cli("allowlist", "remove", flagged[0]["sha256"]).returncode == 0
    assert site.cli("allowlist", "remove", flagged[0]["sha256"]).returncode == 2


def test_quarantine_on_another_filesystem(tmp_path, tiny_bundle_master):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here")
    site = Site(tmp_path / "site", tiny_bundle_master)
    site.tree.mkdir(parents=True)
    (site.tree / "a.png").write_bytes(image_bytes("PNG", 5))
    site.quarantine = Path(shm / f"mirror-scan-test-{os.getpid()}-{tmp_path.name}")
    try:
        site.scan("--severity=-1", "--quiet")
        (item,) = site.items()
        assert (site.quarantine / "items" / item["id"] / "data").read_bytes() == image_bytes("PNG", 5)
        assert not (site.tree / "a.png").exists()
        assert site.cli("quarantine", "restore", item["id"]).returncode == 0
        assert (site.tree / "a.png").read_bytes() == image_bytes("PNG", 5)
    finally:
        shutil.rmtree(site.quarantine, ignore_errors=True)


# ----------------------------------------------------------------------------- SIGKILL at every step


def _assert_nothing_lost(site: Site, expected: dict[str, bytes]) -> None:
    """Every file byte-identical at its original place or in the quarantine (never nowhere, never
    half-written); no temp files; no unfinished move."""
    stored = {}
    for item_dir in (site.quarantine / "items").iterdir():
        if (item_dir / "data.age").exists():  # sealed: opened here with the admin's identity
            assert site.identity is not None and not (item_dir / "data").exists(), "a sealed item's plaintext left"
            meta = json.loads((item_dir / "meta.json").read_text())
            data = _decrypt(site.identity, item_dir / "data.age")
            assert sha(data) == meta["sha256"] and meta["sealed"]["sha256"] == sha((item_dir / "data.age").read_bytes())
            stored[sha(data)] = data
        elif (item_dir / "data").exists():
            assert site.identity is None, "a sealed quarantine holds an item in the clear"
            meta = json.loads((item_dir / "meta.json").read_text())
            data = (item_dir / "data").read_bytes()
            assert sha(data) == meta["sha256"], "half-written quarantine copy"
            stored[sha(data)] = data
    for rel, data in expected.items():
        path = site.tree / rel
        in_place = path.exists() and path.read_bytes() == data
        assert in_place or sha(data) in stored, f"{rel} is nowhere"
        if path.exists():
            assert path.read_bytes() == data, f"{rel} is half-written"
    leftovers = [p for p in [*site.quarantine.rglob("*"), *site.tree.rglob("*")] if p.name.endswith(".tmp")]
    assert leftovers == []
    with sqlite3.connect(site.state) as db:
        assert db.execute("SELECT count(*) FROM moves WHERE step NOT IN ('done', 'rolled_back')").fetchone()[0] == 0


def _decrypt(identity: Path, sealed: Path) -> bytes:
    import pyrage

    key = next(line for line in identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    return pyrage.decrypt(sealed.read_bytes(), [pyrage.x25519.Identity.from_str(key)])


@pytest.fixture(params=["plain", "sealed"])
def flagged_site(request, site) -> tuple[Site, dict[str, bytes], Path]:
    """A dry-run scan that flagged every readable file, saved as a template to reset from; the quarantine
    sealed (seal_to) or not."""
    if request.param == "sealed":
        site.seal(site.base.parent / "quarantine-key.txt")
    site.scan("--dry-run", "--severity=-1", "--quiet")
    template = site.base.with_name("template")
    shutil.copytree(site.base, template, symlinks=True)
    expected = {k: v for k, v in originals(site).items() if k != "broken.jpg"}
    return site, expected, template


def _reset(site: Site, template: Path) -> None:
    shutil.rmtree(site.base)
    shutil.copytree(template, site.base, symlinks=True)


@pytest.mark.parametrize("step", QUARANTINE_STEPS)
def test_sigkill_during_quarantine_loses_nothing(flagged_site, step):
    site, expected, template = flagged_site
    _reset(site, template)
    proc = site.cli("apply", env={"MIRROR_SCAN_KILL_AT": f"quarantine:{step}"})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    # Reads change nothing; any next writing command recovers first.
    assert site.cli("quarantine", "list").returncode == 0
    recovery = site.cli("state", "recover")
    assert recovery.returncode == 0, recovery.stderr
    _assert_nothing_lost(site, expected)
    # And the work can simply continue.
    assert site.cli("apply").returncode == 0
    _assert_nothing_lost(site, expected)
    assert [p.name for p in site.tree.rglob("*") if p.is_file()] == ["broken.jpg"]
    assert len([i for i in site.items() if i["state"] == "quarantined"]) == len(expected)


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_sigkill_during_restore_loses_nothing(flagged_site, step):
    site, expected, template = flagged_site
    _reset(site, template)
    assert site.cli("apply").returncode == 0
    item = next(i for i in site.items() if i["original"].endswith("name with space.png"))
    proc = site.cli("quarantine", "restore", item["id"], env={"MIRROR_SCAN_KILL_AT": f"restore:{step}"})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    assert site.cli("state", "recover").returncode == 0
    _assert_nothing_lost(site, expected)
    state = next(i for i in site.items() if i["id"] == item["id"])["state"]
    if state != "restored":  # rolled back: restoring again completes it
        assert state == "quarantined"
        assert site.cli("quarantine", "restore", item["id"]).returncode == 0
    assert (site.tree / "name with space.png").read_bytes() == expected["name with space.png"]
    assert sha(expected["name with space.png"]) in site.cli("allowlist", "list").stdout
    _assert_nothing_lost(site, expected)


def test_list_since_filters_by_date_and_duration(site):
    site.scan("--severity=-1", "--quiet")
    assert len(json.loads(site.cli("quarantine", "list", "--since", "1h", "--json").stdout)) == 3
    assert json.loads(site.cli("quarantine", "list", "--since", "2999-01-01", "--json").stdout) == []
    proc = site.cli("quarantine", "list", "--since", "last tuesday")
    assert proc.returncode == 2 and "is not a date" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the lifecycle under attack


def _one_item(site: Site) -> dict:
    site.scan("--severity=-1", "--quiet")
    return next(i for i in site.items() if i["original"].endswith("name with space.png"))


def test_a_restore_that_recovery_finishes_records_who_asked_for_it(site):
    item = _one_item(site)
    proc = site.cli("quarantine", "restore", item["id"], env={"MIRROR_SCAN_KILL_AT": "restore:placed"})
    assert proc.returncode == -9
    assert site.cli("state", "recover").returncode == 0
    shown = json.loads(site.cli("quarantine", "show", item["id"], "--json").stdout)
    assert shown["ledger"]["state"] == "restored"
    assert [(d["decision"], d["via"], d["outcome"]) for d in shown["decisions"]] == [("restore", "shell", "done")]
    assert any(h["state"].startswith("restore by ") and h["state"].endswith("via shell") for h in shown["history"])


def test_a_purge_cut_short_after_it_was_recorded_is_finished_by_recovery(site):
    item = _one_item(site)
    proc = site.cli("quarantine", "purge", item["id"], "--yes", env={"MIRROR_SCAN_KILL_AT": "purge:recorded"})
    assert proc.returncode == -9
    assert (site.quarantine / "items" / item["id"] / "data").exists()  # recorded purged, bytes still there
    assert site.cli("state", "recover").returncode == 0
    assert not (site.quarantine / "items" / item["id"] / "data").exists()
    assert next(i for i in site.items() if i["id"] == item["id"])["state"] == "purged"


def test_metadata_a_crash_left_behind_the_ledger_catches_up_at_recovery(site):
    item = _one_item(site)
    proc = site.cli("quarantine", "restore", item["id"], env={"MIRROR_SCAN_KILL_AT": "meta:sync#2"})
    assert proc.returncode == -9  # killed between the restore's last commit and its meta.json
    assert site.meta(item["id"])["state"] != "restored"
    assert site.cli("state", "recover").returncode == 0
    meta = site.meta(item["id"])
    assert meta["state"] == "restored" and [h["state"] for h in meta["history"]][-2:] == [
        "restored", f"restore by {meta['history'][-1]['state'].split(' by ', 1)[1]}"]  # fmt: skip


def test_edited_metadata_never_crashes_a_decision_nor_the_next_writer(site):
    site.scan("--severity=-1", "--quiet")
    forged, odd = site.items()[:2]
    meta = site.meta(forged["id"])
    meta["history"] = [*meta["history"], {"state": "x", "at": "2026-01-01T00:00:00+00:00", "n": [1]},
                       {"state": ["not", "text"], "at": 3, "n": 2}]  # fmt: skip
    (site.quarantine / "items" / forged["id"] / "meta.json").write_text(json.dumps(meta))
    (site.quarantine / "items" / odd["id"] / "meta.json").write_text("[1, 2, 3]")
    for args in (("quarantine", "confirm", forged["id"]), ("quarantine", "show", odd["id"], "--json"),
                 ("quarantine", "confirm", odd["id"]), ("state", "recover")):  # fmt: skip
        proc = site.cli(*args)
        assert "Traceback" not in proc.stderr + proc.stdout, (args, proc.stderr)
    restore = site.cli("quarantine", "restore", odd["id"])
    assert restore.returncode == 2 and "not a JSON object" in restore.stderr
    assert site.cli("quarantine", "restore", forged["id"]).returncode == 0  # its facts agree: restored
    assert site.meta(forged["id"])["state"] == "restored"


def test_a_restore_temp_left_by_a_lost_journal_is_replaced_not_fatal(site):
    item = _one_item(site)
    target = site.tree / "name with space.png"
    leftover = target.with_name(".name with space.png.mirror-scan-restore.partial")
    leftover.write_bytes(b"half of it")  # a restore killed at 'copied' whose ledger was then rebuilt
    proc = site.cli("quarantine", "restore", item["id"])
    assert proc.returncode == 0, proc.stderr
    assert not leftover.exists() and target.exists()


def test_a_flagged_file_whose_quarantine_was_rolled_back_is_acted_on_by_the_next_scan(site):
    """A kill before 'placed' rolls the move back: the file stays in the mirror, flagged, no action. The next
    scan (or the daemon) finds it unchanged and acts on it, as `apply` would, instead of leaving it public."""
    proc = site.cli("scan", str(site.tree), "--model", str(site.bundle), "--severity=-1", "--quiet",
                    env={"MIRROR_SCAN_KILL_AT": "quarantine:copied"})  # fmt: skip
    assert proc.returncode == -9
    assert site.cli("state", "recover").returncode == 0
    stranded = [p for p in site.tree.rglob("*") if p.is_file() and p.name != "broken.jpg"]
    assert stranded  # the rolled-back one (and those not reached) are still in the mirror, flagged or not
    summary = json.loads(site.scan("--severity=-1", "--json").stdout)
    assert summary["quarantined"] >= 1 and summary["skipped_unchanged"] >= 1, summary
    assert [p.name for p in site.tree.rglob("*") if p.is_file()] == ["broken.jpg"]
    assert {i["state"] for i in site.items()} == {"quarantined"} and len(site.items()) == 3
