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

    def cli(self, *args: str, **kwargs):
        env = {**self.s3.env(), "MIRROR_SCAN_PICTRS_API_KEY": API_KEY, **kwargs.pop("env", {})}
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
        assert companion["state"] == "held" and (held / companion["sha256"]).read_bytes() == instance.objects[key]
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
    assert {sha(d) for d in instance.objects.values()} <= allowed  # the thumbnails are never flagged again


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


@pytest.mark.parametrize("forget", ["purge", "prune_missing"])
def test_a_restore_of_an_upload_pictrs_forgot_writes_no_orphan(instance, forget):
    assert instance.scan().returncode == 1
    item = instance.item()
    headers = {"X-Api-Token": API_KEY}
    import urllib.request

    query = f"?alias={instance.alias}" if forget == "purge" else "?force=true"
    request = urllib.request.Request(f"{instance.pictrs.url}/internal/{forget}{query}", data=b"", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        assert answer.status == 200
    instance.pictrs.run_jobs()  # pict-rs's cleanup worker: the records of the upload are gone

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


QUARANTINE_STEPS = ["intent", "copied", "placed", "upstream_removed", "local_removed", "done"]
RESTORE_STEPS = ["intent", "copied", "placed", "upstream_restored", "done"]


def _every_object_in_one_place(instance: Instance) -> str:
    """Each object of the upload is in the bucket and the mirror, or in the item (verified), never nowhere
    and never half-written; all of them on the same side. Returns which side."""
    bucket = instance.tmp / "s3" / BUCKET
    held = {}
    for item_dir in (instance.quarantine / "items").iterdir():
        for path in [item_dir / "data", *(item_dir / "companions").glob("*")]:
            if path.is_file() and not path.name.startswith("."):
                data = path.read_bytes()
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


@pytest.mark.parametrize("step", QUARANTINE_STEPS)
def test_sigkill_during_a_multi_object_quarantine(instance, step):
    assert instance.scan("--dry-run").returncode == 1
    proc = instance.cli("apply", "--remote", instance.s3.remote, env={"MIRROR_SCAN_KILL_AT": f"quarantine:{step}"})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    assert instance.cli("state", "recover").returncode == 0
    side = _every_object_in_one_place(instance)
    assert side == ("public" if step in ("intent", "copied") else "quarantine")
    assert instance.cli("apply", "--remote", instance.s3.remote).returncode == 0
    assert _every_object_in_one_place(instance) == "quarantine"


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_sigkill_during_a_multi_object_restore(instance, step):
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
    assert {o["key"] for o in shown["ledger"]["objects"] if o["state"] == "held"} == set(instance.keys[1:])
    assert instance.cli("quarantine", "restore", item["id"]).returncode == 0
    for key, data in instance.objects.items():
        assert (instance.tmp / "s3" / BUCKET / key).read_bytes() == data
