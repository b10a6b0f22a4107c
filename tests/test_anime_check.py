"""DeepDanbooru in the scan (issue 41): a bundle with a random-weight DeepDanbooru (exported by the
project's own code, narrowed for speed), horde-v2's rules as data, and the anime path taken only for the
pictures the policy calls anime after CLIP: their scores stored with the CLIP result, reused by rescore and
by every later decision, never computed again. Verdicts are driven through the policy: the anime prompts'
thresholds are placed between the two pictures' similarities (random CLIP weights), so the policy calls
exactly one of them anime."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.synthetic import generated_image
from mirror_scan.policy import DEEPDANBOORU_MISSING

from .conftest import run_cli

HORDE_V2 = Path(__file__).resolve().parents[1] / "mirror_scan" / "policies" / "horde-v2.json"


def _drawing() -> Image.Image:
    """Flat colours and ink lines: what a drawn picture is to a pixel counter."""
    img = Image.new("RGB", (640, 480), (250, 240, 220))
    pen = ImageDraw.Draw(img)
    pen.ellipse((200, 80, 440, 320), fill=(255, 220, 190), outline=(20, 20, 20), width=6)
    pen.rectangle((240, 300, 400, 470), fill=(60, 90, 200), outline=(20, 20, 20), width=6)
    for x in (270, 350):
        pen.ellipse((x, 170, x + 30, 210), fill=(20, 20, 20))
    return img


def _results(state: Path) -> dict[str, tuple[np.ndarray, dict | None]]:
    """path -> (stored similarities [frames, P], stored detail)."""
    with sqlite3.connect(state) as db:
        rows = db.execute(
            "SELECT f.path, r.sims, r.frames, r.detail FROM files f JOIN results r ON r.id = f.result_id"
        ).fetchall()
    return {
        Path(path.decode()).name: (np.frombuffer(sims, np.float32).reshape(frames, -1), json.loads(detail or "null"))
        for path, sims, frames, detail in rows
    }


@pytest.fixture
def pictures(tmp_path) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _drawing().save(mirror / "drawing.png")
    generated_image(3, 800, 600).save(mirror / "photo.jpg", quality=92)
    return mirror


def _anime_policy(tmp_path: Path, bundle: Path, mirror: Path) -> Path:
    """horde-v2 with its anime prompts' thresholds between the drawing's and the photo's similarities (the
    photo override off): the policy calls the drawing anime and the photo not."""
    probe = run_cli("scan", str(mirror), "--model", str(bundle), "--policy", "horde-v2", "--dry-run",
                    "--state", str(tmp_path / "probe.db"), "--quarantine", str(tmp_path / "probe-q"))  # fmt: skip
    assert probe.returncode in (0, 1), probe.stderr
    prompts = load_bundle(bundle).concepts.prompts
    stored = _results(tmp_path / "probe.db")
    policy = json.loads(HORDE_V2.read_text())
    chosen = None
    for entry in policy["groups"]["anime_cartoon"]:
        column = prompts.index(entry["prompt"])
        drawing, photo = (round(float(stored[name][0][:, column].max()), 4) for name in ("drawing.png", "photo.jpg"))
        # Apart by more than the policy's named severities move a threshold (+-0.01): the split holds at each.
        if chosen is None and drawing > photo + 0.025:
            entry["threshold"] = round((drawing + photo) / 2, 4)
            chosen = entry["prompt"]
        else:
            entry["threshold"] = 1.0
    assert chosen is not None, "no anime prompt tells the two pictures apart with these random weights"
    policy["parameters"]["anime_override_below"] = -1.0  # the photo override never applies
    policy["name"] = "horde-v2-anime-test"
    path = tmp_path / "anime-test.json"
    path.write_text(json.dumps(policy))
    return path


def test_deepdanbooru_runs_only_on_what_the_policy_calls_anime_and_its_scores_are_reused(
    tmp_path, pictures, dd_bundle_master, monkeypatch
):
    policy = _anime_policy(tmp_path, dd_bundle_master, pictures)
    where = ("--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"))
    from mirror_scan.model import deepdanbooru

    calls: list[int] = []
    real = deepdanbooru.DeepDanbooru.tag_scores
    monkeypatch.setattr(deepdanbooru.DeepDanbooru, "tag_scores",
                        lambda self, images: calls.append(len(images)) or real(self, images))  # fmt: skip
    scan = run_cli("scan", str(pictures), "--model", str(dd_bundle_master), "--policy", str(policy), "--dry-run",
                   *where)  # fmt: skip
    assert scan.returncode in (0, 1), scan.stderr
    assert calls == [1]  # one picture, in one call
    stored = _results(tmp_path / "state.db")
    scores = stored["drawing.png"][1]["deepdanbooru"]
    assert {"rating:safe", "rating:questionable", "rating:explicit"} <= set(scores)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert "deepdanbooru" not in (stored["photo.jpg"][1] or {})  # not anime: never run on it
    assert DEEPDANBOORU_MISSING not in json.dumps([detail for _, detail in stored.values()])
    # Every later decision reads the stored scores: DeepDanbooru is never run again.
    monkeypatch.setattr(deepdanbooru.DeepDanbooru, "tag_scores",
                        lambda self, images: pytest.fail("DeepDanbooru run again on a stored result"))  # fmt: skip
    rescored = run_cli("rescore", "--model", str(dd_bundle_master), "--policy", str(policy), "--severity", "strict",
                       "--dry-run", *where)  # fmt: skip
    assert rescored.returncode == 0, rescored.stderr
    again = run_cli("scan", str(pictures), "--model", str(dd_bundle_master), "--policy", str(policy), "--dry-run",
                    "--severity", "lenient", *where)  # fmt: skip
    assert again.returncode in (0, 1), again.stderr
    assert _results(tmp_path / "state.db")["drawing.png"][1]["deepdanbooru"] == scores


def test_without_deepdanbooru_in_the_bundle_every_verdict_on_an_anime_picture_says_so(
    tmp_path, pictures, dd_bundle_master
):
    policy = _anime_policy(tmp_path, dd_bundle_master, pictures)
    plain = tmp_path / "no-dd"  # the same CLIP, its DeepDanbooru taken out of the bundle
    shutil.copytree(dd_bundle_master, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    for name in manifest.pop("deepdanbooru")["files"].values():
        (plain / name).unlink()
    (plain / "manifest.json").write_text(json.dumps(manifest))
    scan = run_cli("scan", str(pictures), "--model", str(plain), "--policy", str(policy), "--dry-run",
                   "--state", str(tmp_path / "plain.db"), "--quarantine", str(tmp_path / "q"))  # fmt: skip
    assert scan.returncode in (0, 1), scan.stderr
    stored = _results(tmp_path / "plain.db")
    assert DEEPDANBOORU_MISSING in stored["drawing.png"][1]["notes"]
    assert DEEPDANBOORU_MISSING not in json.dumps(stored["photo.jpg"][1] or {})


def test_a_bucket_scan_runs_deepdanbooru_on_the_same_pictures(tmp_path, pictures, dd_bundle_master):
    """`bucket scan` (the local engine): the thumbnail travels with the worker's rows to the driver, which
    runs DeepDanbooru on the same picture a mirror scan would, and stores its scores the same way."""
    from .s3server import S3Server

    policy = _anime_policy(tmp_path, dd_bundle_master, pictures)
    server = S3Server(tmp_path / "s3")
    server.start()
    try:
        for path in pictures.iterdir():
            server.put(path.name, path.read_bytes(), tmp_path)
        proc = run_cli("bucket", "scan", server.remote, "--model", str(dd_bundle_master), "--policy", str(policy),
                       "--dry-run", "--state", str(tmp_path / "bucket.db"), "--quarantine", str(tmp_path / "bq"),
                       env=server.env())  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode in (0, 1), proc.stderr
    stored = _results(tmp_path / "bucket.db")
    assert set(stored["drawing.png"][1]["deepdanbooru"]) >= {"rating:safe", "rating:questionable", "rating:explicit"}
    assert "deepdanbooru" not in (stored["photo.jpg"][1] or {})
    mirrored = run_cli("scan", str(pictures), "--model", str(dd_bundle_master), "--policy", str(policy), "--dry-run",
                       "--state", str(tmp_path / "mirror.db"), "--quarantine", str(tmp_path / "mq"))  # fmt: skip
    assert mirrored.returncode in (0, 1), mirrored.stderr
    mirror_scores = _results(tmp_path / "mirror.db")["drawing.png"][1]["deepdanbooru"]
    assert mirror_scores == stored["drawing.png"][1]["deepdanbooru"]


def test_results_stored_without_deepdanbooru_are_not_reused_once_the_bundle_has_it(
    tmp_path, pictures, dd_bundle_master
):
    """A bundle exported again with DeepDanbooru (the same CLIP: the same embeddings) keys its results apart,
    so the pictures scanned before get their scores at the next scan instead of being decided without them."""
    policy = _anime_policy(tmp_path, dd_bundle_master, pictures)
    plain = tmp_path / "no-dd"
    shutil.copytree(dd_bundle_master, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    for name in manifest.pop("deepdanbooru")["files"].values():
        (plain / name).unlink()
    (plain / "manifest.json").write_text(json.dumps(manifest))
    where = ("--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q"), "--policy", str(policy))
    assert run_cli("scan", str(pictures), "--model", str(plain), "--dry-run", *where).returncode in (0, 1)
    assert DEEPDANBOORU_MISSING in _results(tmp_path / "state.db")["drawing.png"][1]["notes"]
    again = run_cli("scan", str(pictures), "--model", str(dd_bundle_master), "--dry-run", "--json", *where)
    assert again.returncode in (0, 1) and json.loads(again.stdout)["scanned"] == 2, again.stdout
    assert "deepdanbooru" in _results(tmp_path / "state.db")["drawing.png"][1]
