"""The sealed quarantine (issue 42): items sealed at rest to the admin's age public key (seal_to); the
processes that quarantine hold only that key and cannot read what they sealed; restore, extract and
report open an item with the identity and check its sha256; a wrong identity changes nothing; `quarantine
seal` seals a quarantine made in the clear and survives kill -9 at each of its steps. Through the real CLI,
a real watch daemon and a real S3 server on loopback (`rclone serve s3`). kill -9 at every step of a
sealed quarantine and restore: tests/test_quarantine.py (flagged_site is sealed and plain)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pyrage
import pytest

from mirror_scan.store.sealing import Identity, Sealer, SealError, generate_identity, write_new_bytes

from .conftest import run_cli
from .mediafiles import image_bytes
from .s3server import S3Server


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _secret(key_file: Path) -> pyrage.x25519.Identity:
    line = next(x for x in key_file.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-"))
    return pyrage.x25519.Identity.from_str(line)


class Site:
    """A mirror, state and quarantine sealed to a key made by `quarantine keygen`; the quarantining commands
    get only the public key, through the environment as a daemon's unit would set it."""

    def __init__(self, tmp: Path, bundle: Path, policy: Path) -> None:
        self.tmp, self.bundle, self.policy = tmp, bundle, policy
        self.mirror = tmp / "mirror"
        self.mirror.mkdir()
        self.key = tmp / "admin" / "quarantine-key.txt"
        self.key.parent.mkdir(mode=0o700)
        made = run_cli("quarantine", "keygen", "--out", str(self.key))
        assert made.returncode == 0, made.stderr
        self.recipient = made.stdout.split("Public key: ")[1].split()[0]
        self.env = {"MIRROR_SCAN_SEAL_TO": self.recipient}

    def cli(self, *args: str, env: dict | None = None, **kw):
        return run_cli(*args, "--state", str(self.tmp / "state.db"), "--quarantine", str(self.tmp / "q"),
                       env={**self.env, **(env or {})}, **kw)  # fmt: skip

    def scan(self, *args: str, env: dict | None = None):
        return self.cli("scan", str(self.mirror), "--model", str(self.bundle), "--policy", str(self.policy), *args,
                        env=env)  # fmt: skip

    def items(self) -> list[dict]:
        return json.loads(self.cli("quarantine", "list", "--json").stdout)

    def item_dir(self, item_id: str) -> Path:
        return self.tmp / "q" / "items" / item_id

    def snapshot(self) -> dict:
        """Everything a refused way out must leave as it was: the quarantine's files, the ledger's item rows,
        moves and history, the mirror."""
        files = {str(p.relative_to(self.tmp)): p.read_bytes() for base in (self.tmp / "q" / "items", self.mirror)
                 for p in base.rglob("*") if p.is_file()}  # fmt: skip
        with sqlite3.connect(self.tmp / "state.db") as db:
            tables = ("quarantine", "moves", "item_history", "allowlist")
            rows = [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables]  # noqa: S608
        return {"files": files, "rows": rows}


@pytest.fixture
def site(tmp_path, tiny_bundle_master, flag_all) -> Site:
    return Site(tmp_path, tiny_bundle_master, flag_all)


def test_seal_and_open_round_trip_and_refusals(tmp_path):
    key = tmp_path / "key.txt"
    recipient = generate_identity(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and recipient.startswith("age1")
    with pytest.raises(SealError, match="not overwritten"):
        generate_identity(key)  # never over a key that may be the only one to a quarantine
    data = os.urandom(300_000)
    written = write_new_bytes(data, tmp_path / "x.age", Sealer(recipient))
    sealed = (tmp_path / "x.age").read_bytes()
    assert written.sha256 == sha(data) and written.size == len(data) and written.sealed_sha256 == sha(sealed)
    assert written.md5 == hashlib.md5(data).hexdigest()  # noqa: S324
    assert sealed.startswith(b"age-encryption.org/v1\n") and data[:4096] not in sealed
    assert pyrage.decrypt(sealed, [_secret(key)]) == data  # age's own format: age -d -i opens it too
    identity = Identity.from_file(key)
    assert identity.digest(tmp_path / "x.age") == sha(data)
    opened = identity.open_to(tmp_path / "x.age", tmp_path / "x")
    assert (opened.sha256, opened.md5, opened.size) == (sha(data), written.md5, len(data))
    assert (tmp_path / "x").read_bytes() == data and stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o600
    other = tmp_path / "other.txt"
    generate_identity(other)
    with pytest.raises(SealError, match="sealed to another key"):
        Identity.from_file(other).open_to(tmp_path / "x.age", tmp_path / "y")
    assert not (tmp_path / "y").exists()  # a refused open leaves nothing
    key.chmod(0o644)
    with pytest.raises(SealError, match="readable by others"):
        Identity.from_file(key)
    with pytest.raises(SealError, match="not an age public key"):
        Sealer("age1notakey")
    (tmp_path / "bad.txt").write_text("AGE-SECRET-KEY-1NOPE\n")
    (tmp_path / "bad.txt").chmod(0o600)
    with pytest.raises(SealError, match="holds no age identity"):
        Identity.from_file(tmp_path / "bad.txt")


def test_the_watch_daemon_seals_and_cannot_read_what_it_sealed(site, tiny_bundle_master, flag_all):
    from .test_watch import Watcher

    picture = image_bytes("PNG", 7)
    watcher = Watcher(site.tmp, tiny_bundle_master, flag_all, "--settle", "0.3", env=site.env, mirror=site.mirror)
    try:
        (site.mirror / "pic.png").write_bytes(picture)
        watcher.wait_for(lambda: not (site.mirror / "pic.png").exists(), what="the daemon to quarantine it")
        (item,) = site.items()
        item_dir = site.item_dir(item["id"])
        assert sorted(p.name for p in item_dir.iterdir()) == ["data.age", "meta.json"]  # nothing in the clear
        sealed = (item_dir / "data.age").read_bytes()
        assert picture[64:4160] not in sealed and sha(sealed) == json.loads((item_dir / "meta.json").read_text())[
            "sealed"]["sha256"]  # fmt: skip
        # Everything the daemon's configuration holds: the public key alone opens nothing.
        assert not any(line.startswith("AGE-SECRET-KEY") for line in site.env.values())
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(sealed, [])
        with pytest.raises(Exception):  # noqa: B017 - a recipient is no identity, whatever the library calls it
            pyrage.x25519.Identity.from_str(site.recipient)
        before = site.snapshot()
        for way_out in (("quarantine", "restore", item["id"]), ("quarantine", "extract", item["id"], "--to",
                                                                  str(site.tmp))):  # fmt: skip
            refused = site.cli(*way_out)
            assert refused.returncode != 0 and "no identity" in refused.stderr, refused
            assert "--identity FILE" in refused.stderr
        assert site.snapshot() == before
        # The admin restores while the daemon runs: the daemon's sweep never takes the plaintext from under it.
        restored = site.cli("quarantine", "restore", item["id"], "--identity", str(site.key))
        assert restored.returncode == 0, restored.stderr
        assert (site.mirror / "pic.png").read_bytes() == picture
        watcher.wait_for(lambda: (watcher.status() or {}).get("restores_seen", 0) >= 1, what="the daemon to see it")
        assert sorted(p.name for p in item_dir.iterdir()) == ["data.age", "meta.json"]
    finally:
        code, stderr = watcher.stop()
    assert code == 0, stderr
    assert "AGE-SECRET-KEY" not in stderr


def test_a_wrong_identity_is_refused_clearly_and_changes_nothing(site, tmp_path):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 3))
    assert site.scan().returncode == 1
    (item,) = site.items()
    wrong = tmp_path / "wrong.txt"
    generate_identity(wrong)
    before = site.snapshot()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for way_out in (("restore", item["id"]), ("extract", item["id"], "--to", str(out_dir)),
                    ("report", item["id"], "--to", str(out_dir))):  # fmt: skip
        proc = site.cli("quarantine", *way_out, "--identity", str(wrong))
        assert proc.returncode != 0, proc
        assert f"does not open item {item['id']}: it is sealed to {site.recipient}; nothing changed" in proc.stderr
        assert "AGE-SECRET-KEY" not in proc.stdout + proc.stderr
    assert site.snapshot() == before and list(out_dir.iterdir()) == []
    # The right one opens it: the report package holds the picture, verified, and nothing in the clear stays.
    report = site.cli("quarantine", "report", item["id"], "--to", str(out_dir), "--identity", str(site.key))
    assert report.returncode == 0, report.stderr
    (package,) = out_dir.iterdir()
    assert (package / "a.png").read_bytes() == image_bytes("PNG", 3)
    assert sorted(p.name for p in site.item_dir(item["id"]).iterdir()) == ["data.age", "meta.json"]
    check = site.cli("state", "check", "--identity", str(site.key))
    assert check.returncode == 0 and "1 sealed (decrypted and verified)" in check.stdout, check


@pytest.mark.parametrize("step", ["open:opened", "extract:copied", "extract:noted"])
def test_kill_9_while_a_sealed_item_is_opened_leaves_no_plaintext_and_loses_nothing(site, tmp_path, step):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 4))
    assert site.scan().returncode == 1
    (item,) = site.items()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    way_out = ("restore", item["id"]) if step == "open:opened" else ("extract", item["id"], "--to", str(out_dir))
    killed = site.cli("quarantine", *way_out, "--identity", str(site.key), env={"MIRROR_SCAN_KILL_AT": step})
    assert killed.returncode == -9, killed
    recovered = site.cli("state", "recover")  # as the daemon would: no identity
    assert recovered.returncode == 0, recovered.stderr
    names = sorted(p.name for p in site.item_dir(item["id"]).iterdir())
    assert names == ["data.age", "meta.json"], names
    assert [i["state"] for i in site.items()] == ["quarantined"]
    if step == "extract:noted":  # its history line was written: recovery put the whole copy in place
        assert [p.name for p in out_dir.iterdir()] == [f"mirror-scan-{item['id']}"]
    else:  # never a plaintext copy left in the operator's folder
        assert list(out_dir.iterdir()) == []
        again = site.cli("quarantine", *way_out, "--identity", str(site.key))
        assert again.returncode == 0, again.stderr
    copy = site.mirror / "a.png" if step == "open:opened" else next(out_dir.glob("mirror-scan-*")) / "a.png"
    assert copy.read_bytes() == image_bytes("PNG", 4)


def test_a_bucket_quarantine_sealed_removes_and_restores_upstream_without_reading_back(
    tmp_path, tiny_bundle_master, flag_all, monkeypatch
):
    """The bucket's ETag check needs the plaintext's md5, which the quarantining process recorded while it
    sealed (it cannot read it back); a restore that waits for the bucket keeps its plaintext until a
    process with no identity (the daemon's recovery) finishes it, then only the sealed file stays."""
    s3 = S3Server(tmp_path / "s3-root")
    s3.start()
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    try:
        site = Site(tmp_path, tiny_bundle_master, flag_all)
        objects = {"01/aa/one.png": image_bytes("PNG", 21), "two.jpg": image_bytes("JPEG", 22)}
        for key, data in objects.items():
            s3.put(key, data, tmp_path)
        assert site.cli("mirror", "pull", "--remote", s3.remote, "--to", str(site.mirror)).returncode == 0
        assert site.scan("--dry-run").returncode == 1
        s3.stop()
        applied = site.cli("apply", "--remote", s3.remote)
        assert applied.returncode == 0, applied.stderr
        assert {i["state"] for i in site.items()} == {"upstream_pending"}
        s3.start()
        assert site.cli("state", "recover").returncode == 0  # no identity: the recorded md5 is enough
        assert {i["state"] for i in site.items()} == {"quarantined"} and s3.keys() == set()
        item = next(i for i in site.items() if i["original"].endswith("one.png"))
        s3.stop()
        pending = site.cli("quarantine", "restore", item["id"], "--identity", str(site.key))
        assert pending.returncode == 1 and "pending" in pending.stderr, pending
        assert (site.item_dir(item["id"]) / "data").read_bytes() == objects["01/aa/one.png"]  # kept for the move
        s3.start()
        finished = site.cli("state", "recover")  # no identity: it finishes from the plaintext, then removes it
        assert finished.returncode == 0, finished.stderr
        assert s3.get("01/aa/one.png") == objects["01/aa/one.png"]
        assert sorted(p.name for p in site.item_dir(item["id"]).iterdir()) == ["data.age", "meta.json"]
        assert next(i for i in site.items() if i["id"] == item["id"])["state"] == "restored"
    finally:
        s3.stop()


@pytest.mark.parametrize("step", [None, "seal:written", "seal:recorded", "meta:sync"])
def test_quarantine_seal_seals_a_clear_quarantine_and_survives_kill_9(site, step):
    pictures = {f"p{i}.png": image_bytes("PNG", 30 + i) for i in range(3)}
    for name, data in pictures.items():
        (site.mirror / name).write_bytes(data)
    assert site.scan(env={"MIRROR_SCAN_SEAL_TO": ""}).returncode == 1  # made before sealing was set up
    items = site.items()
    assert all((site.item_dir(i["id"]) / "data").exists() for i in items)
    if step is not None:
        killed = site.cli("quarantine", "seal", "--all", "--yes", env={"MIRROR_SCAN_KILL_AT": step})
        assert killed.returncode == -9, killed
        assert site.cli("state", "recover").returncode == 0
        for i in items:  # one file or the other, as the ledger records it; never neither, never a stray
            names = sorted(p.name for p in site.item_dir(i["id"]).iterdir())
            assert names in (["data", "meta.json"], ["data.age", "meta.json"]), names
    sealed = site.cli("quarantine", "seal", "--all", "--yes")
    assert sealed.returncode == 0, sealed.stderr
    assert site.cli("quarantine", "seal", "--all", "--yes").stdout.strip() == "nothing to seal"
    for i in items:
        assert sorted(p.name for p in site.item_dir(i["id"]).iterdir()) == ["data.age", "meta.json"]
        meta = json.loads((site.item_dir(i["id"]) / "meta.json").read_text())
        assert meta["sealed"]["to"] == site.recipient
        assert any(h["state"].startswith("sealed to age1") for h in meta["history"])
    check = site.cli("state", "check", "--identity", str(site.key))
    assert check.returncode == 0 and "3 sealed (decrypted and verified)" in check.stdout, check
    restored = site.cli("quarantine", "restore", *[i["id"] for i in items], "--identity", str(site.key))
    assert restored.returncode == 0, restored.stderr
    for name, data in pictures.items():
        assert (site.mirror / name).read_bytes() == data


def test_state_check_and_reindex_know_a_sealed_item(site, tmp_path):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 5))
    assert site.scan().returncode == 1
    (item,) = site.items()
    # Lost state database: reindex rebuilds a sealed item from its metadata, without the identity.
    (tmp_path / "state.db").rename(tmp_path / "lost.db")
    rebuilt = site.cli("quarantine", "reindex")
    assert rebuilt.returncode == 0 and "indexed 1 item(s)" in rebuilt.stdout, rebuilt
    assert site.cli("state", "check").returncode == 0
    restored = site.cli("quarantine", "restore", item["id"], "--identity", str(site.key))
    assert restored.returncode == 0, restored.stderr
    # A sealed file tampered with: state check names it; the bytes never go out.
    (site.mirror / "b.png").write_bytes(image_bytes("PNG", 6))
    assert site.scan().returncode == 1
    other = next(i for i in site.items() if i["state"] == "quarantined")
    data_age = site.item_dir(other["id"]) / "data.age"
    data_age.write_bytes(data_age.read_bytes()[:-20] + bytes(20))
    check = site.cli("state", "check")
    assert check.returncode == 2 and f"item {other['id']}: data.age is missing or does not hash" in check.stderr
    refused = site.cli("quarantine", "restore", other["id"], "--identity", str(site.key))
    assert refused.returncode != 0 and not (site.mirror / "b.png").exists()


def test_config_init_seal_makes_the_key_pair_and_sets_it(tmp_path):
    conf = tmp_path / "etc" / "config.toml"
    made = run_cli("config", "init", "--out", str(conf), "--seal")
    assert made.returncode == 0, made.stderr
    key = tmp_path / "etc" / "quarantine-key.txt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    recipient = next(line for line in key.read_text().splitlines() if line.startswith("# public key: "))[14:]
    text = conf.read_text()
    assert f'seal_to = "{recipient}"' in text and f'\n# seal_identity = "{key}"' in text  # never set for all
    shown = json.loads(run_cli("config", "--json", env={"MIRROR_SCAN_CONFIG": str(conf)}).stdout)
    assert shown["seal_to"]["value"] == recipient
    plain = run_cli("config", "init", "--out", str(tmp_path / "plain.toml"), "--no-seal")
    assert plain.returncode == 0 and "\nseal_to" not in (tmp_path / "plain.toml").read_text()


def test_the_console_restores_a_sealed_item_only_with_the_identity(site, tmp_path):
    from .console_client import Client, ConsoleServer, add_user

    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 8))
    assert site.scan().returncode == 1
    (item,) = site.items()
    add_user(lambda *args: run_cli(*args, "--state", str(tmp_path / "state.db")), "ana", tmp_path)

    def restore_through(env: dict) -> str:
        server = ConsoleServer(tmp_path / "state.db", tmp_path / "q", env=env)
        try:
            ana = Client(server)
            assert ana.login("ana").status == 303
            page = ana.get(f"/items/{item['id']}")
            assert page.status == 200 and "sealed" in page.body, page.body
            queue = ana.get("/")
            done = ana.post("/decide", {"csrf": queue.csrf(), "decision": "restore", "item": [item["id"]],
                                        "confirmed": "yes", "note": ""})  # fmt: skip
            assert done.status == 200
            return done.body
        finally:
            server.stop()

    refused = restore_through(site.env)  # the console given only the public key, as the daemon is
    assert "outcome-done" not in refused and "no identity to open it" in refused, refused
    assert not (site.mirror / "a.png").exists() and site.items()[0]["state"] == "quarantined"
    restored = restore_through({**site.env, "MIRROR_SCAN_SEAL_IDENTITY": str(site.key)})
    assert "outcome-done" in restored, restored
    assert (site.mirror / "a.png").read_bytes() == image_bytes("PNG", 8)


def test_selftest_seals_as_the_install_does_and_restores_with_a_key_of_its_own(site):
    proc = run_cli("selftest", "--model", str(site.bundle), env=site.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "restored byte-identical from the quarantine (it was sealed to a test key" in proc.stdout


def test_an_upload_the_validator_rejects_is_kept_sealed(tmp_path):
    """The validator's path (Mover.keep_upload): the rejected bytes are kept sealed, with their md5; its
    release allowlists the sha256 without opening anything."""
    from mirror_scan.store.ledger import Ledger
    from mirror_scan.store.quarantine import Quarantine

    key = tmp_path / "key.txt"
    data = image_bytes("PNG", 9)
    with Ledger(tmp_path / "state.db") as ledger:
        quarantine = Quarantine(tmp_path / "q", ledger)
        quarantine.journal.content.sealer = Sealer(generate_identity(key))
        item_id = quarantine.keep_upload(data, sha(data), {"verdict": {"flagged": True, "labels": ["csam"]}})
        row = ledger.item(item_id)
        item_dir = tmp_path / "q" / "items" / item_id
        assert sorted(p.name for p in item_dir.iterdir()) == ["data.age", "meta.json"]
        assert row.md5 == hashlib.md5(data).hexdigest()  # noqa: S324 - what S3's ETag is
        assert row.sealed_sha256 == sha((item_dir / "data.age").read_bytes())
        assert pyrage.decrypt((item_dir / "data.age").read_bytes(), [_secret(key)]) == data
        assert json.loads((item_dir / "meta.json").read_text())["sealed"]["sha256"] == row.sealed_sha256
        quarantine.restore(item_id)  # a rejected upload is released: allowlisted, nothing opened
        assert sha(data) in {entry[0] for entry in ledger.allowlist()}


def test_a_reader_says_an_older_state_database_needs_a_writer_first(tmp_path):
    """Schema 11 added the sealing columns: a read of a schema 10 database (the daemon not restarted yet)
    says what upgrades it instead of failing on a missing column; a writer upgrades it in place."""
    from mirror_scan.store.ledger import Ledger

    path = tmp_path / "state.db"
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='10' WHERE key='schema_version'")
    read = run_cli("quarantine", "list", "--state", str(path), "--quarantine", str(tmp_path / "q"))
    assert read.returncode != 0 and "older mirror-scan (schema 10" in read.stderr and "state recover" in read.stderr
    assert run_cli("state", "recover", "--state", str(path), "--quarantine", str(tmp_path / "q")).returncode == 0
    assert run_cli("quarantine", "list", "--state", str(path), "--quarantine", str(tmp_path / "q")).returncode == 0


# ----------------------------------------------------------------------------- attacks (a reviewer's, re-run)


def _secret_line(key: Path) -> str:
    return next(x for x in key.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-"))


def test_an_identity_pasted_where_a_path_or_the_public_key_goes_is_never_printed(site, tmp_path):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 11))
    assert site.scan().returncode == 1
    (item,) = site.items()
    secret = _secret_line(site.key)
    as_path = site.cli("quarantine", "restore", item["id"], "--identity", secret)
    assert as_path.returncode != 0 and "path of its file" in as_path.stderr
    in_env = site.cli("quarantine", "restore", item["id"], env={"MIRROR_SCAN_SEAL_IDENTITY": secret})
    as_recipient = site.cli("quarantine", "list", env={"MIRROR_SCAN_SEAL_TO": secret})
    assert as_recipient.returncode != 0 and "seal_to" in as_recipient.stderr
    for proc in (as_path, in_env, as_recipient):
        said = (proc.stdout + proc.stderr).upper()
        assert secret.upper() not in said and secret.upper()[15:40] not in said, said
    assert "Traceback" not in as_path.stderr + in_env.stderr + as_recipient.stderr


def test_a_damaged_sealed_file_is_said_as_such_and_state_check_names_it(site, tmp_path):
    """Bit rot inside data.age with every record made to agree (a backup restored over it): the restore
    refuses with what it is, `state check --identity` names the item and checks the others."""
    for i in range(2):
        (site.mirror / f"p{i}.png").write_bytes(image_bytes("PNG", 40 + i, size=(400, 300)))
    assert site.scan().returncode == 1
    victim, other = site.items()
    data_age = site.item_dir(victim["id"]) / "data.age"
    raw = bytearray(data_age.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data_age.write_bytes(bytes(raw))
    new_sha = sha(bytes(raw))
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE quarantine SET sealed_sha256=? WHERE id=?", (new_sha, victim["id"]))
    meta_path = site.item_dir(victim["id"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sealed"]["sha256"] = new_sha
    meta_path.write_text(json.dumps(meta))
    before = site.snapshot()
    refused = site.cli("quarantine", "restore", victim["id"], "--identity", str(site.key))
    assert refused.returncode != 0 and "does not decrypt: damaged or not ours; nothing changed" in refused.stderr
    assert site.snapshot()["files"] == before["files"]
    check = site.cli("state", "check", "--identity", str(site.key))
    assert check.returncode == 2 and f"item {victim['id']}" in check.stderr and "does not decrypt" in check.stderr
    assert other["id"] not in check.stderr and "cannot be read" not in check.stderr


@pytest.mark.parametrize("kind", ["directory", "binary", "fifo"])
def test_an_identity_that_is_no_identity_file_is_refused_without_a_traceback(site, tmp_path, kind):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 12))
    assert site.scan().returncode == 1
    (item,) = site.items()
    bad = tmp_path / f"bad-{kind}"
    if kind == "directory":
        bad.mkdir(mode=0o700)
    elif kind == "binary":
        bad.write_bytes(b"\xff\xfe\x00AGE")
        bad.chmod(0o600)
    else:
        os.mkfifo(bad, 0o600)
    proc = site.cli("quarantine", "restore", item["id"], "--identity", str(bad))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "identity file" in proc.stderr, proc


def test_quarantine_seal_refuses_an_item_whose_metadata_disagrees(site):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 13))
    assert site.scan(env={"MIRROR_SCAN_SEAL_TO": ""}).returncode == 1
    (item,) = site.items()
    meta_path = site.item_dir(item["id"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["original_b64"] = "ZWxzZXdoZXJlLnBuZw=="  # "elsewhere.png"
    meta_path.write_text(json.dumps(meta))
    proc = site.cli("quarantine", "seal", "--all", "--yes")
    assert proc.returncode == 2 and "disagrees with the ledger" in proc.stderr, proc
    assert sorted(p.name for p in site.item_dir(item["id"]).iterdir()) == ["data", "meta.json"]


def test_recovery_never_removes_the_sealed_copy_for_a_plain_file_that_is_not_the_item(site, tmp_path):
    """A ledger that says plain (restored from before the seal) beside a quarantine that holds data.age and
    a junk `data`: the sealed copy is the only real one, and stays."""
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 14))
    assert site.scan().returncode == 1
    (item,) = site.items()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE quarantine SET sealed_to=NULL, sealed_sha256=NULL WHERE id=?", (item["id"],))
    (site.item_dir(item["id"]) / "data").write_bytes(b"junk")
    assert site.cli("state", "recover").returncode == 0
    assert (site.item_dir(item["id"]) / "data.age").exists()
    assert pyrage.decrypt((site.item_dir(item["id"]) / "data.age").read_bytes(), [_secret(site.key)]) == image_bytes(
        "PNG", 14
    )


@pytest.mark.parametrize("claim", [{"to": "", "sha256": "0" * 64}, {"to": "garbage", "sha256": "0" * 64},
                                   {"to": "age1" + "q" * 58, "sha256": "nope"}])  # fmt: skip
def test_reindex_refuses_a_metadata_file_whose_sealed_claim_is_not_one(site, tmp_path, claim):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 15))
    assert site.scan().returncode == 1
    (item,) = site.items()
    meta_path = site.item_dir(item["id"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sealed"] = claim
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "state.db").rename(tmp_path / "lost.db")
    proc = site.cli("quarantine", "reindex")
    assert "indexed 0 item(s)" in proc.stdout and "sealed" in proc.stderr, proc


def test_the_daemons_never_read_the_identity_even_when_it_is_configured(tmp_path, caplog):
    from mirror_scan.app.workspace import Workspace
    from mirror_scan.settings import resolve

    key = tmp_path / "key.txt"
    recipient = generate_identity(key)
    settings = resolve({"state": tmp_path / "state.db", "quarantine": tmp_path / "q", "seal_to": recipient,
                        "seal_identity": key})  # fmt: skip
    with Workspace.writer(settings, opens=False) as daemon:
        content = daemon.quarantine.journal.content
        assert content.sealer is not None and content.ask_identity is None
    assert "is not read here" in caplog.text
    with Workspace.writer(settings) as shell:
        assert shell.quarantine.journal.content.ask_identity is not None


def test_an_extract_or_report_of_an_unknown_item_says_so(site, tmp_path):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 16))
    assert site.scan().returncode == 1
    for command in ("extract", "report"):
        proc = site.cli("quarantine", command, "nosuchitem", "--to", str(tmp_path))
        assert proc.returncode == 2 and "no quarantine item 'nosuchitem'" in proc.stderr, proc


def test_quarantine_seal_of_an_unknown_item_says_so(site):
    (site.mirror / "a.png").write_bytes(image_bytes("PNG", 17))
    assert site.scan(env={"MIRROR_SCAN_SEAL_TO": ""}).returncode == 1
    proc = site.cli("quarantine", "seal", "nosuchitem", "--yes")
    assert proc.returncode == 2 and "no quarantine item 'nosuchitem'" in proc.stderr, proc
