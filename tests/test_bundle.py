"""Model bundles: export, manifest contents, verification, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mirror_scan.errors import BundleError, DeviceError
from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.infer import ImageEncoder

from .conftest import run_cli
from .mediafiles import image_bytes


def test_export_writes_a_complete_manifest(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["model"] == {"arch": "tiny-test", "pretrained": "none", "embedding_dim": 32, "random_weights": True}
    prep = manifest["preprocess"]
    assert prep["image_size"] == [32, 32] and prep["resize_mode"] == "shortest" and prep["interpolation"] == "bicubic"
    assert len(prep["mean"]) == 3 and len(prep["std"]) == 3
    assert set(manifest["files"]) >= {"image_fp32", "image_fp16", "image_int8", "text", "concepts", "concept_prompts"}
    assert set(manifest["sha256"]) == {*manifest["files"].values(), manifest["tokenizer"]["file"]}
    assert {"torch", "open_clip_torch", "onnx", "onnxruntime", "mirror_scan"} <= set(manifest["tools"])
    parity = manifest["parity"]
    assert parity["image"]["min_cosine"] >= 0.9999 and parity["text"]["min_cosine"] >= 0.9999
    assert parity["preprocess_max_abs_diff_vs_open_clip"] < 1e-6
    assert parity["int8_vs_fp32"]["min_cosine"] >= 0.99
    bundle = load_bundle(tiny_bundle)
    # Concepts cover every built-in policy's prompts and are unit vectors.
    from mirror_scan.policy import load_policy

    assert not bundle.concepts.missing(load_policy("horde-v2").prompts)
    assert not bundle.concepts.missing(load_policy("horde-v1").prompts)
    np.testing.assert_allclose(np.linalg.norm(bundle.concepts.matrix, axis=1), 1.0, atol=1e-5)


def test_image_encoder_has_a_dynamic_batch_and_unit_outputs(tiny_bundle):
    from mirror_scan.model.infer import ImageEncoder
    from mirror_scan.model.preprocess import to_model_input
    from mirror_scan.model.synthetic import generated_image

    bundle = load_bundle(tiny_bundle)
    encoder = ImageEncoder(bundle, device="cpu")
    assert encoder.placement.provider == "CPUExecutionProvider"
    pixels = np.stack([to_model_input(generated_image(s), bundle.preprocess) for s in range(9)])
    batched = encoder(pixels)
    singles = np.concatenate([encoder(pixels[i : i + 1]) for i in range(9)])
    assert batched.shape == (9, 32)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    int8 = ImageEncoder(bundle, device="cpu", precision="int8")(pixels)
    assert float((int8 * batched).sum(axis=1).min()) >= 0.99


def test_auto_device_reports_the_provider_that_really_runs(tiny_bundle):
    from mirror_scan.errors import DeviceError
    from mirror_scan.model.infer import CUDA, ImageEncoder, available_providers

    bundle = load_bundle(tiny_bundle)
    auto = ImageEncoder(bundle, device="auto")
    assert auto.placement.provider == auto.session.get_providers()[0]
    assert auto.placement.note
    if auto.placement.provider != CUDA:
        # No working GPU here: asking for CUDA must fail loudly rather than silently run on the CPU.
        with pytest.raises(DeviceError, match="--device cuda"):
            ImageEncoder(bundle, device="cuda")
    assert "CPUExecutionProvider" in available_providers()


def _assert_bundle_error(path, *fragments):
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_tampered_truncated_and_missing_files_are_refused_by_name(tiny_bundle):
    onnx_file = tiny_bundle / "image_encoder.fp32.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(data[: len(data) // 2])
    _assert_bundle_error(tiny_bundle, "image_encoder.fp32.onnx", "sha256", "re-export")
    onnx_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    _assert_bundle_error(tiny_bundle, "image_encoder.fp32.onnx", "sha256")
    onnx_file.unlink()
    _assert_bundle_error(tiny_bundle, "image_encoder.fp32.onnx is missing")


def test_newer_manifest_and_bad_manifests(tiny_bundle, tmp_path):
    manifest_path = tiny_bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 7}))
    _assert_bundle_error(tiny_bundle, "newer mirror-scan", "upgrade")
    manifest_path.write_text("{")
    _assert_bundle_error(tiny_bundle, "not valid JSON")
    _assert_bundle_error(tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    _assert_bundle_error(tmp_path / "empty", "has no manifest.json")


def test_embedding_size_mismatch_is_refused(tiny_bundle):
    manifest_path = tiny_bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["embedding_dim"] = 64
    manifest_path.write_text(json.dumps(manifest))
    _assert_bundle_error(tiny_bundle, "embedding size is 64", "model concepts")


def test_cli_model_info_verify_and_errors(tiny_bundle, tmp_path):
    proc = run_cli("model", "info", str(tiny_bundle))
    assert proc.returncode == 0, proc.stderr
    assert "tiny-test / none" in proc.stdout and "CPUExecutionProvider" in proc.stdout
    info = json.loads(run_cli("model", "info", str(tiny_bundle), "--json").stdout)
    assert info["provider"] == "CPUExecutionProvider" and all(v == "ok" for v in info["checks"].values())
    proc = run_cli("model", "verify", str(tiny_bundle))
    assert proc.returncode == 0 and "int8: ok" in proc.stdout and "fp32: ok" in proc.stdout
    (tiny_bundle / "text_encoder.fp32.onnx").write_bytes(b"truncated")
    proc = run_cli("model", "verify", str(tiny_bundle))
    assert proc.returncode == 2 and "text_encoder.fp32.onnx" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("model", "info", str(tiny_bundle))
    assert proc.returncode == 2 and "sha256 mismatch" in proc.stdout
    proc = run_cli("model", "info", str(tmp_path / "none"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_export_refuses_to_overwrite_and_unknown_arch(tmp_path, tiny_bundle):
    proc = run_cli("model", "export", "--arch", "tiny-test", "--pretrained", "none", "--out", str(tiny_bundle))
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    proc = run_cli("model", "export", "--arch", "ViT-Q-99", "--pretrained", "none", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "unknown open_clip architecture" in proc.stderr
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if ".export-" in p.name]  # no half-made bundle left behind


# ---------------------------------------------------------------- int8 on this CPU


def _degrade_int8(bundle_dir: Path) -> None:
    """Noise on the int8 weights (what saturating kernels do to similarities, and more), manifest updated."""
    import onnx
    from mirror_scan.hashing import sha256_file
    from onnx import numpy_helper

    path = bundle_dir / "image_encoder.int8.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == onnx.TensorProto.INT8:
            weights = numpy_helper.to_array(tensor).astype(np.int16)
            noisy = np.clip(weights + rng.integers(-60, 61, size=weights.shape), -127, 127).astype(np.int8)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    onnx.save(model, str(path))
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"][path.name] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))


def test_int8_guard_accepts_a_faithful_encoder_and_refuses_a_degraded_one(tiny_bundle):
    encoder = ImageEncoder(load_bundle(tiny_bundle), device="cpu", precision="int8")
    assert encoder.int8_check.faithful and encoder.int8_check.min_cosine >= 0.995
    _degrade_int8(tiny_bundle)
    with pytest.raises(DeviceError, match="--precision int8 refused: int8 NOT faithful on this CPU"):
        ImageEncoder(load_bundle(tiny_bundle), device="cpu", precision="int8")
    # Where the admin meets it: a clear error, no traceback, and fp32 still works.
    tree = tiny_bundle.parent / "tree"
    tree.mkdir()
    (tree / "a.png").write_bytes(image_bytes("PNG", 1))
    proc = run_cli("scan", str(tree), "--model", str(tiny_bundle), "--precision", "int8", "--dry-run")
    assert proc.returncode == 2 and "int8 refused" in proc.stderr and "--precision fp32" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("scan", str(tree), "--model", str(tiny_bundle), "--precision", "fp32", "--dry-run", "--quiet")
    assert proc.returncode in (0, 1), proc.stderr


def test_int8_check_is_cached_per_bundle_and_cpu(tiny_bundle, tmp_path, monkeypatch):
    from mirror_scan.model import int8check
    from mirror_scan.model.cpu import CpuInfo

    bundle = load_bundle(tiny_bundle)
    int8 = ImageEncoder(bundle, device="cpu", precision="fp32")  # any encoder: counting fp32 loads is the point
    loads = []

    def fp32_factory():
        loads.append(1)
        return int8

    cache = tmp_path / "checks.json"
    first = int8check.check_int8(bundle, int8, fp32_factory, cache)
    again = int8check.check_int8(bundle, int8, fp32_factory, cache)
    assert len(loads) == 1 and not first.cached and again.cached and again.min_cosine == first.min_cosine
    other_cpu = CpuInfo(model="Some CPU without VNNI", features=("AVX2",), cores=4)
    monkeypatch.setattr(int8check, "cpu_info", lambda: other_cpu)
    moved = int8check.check_int8(bundle, int8, fp32_factory, cache)
    assert len(loads) == 2 and not moved.cached and moved.cpu_int8_class == "x86-64 AVX2 without VNNI"
    _degrade_int8(tiny_bundle)  # another int8 file: another key
    int8check.check_int8(load_bundle(tiny_bundle), int8, fp32_factory, cache)
    assert len(loads) == 3
    # An edited cache cannot vouch for int8: "faithful" is derived from the figure, garbage is re-measured.
    entries = json.loads(cache.read_text())
    for entry in entries.values():
        entry.update(faithful=True, min_cosine=0.9)
    cache.write_text(json.dumps(entries))
    assert not int8check.check_int8(bundle, int8, fp32_factory, cache).faithful and len(loads) == 3
    for entry in entries.values():
        entry.update(min_cosine="high")
    cache.write_text(json.dumps(entries))
    assert not int8check.check_int8(bundle, int8, fp32_factory, cache).cached and len(loads) == 4
