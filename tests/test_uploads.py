"""The pict-rs upload is the unit (issue 39): a quarantine takes the original with every object of its hash
(thumbnails, resizes, the still of an animation), and one restore brings them all back; a restore asks
pict-rs first and writes no orphan of an upload it forgot; `--reimport` uploads it again under its alias.

Real parts: `rclone serve s3` (the bucket), PostgreSQL with pict-rs 0.5's tables (its repo), the real CLI.
pict-rs itself is tests/pictrs_fake.py, which answers what robinst/pict-rs v0.5.17-pre.2 (38a5b72) does for
`process`, `/image/original`, `/internal/purge`, `/internal/prune_missing`, `/internal/import` and
`/internal/identifier` (each with its source file there), over the same bucket directory and database."""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import sqlite3
from pathlib import Path

import pytest

from .conftest import run_cli
from .lemmy_schema import PICTRS_SCHEMA, pictrs_grants
from .mediafiles import image_bytes
from .pictrs_fake import PictrsFake, http_get
from .s3server import BUCKET

API_KEY = "pictrs-api-key-" + secrets.token_hex(6)
_names = itertools.count()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Instance:
    """A pict-rs (the fake, over a real bucket and a real repo) with one upload and two stored variants, the
    bucket mirrored, and a state whose hash list flags the upload's original by its sha256."""

    def __init__(self, tmp: Path, s3, pg, bundle: Path, clear_policy: Path) -> None:
        n = next(_names)
        self.tmp, self.s3, self.pg, self.bundle, self.policy = tmp, s3, pg, bundle, clear_policy
        self.db, self.role, password = f"pictrs_up_{n}", f"uploads_ro_{n}", secrets.token_hex(8)
        pg.execute(f"CREATE ROLE {self.role} LOGIN PASSWORD '{password}'")
        pg.create_database(self.db, PICTRS_SCHEMA + pictrs_grants(self.role))
        (tmp / "db-password").write_text(password + "\n")
        self.pictrs = PictrsFake(API_KEY, tmp / "s3" / BUCKET, pg, self.db).start()
        self.original = image_bytes("PNG", 70, size=(320, 240))
        self.alias = self.pictrs.add_upload(self.original, "png")
        for query in ("process.webp?src={a}&thumbnail=64", "process.png?src={a}&resize=100"):
            status, _ = http_get(f"{self.pictrs.url}/image/{query.format(a=self.alias)}")
            assert status == 200
        self.keys = self.pictrs.keys_of(self.alias)
        assert len(self.keys) == 3  # the original and two stored variants
        self.objects = {key: self.pictrs.read(key) for key in self.keys}
        self.mirror, self.state, self.quarantine = tmp / "mirror", tmp / "state.db", tmp / "q"
        self.config = tmp / "config.toml"
        self.config.write_text(
            f"""
[pictrs]
url = "{self.pictrs.url}"
database_url = "{pg.url(self.db, self.role)}"
database_password_file = "{tmp / "db-password"}"
"""
        )
        assert self.cli("mirror", "pull", "--remote", s3.remote, "--to", str(self.mirror)).returncode == 0
        listed = tmp / "flag.csv"
        listed.write_text(f"type,hash\nsha256,{sha(self.original)}\n")
        assert self.cli("hashlist", "import", str(listed), "--name", "known").returncode == 0

    seal_env: dict[str, str] = {}  # noqa: RUF012 - set per instance by `seal`
    identity: Path | None = None

    def seal(self) -> None:
        """New items sealed (store/sealing.py); only `quarantine restore` is given the identity."""
        from mirror_scan.store.sealing import generate_identity

        self.identity = self.tmp / "quarantine-key.txt"
        self.seal_env = {"MIRROR_SCAN_SEAL_TO": generate_identity(self.identity)}

    def cli(self, *args: str, **kwargs):
        env = {**self.s3.env(), "MIRROR_SCAN_PICTRS_API_KEY": API_KEY, **self.seal_env, **kwargs.pop("env", {})}
        if self.identity is not None and args[:2] == ("quarantine", "restore"):
            env["MIRROR_SCAN_SEAL_IDENTITY"] = str(self.identity)
        return run_cli(*args, "--state", str(self.state), "--quarantine", str(self.quarantine), "--config",
                       str(self.config), env=env, **kwargs)  # fmt: skip

    def scan(self, *args: str, **kwargs):
        return self.cli("scan", str(self.mirror), "--model", str(self.bundle), "--policy", str(self.policy),
                        "--remote", self.s3.remote, *args, **kwargs)  # fmt: skip

    def urls(self, new: bool = True) -> dict[str, tuple[int, bytes]]:
        """What pict-rs answers for every URL Lemmy's pages use for the upload; new: also a variant never
        asked for before (pict-rs makes it from the original, if it can)."""
        base = f"{self.pictrs.url}/image"
        answers = {
            "original": http_get(f"{base}/original/{self.alias}"),
            "thumbnail": http_get(f"{base}/process.webp?src={self.alias}&thumbnail=64"),
            "resize": http_get(f"{base}/process.png?src={self.alias}&resize=100"),
        }
        if new:
            answers["new"] = http_get(f"{base}/process.webp?src={self.alias}&thumbnail=32")
        return answers

    def item(self) -> dict:
        (item,) = json.loads(self.cli("quarantine", "list", "--json").stdout)
        return item

    def stop(self) -> None:
        self.pictrs.stop()


@pytest.fixture
def instance(tmp_path, s3, postgres, tiny_bundle_master, write_policy):
    clear = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")
    made = Instance(tmp_path, s3, postgres, tiny_bundle_master, clear)
    yield made
    made.stop()


@pytest.fixture(params=["plain", "sealed"])
def either_instance(request, instance):
    """The instance with its quarantine held in the clear, or sealed to a key (seal_to)."""
    if request.param == "sealed":
        instance.seal()
    return instance


def _nothing_public(instance: Instance) -> None:
    for name, (status, body) in instance.urls().items():
        assert status >= 400, (name, status)
        assert body not in instance.objects.values(), name
    assert not any((instance.tmp / "s3" / BUCKET / key).exists() for key in instance.keys)
    assert not any((instance.mirror / key).exists() for key in instance.keys)


def test_the_upload_leaves_whole_and_comes_back_whole(instance):
    before = instance.urls(new=False)
    assert all(status == 200 for status, _ in before.values())
    proc = instance.scan("--json")
    assert proc.returncode == 1, proc.stderr
    item = instance.item()
    assert item["state"] == "quarantined"
    _nothing_public(instance)

    # The item holds every object, verified; its record and metadata list them with pict-rs's variant names.
    shown = json.loads(instance.cli("quarantine", "show", item["id"], "--json").stdout)
    companions = {c["key"]: c for c in shown["companions"]}
    assert set(companions) == set(instance.keys[1:])
    assert {c["variant"] for c in companions.values()} == {"thumbnail/64/webp", "resize/100/png"}
    held = instance.quarantine / "items" / item["id"] / "companions"
    for key, companion in companions.items():
        assert companion["state"] == "taken" and (held / companion["sha256"]).read_bytes() == instance.objects[key]
    assert {p.name for p in held.iterdir()} == {c["sha256"] for c in companions.values()}

    proc = instance.cli("quarantine", "restore", item["id"])
    assert proc.returncode == 0, proc.stderr
    for key, data in instance.objects.items():  # byte-identical in the bucket and in the mirror
        assert (instance.tmp / "s3" / BUCKET / key).read_bytes() == data
        assert (instance.mirror / key).read_bytes() == data
    after = instance.urls()
    for name in ("original", "thumbnail", "resize"):
        assert after[name] == before[name], name
    assert after["new"][0] == 200  # made from the original that is back
    allowed = {a["sha256"] for a in json.loads(instance.cli("allowlist", "list", "--json").stdout)}
    assert sha(instance.original) in allowed  # never flagged again; its thumbnails: those the scanner scored
    assert {sha(d) for d in instance.objects.values()} & allowed <= {sha(d) for d in instance.objects.values()
                                                                     if _scored(instance, d)}  # fmt: skip
    assert json.loads(instance.scan("--json").stdout)["flagged"] == 0
    assert all(_scored(instance, d) for d in instance.objects.values())


def test_a_variant_made_while_the_removal_waits_leaves_with_the_upload(instance):
    """The removal upstream fails (the bucket is down): the original is still in the bucket, so pict-rs makes
    a new thumbnail of it. The new object is taken into the item, from the mirror where a pull brought it
    or from the bucket, and leaves with the rest when the removal is retried."""
    instance.s3.stop()
    proc = instance.scan("--json")
    assert proc.returncode == 1, proc.stderr
    assert instance.item()["state"] == "upstream_pending"
    status, late = http_get(f"{instance.pictrs.url}/image/process.webp?src={instance.alias}&thumbnail=48")
    assert status == 200
    instance.s3.start()
    (late_key,) = set(instance.pictrs.keys_of(instance.alias)) - set(instance.keys)
    pulled = instance.cli("mirror", "pull", "--remote", instance.s3.remote, "--to", str(instance.mirror), "--json")
    assert json.loads(pulled.stdout)["arrived"] == []  # its key is held already: never pulled
    assert instance.cli("state", "recover").returncode == 0
    item = instance.item()
    assert item["state"] == "quarantined"
    instance.keys.append(late_key)
    instance.objects[late_key] = late
    _nothing_public(instance)
    shown = json.loads(instance.cli("quarantine", "show", item["id"], "--json").stdout)
    assert late_key in {c["key"] for c in shown["companions"]}

    assert instance.cli("quarantine", "restore", item["id"]).returncode == 0
    for key, data in instance.objects.items():
        assert (instance.tmp / "s3" / BUCKET / key).read_bytes() == data


def test_a_variant_seen_in_the_mirror_after_the_quarantine_is_taken_never_scored(instance, tmp_path):
    """A thumbnail of a held upload that reaches the mirror later (copied there by hand here, as a pull or
    pict-rs's filesystem store would) joins the item: not scored, not left behind."""
    assert instance.scan().returncode == 1
    item = instance.item()
    (thumb,) = [k for (k,) in instance.pictrs.repo("SELECT identifier FROM variants WHERE variant = %s",
                                                    ("thumbnail/64/webp",))]  # fmt: skip
    (instance.mirror / thumb).parent.mkdir(parents=True, exist_ok=True)
    (instance.mirror / thumb).write_bytes(instance.objects[thumb])
    proc = instance.scan("--json")
    summary = json.loads(proc.stdout)
    assert summary["taken_into_items"] == 1 and summary["scanned"] == 0, summary
    assert not (instance.mirror / thumb).exists()
    with sqlite3.connect(instance.state) as db:
        assert db.execute("SELECT count(*) FROM files WHERE path LIKE ?", (f"%{thumb}",)).fetchone()[0] == 0
    history = json.loads(instance.cli("quarantine", "show", item["id"], "--json").stdout)["history"]
    assert any(f"took its thumbnail/64/webp {thumb}" in h["state"] for h in history), history


def _forget(instance: Instance, how: str) -> None:
    """pict-rs forgets the upload: `/internal/purge` of its alias, or `/internal/prune_missing` (its original
    is missing from the store), then its cleanup worker runs."""
    import urllib.request

    query = f"?alias={instance.alias}" if how == "purge" else "?force=true"
    request = urllib.request.Request(f"{instance.pictrs.url}/internal/{how}{query}", data=b"",
                                     headers={"X-Api-Token": API_KEY})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        assert answer.status == 200
    instance.pictrs.run_jobs()  # pict-rs's cleanup worker: the records of the upload are gone


@pytest.mark.parametrize("forget", ["purge", "prune_missing"])
def test_a_restore_of_an_upload_pictrs_forgot_writes_no_orphan(instance, forget):
    assert instance.scan().returncode == 1
    item = instance.item()
    _forget(instance, forget)

    proc = instance.cli("quarantine", "restore", item["id"])
    assert proc.returncode == 2, proc.stderr
    assert "pict-rs no longer records this upload" in proc.stderr and "--reimport" in proc.stderr
    assert instance.item()["state"] == "quarantined"
    bucket = instance.tmp / "s3" / BUCKET
    assert not [p for p in bucket.rglob("*") if p.is_file()]  # no orphan written
    assert not [p for p in instance.mirror.rglob("*") if p.is_file()]

    proc = instance.cli("quarantine", "restore", item["id"], "--reimport")
    assert proc.returncode == 0, proc.stderr
    status, body = http_get(f"{instance.pictrs.url}/image/original/{instance.alias}")
    assert status == 200 and body == instance.original  # the post's URL works again
    assert instance.item()["state"] == "restored"
    again = instance.cli("quarantine", "restore", item["id"], "--reimport")
    assert again.returncode == 2 and "restored" in again.stderr


QUARANTINE_STEPS = ["intent", "copied", "companions", "placed", "upstream_removed", "local_removed", "done"]
RESTORE_STEPS = ["intent", "copied", "placed", "upstream_restored", "done"]


def _every_object_in_one_place(instance: Instance) -> str:
    """Each object of the upload is in the bucket and the mirror, or in the item (verified), never nowhere
    and never half-written; all of them on the same side. Returns which side."""
    bucket = instance.tmp / "s3" / BUCKET
    held = {}
    for item_dir in (instance.quarantine / "items").iterdir():
        for path in [item_dir / "data", item_dir / "data.age", *(item_dir / "companions").glob("*")]:
            if path.is_file() and not path.name.startswith("."):
                sealed = path.name.endswith(".age")
                assert sealed == (instance.identity is not None), f"{path.name}: sealed and clear mixed"
                data = _opened(instance.identity, path) if sealed else path.read_bytes()
                held[sha(data)] = data
    sides = set()
    for key, data in instance.objects.items():
        public = (bucket / key).exists()
        if public:
            assert (bucket / key).read_bytes() == data, key
        if (instance.mirror / key).exists():
            assert (instance.mirror / key).read_bytes() == data, key
        assert public or sha(data) in held, f"{key} is nowhere"
        sides.add("public" if public else "quarantine")
    assert len(sides) == 1, "some objects of the upload left, others did not"
    leftovers = [p for p in [*instance.quarantine.rglob("*"), *instance.mirror.rglob("*")] if p.name.endswith(".tmp")]
    assert leftovers == []
    with sqlite3.connect(instance.state) as db:
        assert db.execute("SELECT count(*) FROM moves WHERE step NOT IN ('done', 'rolled_back')").fetchone()[0] == 0
    return sides.pop()


def _opened(identity: Path, sealed: Path) -> bytes:
    import pyrage

    key = next(line for line in identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    return pyrage.decrypt(sealed.read_bytes(), [pyrage.x25519.Identity.from_str(key)])


@pytest.mark.parametrize("step", QUARANTINE_STEPS)
def test_sigkill_during_a_multi_object_quarantine(either_instance, step):
    instance = either_instance
    assert instance.scan("--dry-run").returncode == 1
    proc = instance.cli("apply", "--remote", instance.s3.remote, env={"MIRROR_SCAN_KILL_AT": f"quarantine:{step}"})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    assert instance.cli("state", "recover").returncode == 0
    side = _every_object_in_one_place(instance)
    assert side == ("public" if step in ("intent", "copied", "companions") else "quarantine")
    if side == "public":  # rolled back: nothing of the item is left, its companions' copies neither
        assert list((instance.quarantine / "items").iterdir()) == []
    assert instance.cli("apply", "--remote", instance.s3.remote).returncode == 0
    assert _every_object_in_one_place(instance) == "quarantine"


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_sigkill_during_a_multi_object_restore(either_instance, step):
    instance = either_instance
    assert instance.scan().returncode == 1
    item = instance.item()
    proc = instance.cli("quarantine", "restore", item["id"], env={"MIRROR_SCAN_KILL_AT": f"restore:{step}"})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    assert instance.cli("state", "recover").returncode == 0
    side = _every_object_in_one_place(instance)
    if side == "quarantine":
        assert instance.item()["state"] == "quarantined"
        assert instance.cli("quarantine", "restore", item["id"]).returncode == 0
    assert _every_object_in_one_place(instance) == "public"


def test_a_rebuilt_ledger_knows_the_objects_of_each_upload(instance):
    """After losing the ledger, `quarantine reindex` imports an item's objects from its meta.json (each held
    one checked against its bytes), so the restore still brings the whole upload back."""
    assert instance.scan().returncode == 1
    item = instance.item()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{instance.state}{suffix}").unlink(missing_ok=True)
    assert instance.cli("quarantine", "reindex").returncode == 0
    shown = json.loads(instance.cli("quarantine", "show", item["id"], "--json").stdout)
    assert {o["key"] for o in shown["ledger"]["objects"] if o["state"] == "taken"} == set(instance.keys[1:])
    assert instance.cli("quarantine", "restore", item["id"]).returncode == 0
    for key, data in instance.objects.items():
        assert (instance.tmp / "s3" / BUCKET / key).read_bytes() == data


# ---------------------------------------------------------------------- the attack on issue 39, mended


def _variant_key(instance: Instance, variant: str) -> str:
    (key,) = [k for (k,) in instance.pictrs.repo("SELECT identifier FROM variants WHERE variant = %s", (variant,))]
    return key


def _objects(instance: Instance, item_id: str) -> dict[str, dict]:
    shown = json.loads(instance.cli("quarantine", "show", item_id, "--json").stdout)
    return {o["key"]: o for o in shown["ledger"]["objects"]}


def test_the_item_keeps_what_the_bucket_serves_not_a_stale_mirror_copy(instance):
    """A pull cut short left a truncated thumbnail in the mirror: the item copies the bucket's object (what
    pict-rs serves), removes it, and a restore puts the real bytes back."""
    thumb = _variant_key(instance, "thumbnail/64/webp")
    real = instance.objects[thumb]
    (instance.mirror / thumb).write_bytes(real[:50])
    assert instance.scan().returncode == 1
    item = instance.item()
    assert item["state"] == "quarantined"
    assert _objects(instance, item["id"])[thumb]["sha256"] == sha(real)
    assert not (instance.tmp / "s3" / BUCKET / thumb).exists()
    assert (instance.mirror / thumb).read_bytes() == real[:50]  # not the item's bytes: left, scored as any file
    (instance.mirror / thumb).unlink()
    assert instance.cli("quarantine", "restore", item["id"]).returncode == 0
    _every_object_in_one_place(instance)
    assert (instance.tmp / "s3" / BUCKET / thumb).read_bytes() == real


@pytest.mark.parametrize("which", ["thumbnail", "original"])
def test_a_restore_never_writes_over_other_bytes_upstream(instance, tmp_path, which):
    """Someone stored other bytes at a key since (through S3): the restore leaves them as they are; a
    thumbnail's key is skipped and said, the original's key keeps the restore pending, loudly."""
    assert instance.scan().returncode == 1
    item = instance.item()
    key = _variant_key(instance, "thumbnail/64/webp") if which == "thumbnail" else instance.keys[0]
    other = image_bytes("WEBP" if which == "thumbnail" else "PNG", 80, size=(64, 48))  # what pict-rs serves now
    instance.s3.put(key, other, tmp_path)
    proc = instance.cli("quarantine", "restore", item["id"])
    assert "holds other bytes" in proc.stderr, proc.stderr
    assert instance.s3.get(key) == other
    if which == "thumbnail":
        assert proc.returncode == 0 and "not put back" in proc.stderr
        assert instance.s3.get(instance.keys[0]) == instance.original
    else:
        assert proc.returncode != 0 and instance.item()["state"] == "quarantined"  # undone, not pending for ever
    # No copy of the item's is left at that key in the mirror, hiding the bucket's bytes from pulls: the next
    # pull brings what pict-rs serves there, and the scan scores it.
    assert not (instance.mirror / key).exists()
    assert instance.cli("mirror", "pull", "--remote", instance.s3.remote, "--to", str(instance.mirror)).returncode == 0
    assert instance.scan().returncode in (0, 1)
    assert _scored(instance, other)


def test_objects_the_repo_could_not_list_at_the_quarantine_leave_later(instance):
    """pict-rs's repo refuses logins during the quarantine: the original leaves at once (it never waits for
    its thumbnails), the item keeps looking, and the next recovery takes the thumbnails."""
    instance.pg.execute(f"ALTER ROLE {instance.role} NOLOGIN")
    try:
        assert instance.scan().returncode == 1
        item = instance.item()
        assert item["state"] == "quarantined"
        assert not (instance.tmp / "s3" / BUCKET / instance.keys[0]).exists()
        assert all((instance.tmp / "s3" / BUCKET / k).exists() for k in instance.keys[1:])
    finally:
        instance.pg.execute(f"ALTER ROLE {instance.role} LOGIN")
    assert instance.cli("state", "recover").returncode == 0
    assert _every_object_in_one_place(instance) == "quarantine"
    assert {o["state"] for o in _objects(instance, item["id"]).values()} == {"taken"}


def test_a_missing_object_that_comes_back_is_taken(instance, tmp_path):
    """A variant pict-rs records whose object is gone at the quarantine is recorded as missing; when it is
    back (a backup restored into the bucket) and seen in the mirror, it joins the item."""
    lost = "00/00/" + secrets.token_hex(4) + ".webp"
    instance.pictrs.repo("INSERT INTO variants (hash, variant, identifier) VALUES (%s, %s, %s)",
                         (instance.pictrs.hash_of(instance.alias), "thumbnail/99/webp", lost))  # fmt: skip
    assert instance.scan().returncode == 1
    item = instance.item()
    assert _objects(instance, item["id"])[lost]["state"] == "missing"
    data = image_bytes("WEBP", 72, size=(40, 30))
    instance.s3.put(lost, data, tmp_path)
    (instance.mirror / lost).parent.mkdir(parents=True, exist_ok=True)
    (instance.mirror / lost).write_bytes(data)
    summary = json.loads(instance.scan("--json").stdout)
    assert summary["taken_into_items"] == 1, summary
    found = _objects(instance, item["id"])[lost]
    assert found["state"] == "taken" and found["sha256"] == sha(data)
    assert not (instance.tmp / "s3" / BUCKET / lost).exists() and not (instance.mirror / lost).exists()


def test_other_bytes_at_a_held_key_are_scored_as_any_file(instance):
    """A file at a thumbnail's key with other bytes than the item holds is not the item's: it is scored,
    never taken (a way past the scanner otherwise)."""
    assert instance.scan().returncode == 1
    thumb = _variant_key(instance, "thumbnail/64/webp")
    (instance.mirror / thumb).parent.mkdir(parents=True, exist_ok=True)
    (instance.mirror / thumb).write_bytes(image_bytes("PNG", 73, size=(48, 48)))
    summary = json.loads(instance.scan("--json").stdout)
    assert summary["taken_into_items"] == 0 and summary["scanned"] == 1, summary
    assert (instance.mirror / thumb).exists()


def test_a_restore_refuses_an_upload_whose_thumbnail_a_hash_list_flags(instance, tmp_path):
    """A restore allowlists the upload's objects with the item: one a hash list names by its bytes refuses
    it (allowlisted, the list would never flag it again)."""
    assert instance.scan().returncode == 1
    item = instance.item()
    thumb = _variant_key(instance, "thumbnail/64/webp")
    listed = tmp_path / "thumbs.csv"
    listed.write_text(f"type,hash\nsha256,{sha(instance.objects[thumb])}\n")
    assert instance.cli("hashlist", "import", str(listed), "--name", "thumbs").returncode == 0
    proc = instance.cli("quarantine", "restore", item["id"])
    assert proc.returncode == 2 and "hash list thumbs flags" in proc.stderr, proc.stderr
    assert instance.item()["state"] == "quarantined"
    allowed = {a["sha256"] for a in json.loads(instance.cli("allowlist", "list", "--json").stdout)}
    assert sha(instance.objects[thumb]) not in allowed


def test_a_restore_writes_no_orphan_when_the_same_bytes_were_uploaded_again(instance):
    """Purged, then the same picture uploaded again (pict-rs stores it under new keys): the old keys are
    named by no record, so a restore writes nothing there."""
    assert instance.scan().returncode == 1
    item = instance.item()
    _forget(instance, "purge")
    instance.pictrs.add_upload(instance.original, "png")
    instance.cli("quarantine", "restore", item["id"])
    named = {k for (k,) in instance.pictrs.repo("SELECT identifier FROM hashes UNION SELECT identifier FROM variants")}
    assert [k for k in instance.keys if (instance.tmp / "s3" / BUCKET / k).exists() and k not in named] == []


def test_a_reimport_never_claims_an_alias_another_upload_took(instance):
    """Purged, and the alias taken by another upload since: `--reimport` refuses (nothing went back), and a
    reimport killed before pict-rs answered is rolled back by recovery, not called restored because the
    alias resolves (to the other upload)."""
    assert instance.scan().returncode == 1
    item = instance.item()
    _forget(instance, "purge")
    instance.pictrs.add_upload(image_bytes("PNG", 74, size=(50, 50)), "png", alias=instance.alias)
    proc = instance.cli("quarantine", "restore", item["id"], "--reimport")
    assert proc.returncode != 0 and "under none of its aliases" in proc.stderr, proc.stderr
    assert instance.item()["state"] == "quarantined"
    killed = instance.cli("quarantine", "restore", item["id"], "--reimport",
                          env={"MIRROR_SCAN_KILL_AT": "restore:intent"})  # fmt: skip
    assert killed.returncode == -9
    assert instance.cli("state", "recover").returncode == 0
    assert instance.item()["state"] == "quarantined"


# ---------------------------------------------------------------------- the second attack on issue 39, mended


def _scored(instance: Instance, data: bytes) -> bool:
    with sqlite3.connect(instance.state) as db:
        found = db.execute("SELECT count(*) FROM files WHERE sha256 = ? AND status IN ('scored', 'reused')",
                           (sha(data),)).fetchone()[0]  # fmt: skip
    return bool(found)


def _orphans(instance: Instance) -> list[str]:
    """Objects in the bucket that no pict-rs record names (never served, never cleaned)."""
    named = {k for (k,) in instance.pictrs.repo(
        "SELECT identifier FROM hashes UNION SELECT motion_identifier FROM hashes WHERE motion_identifier IS NOT "
        "NULL UNION SELECT identifier FROM variants")}  # fmt: skip
    bucket = instance.tmp / "s3" / BUCKET
    return [str(p.relative_to(bucket)) for p in bucket.rglob("*") if p.is_file() and str(p.relative_to(bucket))
            not in named]  # fmt: skip


def test_other_bytes_at_the_key_of_a_taken_thumbnail_are_pulled_and_scored(instance, tmp_path):
    """After the quarantine, other bytes stored at a thumbnail's key are what pict-rs serves for its URL:
    pulls no longer leave out the keys of what left the bucket, so they are pulled and scored."""
    assert instance.scan().returncode == 1
    thumb = _variant_key(instance, "thumbnail/64/webp")
    other = image_bytes("WEBP", 81, size=(64, 48))
    instance.s3.put(thumb, other, tmp_path)
    status, body = http_get(f"{instance.pictrs.url}/image/process.webp?src={instance.alias}&thumbnail=64")
    assert status == 200 and body == other  # displayed
    pulled = instance.cli("mirror", "pull", "--remote", instance.s3.remote, "--to", str(instance.mirror), "--json")
    assert json.loads(pulled.stdout)["arrived"] == [thumb]
    summary = json.loads(instance.scan("--json").stdout)
    assert summary["taken_into_items"] == 0 and _scored(instance, other), summary


def test_a_restore_finished_by_recovery_after_pictrs_forgot_the_upload_is_undone(instance):
    """Killed at 'placed'; pict-rs purges the upload before recovery: recovery asks again, writes nothing
    into the bucket (no orphan), takes back what the restore put in the mirror, and the item stays."""
    assert instance.scan().returncode == 1
    item = instance.item()
    proc = instance.cli("quarantine", "restore", item["id"], env={"MIRROR_SCAN_KILL_AT": "restore:placed"})
    assert proc.returncode == -9
    _forget(instance, "purge")
    recovered = instance.cli("state", "recover")
    assert recovered.returncode == 0 and "pict-rs no longer records the upload" in recovered.stdout
    assert _orphans(instance) == [] and instance.item()["state"] == "quarantined"
    assert not [p for p in instance.mirror.rglob("*") if p.is_file()]


@pytest.mark.parametrize("flapping", ["served", "recorded"])
def test_a_restore_while_pictrs_cannot_answer_waits_for_it(instance, monkeypatch, flapping):
    """pict-rs's repo cannot answer (a flap): a restore is refused rather than guess, a `--reimport` too,
    with nothing written (no orphan of a variant it cleaned meanwhile) and the item kept."""
    from mirror_scan.errors import MirrorScanError
    from mirror_scan.moderation.uploads import PictrsUploads

    assert instance.scan().returncode == 1
    item = instance.item()
    instance.pictrs.repo("DELETE FROM variants WHERE variant = %s", ("resize/100/png",))  # cleaned while held

    def flap(self, *args):
        raise MirrorScanError("connection refused (the repo flapped)")

    monkeypatch.setattr(PictrsUploads, flapping, flap)
    for args in ((), ("--reimport",)) if flapping == "served" else ((),):
        proc = instance.cli("quarantine", "restore", item["id"], *args)
        assert proc.returncode != 0 and "pict-rs cannot say now" in proc.stderr, proc.stderr
        assert instance.item()["state"] == "quarantined" and _orphans(instance) == []
    monkeypatch.undo()
    assert instance.cli("quarantine", "restore", item["id"]).returncode == 0
    assert _orphans(instance) == []  # the cleaned resize stays out


def test_a_reimport_of_a_thumbnail_flagged_item_puts_back_the_original(instance, tmp_path):
    """A thumbnail flagged (the upload's original a companion of its item), the upload purged: `--reimport`
    uploads the original under the upload's alias, never the thumbnail."""
    lists = ("--state", str(instance.state), "--config", str(instance.config))
    assert run_cli("hashlist", "remove", "known", *lists).returncode == 0
    thumb = _variant_key(instance, "thumbnail/64/webp")
    listed = tmp_path / "thumbs.csv"
    listed.write_text(f"type,hash\nsha256,{sha(instance.objects[thumb])}\n")
    assert instance.cli("hashlist", "import", str(listed), "--name", "thumbs").returncode == 0
    assert instance.scan().returncode == 1
    item = instance.item()
    assert item["sha256"] == sha(instance.objects[thumb])
    _forget(instance, "purge")
    assert run_cli("hashlist", "remove", "thumbs", *lists).returncode == 0  # the list was wrong there
    proc = instance.cli("quarantine", "restore", item["id"], "--reimport")
    assert proc.returncode == 0, proc.stderr
    status, body = http_get(f"{instance.pictrs.url}/image/original/{instance.alias}")
    assert status == 200 and body == instance.original


def test_a_reimport_that_pictrs_could_not_take_under_every_alias_waits_then_finishes(instance, monkeypatch):
    """Two aliases; pict-rs fails for the second (a restart), or the process is killed after the first:
    the restore is not called done with a URL left broken; recovery imports the rest, then finishes."""
    from mirror_scan.errors import MirrorScanError
    from mirror_scan.moderation.uploads import PictrsUploads

    second = instance.pictrs.add_upload(instance.original, "png")  # the same bytes: a second alias of the hash
    assert instance.scan().returncode == 1
    item = instance.item()
    _forget(instance, "purge")
    real = PictrsUploads.reimport

    def restarting(self, alias, data):
        if alias == second:
            raise MirrorScanError("pict-rs answered 503 (restarting)")
        return real(self, alias, data)

    monkeypatch.setattr(PictrsUploads, "reimport", restarting)
    proc = instance.cli("quarantine", "restore", item["id"], "--reimport")
    monkeypatch.undo()
    assert proc.returncode != 0 and "could not take the rest now" in proc.stderr, proc.stderr
    assert instance.item()["state"] == "restoring"
    assert instance.cli("state", "recover").returncode == 0
    assert instance.item()["state"] == "restored"
    for alias in (instance.alias, second):
        status, body = http_get(f"{instance.pictrs.url}/image/original/{alias}")
        assert status == 200 and body == instance.original, alias


def test_a_reimport_killed_between_aliases_is_finished_by_recovery(instance):
    second = instance.pictrs.add_upload(instance.original, "png")
    assert instance.scan().returncode == 1
    item = instance.item()
    _forget(instance, "purge")
    killed = instance.cli("quarantine", "restore", item["id"], "--reimport",
                          env={"MIRROR_SCAN_KILL_AT": "restore:alias#1"})  # fmt: skip
    assert killed.returncode == -9
    assert instance.cli("state", "recover").returncode == 0
    assert instance.item()["state"] == "restored"
    assert all(http_get(f"{instance.pictrs.url}/image/original/{a}")[0] == 200 for a in (instance.alias, second))


def test_bytes_taken_into_an_item_unscored_are_scored_after_a_restore_never_allowlisted(instance, tmp_path):
    """The bucket is down at the quarantine; other bytes are stored at the thumbnail's key meanwhile and the
    retry takes them in as the thumbnail (unscored). A restore allowlists only what the scanner scored: the
    next scan scores them."""
    thumb = _variant_key(instance, "thumbnail/64/webp")
    instance.s3.stop()
    assert instance.scan().returncode == 1
    instance.s3.start()
    other = image_bytes("WEBP", 85, size=(64, 48))
    instance.s3.put(thumb, other, tmp_path)
    assert instance.cli("state", "recover").returncode == 0
    item = instance.item()
    assert item["state"] == "quarantined" and _objects(instance, item["id"])[thumb]["sha256"] == sha(other)
    assert instance.cli("quarantine", "restore", item["id"]).returncode == 0
    allowed = {a["sha256"] for a in json.loads(instance.cli("allowlist", "list", "--json").stdout)}
    assert sha(other) not in allowed and sha(instance.original) in allowed
    # Whatever the bucket serves at the key now has been scored (the mirror kept the thumbnail it had, which
    # was scored, so the item's other bytes are not put back there nor upstream: the two would disagree).
    assert instance.cli("mirror", "pull", "--remote", instance.s3.remote, "--to", str(instance.mirror)).returncode == 0
    assert instance.scan().returncode in (0, 1)
    served = instance.tmp / "s3" / BUCKET / thumb
    assert not served.exists() or _scored(instance, served.read_bytes())
    assert (instance.mirror / thumb).read_bytes() == instance.objects[thumb]
