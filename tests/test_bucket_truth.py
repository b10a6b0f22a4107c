"""The right bucket or nothing (issue 23), against a real `rclone serve s3` holding two buckets: a removal
proves it removed the object that was quarantined, a mirror is tied to the bucket it mirrors, exclusions
are per bucket, and keys are compared and removed exactly as listed."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from .conftest import run_cli
from .mediafiles import image_bytes
from .s3server import BUCKET, REMOTE_NAME, S3Server

OTHER = f"{REMOTE_NAME}:other"


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "s3")
    (tmp_path / "s3" / "other").mkdir()
    server.start()
    yield server
    server.stop()


def _cli(tmp_path, server, *args):
    return run_cli(*args, "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"), env=server.env())


def _items(tmp_path, server) -> list[dict]:
    return json.loads(_cli(tmp_path, server, "quarantine", "list", "--json").stdout)


def _fill(server, tmp_path, bucket: str = BUCKET, seed: int = 0, count: int = 3) -> dict[str, bytes]:
    objects = {f"k{i}.png": image_bytes("PNG", seed + i, size=(40, 30)) for i in range(count)}
    for key, data in objects.items():
        (tmp_path / "s3" / bucket / key).write_bytes(data)
    return objects


def _plain_copy(tmp_path, objects: dict[str, bytes]):
    """A mirror made outside mirror-scan (the admin's own rclone sync): no bucket is recorded for it."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for key, data in objects.items():
        (mirror / key).write_bytes(data)
    return mirror


def test_a_mirror_is_tied_to_its_bucket_and_another_remote_is_refused(s3, tmp_path, tiny_bundle_master, flag_all):
    objects = _fill(s3, tmp_path)
    _fill(s3, tmp_path, "other", seed=0)  # the same keys and bytes in another bucket that exists
    mirror = tmp_path / "mirror"
    assert _cli(tmp_path, s3, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror)).returncode == 0
    for wrong in (OTHER, f"{s3.remote}/sub"):  # another bucket, a wrong prefix
        proc = _cli(tmp_path, s3, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy",
                    str(flag_all), "--remote", wrong)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"mirrors {s3.remote}" in proc.stderr and "mirror remote" in proc.stderr, proc.stderr
        assert sorted(p.name for p in mirror.iterdir()) == sorted(objects)  # nothing moved
        assert s3.keys() == set(objects)
    assert _cli(tmp_path, s3, "mirror", "pull", "--remote", OTHER, "--to", str(mirror)).returncode == 2
    shown = _cli(tmp_path, s3, "mirror", "remote", str(mirror))
    assert f"mirrors {s3.remote} (recorded by `mirror pull`" in shown.stdout
    proc = _cli(tmp_path, s3, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--remote", s3.remote)  # fmt: skip
    assert proc.returncode == 1 and s3.keys() == set()  # the right bucket: removed there
    assert {i["state"] for i in _items(tmp_path, s3)} == {"quarantined"}


@pytest.mark.parametrize("case", ["wrong bucket", "wrong prefix", "other bytes", "bucket emptied"])
def test_nothing_counts_as_removed_without_proof(s3, tmp_path, tiny_bundle_master, flag_all, case):
    """With no bucket recorded for the mirror: an object that is not at the remote counts as gone only
    if the mirror's other files are there; one that holds other bytes is never deleted. Otherwise the
    items wait as upstream pending, said loudly, and the real objects stay where they are."""
    objects = _fill(s3, tmp_path)
    mirror = _plain_copy(tmp_path, objects)
    remote = {"wrong bucket": OTHER, "wrong prefix": f"{s3.remote}/sub", "other bytes": OTHER,
              "bucket emptied": s3.remote}[case]  # fmt: skip
    if case == "other bytes":
        others = _fill(s3, tmp_path, "other", seed=50)  # the same keys, other pictures
    if case == "bucket emptied":
        shutil.rmtree(tmp_path / "s3" / BUCKET)
        (tmp_path / "s3" / BUCKET).mkdir()
    proc = _cli(tmp_path, s3, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--remote", remote)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    items = _items(tmp_path, s3)
    assert len(items) == len(objects) and {i["state"] for i in items} == {"upstream_pending"}, items
    assert "wrong bucket or prefix" in proc.stderr or "holds other bytes" in proc.stderr, proc.stderr
    assert sorted(p.name for p in mirror.iterdir()) == sorted(objects)  # the mirror copies wait too
    if case == "other bytes":
        assert {k: (tmp_path / "s3" / "other" / k).read_bytes() for k in others} == others  # never deleted
    if case != "bucket emptied":
        assert {k: (tmp_path / "s3" / BUCKET / k).read_bytes() for k in objects} == objects


def test_an_object_already_gone_from_the_right_bucket_is_gone(s3, tmp_path, tiny_bundle_master, flag_all):
    objects = _fill(s3, tmp_path)
    mirror = _plain_copy(tmp_path, objects)
    (tmp_path / "s3" / BUCKET / "k0.png").unlink()  # an admin deleted it already; the others are there
    proc = _cli(tmp_path, s3, "scan", str(mirror / "k0.png"), "--model", str(tiny_bundle_master), "--policy",
                str(flag_all), "--remote", s3.remote)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (item,) = _items(tmp_path, s3)
    assert item["state"] == "quarantined" and not (mirror / "k0.png").exists()


def test_exclusions_are_per_bucket(s3, tmp_path, tiny_bundle_master, flag_all):
    """A key quarantined from one bucket is still pulled (and scanned) from another."""
    _fill(s3, tmp_path)
    theirs = _fill(s3, tmp_path, "other", seed=70)
    first = tmp_path / "mirror"
    assert _cli(tmp_path, s3, "mirror", "pull", "--remote", s3.remote, "--to", str(first)).returncode == 0
    assert _cli(tmp_path, s3, "scan", str(first), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--remote", s3.remote).returncode == 1  # fmt: skip
    (tmp_path / "s3" / BUCKET / "k0.png").write_bytes(image_bytes("PNG", 0, size=(40, 30)))  # re-uploaded
    again = _cli(tmp_path, s3, "mirror", "pull", "--remote", s3.remote, "--to", str(first), "--json")
    assert "k0.png" not in json.loads(again.stdout)["arrived"]  # quarantined: never brought back
    second = tmp_path / "other-mirror"
    proc = _cli(tmp_path, s3, "mirror", "pull", "--remote", OTHER, "--to", str(second), "--json")
    assert sorted(json.loads(proc.stdout)["arrived"]) == sorted(theirs), proc.stdout  # the same keys, pulled
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in second.iterdir()} == {
        k: hashlib.sha256(v).hexdigest() for k, v in theirs.items()
    }
