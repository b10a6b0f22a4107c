"""DeepDanbooru, the optional second model of a bundle: the architecture against upstream's, the export
(random weights, a local checkpoint verified by sha256), ONNX against torch, horde-safety's input path bit
for bit, the resize-target choice, the bundle's manifest entry, and the scan-time session (no torch).

Upstream: Haidra-Org/horde-safety commit ebea47ad14792ee1130d79a905428e3fb818c0ee, files
horde_safety/deep_danbooru_model.py (the model, MIT, from AUTOMATIC1111/TorchDeepDanbooru) and
horde_safety/nsfw_checker_class.py (resize targets, target choice, preprocessing). Every picture here is
generated in code (gradients and shapes)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

from mirror_scan.errors import BundleError, ExportError
from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.deepdanbooru import (
    RATING_TAGS,
    RESIZE_TARGETS,
    SPARSE_ABOVE,
    DeepDanbooru,
    choose_target,
    to_dd_input,
)
from mirror_scan.model.synthetic import generated_image

from .conftest import DATA, DD_NARROW, REPO, run_cli

torch = pytest.importorskip("torch")
dd_export = pytest.importorskip("mirror_scan_export.deepdanbooru")

NARROW = DD_NARROW  # the test-only width divisor (conftest.dd_bundle_master): exports in about two seconds
REFERENCE = json.loads((DATA / "horde_nsfw_checker_v2.json").read_text())["deepdanbooru"]
# sha256 of "key:shape" lines (sorted) of upstream's DeepDanbooruModel().state_dict() at the commit above,
# computed from that file itself: 357 tensors, 160,956,544 parameters.
UPSTREAM_STATE_FINGERPRINT = "0aa11016f185e945e650ca86c0bc21974c7c5d38df68e30b2b466434e6ace966"


@pytest.fixture
def dd_bundle(dd_bundle_master, tmp_path) -> Path:
    copy = tmp_path / "tiny-dd"
    shutil.copytree(dd_bundle_master, copy)
    return copy


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


# --- horde-safety's code, written the way upstream writes it (nsfw_checker_class.py @ ebea47a) -----------


def _horde_resize_targets() -> list[tuple[int, int]]:
    resize_targets = []
    for i in range(128, 769, 128):
        for j in range(128, 769, 128):
            if i == j:
                resize_targets.append((i, j))
            else:
                resize_targets.append((i, j))
                resize_targets.append((j, i))
    return resize_targets


def _horde_closest_resize_target(image) -> tuple[int, int]:
    image_width, image_height = image.size
    image_num_pixels = image_width * image_height
    closest_target: tuple[int, int] = (0, 0)
    closest_target_num_pixels = 0
    for target in _horde_resize_targets():
        target_width, target_height = target
        target_num_pixels = target_width * target_height
        if closest_target_num_pixels == 0:
            closest_target = target
            closest_target_num_pixels = target_num_pixels
        if abs(target_num_pixels - image_num_pixels) < abs(closest_target_num_pixels - image_num_pixels):
            closest_target = target
            closest_target_num_pixels = target_num_pixels
    return closest_target


def _horde_input(image: PIL.Image.Image) -> np.ndarray:
    closest_target = _horde_closest_resize_target(image)
    if closest_target == (0, 0):
        closest_target = (768, 768)
    image = image.convert("RGB")
    image = image.resize(closest_target, PIL.Image.LANCZOS)
    return np.expand_dims(np.array(image, dtype=np.float32), 0) / 255


# --- the architecture and the export ---------------------------------------------------------------------


def test_architecture_has_upstreams_state_dict_names_and_shapes():
    with torch.device("meta"):  # full width, without allocating 640 MB
        model = dd_export.build_model(torch)
    state = model.state_dict()
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in sorted(state.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == UPSTREAM_STATE_FINGERPRINT
    assert len(state) == 357 and sum(v.numel() for v in state.values()) == 160_956_544
    assert list(state)[:3] == ["n_Conv_0.weight", "n_Conv_0.bias", "n_Conv_1.weight"]  # upstream's order
    assert "n_Conv_178.bias" not in state and state["n_Conv_178.weight"].shape[0] == dd_export.TAG_COUNT


def test_resize_targets_are_the_references():
    assert [list(t) for t in RESIZE_TARGETS] == REFERENCE["resize_targets_in_order"]
    assert list(RESIZE_TARGETS) == _horde_resize_targets()


@pytest.mark.parametrize(
    ("size", "target"),
    [
        ((1, 1), (128, 128)),  # tiny: the smallest target
        ((20000, 9000), (768, 768)),  # huge: the largest
        ((768, 768), (768, 768)),
        ((256, 256), (128, 512)),  # a square picture: 128x512 comes before 256x256 among equal pixel counts
        ((640, 360), (384, 640)),  # landscape gets a portrait target (aspect ratio is ignored)
        ((640, 128), (128, 640)),  # even with an exact landscape target: (i, j) comes before (j, i)
        ((128, 2000), (512, 512)),  # tall portrait: nearest pixel count
        ((128, 192), (128, 128)),  # half-way between 128x128 and 128x256: the first stays (strict <)
    ],
)
def test_target_choice(size, target):
    assert choose_target(*size) == target
    assert _horde_closest_resize_target(SimpleNamespace(size=size)) == target  # it reads only .size


def test_target_choice_agrees_with_upstreams_loop_on_many_sizes():
    rng = np.random.default_rng(7)
    sizes = [tuple(int(v) for v in rng.integers(1, 3000, size=2)) for _ in range(400)]
    sizes += [(w, h) for w, h in RESIZE_TARGETS] + [(w + 1, h) for w, h in RESIZE_TARGETS]
    for width, height in sizes:
        assert choose_target(width, height) == _horde_closest_resize_target(SimpleNamespace(size=(width, height)))


def _pictures_in_modes() -> list[PIL.Image.Image]:
    base = generated_image(3, 300, 200)
    rgba = base.copy()
    rgba.putalpha(PIL.Image.linear_gradient("L").resize(base.size))
    palette = generated_image(4, 97, 61).quantize(64)
    palette.info["transparency"] = 5
    return [
        base,
        generated_image(5, 1000, 700),  # downscaled
        generated_image(6, 33, 500),  # upscaled, to another aspect ratio
        rgba,
        base.convert("L"),
        base.convert("LA"),
        palette,
        base.convert("CMYK"),
        base.convert("1"),
        base.convert("I;16"),
    ]


def test_to_dd_input_is_upstreams_bit_for_bit():
    for picture in _pictures_in_modes():
        ours, theirs = to_dd_input(picture), _horde_input(picture)
        assert ours.dtype == theirs.dtype == np.float32
        assert ours.shape == theirs.shape[1:] and ours.shape[2] == 3
        assert np.array_equal(ours[None], theirs), picture.mode


def test_random_export_has_the_reference_tags_and_onnx_matches_torch(dd_bundle_master):
    entry = _manifest(dd_bundle_master)["deepdanbooru"]
    assert entry["random_weights"] is True and entry["weights"] is None and entry["width_divisor"] == NARROW
    assert entry["input"]["layout"] == "NHWC" and entry["output"]["activation"] == "sigmoid"
    assert entry["resize_targets"] == REFERENCE["resize_targets_in_order"]
    assert entry["parity"]["checked"] and entry["parity"]["max_abs_diff"] < 1e-5
    tags = json.loads((dd_bundle_master / entry["files"]["tags"]).read_text())["tags"]
    assert len(tags) == entry["tag_count"] == len(set(tags))
    # Every tag the reference's DeepDanbooru section reads, taken from the JSON itself.
    wanted = set(re.findall(r"tag '([^']+)'", json.dumps(REFERENCE["scores"])))
    wanted |= set(REFERENCE["nsfw_deepdanbooru_concepts"]) | {REFERENCE["thresholds"]["realistic_tag"]}
    assert wanted == {*RATING_TAGS, "bikini", "realistic"} and wanted <= set(tags)
    # The lowest threshold the reference compares a tag with is above what the session leaves out.
    thresholds = [REFERENCE["thresholds"]["tag_results_gt"], *REFERENCE["nsfw_deepdanbooru_concepts"].values()]
    assert SPARSE_ABOVE < min(thresholds)

    # The same seeded model again in torch, against the bundle's ONNX on pictures of other targets.
    model = dd_export._random_model(torch, NARROW, tags)
    import onnxruntime as ort

    session = ort.InferenceSession(str(dd_bundle_master / entry["files"]["model"]), providers=["CPUExecutionProvider"])
    for size in [(128, 128), (900, 300), (513, 700)]:
        batch = np.stack([to_dd_input(generated_image(seed, *size)) for seed in (11, 12)])
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        (got,) = session.run(None, {"pixels": batch})
        assert got.shape == (2, len(tags))
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert float(expected.max()) - float(expected.min()) > 0.5  # the calibrated head spreads the scores


def test_a_wrong_weights_sha256_is_refused(tmp_path):
    bad = tmp_path / "model-resnet_custom_v3.pt"
    bad.write_bytes(b"not the checkpoint")
    with pytest.raises(ExportError, match=f"sha256 {hashlib.sha256(b'not the checkpoint').hexdigest()}"):
        dd_export.export_deepdanbooru(tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()
    # Through the CLI it fails before the CLIP export starts, and leaves nothing behind.
    out = tmp_path / "bundle"
    proc = run_cli("model", "export", "--arch", "tiny-test", "--pretrained", "none", "--out", str(out),
                   "--deepdanbooru-weights", str(bad))  # fmt: skip
    assert proc.returncode == 2 and dd_export.WEIGHTS_SHA256 in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    missing = run_cli("model", "export", "--arch", "tiny-test", "--pretrained", "none", "--out", str(out),
                      "--deepdanbooru-weights", str(tmp_path / "nowhere.pt"))  # fmt: skip
    assert missing.returncode == 2 and "do not exist" in missing.stderr and dd_export.WEIGHTS_URL in missing.stderr


def test_real_clip_weights_get_the_release_checkpoint_downloaded_and_verified_or_nothing(tmp_path):
    """Without --deepdanbooru-weights a real export downloads the release's checkpoint into the cache, checked
    by its sha256 before it is kept: what a wrong server sends is refused and not kept, an unreachable one is
    said with how to do it by hand; both before any model hub is asked for CLIP weights."""
    import http.server
    import threading

    class Wrong(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            body = b"not the checkpoint" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Wrong)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    args = ("model", "export", "--arch", "tiny-test", "--pretrained", "openai", "--out", str(tmp_path / "b"),
            "--with-deepdanbooru")  # fmt: skip
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/model-resnet_custom_v3.pt"
        proc = run_cli(*args, env={"MIRROR_SCAN_DEEPDANBOORU_URL": url, "XDG_CACHE_HOME": str(cache)})
    finally:
        server.shutdown()
    assert proc.returncode == 2 and "not the checkpoint's 3841542c" in proc.stderr and "not kept" in proc.stderr
    assert not [p for p in cache.rglob("*") if p.is_file()] and not (tmp_path / "b").exists()
    proc = run_cli(*args, env={"MIRROR_SCAN_DEEPDANBOORU_URL": "http://127.0.0.1:9/x.pt", "XDG_CACHE_HOME": str(cache)})
    assert proc.returncode == 2 and "could not be downloaded" in proc.stderr and "--deepdanbooru-weights" in proc.stderr
    with pytest.raises(ExportError, match="random-weight tests only"):
        dd_export.export_deepdanbooru(tmp_path / "o", tmp_path / "x.pt", width_divisor=NARROW)


def test_a_local_checkpoint_loads_strictly_with_its_tags(tmp_path):
    """The checkpoint path, with a narrowed stand-in for model-resnet_custom_v3.pt (whose sha256 is given)."""
    tags = [f"tag_{i}" for i in range(40)] + list(RATING_TAGS)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        state = dd_export.build_model(torch, NARROW, len(tags)).state_dict()
    checkpoint = tmp_path / "stand-in.pt"
    torch.save({**state, "tags": tags}, checkpoint)
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    entry = dd_export.export_deepdanbooru(
        tmp_path / "out", checkpoint, expected_sha256=sha, width_divisor=NARROW, parity_count=2
    )
    assert entry["random_weights"] is False and entry["weights"] == {"file": "stand-in.pt", "sha256": sha}
    assert json.loads((tmp_path / "out" / "deepdanbooru-tags.json").read_text())["tags"] == tags
    assert entry["tag_count"] == len(tags) and entry["parity"]["max_abs_diff"] < 1e-5

    del state["n_Conv_57.bias"]  # strict=True: a checkpoint of another architecture is refused
    torch.save({**state, "tags": tags}, checkpoint)
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with pytest.raises(ExportError, match="do not fit the architecture.*n_Conv_57.bias"):
        dd_export.export_deepdanbooru(tmp_path / "out2", checkpoint, expected_sha256=sha, width_divisor=NARROW)


# --- the bundle and the scan-time session ----------------------------------------------------------------


def test_bundle_loads_with_and_without_deepdanbooru(dd_bundle):
    bundle = load_bundle(dd_bundle)
    assert bundle.deepdanbooru is not None and bundle.deepdanbooru.random_weights
    assert bundle.deepdanbooru.model_file == "deepdanbooru.onnx"
    info = run_cli("model", "info", str(dd_bundle), "--device", "cpu", check=True).stdout
    assert re.search(r"DeepDanbooru\s+│ \d+ tags, random weights, narrowed 1/16", info), info
    verify = run_cli("model", "verify", str(dd_bundle), "--device", "cpu", "--json", check=True).stdout
    assert json.loads(verify)["deepdanbooru"]["status"] == "ok"

    manifest = _manifest(dd_bundle)
    del manifest["deepdanbooru"]
    _write_manifest(dd_bundle, manifest)
    for name in ("deepdanbooru.onnx", "deepdanbooru-tags.json"):
        (dd_bundle / name).unlink()
    assert load_bundle(dd_bundle).deepdanbooru is None
    info = run_cli("model", "info", str(dd_bundle), "--device", "cpu", check=True).stdout
    assert re.search(r"DeepDanbooru\s+│ no\s", info), info
    with pytest.raises(BundleError, match="has no DeepDanbooru model"):
        DeepDanbooru(load_bundle(dd_bundle), device="cpu")


def test_a_missing_or_changed_deepdanbooru_file_is_refused(dd_bundle):
    (dd_bundle / "deepdanbooru.onnx").rename(dd_bundle / "elsewhere.onnx")
    with pytest.raises(BundleError, match="DeepDanbooru file deepdanbooru.onnx is missing"):
        load_bundle(dd_bundle)
    info = run_cli("model", "info", str(dd_bundle), "--device", "cpu")
    assert info.returncode == 2 and "FAILED: missing" in info.stdout
    (dd_bundle / "elsewhere.onnx").rename(dd_bundle / "deepdanbooru.onnx")

    tags_file = dd_bundle / "deepdanbooru-tags.json"
    original = tags_file.read_bytes()
    tags_file.write_bytes(original.replace(b"bikini", b"bikinj"))
    with pytest.raises(BundleError, match="DeepDanbooru file deepdanbooru-tags.json does not match its sha256"):
        load_bundle(dd_bundle)
    tags_file.write_bytes(original)

    manifest = _manifest(dd_bundle)
    manifest["deepdanbooru"]["files"]["tags"] = "other-tags.json"  # named, but not hashed
    _write_manifest(dd_bundle, manifest)
    with pytest.raises(BundleError, match="names other-tags.json without its sha256"):
        load_bundle(dd_bundle)
    del manifest["deepdanbooru"]["files"]
    _write_manifest(dd_bundle, manifest)
    with pytest.raises(BundleError, match="'deepdanbooru' entry is incomplete"):
        load_bundle(dd_bundle)


def test_a_tag_list_that_does_not_fit_the_model_is_refused(dd_bundle):
    manifest = _manifest(dd_bundle)
    entry = manifest["deepdanbooru"]
    tags = json.loads((dd_bundle / "deepdanbooru-tags.json").read_text())["tags"][1:]
    data = json.dumps({"tags": tags}).encode()
    (dd_bundle / "deepdanbooru-tags.json").write_bytes(data)
    entry["sha256"]["deepdanbooru-tags.json"] = hashlib.sha256(data).hexdigest()
    entry["tag_count"] = len(tags)
    _write_manifest(dd_bundle, manifest)
    with pytest.raises(BundleError, match=f"{len(tags) + 1} outputs for {len(tags)} tags"):
        DeepDanbooru(load_bundle(dd_bundle), device="cpu")


def test_session_scores_are_sparse_raw_and_batched_by_target(dd_bundle_master):
    bundle = load_bundle(dd_bundle_master)
    dd = DeepDanbooru(bundle, device="cpu", max_batch=2, always=["filler_tag_0005"])
    assert dd.placement.provider == "CPUExecutionProvider"
    sizes = [(300, 200), (64, 64), (310, 190), (2000, 100), (300, 200), (305, 200), (50, 60)]
    pictures = [generated_image(20 + i, *size) for i, size in enumerate(sizes)]
    results = dd.tag_scores(pictures)
    assert len(results) == len(pictures)
    for picture, result in zip(pictures, results, strict=True):
        (dense,) = dd.run(to_dd_input(picture)[None])  # one at a time: batching changes nothing
        expected = {t: float(s) for t, s in zip(dd.tags, dense, strict=True) if s > SPARSE_ABOVE}
        expected |= {t: float(dense[dd.tags.index(t)]) for t in [*RATING_TAGS, "filler_tag_0005"]}
        assert result.keys() == expected.keys()
        np.testing.assert_allclose([result[t] for t in expected], list(expected.values()), atol=1e-6)
        assert all(isinstance(v, float) for v in result.values())
    assert any(len(r) < len(dd.tags) for r in results)  # tags at or below 0.05 are left out
    assert dd.tag_scores([]) == []


def test_scanning_never_imports_torch(dd_bundle_master):
    code = (
        "import sys\n"
        "from mirror_scan.model.bundle import load_bundle\n"
        "from mirror_scan.model.deepdanbooru import DeepDanbooru\n"
        "from mirror_scan.model.synthetic import generated_image\n"
        f"dd = DeepDanbooru(load_bundle({str(dd_bundle_master)!r}), device='cpu')\n"
        "assert dd.tag_scores([generated_image(1, 200, 100)])[0]['rating:safe'] >= 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
