"""The README's "First steps", followed as written (issue 45): each command of its walk through a mirror,
the quarantine, hash sharing and the bucket is taken from the README itself, its placeholders replaced by
a generated tree, the test bundle and a real local S3 (`rclone serve s3`), and run through the real CLI.
A command the README shows that ends in a traceback, or fails where the README promises it works, fails
this test; so does a README that drops one of these commands without this list being told.

Left out, each for its reason: the model export (needs the model hub), pict-rs, Lemmy, HMA and the
exchanges (peers that cannot run here: their own tests use fakes that follow the peers' sources), the
long-running services (watch, serve, console: their own tests start them), `bucket scan` on Ray (its own
tests), and `policy test vectors.json` (a file of the admin's)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from .conftest import REPO, run_cli
from .mediafiles import image_bytes

# The commands run, in the README's order, as the README writes them (before the placeholders).
WALK = [
    "mirror-scan model info ~/mirror-scan/vit-l-14",
    "mirror-scan model verify ~/mirror-scan/vit-l-14",
    "mirror-scan policy list",
    "mirror-scan policy show horde-v2",
    "mirror-scan config init --out /tmp/config.toml",
    "mirror-scan mirror pull --remote pictrs:pictrs-bucket --to /srv/pictrs-mirror",
    "mirror-scan scan /srv/pictrs-mirror --model ~/mirror-scan/vit-l-14 --dry-run --report flagged.jsonl",
    "mirror-scan report --flagged --format csv",
    "mirror-scan rescore --severity lenient --dry-run",
    "mirror-scan rescore --severity lenient",
    "mirror-scan rescore --severity lenient --write",
    "mirror-scan apply --dry-run",
    "mirror-scan apply",
    "mirror-scan calibrate /srv/backup-2025 --target-fp 0.005",
    "mirror-scan calibrate /srv/backup-2025 --plot margins.png",
    "mirror-scan canary make canary.png",
    "mirror-scan canary status",
    "mirror-scan quarantine list",
    "mirror-scan quarantine show ID",
    "mirror-scan quarantine extract ID --to DIR",
    'mirror-scan quarantine hold ID --why "CyberTipline 123" --until 365d',
    "mirror-scan quarantine report ID --to DIR",
    "mirror-scan quarantine reported ID --reference 123456",
    'mirror-scan quarantine release ID --why "..."',
    "mirror-scan quarantine restore ID",
    "mirror-scan quarantine restore --from-file ids.txt --yes",
    "mirror-scan hashlist export",
    "mirror-scan quarantine purge --older-than 90d",
    "mirror-scan quarantine keygen --out /root/quarantine-key.txt",
    "mirror-scan quarantine seal --all",
    "mirror-scan quarantine restore ID --identity /root/quarantine-key.txt",
    "mirror-scan state check --identity /root/quarantine-key.txt",
    "mirror-scan status",
    "mirror-scan hashlist list",
    "mirror-scan hashlist export --format te",
    "mirror-scan state check",
    "mirror-scan state recover",
]


def _readme_commands() -> list[str]:
    """Every `mirror-scan ...` line of the README's "First steps", its comment cut off."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## First steps", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("mirror-scan ")]
    return [re.split(r"\s+#", line, maxsplit=1)[0].strip() for line in lines]


def test_the_readme_first_steps_work_as_written(tmp_path, s3, tiny_bundle_master, write_policy):
    written = _readme_commands()
    missing = [c for c in WALK if c not in written]
    assert not missing, f"the README no longer shows {missing}: change the walk with it"

    # The admin's world: a bucket with pictures, a backup of benign ones, a policy that flags the pictures
    # (verdicts are driven by the policy, never by what the random model sees), the state where the
    # environment says (the README's commands name none).
    for i in range(3):
        s3.put(f"0a1b2c3d-0000-4000-8000-00000000000{i}.png", image_bytes("PNG", 70 + i, size=(48, 32)), tmp_path)
    backup = tmp_path / "backup-2025"
    backup.mkdir()
    for i in range(4):
        (backup / f"b{i}.png").write_bytes(image_bytes("PNG", 80 + i, size=(48, 32)))
    policy = write_policy({"any": {"cartoon": -1.0}}, {"any": 1}, name="flag-everything")
    work = tmp_path / "cwd"
    work.mkdir()
    env = {
        **s3.env(),
        "MIRROR_SCAN_STATE": str(tmp_path / "state" / "state.db"),
        "MIRROR_SCAN_QUARANTINE": str(tmp_path / "quarantine"),
        "MIRROR_SCAN_MODEL": str(tiny_bundle_master),
        "MIRROR_SCAN_POLICY": str(policy),
        "MIRROR_SCAN_CONFIG": str(tmp_path / "config.toml"),
        "MIRROR_SCAN_REMOTE": s3.remote,
    }
    (tmp_path / "state").mkdir()
    places = {
        "~/mirror-scan/vit-l-14": str(tiny_bundle_master),
        "/srv/pictrs-mirror": str(tmp_path / "mirror"),
        "/srv/backup-2025": str(backup),
        "pictrs:pictrs-bucket": s3.remote,
        "/tmp/config.toml": str(tmp_path / "init.toml"),
        "DIR": str(tmp_path / "extracted"),
        "/root/quarantine-key.txt": str(tmp_path / "quarantine-key.txt"),
    }
    (tmp_path / "extracted").mkdir()
    item_ids: list[str] = []
    for command in WALK:
        argv = shlex.split(command)[1:]
        if argv[:2] == ["quarantine", "report"]:  # its own directory: extract's copy of the item is in DIR
            argv = [str(tmp_path / "report") if a == "DIR" else a for a in argv]
            (tmp_path / "report").mkdir()
        argv = [places.get(a, a) for a in argv]
        if "ID" in argv:  # the sealed restore takes the one item the two restores before it left
            argv = [item_ids[2 if "--identity" in argv else 0] if a == "ID" else a for a in argv]
        if "ids.txt" in argv:
            (work / "ids.txt").write_text("\n".join(item_ids[1:2]) + "\n")
        proc = run_cli(*argv, env=env, cwd=work, input="y\n")
        said = proc.stdout + proc.stderr
        assert "Traceback" not in said, (command, said)
        # 1 is the README's "something was flagged" (scan, apply); anything else is a failure said as one.
        assert proc.returncode in (0, 1), (command, proc.returncode, said[-3000:])
        if argv[0] == "quarantine" and argv[1] in ("extract", "hold", "report", "reported", "release"):
            assert proc.returncode == 0, (command, said[-3000:])  # each does what the README says, or fails here
        if argv[:2] == ["quarantine", "keygen"]:  # the README: seal_to = "age1..." in the config
            assert proc.returncode == 0, said
            env["MIRROR_SCAN_SEAL_TO"] = proc.stdout.split("Public key: ")[1].split()[0]
        if argv[:2] == ["quarantine", "seal"]:
            assert proc.returncode == 0 and "sealed 3 item(s)" in proc.stdout, said  # restored ones keep bytes too
        if "--identity" in argv:
            assert proc.returncode == 0, (command, said[-3000:])
        if argv[:2] == ["quarantine", "list"]:
            import json

            listed = run_cli("quarantine", "list", "--json", env=env, cwd=work)
            item_ids = [i["id"] for i in json.loads(listed.stdout) if i["state"] == "quarantined"]
            assert len(item_ids) >= 2, listed.stdout
    # What the walk did is what the README says it does.
    assert (work / "flagged.jsonl").stat().st_size > 0 and (work / "margins.png").exists()
    assert 'severity = "+0.01"' in (tmp_path / "config.toml").read_text()  # rescore --write, for the daemons
    assert len(s3.keys()) == 3  # apply took the three out of the bucket; the three restores put them back
    assert any(p.name.startswith("mirror-scan-") for p in (tmp_path / "extracted").iterdir())
    assert any((p / "report.txt").exists() for p in (tmp_path / "report").iterdir())
    assert Path(tmp_path / "init.toml").read_text().startswith("#")
