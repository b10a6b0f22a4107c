"""The operator's day, second round (issue 45): each friction a new admin met, through the real CLI, named
after the finding it answers."""

from __future__ import annotations

import json

from .conftest import run_cli


def _where(tmp_path) -> tuple[str, ...]:
    return ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))


def _canary_items(tmp_path, bundle, write_policy) -> list[dict]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    assert run_cli("canary", "make", str(mirror / "canary.png")).returncode == 0
    clear = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")
    proc = run_cli("scan", str(mirror), "--model", str(bundle), "--policy", str(clear), *_where(tmp_path))
    assert proc.returncode == 1, proc.stderr
    return json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)


def test_5_a_canary_item_is_never_restored_or_confirmed_only_purged(tmp_path, tiny_bundle_master, write_policy):
    (item,) = _canary_items(tmp_path, tiny_bundle_master, write_policy)
    restore = run_cli("quarantine", "restore", item["id"], "--yes", *_where(tmp_path))
    assert restore.returncode != 0 and "is the canary" in restore.stdout + restore.stderr, restore
    assert not (tmp_path / "mirror" / "canary.png").exists()  # still held
    confirm = run_cli("quarantine", "confirm", item["id"], *_where(tmp_path))
    assert confirm.returncode != 0 and "is the canary" in confirm.stdout + confirm.stderr, confirm
    (still,) = json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)
    assert still["state"] == "quarantined"
    allowlist = run_cli("allowlist", "list", "--json", *_where(tmp_path))
    assert allowlist.returncode == 0 and json.loads(allowlist.stdout or "[]") == []
    purge = run_cli("quarantine", "purge", item["id"], "--yes", *_where(tmp_path))
    assert purge.returncode == 0, purge.stderr


def test_8_a_misspelled_section_and_a_word_for_a_number_are_named_with_the_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[scna]\nbatch_size = 8\n")
    proc = run_cli("config", "--config", str(config))
    assert proc.returncode == 2 and f"config file {config}: unknown section [scna]" in proc.stderr, proc.stderr
    assert "did you mean [scan]?" in proc.stderr
    config.write_text('[scan]\nbatch_size = "sixteen"\n')
    proc = run_cli("config", "--config", str(config))
    assert proc.returncode == 2 and str(config) in proc.stderr and "must be a whole number" in proc.stderr
    assert "invalid literal" not in proc.stderr
    # config init says what the defaults are: dry_run is false.
    written = tmp_path / "init.toml"
    init = run_cli("config", "init", "--out", str(written))
    assert init.returncode == 0, init.stderr
    text = written.read_text()
    assert "# dry_run = false" in text and "# dry_run = true" not in text


def test_9_12_purge_takes_a_unique_part_of_an_id_when_asked_and_a_question_without_an_answer_says_why(
    tmp_path, tiny_bundle_master, flag_all
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    from .mediafiles import image_bytes

    (mirror / "a.png").write_bytes(image_bytes("PNG", 1))
    proc = run_cli("scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                   *_where(tmp_path))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (item,) = json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)
    part = item["id"][2:12]
    # No terminal, no answer: said, with what to do (not a bare exit 1).
    asked = run_cli("quarantine", "purge", part, *_where(tmp_path))
    assert asked.returncode == 1 and "got no answer" in asked.stderr and "--yes" in asked.stderr, asked
    # Asked and answered: a unique part of the id is enough, as for show and restore.
    answered = run_cli("quarantine", "purge", part, *_where(tmp_path), input="y\n")
    assert answered.returncode == 0 and "purged 1 item(s)" in answered.stdout, answered
    # With -y (now accepted) a fragment is not enough: irreversible without a question needs the id.
    (mirror / "b.png").write_bytes(image_bytes("PNG", 2))
    run_cli("scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all), *_where(tmp_path))
    items = json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)
    (second,) = [i for i in items if i["state"] == "quarantined"]
    refused = run_cli("quarantine", "purge", second["id"][2:12], "-y", *_where(tmp_path))
    assert refused.returncode != 0, refused
    done = run_cli("quarantine", "purge", second["id"], "-y", *_where(tmp_path))
    assert done.returncode == 0, done.stderr


def test_6_a_state_database_that_is_not_there_is_named_not_taken_for_an_empty_one(tmp_path):
    wrong = ("--state", str(tmp_path / "typo" / "state.db"), "--quarantine", str(tmp_path / "q"))
    for command in (("quarantine", "list"), ("quarantine", "show", "abc"), ("quarantine", "restore", "abc"),
                    ("quarantine", "confirm", "abc"), ("quarantine", "purge", "abc", "--yes"),
                    ("quarantine", "export-hashes"), ("lemmy", "ban", "abc", "--yes"), ("lemmy", "retry")):  # fmt: skip
        proc = run_cli(*command, *wrong)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert f"state database {tmp_path / 'typo' / 'state.db'} does not exist" in proc.stderr, proc.stderr
        assert "quarantine reindex" in proc.stderr and "0 item(s)" not in proc.stdout
    pull = run_cli("mirror", "pull", "--remote", "pictrs:bucket", "--to", str(tmp_path / "m"), *wrong)
    assert pull.returncode == 2 and f"its directory {tmp_path / 'typo'} does not exist" in pull.stderr, pull
    assert not (tmp_path / "typo").exists()  # nothing made for a command that failed


def _flagged(tmp_path, bundle, flag_all, *names: str) -> tuple[dict[str, bytes], list[dict]]:
    """Generated pictures in a mirror, scanned with a policy that flags everything: their bytes and items."""
    from .mediafiles import image_bytes

    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    made = {}
    for seed, name in enumerate(names, 1):
        made[name] = image_bytes("PNG", seed)
        (mirror / name).write_bytes(made[name])
    proc = run_cli("scan", str(mirror), "--model", str(bundle), "--policy", str(flag_all), *_where(tmp_path))
    assert proc.returncode == 1, proc.stderr
    return made, json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)


def _mode(path) -> int:
    import stat

    return stat.S_IMODE(path.stat().st_mode)


def test_10_extract_takes_a_private_verified_copy_without_restoring_and_records_it(
    tmp_path, tiny_bundle_master, flag_all
):
    made, (item,) = _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png")
    out = tmp_path / "for-the-hotline"
    out.mkdir()
    proc = run_cli("quarantine", "extract", item["id"][:12], "--to", str(out), *_where(tmp_path))
    assert proc.returncode == 0, proc.stderr
    copy = out / f"mirror-scan-{item['id']}"
    assert _mode(copy) == 0o700 and sorted(p.name for p in copy.iterdir()) == ["a.png", "item.json"]
    assert all(_mode(p) == 0o600 for p in copy.iterdir())
    assert (copy / "a.png").read_bytes() == made["a.png"]
    record = json.loads((copy / "item.json").read_text())
    assert record["id"] == item["id"] and record["ledger"]["sha256"] == record["extracted"]["sha256"]
    # Still held, nothing allowlisted, nothing back in the mirror; the history says who took a copy, where.
    (held,) = json.loads(run_cli("quarantine", "list", "--json", *_where(tmp_path)).stdout)
    assert held["state"] == "quarantined" and not (tmp_path / "mirror" / "a.png").exists()
    assert json.loads(run_cli("allowlist", "list", "--json", *_where(tmp_path)).stdout or "[]") == []
    shown = json.loads(run_cli("quarantine", "show", item["id"], "--json", *_where(tmp_path)).stdout)
    assert any(f"copy extracted to {copy}" in h["state"] for h in shown["history"]), shown["history"]
    # A copy taken before is never overwritten.
    again = run_cli("quarantine", "extract", item["id"], "--to", str(out), *_where(tmp_path))
    assert again.returncode == 1 and "already exists" in again.stderr, again
    # A link planted where the copy is made is refused, never followed (nothing written or removed there).
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("kept")
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / f".mirror-scan-{item['id']}.extracting").symlink_to(victim)
    linked = run_cli("quarantine", "extract", item["id"], "--to", str(planted), *_where(tmp_path))
    assert linked.returncode == 1 and "symbolic link" in linked.stderr, linked
    assert [p.name for p in victim.iterdir()] == ["keep"]
    # Bytes that do not match their sha256 are refused, and no copy is left.
    data = tmp_path / "q" / "items" / item["id"] / "data"
    data.chmod(0o600)
    data.write_bytes(data.read_bytes()[:-1] + b"\x00")
    other = tmp_path / "other"
    other.mkdir()
    bad = run_cli("quarantine", "extract", item["id"], "--to", str(other), *_where(tmp_path))
    assert bad.returncode == 1 and "do not match their recorded sha256" in bad.stderr, bad
    assert list(other.iterdir()) == []


def test_10_an_extract_killed_at_any_step_leaves_no_copy_without_its_history_line(
    tmp_path, tiny_bundle_master, flag_all
):
    """The copy is a move of its own: killed before its history line, the next start removes the copy (never a
    copy in the clear left behind); killed after, it puts the copy in place (never a copy without its line)."""
    made, (item,) = _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png")
    for step in ("extract:intent", "extract:copied", "extract:noted"):
        out = tmp_path / step.replace(":", "-")
        out.mkdir()
        killed = run_cli("quarantine", "extract", item["id"], "--to", str(out), *_where(tmp_path),
                         env={"MIRROR_SCAN_KILL_AT": step})  # fmt: skip
        assert killed.returncode == -9, (step, killed)
        assert not (out / f"mirror-scan-{item['id']}").exists()  # only a dot directory, never a whole-looking copy
        assert all(p.name.startswith(".") for p in out.iterdir())
        recovered = run_cli("state", "recover", *_where(tmp_path))
        assert recovered.returncode == 0, recovered.stderr
        if step == "extract:noted":
            assert [p.name for p in out.iterdir()] == [f"mirror-scan-{item['id']}"]
            assert (out / f"mirror-scan-{item['id']}" / "a.png").read_bytes() == made["a.png"]
        else:
            assert list(out.iterdir()) == [], (step, list(out.iterdir()))
    shown = json.loads(run_cli("quarantine", "show", item["id"], "--json", *_where(tmp_path)).stdout)
    lines = [h["state"] for h in shown["history"] if "copy extracted" in h["state"]]
    assert len(lines) == 1 and "extract-noted" in lines[0], lines  # only the copy that exists has a line
    done = run_cli("quarantine", "extract", item["id"], "--to", str(tmp_path / "extract-copied"), *_where(tmp_path))
    assert done.returncode == 0, done.stderr


def test_10_restore_to_a_directory_puts_the_file_in_it_under_its_own_name(tmp_path, tiny_bundle_master, flag_all):
    made, items = _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png", "b.png")
    by_name = {i["original"].rsplit("/", 1)[-1]: i for i in items}
    into = tmp_path / "restored"
    into.mkdir()
    proc = run_cli("quarantine", "restore", by_name["a.png"]["id"], "--to", f"{into}/", "--yes", *_where(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (into / "a.png").read_bytes() == made["a.png"]
    proc = run_cli("quarantine", "restore", by_name["b.png"]["id"], "--to", str(into), "--yes", *_where(tmp_path))
    assert proc.returncode == 0, proc.stderr  # an existing directory without the slash: the same, as cp reads it
    assert (into / "b.png").read_bytes() == made["b.png"]
    missing = run_cli("quarantine", "restore", by_name["a.png"]["id"], "--to", f"{tmp_path}/nope/", *_where(tmp_path))
    assert missing.returncode == 2 and "no such directory" in missing.stderr, missing


def test_11_hashlist_export_shares_confirmed_items_only_unless_unreviewed_is_asked_for(
    tmp_path, tiny_bundle_master, flag_all
):
    from mirror_scan.hashing import sha256_bytes

    made, items = _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png", "b.png")
    by_name = {i["original"].rsplit("/", 1)[-1]: i for i in items}
    state = ("--state", str(tmp_path / "s.db"))
    nothing = run_cli("hashlist", "export", *state)
    assert nothing.returncode == 0 and "no confirmed item to share" in nothing.stderr
    assert sha256_bytes(made["a.png"]) not in nothing.stdout and sha256_bytes(made["b.png"]) not in nothing.stdout
    assert run_cli("quarantine", "confirm", by_name["a.png"]["id"], *_where(tmp_path)).returncode == 0
    shared = run_cli("hashlist", "export", *state)
    assert sha256_bytes(made["a.png"]) in shared.stdout and sha256_bytes(made["b.png"]) not in shared.stdout
    everything = run_cli("hashlist", "export", "--unreviewed", *state)
    assert sha256_bytes(made["b.png"]) in everything.stdout and "warning: --unreviewed" in everything.stderr


def test_12_show_is_a_summary_and_the_whole_record_is_json(tmp_path, tiny_bundle_master, flag_all):
    _made, (item,) = _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png")
    shown = run_cli("quarantine", "show", item["id"], *_where(tmp_path))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) < 25 and not shown.stdout.lstrip().startswith("{"), shown.stdout
    assert any(line.startswith("verdict    flagged") for line in lines)
    assert any(line.startswith("made by    model tiny-test") and "policy flag-everything" in line for line in lines)
    assert f"quarantine show {item['id']} --json" in lines[-1]
    assert json.loads(run_cli("quarantine", "show", item["id"], "--json", *_where(tmp_path)).stdout)["id"] == item["id"]


def test_6_scan_never_takes_a_wrong_state_path_for_a_first_start(tmp_path, tiny_bundle_master, flag_all):
    _made, _items = _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png")
    scan = ("scan", str(tmp_path / "mirror"), "--model", str(tiny_bundle_master), "--policy", str(flag_all))
    # A directory that is not there: a typo, refused, nothing made.
    typo = run_cli(*scan, "--state", str(tmp_path / "tpyo" / "s.db"), "--quarantine", str(tmp_path / "q"))
    assert typo.returncode == 2 and f"its directory {tmp_path / 'tpyo'} does not exist" in typo.stderr, typo
    assert not (tmp_path / "tpyo").exists()
    # A new database beside a quarantine that holds items: the real one is elsewhere (or lost), refused.
    other = run_cli(*scan, "--state", str(tmp_path / "other.db"), "--quarantine", str(tmp_path / "q"))
    assert other.returncode == 2 and "holds 1 item(s)" in other.stderr and "quarantine reindex" in other.stderr
    assert not (tmp_path / "other.db").exists()
    # A real first start is said, with where the path came from.
    first = run_cli(*scan, "--state", str(tmp_path / "new.db"), "--quarantine", str(tmp_path / "q2"), "--dry-run")
    assert first.returncode == 0, first.stderr  # (the mirror is empty now: a.png is held)
    assert f"new state database {tmp_path / 'new.db'} (flag)" in first.stderr
    again = run_cli(*scan, "--state", str(tmp_path / "new.db"), "--quarantine", str(tmp_path / "q2"), "--dry-run")
    assert "new state database" not in again.stderr


def test_7_rescore_says_what_it_recorded_and_write_stores_the_severity_for_the_daemons(
    tmp_path, tiny_bundle_master, flag_all
):
    import tomllib

    _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png")
    config = tmp_path / "config.toml"
    config.write_text(f'[scan]\npolicy = "{flag_all}"\nmodel = "{tiny_bundle_master}"\n')
    where = (*_where(tmp_path), "--config", str(config))
    recorded = run_cli("rescore", "--severity", "-0.23", *where)
    assert recorded.returncode == 0, recorded.stderr
    assert "recorded 1 verdict(s) in the state database" in recorded.stdout
    assert "watch, scan and serve keep using severity +0 (default); --write stores severity -0.23" in recorded.stdout
    assert "severity" not in tomllib.loads(config.read_text())["scan"]
    assert run_cli("rescore", "--severity", "-0.23", "--write", "--dry-run", *where).returncode == 2
    written = run_cli("rescore", "--severity", "-0.23", "--write", "--json", *where)
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout.splitlines()[-1])["written"] == str(config)
    assert tomllib.loads(config.read_text())["scan"]["severity"] == "-0.23"
    shown = json.loads(run_cli("config", "--json", "--config", str(config)).stdout)
    assert shown["severity"] == {"value": "-0.23", "source": f"config {config}"}  # what watch and scan now use
    assert "keep using" not in run_cli("rescore", *where).stdout  # rescored at what the daemons use: said once


def test_1_2_4_a_watch_whose_pulls_fail_says_why_binds_nothing_and_logs_every_removal_and_restore(
    tmp_path, tiny_bundle_master, flag_all
):
    """Its pulls failing: the reason in the log and in `status` (last pull never, the remote's breaker not
    closed), the mirror tied to no bucket; once they work, the bucket recorded, every pull that brings files
    logged, the quarantine and a restore made from a shell while it runs both at NOTICE."""
    from .mediafiles import image_bytes
    from .s3server import S3Server
    from .test_watch import Watcher

    server = S3Server(tmp_path / "s3")  # not started yet: its port refuses connections
    where = ("--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"))
    w = Watcher(tmp_path, tiny_bundle_master, flag_all, "--remote", server.remote, "--pull-every", "1s",
                env={**server.env(), "JOURNAL_STREAM": "8:1"})  # fmt: skip
    try:
        w.wait_for(lambda: (w.status() or {}).get("last_pull_error"), timeout=60, what="a failed pull")
        assert "connection refused" in w.status()["last_pull_error"]
        status = run_cli("status", *where[:2])
        lines = [line.strip() for line in status.stdout.splitlines()]
        assert any(line.startswith("last pull ") and line.endswith(" never") for line in lines), status
        assert any(line.startswith("last pull failed ") and "connection refused" in line for line in lines)
        breakers = next(line for line in lines if line.startswith("upstream circuit breakers"))
        assert f"{server.remote}: " in breakers and "closed" not in breakers, breakers
        healthy = run_cli("health", *where[:2])  # the container's health check: a daemon runs, its status fresh
        assert healthy.returncode == 0 and "healthy: " in healthy.stdout, healthy
        unbound = run_cli("mirror", "remote", str(w.mirror), *where)
        assert "no remote recorded yet" in unbound.stdout, unbound
        server.start()
        server.put("a1b2c3d4-0000-4000-8000-000000000001", image_bytes("PNG", 3), tmp_path)
        w.wait_for(lambda: not server.keys(), timeout=60, what="the object to leave the bucket")
        w.wait_for(lambda: not (w.status() or {}).get("last_pull_error"), timeout=30, what="a pull that worked")
        bound = run_cli("mirror", "remote", str(w.mirror), *where)
        assert f"mirrors {server.remote} (recorded by `watch --remote`" in bound.stdout, bound
        (item,) = json.loads(run_cli("quarantine", "list", "--json", *where).stdout)
        restored = run_cli("quarantine", "restore", item["id"], "--yes", *where, env=server.env())
        assert restored.returncode == 0, restored.stderr
        w.wait_for(lambda: (w.status() or {}).get("restores_seen") == 1, timeout=15, what="the daemon to see it")
    finally:
        code, stderr = w.stop()
        server.stop()
    assert code == 0, stderr
    gone = run_cli("health", *where[:2])
    assert gone.returncode == 1 and "no watch daemon and no validator runs" in gone.stderr, gone
    lines = stderr.splitlines()
    failed = [line for line in lines if "pull failed: rclone copy failed" in line]
    assert failed and all(line.startswith("<4>warning: ") and "connection refused" in line for line in failed), lines
    assert any("pulled 1 new file(s) from " in line for line in lines), lines
    assert any(line.startswith("<5>notice: mirror_scan.scan.record: quarantined ") for line in lines), lines
    assert any(line.startswith("<5>notice: ") and f"quarantine item {item['id']} was restored to " in line
               for line in lines), lines  # fmt: skip


def test_2_3_a_failed_first_pull_binds_nothing_and_says_what_rclone_meant(tmp_path):
    """rclone's bare words ("didn't find section in config file", "directory not found") said as what is
    wrong; a pull that failed ties the mirror to nothing, so the corrected command is not refused."""
    from .s3server import S3Server

    server = S3Server(tmp_path / "s3")
    server.start()
    try:
        where = ("--to", str(tmp_path / "mirror"), *_where(tmp_path))
        unknown = run_cli("mirror", "pull", "--remote", "nosuch:bucket", *where, env=server.env())
        assert unknown.returncode == 2 and "rclone has no remote named 'nosuch'" in unknown.stderr, unknown
        assert "RCLONE_CONFIG_NOSUCH_TYPE" in unknown.stderr and "didn't find section" not in unknown.stderr
        wrong_bucket = server.remote.split(":")[0] + ":no-such-bucket"
        missing = run_cli("mirror", "pull", "--remote", wrong_bucket, *where, env=server.env())
        assert missing.returncode == 2 and "no such bucket or folder on the remote" in missing.stderr, missing
        assert "retried later" not in missing.stderr  # nothing retries a one-shot pull
        remote = run_cli("mirror", "remote", str(tmp_path / "mirror"), *where[2:])
        assert "no remote recorded yet" in remote.stdout, remote  # neither failure bound the mirror
        server.put("k1", b"bytes", tmp_path)
        right = run_cli("mirror", "pull", "--remote", server.remote, *where, env=server.env())
        assert right.returncode == 0 and "1 new file(s)" in right.stdout, right  # the corrected command works
        remote = run_cli("mirror", "remote", str(tmp_path / "mirror"), *where[2:])
        assert f"mirrors {server.remote}" in remote.stdout, remote
        # The progress display, asked for without a terminal, is fed by rclone's stats and leaves the result.
        server.put("k2", b"more bytes", tmp_path)
        shown = run_cli("mirror", "pull", "--remote", server.remote, "--progress", *where, env=server.env())
        assert shown.returncode == 0 and "1 new file(s)" in shown.stdout, shown
    finally:
        server.stop()


def test_3_rclone_comes_with_the_install_and_extras_are_named_for_how_it_was_installed(tmp_path):
    from mirror_scan.errors import install_hint

    proc = run_cli("rclone", "version", process=True)  # exec'd: the CLI process becomes rclone
    assert proc.returncode == 0 and proc.stdout.startswith("rclone v"), proc
    for extra in ("bucket", "export", "exchange", "rclone", "cpu"):
        hint = install_hint(extra)
        assert "mirror-scan[" not in hint and f"'{extra}' extra" in hint, hint  # not a package on PyPI
    assert "boto3" in install_hint("bucket") and "pip install" in install_hint("bucket")


def test_13_status_report_verify_and_the_plot_say_what_they_mean(tmp_path, tiny_bundle_master, flag_all):
    from mirror_scan.scan.calplot import count_ticks

    _flagged(tmp_path, tiny_bundle_master, flag_all, "a.png")
    status = run_cli("status", "--state", str(tmp_path / "s.db"))
    labels = [line.strip().rsplit("  ", 1)[0].strip() for line in status.stdout.splitlines() if line.startswith("  ")]
    assert "in the state database:" in status.stdout and len(labels) == len(set(labels)), status.stdout
    assert labels.count("flagged") == 1
    report = run_cli("report", "--errors", "--state", str(tmp_path / "s.db"))
    assert report.returncode == 0 and report.stdout == "" and "no file that could not be scanned" in report.stderr
    verify = run_cli("model", "verify", str(tiny_bundle_master))
    assert verify.returncode == 0, verify.stderr
    check = next(line for line in verify.stdout.splitlines() if "int8 faithful" in line or "NOT faithful" in line)
    drift = float(check.split("move by up to ")[1].split(",")[0])
    assert ("more than a severity step" in check) == (drift > 0.01), check  # never "faithful" alone past a step
    assert "over the 4 probe images" in verify.stdout and "over 8 generated images" in check  # which cosine is which
    assert count_ticks(1) == [0, 1] and count_ticks(0) == [0]  # never "1 1 1 1 1 0"
    ticks = count_ticks(37)
    assert ticks[0] == 0 and ticks[-1] == 37 and len(set(ticks)) == len(ticks) and len(ticks) <= 6


def test_8_lemmy_grants_takes_the_version_an_instance_runs():
    for version, shape in (("0.19.5", "0.19.4+"), ("v0.19.3", "0.19.0-0.19.3"), ("1.0.0-beta.2", "1.0")):
        proc = run_cli("lemmy", "grants", "--lemmy", version)
        assert proc.returncode == 0 and f"its {shape} tables" in proc.stdout, (version, proc)
    old = run_cli("lemmy", "grants", "--lemmy", "0.18.5")
    assert old.returncode == 2 and "0.19.x or 1.0.x" in old.stderr


def test_5_the_console_offers_no_restore_or_confirm_on_a_canary_and_its_status_runs_in_order(
    tmp_path, tiny_bundle_master, write_policy
):
    from .console_client import signed_in

    (item,) = _canary_items(tmp_path, tiny_bundle_master, write_policy)
    (status,) = json.loads(run_cli("canary", "status", "--json", *_where(tmp_path)).stdout)
    steps = [s["step"] for s in status["steps"]]
    quarantined = next(i for i, s in enumerate(steps) if "quarantined" in s)
    assert steps.index("landed") < steps.index("flagged") < quarantined, steps  # never flagged after quarantined
    with signed_in(tmp_path / "s.db", tmp_path / "q", tmp_path) as ana:
        page = ana.get(f"/items/{item['id']}")
        assert page.status == 200 and 'id="canary-note"' in page.body, page.body
        assert 'id="restore"' not in page.body and 'id="confirm"' not in page.body


def test_16_a_console_with_only_api_tokens_starts_and_says_the_pages_need_an_account(tmp_path):
    from .console_client import Client, ConsoleServer

    state = ("--state", str(tmp_path / "s.db"))
    made = run_cli("console", "token", "create", "nightly", *state)
    assert made.returncode == 0, made.stderr
    server = ConsoleServer(tmp_path / "s.db", tmp_path / "q")
    try:
        token = {"Authorization": f"Bearer {made.stdout.strip()}"}
        answer = Client(server).request("GET", "/api/items", headers=token)
        assert answer.status == 200, answer.body
    finally:
        log = server.stop()
    assert "only API tokens can use this console" in log and "console user add" in log
