"""calibrate: the false-positive rate on benign pictures with its interval, and the severity that meets a
target. The pictures are generated; a policy with a threshold at a known quantile of their similarities
makes a known share of them "false positives"."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from mirror_scan.model.synthetic import generated_image
from mirror_scan.scan.calibrate import wilson

from .conftest import run_cli


def test_wilson_interval_matches_known_values():
    low, high = wilson(0, 2000)
    assert low == 0.0 and high == pytest.approx(0.001917, abs=2e-6)  # "< 0.19%", never "0%"
    low, high = wilson(10, 100)
    assert low == pytest.approx(0.05523, abs=1e-4) and high == pytest.approx(0.17437, abs=1e-4)
    assert wilson(100, 100)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


@pytest.fixture
def sample(tmp_path):
    tree = tmp_path / "benign"
    tree.mkdir()
    for seed in range(200):
        generated_image(seed, 64, 48).save(tree / f"p{seed:03d}.png")
    return tree


def test_calibrate_reports_the_true_rate_and_picks_a_severity_that_meets_the_target(
    tmp_path, sample, tiny_bundle_master, write_policy
):
    where = ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))
    # A first pass stores every picture's result; a policy with its threshold at the 90th percentile of
    # the pictures' top "cartoon" similarity then flags 10% of them.
    probe = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="probe")
    first = run_cli("scan", str(sample), "--model", str(tiny_bundle_master), "--policy", str(probe), "--dry-run",
                    "--quiet", *where)  # fmt: skip
    assert first.returncode == 0, first.stderr
    with sqlite3.connect(tmp_path / "s.db") as db:
        (prompts,) = db.execute("SELECT prompts FROM prompt_sets").fetchone()
        column = json.loads(prompts).index("cartoon")
        tops = sorted(
            float(np.frombuffer(sims, np.float32).reshape(frames, -1)[:, column].max())
            for sims, frames in db.execute("SELECT sims, frames FROM results")
        )
    threshold = (tops[179] + tops[180]) / 2  # 20 of 200 above it
    policy = write_policy({"any": {"cartoon": threshold}}, {"any": 1}, name="tenth")
    config = tmp_path / "config.toml"
    config.write_text("[scan]\nbatch_size = 8\n")
    proc = run_cli("calibrate", str(sample), "--model", str(tiny_bundle_master), "--policy", str(policy),
                   "--target-fp", "0.05", "--json", "--config", str(config), *where)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["pictures"] == 200 and result["reused"] == 200 and result["scored"] == 0  # nothing read twice
    now = result["current"]
    assert now["flagged"] == 20 and now["interval"][0] <= 0.10 <= now["interval"][1], now
    chosen = result["chosen"]
    assert chosen["offset"] > 0 and chosen["interval"][1] <= 0.05, chosen  # less sensitive, and it meets it
    easier = [p for p in result["offsets"] if p["offset"] < chosen["offset"]]
    assert all(p["interval"][1] > 0.05 for p in easier)  # the most sensitive that meets the target
    # Nothing was recorded as a file of the sample beyond the first pass: calibration never acts.
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT count(*) FROM files WHERE verdict='flagged'").fetchone()[0] == 0
    # --write stores it with its provenance; a scan under the written config stays under the target.
    plot = tmp_path / "margins.png"
    written = run_cli("calibrate", str(sample), "--model", str(tiny_bundle_master), "--policy", str(policy),
                      "--target-fp", "0.05", "--write", "--plot", str(plot), "--config", str(config),
                      *where)  # fmt: skip
    assert written.returncode == 0, written.stderr
    # The picture: the rate, the current and the chosen severity marked in their colours.
    from PIL import Image

    from mirror_scan.scan.calplot import CHOSEN, CURRENT, RATE

    drawn = Image.open(plot).convert("RGB")
    colours = {c for _, c in drawn.getcolors(1 << 20)}
    assert drawn.size == (960, 480) and {CHOSEN, CURRENT, RATE} <= colours, sorted(colours)[:20]
    text = config.read_text()
    assert "batch_size = 8" in text and f'severity = "{chosen["offset"]:+g}"' in text and "200 benign pictures" in text
    rescan = run_cli("scan", str(sample), "--model", str(tiny_bundle_master), "--policy", str(policy), "--dry-run",
                     "--json", "--config", str(config), *where)  # fmt: skip
    summary = json.loads(rescan.stdout)
    assert summary["flagged"] / 200 <= 0.05 and summary["scanned"] == 0, summary  # re-decided, none read
    # report --summary gives the same view over what was scanned (the 200 files decided by the first pass).
    overview = run_cli("report", "--summary", "--policy", str(policy), "--state", str(tmp_path / "s.db"))
    assert overview.returncode == 0, overview.stderr
    (current,) = [line for line in overview.stdout.splitlines() if "<- current" in line and "%" in line]
    assert "200 decided file(s)" in overview.stdout and current.split()[1] == "20", overview.stdout
    human = run_cli("calibrate", str(sample), "--model", str(tiny_bundle_master), "--policy", str(policy),
                    "--target-fp", "0.05", *where)  # fmt: skip
    assert "most sensitive severity meeting 5.00%" in human.stdout and "<- current" in human.stdout, human.stdout
