"""The operator's day (issue 26): errors that say what to do, output without literal markup, summaries
and exit codes that tell the truth."""

from __future__ import annotations

import json

from mirror_scan.model.synthetic import generated_image

from .conftest import run_cli


def test_a_state_path_that_is_a_directory_is_a_plain_error(tmp_path, tiny_bundle_master):
    (tmp_path / "tree").mkdir()
    proc = run_cli("scan", str(tmp_path / "tree"), "--model", str(tiny_bundle_master), "--state", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "is a directory" in proc.stderr and "state.db" in proc.stderr and "Traceback" not in proc.stderr


def test_no_literal_markup_reaches_the_terminal(tiny_bundle_master):
    for args in (("policy", "show", "horde-v2"), ("model", "info", str(tiny_bundle_master))):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert "[/]" not in proc.stdout and "[bold" not in proc.stdout, proc.stdout


def test_files_that_could_not_be_checked_make_the_exit_code_2(tmp_path, tiny_bundle_master, write_policy):
    tree = tmp_path / "tree"
    tree.mkdir()
    generated_image(1, 64, 48).save(tree / "fine.png")
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing else
    clear = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")
    proc = run_cli(
        "scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(clear),
        "--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"), "--json",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["errors"] == 1 and summary["flagged"] == 0 and summary["scanned"] == 1, summary
    proc = run_cli(
        "scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(clear),
        "--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"),
    )  # fmt: skip
    assert proc.returncode == 2 and "could not be checked (errors)" in proc.stdout, proc.stdout
    (tree / "broken.png").unlink()
    proc = run_cli(
        "scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(clear),
        "--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout  # every file there checked, nothing flagged


def _in_a_terminal(args: list[str], columns: int = 80, timeout: float = 120) -> str:
    """Run the CLI with a pseudo-terminal of `columns` as its stdout and stderr; everything it wrote."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios
    import time

    from .conftest import CLI

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    proc = subprocess.Popen([*CLI, *args], stdin=follower, stdout=follower, stderr=follower,
                            env={**env, "TERM": "xterm-256color"}, close_fds=True)  # fmt: skip
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_the_progress_bar_has_a_total_and_a_sane_rate(tmp_path, tiny_bundle_master, write_policy):
    import re

    tree = tmp_path / "tree"
    tree.mkdir()
    for seed in range(240):  # enough for the display to refresh (10 times a second) several times
        generated_image(seed, 96, 72).save(tree / f"p{seed}.png")
    clear = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")
    text = _in_a_terminal(["scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(clear),
                           "--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"),
                           "--batch-size", "4"])  # fmt: skip
    assert re.search(r"\b\d+/240\b", text), text[-2000:]  # the total, once discovery is done
    rates = [float(r) for r in re.findall(r"([0-9.]+) files/s", text)]
    assert rates and max(rates) < 10_000, rates  # from the wall clock, not from a counter that stays 0
    assert "[/]" not in text and "Traceback" not in text
