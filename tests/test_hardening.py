"""What an adversarial review found (issue 11), each attack repeated against the real thing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, run_cli
from .mediafiles import image_bytes
from .s3server import S3Server
from .test_serve import TOKEN, Validator
from .test_watch import Watcher


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cli(tmp: Path, *args: str, env: dict | None = None):
    return run_cli(*args, "--state", str(tmp / "state.db"), "--quarantine", str(tmp / "q"), env=env)


# ----------------------------------------------------------------------------- upstream


def test_a_wrong_bucket_name_is_a_failure_not_already_gone(tmp_path, tiny_bundle_master, flag_all):
    server = S3Server(tmp_path / "s3")
    server.start()
    try:
        server.put("obj", image_bytes("PNG", 3), tmp_path)
        mirror = tmp_path / "mirror"
        assert (
            run_cli("mirror", "pull", "--remote", server.remote, "--to", str(mirror), env=server.env()).returncode == 0
        )
        wrong = server.remote.split(":")[0] + ":nosuchbucket"
        proc = _cli(
            tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
            "--remote", wrong, env=server.env(),
        )  # fmt: skip
        assert proc.returncode == 1
        assert "does not exist" in proc.stderr  # loudly
        # The summary tells the truth: nothing was "moved to the quarantine"; the removal waits.
        assert "1 flagged file(s) are safe in the quarantine but still in the" in proc.stdout, proc.stdout
        assert "moved to the quarantine (" not in proc.stdout
        items = json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)
        assert [i["state"] for i in items] == ["upstream_pending"]
        assert (mirror / "obj").exists() and server.get("obj") == image_bytes("PNG", 3)
        # The report names the item of a file whose upstream removal waits (one spelling of the state).
        report = run_cli("report", "--flagged", "--state", str(tmp_path / "state.db"))
        assert report.returncode == 0, report.stderr
        (line,) = [json.loads(x) for x in report.stdout.splitlines()]
        assert line["action"] == "upstream_pending" and line["item"] == items[0]["id"], line
    finally:
        server.stop()


# ----------------------------------------------------------------------------- restore trusts the ledger


@pytest.fixture
def quarantined(tmp_path, tiny_bundle_master, flag_all):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.png").write_bytes(image_bytes("PNG", 1))
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all))
    assert proc.returncode == 1, proc.stderr
    (item,) = json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)
    return mirror, item, tmp_path / "q" / "items" / item["id"]


def test_edited_metadata_never_moves_a_restore(quarantined, tmp_path):
    mirror, item, item_dir = quarantined
    meta = json.loads((item_dir / "meta.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (item_dir / "meta.json").write_text(
        json.dumps(
            {**meta, "mirror_root": str(elsewhere), "mirror_root_b64": base64.b64encode(bytes(elsewhere)).decode()}
        )
    )
    proc = _cli(tmp_path, "quarantine", "restore", item["id"])
    assert proc.returncode == 2 and "disagrees with the ledger on mirror_root" in proc.stderr
    assert list(elsewhere.iterdir()) == [] and not (mirror / "a.png").exists()


def test_replaced_bytes_with_a_matching_metadata_sha256_are_refused(quarantined, tmp_path):
    mirror, item, item_dir = quarantined
    foreign = b"foreign bytes"
    meta = json.loads((item_dir / "meta.json").read_text())
    (item_dir / "data").write_bytes(foreign)
    (item_dir / "meta.json").write_text(json.dumps({**meta, "sha256": sha(foreign), "size": len(foreign)}))
    proc = _cli(tmp_path, "quarantine", "restore", item["id"])
    assert proc.returncode == 2 and "disagrees with the ledger" in proc.stderr
    assert not (mirror / "a.png").exists()
    assert sha(foreign) not in _cli(tmp_path, "allowlist", "list").stdout


def test_restore_to_never_goes_through_a_symlinked_directory(quarantined, tmp_path):
    mirror, item, _ = quarantined
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    proc = _cli(tmp_path, "quarantine", "restore", item["id"], "--to", str(tmp_path / "link" / "a.png"))
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert list(real.iterdir()) == []
    proc = _cli(tmp_path, "quarantine", "restore", item["id"], "--to", str(real / "a.png"))
    assert proc.returncode == 0 and (real / "a.png").read_bytes() == image_bytes("PNG", 1)


# ----------------------------------------------------------------------------- the validator


@pytest.fixture
def validator(tmp_path, tiny_bundle_master, flag_all):
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(flag_all))
    yield v
    v.stop()


def _raw(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or the timeout passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_content_length_must_be_a_plain_integer_within_the_limit(validator):
    for length in (b"-1", b"+5", b"1e3", b"0x10", b"99999999999999999999"):
        answer = _raw(validator.port, b"POST /validate/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: " + length + b"\r\n\r\n" + b"x" * 64)  # fmt: skip
        status = answer.split(b"\r\n", 1)[0]  # aiohttp's parser answers framing errors as HTTP/1.0
        assert status.startswith(b"HTTP/1.") and status.split(b" ", 2)[1] in (b"400", b"413"), (length, answer[:80])
    answer = _raw(validator.port, b"POST /validate/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 5\r\nContent-Length: 7\r\n\r\n12345")  # fmt: skip
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))


def test_stalled_bodies_never_hold_the_slots(validator):
    stalled = []
    try:
        for _ in range(70):  # more than max_in_flight (64): headers, then nothing
            sock = socket.create_connection(("127.0.0.1", validator.port), timeout=5)
            sock.sendall(
                b"POST /validate/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            )
            stalled.append(sock)
        started = time.monotonic()
        status, _ = validator.post(image_bytes("PNG", 9))
        assert status == 406 and time.monotonic() - started < 5  # judged, not 503
    finally:
        for sock in stalled:
            sock.close()


def test_an_early_answer_closes_the_connection_instead_of_parsing_the_body(validator):
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for request in (
        b"POST /validate/wrong-token HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled),  # 403
        b"PUT /validate/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled),  # 405
    ):
        answer = _raw(validator.port, request + smuggled)
        assert answer.count(b"HTTP/1.1 ") == 1, answer  # one answer; the body was never taken as a request
        assert b"Connection: close" in answer


def test_the_token_never_reaches_the_log(tmp_path, tiny_bundle_master, flag_all):
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(flag_all))
    v.proc.args  # noqa: B018
    try:
        assert v.post(image_bytes("PNG", 4))[0] == 406
        v.post(b"x", token=TOKEN + "-wrong")
    finally:
        _, stderr = v.stop()
    assert TOKEN not in stderr


@pytest.mark.parametrize(("policy", "status"), [("reject", 503), ("accept", 200)])
def test_overload_is_a_policy_decision(tmp_path, tiny_bundle_master, flag_all, policy, status):
    # An answer deadline no upload can meet (the batcher gathers for 5 ms): every upload is "overloaded".
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(flag_all), "--on-overload", policy,
                  "--answer-within", "0.001")  # fmt: skip
    try:
        code, body = v.post(image_bytes("PNG", 8))
    finally:
        v.stop()
    assert code == status, body
    if policy == "accept":
        assert body["verdict"] == "accepted" and "not checked" in body["note"]


def test_token_redaction_covers_every_logged_path():
    from mirror_scan.redact import redact

    line = f'"POST /validate/{TOKEN} HTTP/1.1" 406 -'
    assert TOKEN not in redact(line) and "/validate/***" in redact(line)


# ----------------------------------------------------------------------------- scanning


def test_a_fifo_swapped_in_after_discovery_never_blocks_the_reader(tmp_path):
    from mirror_scan.scan.read import Failed, read_stable
    from mirror_scan.store.discover import Found

    path = tmp_path / "upload.png"
    path.write_bytes(image_bytes("PNG", 1))
    st = path.stat()
    found = Found(str(path), st.st_size, st.st_mtime_ns, str(tmp_path))
    path.unlink()
    os.mkfifo(path)  # no writer: a blocking open would hang forever
    started = time.monotonic()
    outcome = read_stable(found, 1 << 20)
    assert isinstance(outcome, Failed) and "not a regular file" in outcome.reason
    assert time.monotonic() - started < 2


def test_watch_with_a_fifo_in_the_mirror_still_stops_on_sigterm(tmp_path, tiny_bundle_master, flag_all):
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run", "--reconcile-every", "1s")
    try:
        os.mkfifo(w.mirror / "pipe.png")
        (w.mirror / "real.png").write_bytes(image_bytes("PNG", 2))
        w.wait_for(lambda: str(w.mirror / "real.png") in w.rows(), what="the real file")
        time.sleep(1.5)
    finally:
        code, stderr = w.stop()
    assert code == 0, stderr


def test_the_daemon_retries_errors_with_backoff(tmp_path, tiny_bundle_master, flag_all):
    good = image_bytes("PNG", 6)
    w = Watcher(
        tmp_path, tiny_bundle_master, flag_all, "--dry-run", "--reconcile-every", "1s", "--retry-errors-after", "1s"
    )
    try:
        path = w.mirror / "late.png"
        path.write_bytes(b"\x00" * len(good))  # unreadable as an image now ...
        w.wait_for(lambda: w.rows().get(str(path), (0, ""))[1] == "error", what="the error")
        mtime = path.stat().st_mtime_ns
        fd = os.open(path, os.O_WRONLY)  # ... fixed in place, same size and mtime (like a chmod)
        os.write(fd, good)
        os.close(fd)
        os.utime(path, ns=(mtime, mtime))
        w.wait_for(lambda: w.rows()[str(path)][1] == "scored", timeout=20, what="the retry")
    finally:
        assert w.stop()[0] == 0


def test_a_damaged_state_database_is_named_and_left_alone(tmp_path, tiny_bundle_master):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.png").write_bytes(image_bytes("PNG", 1))
    assert _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--dry-run").returncode in (0, 1)
    state = tmp_path / "state.db"
    run_cli("state", "check", "--state", str(state), check=True)
    import sqlite3

    with sqlite3.connect(state) as db:  # everything into the main file, so cutting it loses pages
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
    whole = state.read_bytes()
    assert len(whole) > 4096 * 3
    for cut in (1500, 4096 * 2):  # mid-page, and at a page boundary
        state.write_bytes(whole[:cut])
        _assert_refused_untouched(tmp_path, mirror, state, tiny_bundle_master)


def _assert_refused_untouched(tmp_path, mirror, state, tiny_bundle_master):
    damaged = state.read_bytes()
    for args in (
        ("scan", str(mirror), "--model", str(tiny_bundle_master)),
        ("quarantine", "list"),
        ("report",),
        ("state", "check"),
    ):
        proc = _cli(tmp_path, *args) if args[0] not in ("report", "state") else run_cli(*args, "--state", str(state))
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and ("damaged" in proc.stderr or "cannot be read" in proc.stderr)
        assert "state rebuild" in proc.stderr or "state check" in proc.stderr
    assert state.read_bytes() == damaged


def test_state_files_are_private_whatever_the_umask(tmp_path, tiny_bundle_master):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.png").write_bytes(image_bytes("PNG", 1))
    proc = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *CLI, "scan", str(mirror), "--model", str(tiny_bundle_master),
         "--dry-run", "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    for path in tmp_path.glob("state.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))


def test_operator_mistakes_get_a_clear_error_and_change_nothing(quarantined, tmp_path):
    mirror, item, _ = quarantined
    for args, message in (
        (("quarantine", "restore", "--from-file", str(tmp_path / "no-such-list.txt")), "cannot be read"),
        (("quarantine", "show", "../../etc"), "is not a quarantine item id"),
        (("quarantine", "show", f"{item['id']}/x"), "is not a quarantine item id"),
        (("quarantine", "purge", "a/b", "--yes"), "no purgeable quarantine item"),
    ):
        proc = _cli(tmp_path, *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    proc = run_cli("state", "recover", "--state", str(tmp_path / "elsewhere.db"), "--quarantine", str(tmp_path / "q"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not (tmp_path / "elsewhere.db").exists()
    assert json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)[0]["state"] == "quarantined"
