"""The upload validator over real HTTP, posting bytes with a Content-Type the way pict-rs does."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import CLI, run_cli
from .mediafiles import image_bytes
from .s3server import free_port

TOKEN = "test-token-0123456789abcdef"


class Validator:
    def __init__(self, tmp: Path, bundle: Path, *args: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        token_file = tmp / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        self.proc = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--token-file",
                str(token_file),
                "--model",
                str(bundle),
                "--state",
                str(tmp / "state.db"),
                "--quarantine",
                str(tmp / "q"),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.health()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read()) from None
                time.sleep(0.1)
        raise RuntimeError("validator did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def health(self) -> dict:
        with urllib.request.urlopen(self.url("/healthz"), timeout=5) as response:
            return json.loads(response.read())

    def post(self, data: bytes, content_type: str = "image/png", token: str = TOKEN) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url(f"/validate/{token}"), data=data, method="POST", headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, stderr = self.proc.communicate()
        return self.proc.returncode, stderr


@pytest.fixture
def flag_everything(tmp_path, tiny_bundle_master, write_policy):
    policy = write_policy({"any": {"cartoon": -1.0}}, {"any": 1}, name="flag-everything")
    validator = Validator(tmp_path, tiny_bundle_master, "--policy", str(policy))
    yield validator
    validator.stop()


def test_rejects_keep_evidence_and_every_bad_request_gets_a_clear_4xx(flag_everything, tmp_path):
    v = flag_everything
    jpeg = image_bytes("JPEG", 1)
    status, body = v.post(jpeg, "image/jpeg")
    assert status == 406 and body["verdict"] == "rejected"
    kept = list((tmp_path / "q" / "items").iterdir())
    assert len(kept) == 1 and (kept[0] / "data").read_bytes() == jpeg
    meta = json.loads((kept[0] / "meta.json").read_text())
    assert meta["origin"] == "upload" and meta["content_type"] == "image/jpeg"
    assert meta["sha256"] == hashlib.sha256(jpeg).hexdigest() and meta["verdict"]["flagged"]
    assert v.post(jpeg, token="wrong-token-xxxxxxxxxxxx")[0] == 403
    assert v.post(jpeg, token=TOKEN[:-1])[0] == 403
    status, _ = v.post(b"just text, not media", "text/plain")
    assert status == 415  # undecodable: rejected by default (fail closed)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(v.url(f"/validate/{TOKEN}"), timeout=5)
    assert error.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(v.url("/elsewhere"), timeout=5)
    assert error.value.code == 404
    health = v.health()
    assert health["status"] == "ok" and health["rejected"] == 1 and health["provider"] == "CPUExecutionProvider"


def test_concurrent_uploads_are_micro_batched(flag_everything, tmp_path):
    v = flag_everything
    uploads = [image_bytes("PNG", i, size=(64, 48)) for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda data: v.post(data)[0], uploads))
    assert results == [406] * 24
    health = v.health()
    assert health["inferred"] == 24 and health["batches"] < 24  # a burst costs fewer inferences than uploads
    kept = {(d / "data").read_bytes() for d in (tmp_path / "q" / "items").iterdir()}
    assert kept == set(uploads)
    # The same bytes again: answered from the stored result, no inference.
    assert v.post(uploads[0])[0] == 406 and v.health()["cached"] >= 1
    code, stderr = v.stop()  # SIGTERM: a graceful exit, with the totals, and the token never logged
    assert code == 0 and "25 rejected" in stderr
    assert TOKEN not in stderr


def test_oversized_bodies_and_accept_on_error(tmp_path, tiny_bundle_master, write_policy):
    policy = write_policy({"none": {"cartoon": 1.0}}, {"none": 1}, name="flag-nothing")
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(policy), "--on-error", "accept", "--max-body-mb", "1")
    try:
        assert v.post(image_bytes("WEBP", 3), "image/webp")[0] == 200
        assert v.post(b"\x00" * 1000, "application/octet-stream")[0] == 200  # --on-error accept
        status, _ = v.post(os.urandom(2 << 20), "image/png")
        assert status == 413
        assert v.post(image_bytes("PNG", 4))[0] == 200  # still serving after the refusal
    finally:
        code, stderr = v.stop()
    assert code == 0 and "stopped:" in stderr


def test_default_policy_accepts_a_generated_jpeg_and_release_allowlists(tmp_path, tiny_bundle_master, write_policy):
    """The issue's done-when, with the default policy (horde-v2) and the tiny bundle."""
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.preprocess import to_model_input
    from mirror_scan.model.scoring import Scorer, columns
    from mirror_scan.model.synthetic import generated_image
    from mirror_scan.policy import evaluate, load_policy

    bundle, policy = load_bundle(tiny_bundle_master), load_policy("horde-v2")
    scorer, cols = Scorer(bundle, device="cpu"), columns(bundle.concepts.prompts, policy)
    clean = None
    for seed in range(200):  # a random-weight model: pick a generated image it scores clean
        img = generated_image(seed)
        _, sims = scorer(to_model_input(img, bundle.preprocess)[None])
        if not evaluate(policy, sims[:, cols]).flagged[0]:
            import io

            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=95)
            clean = buf.getvalue()
            from mirror_scan.scan.decoders.decode import decode

            decoded = decode(clean, bundle.preprocess)
            if not evaluate(policy, scorer(decoded.pixels)[1][:, cols]).flagged[0]:
                break
            clean = None
    assert clean is not None
    v = Validator(tmp_path, tiny_bundle_master)
    try:
        assert v.post(clean, "image/jpeg")[0] == 200
    finally:
        v.stop()
    # Under a flag-everything policy the same JPEG is rejected; releasing it allowlists it.
    flag_all = write_policy({"any": {"cartoon": -1.0}}, {"any": 1}, name="flag-all")
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(flag_all))
    try:
        assert v.post(clean, "image/jpeg")[0] == 406
    finally:
        v.stop()
    (item,) = [
        i
        for i in json.loads(
            run_cli(
                "quarantine",
                "list",
                "--json",
                "--state",
                str(tmp_path / "state.db"),
                "--quarantine",
                str(tmp_path / "q"),
            ).stdout
        )
    ]
    assert item["original"] == "(rejected upload)"
    proc = run_cli(
        "quarantine", "restore", item["id"], "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q")
    )
    assert proc.returncode == 0, proc.stderr
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(flag_all))
    try:
        assert v.post(clean, "image/jpeg")[0] == 200  # allowlisted: accepted even by flag-everything
    finally:
        v.stop()


def test_serve_needs_a_token(tmp_path, tiny_bundle_master):
    proc = run_cli("serve", "--model", str(tiny_bundle_master))
    assert proc.returncode == 2 and "token file" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_has_prometheus_metrics(tmp_path, tiny_bundle_master, flag_all):
    port = free_port()
    v = Validator(tmp_path, tiny_bundle_master, "--policy", str(flag_all), "--metrics", f"127.0.0.1:{port}")
    try:
        assert v.post(image_bytes("PNG", 5))[0] == 406
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        v.stop()
    assert 'mirror_scan_uploads_total{outcome="rejected"} 1.0' in metrics
    assert "mirror_scan_validation_seconds_count 1.0" in metrics
    assert "mirror_scan_validator_queue " in metrics and "mirror_scan_validator_connections " in metrics
