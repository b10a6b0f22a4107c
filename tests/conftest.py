"""Shared fixtures. The tiny random-weight bundle is exported once per session by the project's own
export code (the same path a real ViT-L-14 export takes); verdicts are driven by test policies."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
CLI = [sys.executable, "-m", "mirror_scan.cli"]


def wait_until(condition, timeout: float = 30, what: str = "the condition", every: float = 0.1) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


# What only a process of its own can show: a kill at a crash-test step (the test's own process would die).
NEEDS_A_PROCESS = ("MIRROR_SCAN_KILL_AT",)


def run_cli(
    *args: str,
    check: bool = False,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: int = 300,
    process: bool = False,
    input: str = "",
):
    """Run the real CLI as an admin would; returns CompletedProcess (text). In this process through
    `cli.main.run(argv, io)` with the command's streams in buffers (the environment and working directory
    set for the run), or, with process=True or a crash-test kill in env, in a subprocess: for what only a
    process shows (signals, a C library writing to file descriptor 2, `kill -9`)."""
    full_env = {"NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    if process or any(name in full_env for name in NEEDS_A_PROCESS):
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **full_env},
                              cwd=cwd, timeout=timeout, check=False, input=input or None)  # fmt: skip
    else:
        proc = _run_in_process(list(args), full_env, cwd, input)
    if check and proc.returncode != 0:
        raise AssertionError(f"mirror-scan {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_in_process(args: list[str], env: dict, cwd: Path | None, input: str) -> subprocess.CompletedProcess:
    """`mirror-scan ARGS` run here. What a real process would print for a failure the tool did not expect
    (a traceback, exit 1) is printed the same way, so tests that look for "Traceback" still see one."""
    import traceback

    from mirror_scan.cli.console import Io
    from mirror_scan.cli.main import run

    io = Io.buffers(stdin=input, columns=200)
    saved_env = {name: os.environ.get(name) for name in env}
    saved_cwd = os.getcwd()
    os.environ.update(env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        try:
            code = run(args, io)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # noqa: BLE001 - what the interpreter does with it in a process of its own
            io.stderr.write(traceback.format_exc())
            code = 1
    finally:
        os.chdir(saved_cwd)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    stdout, stderr = io.said()
    return subprocess.CompletedProcess([*CLI, *args], code, stdout, stderr)


def expected_exit(state: Path) -> int:
    """The exit code a scan of everything recorded in `state` must give (README, "Exit codes"): 1 when a
    file is flagged, else 2 when one could not be checked, else 0."""
    import sqlite3

    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        flagged, errors = db.execute("SELECT total(verdict='flagged'), total(status='error') FROM files").fetchone()
    return 1 if flagged else 2 if errors else 0


@contextlib.contextmanager
def taking_turns(tmp_path_factory, name: str):
    """An exclusive lock shared by the xdist workers of this run (their temp folders' common parent), so
    what holds it never overlaps across workers (xdist_group does not group with this pytest). Yields the
    folder the workers share."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's, never a past run's
    lock = shared / f"{name}.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield lock.parent
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def alone(tmp_path_factory):
    """Tests that take both CPUs in bursts (a Ray cluster's raylets) and timed tests take turns."""
    with taking_turns(tmp_path_factory, "cpu-heavy-or-timed"):
        yield


@pytest.fixture(scope="session")
def tiny_bundle_master(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny-test"
    run_cli(
        "model",
        "export",
        "--arch",
        "tiny-test",
        "--pretrained",
        "none",
        "--out",
        str(out),
        "--quantize",
        "int8",
        check=True,
    )
    return out


DD_NARROW = 16  # the test-only width divisor of DeepDanbooru: the random ONNX exports in about two seconds


@pytest.fixture(scope="session")
def dd_bundle_master(tmp_path_factory) -> Path:
    """A tiny CLIP bundle with a narrowed random-weight DeepDanbooru, made by the CLI as an admin would."""
    out = tmp_path_factory.mktemp("dd-bundle") / "tiny-dd"
    run_cli("model", "export", "--arch", "tiny-test", "--pretrained", "none", "--no-fp16", "--out", str(out),
            "--with-deepdanbooru", "--deepdanbooru-width-divisor", str(DD_NARROW), check=True)  # fmt: skip
    return out


@pytest.fixture
def tiny_bundle(tiny_bundle_master, tmp_path) -> Path:
    """A private copy, so tests may tamper with it."""
    copy = tmp_path / "tiny-test"
    shutil.copytree(tiny_bundle_master, copy)
    return copy


@pytest.fixture
def write_policy(tmp_path):
    """Write a generic `groups` policy; thresholds decide the verdict with the random model."""

    def _write(groups: dict, flag_when: dict, name: str = "test-policy", **extra) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(
            json.dumps(
                {"name": name, "rule": "groups", "groups": groups, "parameters": {"flag_when": flag_when}, **extra}
            )
        )
        return path

    return _write


@pytest.fixture
def flag_all(write_policy):
    """A policy that flags every picture (a similarity above -1 for any prompt)."""
    return write_policy({"any": {"cartoon": -1.0}}, {"any": 1}, name="flag-everything")


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (run as an unprivileged user), shared by the tests of one worker; each test
    makes databases of its own (tests/test_lemmy.py's World). Modules may define their own."""
    from .pgserver import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3(tmp_path):
    """A real S3 server on loopback (`rclone serve s3`) with one empty bucket; modules may define their own."""
    from .s3server import S3Server

    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    """Default state, quarantine and config live in a per-test directory, never the user's own."""
    monkeypatch.setenv("MIRROR_SCAN_DATA_DIR", str(tmp_path / "data-dir"))
    monkeypatch.setenv("MIRROR_SCAN_CONFIG", str(tmp_path / "no-config.toml"))
    return tmp_path / "data-dir"


# Threads that may outlive a test by design: a read stuck on a stalled mount is abandoned, bounded
# (fetch.read_with_deadline), and so is a discovery stuck in such a mount's listing.
ABANDONED_BY_DESIGN = ("read", "discover")


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fails a test that leaves a thread of its own running (after a short grace for threads that are
    finishing): every thread the tool starts is stopped and joined."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [
            t for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith(ABANDONED_BY_DESIGN)
        ]  # fmt: skip
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
