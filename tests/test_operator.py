"""The operator's day (issue 26): errors that say what to do, output without literal markup, summaries
and exit codes that tell the truth."""

from __future__ import annotations

import json

import pytest

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


def test_status_without_a_daemon_reads_the_ledger(tmp_path, tiny_bundle_master, flag_all):
    tree = tmp_path / "tree"
    tree.mkdir()
    for seed in range(3):
        generated_image(seed, 64, 48).save(tree / f"p{seed}.png")
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    state, quarantine = str(tmp_path / "s.db"), str(tmp_path / "q")
    scan = run_cli("scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                   "--state", state, "--quarantine", quarantine)  # fmt: skip
    assert scan.returncode == 1, scan.stderr
    proc = run_cli("status", "--state", state, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["daemon"] == "not running" and data["daemons"] == []
    assert data["files"] == 4 and data["flagged"] == 3 and data["errors"] == 1, data
    assert data["items_quarantined"] == 3 and data["upstream_pending"] == 0, data
    text = run_cli("status", "--state", state).stdout
    assert "not running" in text and "items quarantined" in text and "files that could not be checked" in text
    assert "_" not in "".join(line.split("  ")[0] for line in text.splitlines())  # labels, not raw keys
    missing = run_cli("status", "--state", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no watch daemon runs" in missing.stderr


def test_previews_before_acting(tmp_path, tiny_bundle_master, flag_all, write_policy):
    import subprocess

    from .conftest import CLI

    tree = tmp_path / "tree"
    tree.mkdir()
    for seed in range(3):
        generated_image(seed, 64, 48).save(tree / f"p{seed}.png")
    where = ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))
    scan = run_cli("scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(flag_all), "--dry-run",
                   *where)  # fmt: skip
    assert scan.returncode == 1, scan.stderr
    # apply --dry-run lists what would be quarantined, by label, and touches nothing.
    preview = json.loads(run_cli("apply", "--dry-run", "--json", *where).stdout)
    assert preview["would_act"] == 3 and sum(preview["by_label"].values()) >= 3, preview
    assert sorted(preview["files"]) == sorted(str(tree / f"p{seed}.png") for seed in range(3))
    assert len(list(tree.iterdir())) == 3
    # rescore --dry-run says what would change and writes nothing.
    clear = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")
    dry = json.loads(run_cli("rescore", "--dry-run", "--json", "--policy", str(clear), *where).stdout)
    assert dry["to_clean"] == 3 and dry["dry_run"] is True, dry
    flagged = run_cli("report", "--flagged", "--state", str(tmp_path / "s.db")).stdout.splitlines()
    assert len(flagged) == 3  # the verdicts on record are unchanged
    text = run_cli("rescore", "--dry-run", "--policy", str(clear), *where).stdout
    assert "would rescore 3 file(s)" in text and "no verdict was changed" in text
    # apply acts; the purge prompt lists every item it would delete, and "no" deletes nothing.
    assert run_cli("apply", *where).returncode == 0
    items = json.loads(run_cli("quarantine", "list", "--json", *where).stdout)
    assert len(items) == 3
    proc = subprocess.run([*CLI, "quarantine", "purge", "--older-than", "0s", *where], input="n\n",
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert all(item["id"] in proc.stdout for item in items) and "3 quarantined" in proc.stdout, proc.stdout
    assert {i["state"] for i in json.loads(run_cli("quarantine", "list", "--json", *where).stdout)} == {"quarantined"}


def test_quarantine_list_is_one_line_per_item_at_80_columns(tmp_path, tiny_bundle_master, flag_all):
    import re

    deep = tmp_path / "mirror" / "a-long-directory-name" / "another-long-directory-name" / "and-one-more"
    deep.mkdir(parents=True)
    for seed in range(3):
        generated_image(seed, 64, 48).save(deep / f"upload-with-a-long-name-{seed}.png")
    where = ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))
    assert run_cli("scan", str(tmp_path / "mirror"), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                   *where).returncode == 1  # fmt: skip
    items = json.loads(run_cli("quarantine", "list", "--json", *where).stdout)
    text = _in_a_terminal(["quarantine", "list", *where], columns=80)
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in text.replace("\r", "").splitlines()]
    for item in items:
        (line,) = [line for line in lines if item["short_id"] in line]  # exactly one line per item
        assert len(line) <= 80 and line.endswith(".png"), line  # the file name kept, the path shortened
    assert any(line.strip() == "3 item(s)" for line in lines)
    # The short id names the item wherever an id is taken.
    shown = run_cli("quarantine", "show", items[0]["short_id"], *where)
    assert shown.returncode == 0 and items[0]["id"] in shown.stdout, shown.stderr
    restored = run_cli("quarantine", "restore", items[0]["short_id"], *where)
    assert restored.returncode == 0 and items[0]["id"] in restored.stdout, restored.stderr
    only = json.loads(run_cli("quarantine", "list", "--json", "--state-is", "restored", *where).stdout)
    assert [i["id"] for i in only] == [items[0]["id"]]
    assert len(json.loads(run_cli("quarantine", "list", "--json", "--limit", "1", *where).stdout)) == 1


def test_services_log_one_line_per_event_in_text_or_json(tmp_path, tiny_bundle_master, flag_all):
    deep = tmp_path / "mirror" / ("a-directory-name-long-enough-to-wrap-any-terminal-" * 2).rstrip("-")
    deep.mkdir(parents=True)
    for seed in range(2):
        generated_image(seed, 64, 48).save(deep / f"p{seed}.png")
    (deep / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    where = ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))
    args = ("scan", str(tmp_path / "mirror"), "--model", str(tiny_bundle_master), "--policy", str(flag_all), *where)
    proc = run_cli("-v", "--log-format", "json", *args)
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]  # every line one object
    quarantined = [e for e in events if e["message"].startswith("quarantined ")]
    # Content taken from public view: NOTICE (priority 5) in every process (issue 45), `journalctl -p notice`
    assert len(quarantined) == 2 and all(e["level"] == "notice" and e["priority"] == 5 for e in quarantined), events
    assert any(e["message"].startswith(f"could not check {deep / 'broken.png'}") for e in events), events
    # Plain text when not at a terminal: one line per event however long, the priority first under journald.
    restore_id = json.loads(run_cli("quarantine", "list", "--json", *where).stdout)[0]["short_id"]
    env = {"COLUMNS": "80", "JOURNAL_STREAM": "8:12345"}
    proc = run_cli("-v", "quarantine", "restore", restore_id, *where, env=env)
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "restored quarantine item" in line]
    assert line.startswith("<5>notice: mirror_scan.store.restorer: restored quarantine item") and str(deep) in line


# ----------------------------------------------------------------------------- deployment

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _exec_start(unit) -> list[str]:
    import shlex

    text = unit.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_every_systemd_unit_runs_a_command_line_the_cli_accepts(tmp_path):
    import shutil
    import subprocess
    import sys

    units = sorted((REPO / "scripts" / "systemd").iterdir())
    assert {u.name for u in units} >= {
        "mirror-scan-watch.service", "mirror-scan-serve.service", "mirror-scan-purge.service", "mirror-scan-purge.timer"
    }  # fmt: skip
    binary = shutil.which("mirror-scan", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert binary, "the venv's mirror-scan entry point"
    # The units and the README agree (issue 40): the entry point of the venv the README's production
    # install makes, and the config file its systemd steps install.
    import re

    readme = (REPO / "README.md").read_text()
    (venv,) = set(re.findall(r"python3 -m venv (/\S+)", readme))
    installed = f"{venv}/bin/mirror-scan"
    (config,) = set(re.findall(r"sudo install -m 0640 -g mirror-scan \S+ (/etc/\S+)", readme))
    for unit in units:
        text = unit.read_text()
        if unit.suffix == ".service":
            argv = _exec_start(unit)
            assert argv[0] == installed, (unit.name, argv[0], installed)
            assert f"Environment=MIRROR_SCAN_CONFIG={config}\n" in text and "--config" not in argv, unit.name
            # Every option the unit passes exists (click refuses an unknown one before it reads --help).
            proc = subprocess.run([binary, *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, (unit.name, proc.stdout[-500:], proc.stderr[-500:])
            assert "PrivateTmp=yes" in text and "NoNewPrivileges=yes" in text and "UMask=0077" in text
        (tmp_path / unit.name).write_text(text.replace(installed, binary))
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the command lines are checked above; systemd's own checks need systemd-analyze
    for unit in sorted(tmp_path.iterdir()):
        proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (unit.name, proc.stdout, proc.stderr)
        assert "Unknown key" not in proc.stderr and "Unknown section" not in proc.stderr, proc.stderr


def test_alert_rules_and_dashboard_name_metrics_the_daemons_export():
    import re
    import shutil
    import subprocess

    rules = REPO / "scripts" / "monitoring" / "prometheus-alerts.yml"
    dashboard = json.loads((REPO / "scripts" / "monitoring" / "grafana-dashboard.json").read_text())
    exported = set()
    for module in ("app/daemon.py", "intake/http.py"):
        source = (REPO / "mirror_scan" / module).read_text()
        exported |= set(re.findall(r'"(mirror_scan_[a-z_]+)"', source))
        exported |= {f"mirror_scan_{key}" for key in re.findall(r'\("([a-z_]+)", "[A-Z]', source)}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + re.findall(
        r"expr: (.+)", rules.read_text()
    )
    for expr in exprs:
        for name in re.findall(r"\bmirror_scan_[a-z_]+", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert name in exported or base in exported, (name, expr)
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # names checked above; promtool (Debian's prometheus package) checks the rule syntax
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS: 6 rules found" in proc.stdout, proc.stdout + proc.stderr


def test_config_init_writes_a_commented_file_that_parses(tmp_path):
    import re

    target = tmp_path / "config.toml"
    proc = run_cli("config", "init", "--out", str(target))
    assert proc.returncode == 0 and target.exists(), proc.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    text = target.read_text()
    assert all(line.startswith("#") or line.startswith("[") or not line for line in text.splitlines())
    assert "password =" not in text  # passwords never go in the file
    # Every example, uncommented, is a valid setting.
    uncommented = re.sub(r"^# (\w+ = .+)$", r"\1", text, flags=re.M)
    (tmp_path / "all.toml").write_text(uncommented)
    shown = run_cli("config", "--config", str(tmp_path / "all.toml"), "--json")
    assert shown.returncode == 0, shown.stderr
    values = json.loads(shown.stdout)
    assert values["batch_size"] == {"value": 16, "source": f"config {tmp_path / 'all.toml'}"}, values["batch_size"]
    assert values["remote"]["value"] == "pictrs:pictrs-bucket" and values["lemmy_notify"]["value"] == ["admin"]
    again = run_cli("config", "init", "--out", str(target))
    assert again.returncode == 2 and "exists" in again.stderr


def test_commands_that_print_data_speak_json(tmp_path, tiny_bundle_master, flag_all):
    policies = json.loads(run_cli("policy", "list", "--json").stdout)
    assert {p["name"] for p in policies} >= {"horde-v2", "horde-v1"} and any(p["default"] for p in policies)
    verified = json.loads(run_cli("model", "verify", str(tiny_bundle_master), "--json").stdout)
    assert verified["files_verified"] > 0 and any(p["status"] == "ok" for p in verified["precisions"]), verified
    tree = tmp_path / "tree"
    tree.mkdir()
    for seed in range(2):
        generated_image(seed, 64, 48).save(tree / f"p{seed}.png")
    where = ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))
    run_cli("scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(flag_all), *where)
    checked = json.loads(run_cli("state", "check", "--json", *where).stdout)
    assert checked["ok"] is True and checked["items"] == 2 and checked["files"] == 2, checked
    first, second = (i["id"] for i in json.loads(run_cli("quarantine", "list", "--json", *where).stdout))
    shown = json.loads(run_cli("quarantine", "show", first, "--json", *where).stdout)
    assert shown["id"] == first and shown["ledger"]["state"] == "quarantined"
    restore = run_cli("quarantine", "restore", first, "--json", *where)
    assert restore.returncode == 0, restore.stderr
    restored = json.loads(restore.stdout)
    assert [r["id"] for r in restored["restored"]] == [first] and restored["failed"] == []
    refused = run_cli("quarantine", "purge", second, "--json", *where)
    assert refused.returncode == 2 and "--yes" in refused.stderr  # nobody to ask
    purged = json.loads(run_cli("quarantine", "purge", second, "--json", "--yes", *where).stdout)
    assert purged == {"purged": [second]}
    listfile = tmp_path / "list.csv"
    listfile.write_text("type,hash\nsha256," + __import__("hashlib").sha256(b"listed").hexdigest() + "\n")
    imported = json.loads(run_cli("hashlist", "import", str(listfile), "--name", "l", "--json", *where).stdout)
    assert imported["entries"]["sha256"] == 1 and imported["action"] == "flag"
    # The common options are accepted by every command that touches the state.
    assert run_cli("report", *where).returncode == 0


@pytest.mark.parametrize("process", [False, True], ids=["in-process", "process"])
def test_usage_errors_are_one_message_and_exit_2_never_a_traceback(tmp_path, process):
    """typer 0.20+ raises its own copy of click's exceptions: both are usage errors to `run()`."""
    state = str(tmp_path / "s.db")
    for args, words in (
        (("quarantine", "confirm", "--state", state), "Missing argument"),
        (("scan", "--bogus"), "No such option"),
        (("quarantine", "list", "--limit", "0", "--state", state), "Invalid value for '--limit'"),
    ):
        proc = run_cli(*args, process=process)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
