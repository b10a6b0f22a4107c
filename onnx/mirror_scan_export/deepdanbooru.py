"""DeepDanbooru (TorchDeepDanbooru's model-resnet_custom_v3) -> deepdanbooru.onnx in a mirror-scan bundle.

The architecture is ported from horde_safety/deep_danbooru_model.py in Haidra-Org/horde-safety, commit
ebea47ad14792ee1130d79a905428e3fb818c0ee, whose DeepDanbooruModel class is MIT-licensed:
  Copyright (c) 2022 AUTOMATIC1111, https://github.com/AUTOMATIC1111/TorchDeepDanbooru
  Original DeepDanbooru concept and code Copyright (c) 2019 Kichang Kim, https://github.com/KichangKim/DeepDanbooru
  License: MIT (the full text is third_party_licenses/MIT.txt in horde-safety).
Upstream spells out 179 convolutions one by one; here the same layers come from a table, registered under
the same names (n_Conv_0 .. n_Conv_178, n_MaxPool_0) with the same shapes, so the real checkpoint loads
with strict=True. The forward pass is upstream's, except that the final average pool is a global mean so
the ONNX graph takes any height and width (upstream sizes its pool from the traced shape).

Weights come from a local file (--deepdanbooru-weights) or are downloaded from the release into the user's cache
(fetch_weights); either way they must have upstream's SHA-256. Without weights
(`--pretrained none`) the model gets seeded random weights and a generated tag list holding every tag the
policy reads, for tests and benchmarks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mirror_scan.errors import ExportError
from mirror_scan.hashing import sha256_file
from mirror_scan.model.deepdanbooru import RATING_TAGS, RESIZE_TARGETS, to_dd_input
from mirror_scan.model.synthetic import generated_image

from .export import MIN_PARITY_COSINE, OPSET, _export_onnx, _import_export_stack, _ort_run, _parity

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model-resnet_custom_v3.pt"
WEIGHTS_SHA256 = "3841542cda4dd037da12a565e854b3347bb2eec8fbcd95ea3941b2c68990a355"
WEIGHTS_URL = "https://github.com/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt"
UPSTREAM = {
    "repo": "Haidra-Org/horde-safety",
    "commit": "ebea47ad14792ee1130d79a905428e3fb818c0ee",
    "architecture": "horde_safety/deep_danbooru_model.py (MIT, from AUTOMATIC1111/TorchDeepDanbooru)",
    "preprocessing": "horde_safety/nsfw_checker_class.py (get_closest_resize_target, check_for_nsfw_anime_only)",
    "weights_url": WEIGHTS_URL,
}
TAG_COUNT = 9176  # outputs of the real checkpoint (n_Conv_178)
# Non-rating tags horde-safety reads (nsfw_deepdanbooru_concepts and the "realistic" override; the reference's
# nsfw_checker_v2.json, section "deepdanbooru"); a random model always has them, and the policies' own tags.
POLICY_TAGS = ("bikini", "realistic")
HEAD = 178  # the last convolution: 1x1 to one logit per tag, without bias
FILES = {"model": "deepdanbooru.onnx", "tags": "deepdanbooru-tags.json"}
# Scores are sigmoids in [0, 1]; the policy compares them with thresholds at 4 decimals.
MAX_SCORE_DIFF = 1e-3
# Test-only narrowing: every channel count but the input's and the tags' divided by this (64 must divide).
TEST_WIDTH_DIVISORS = (1, 2, 4, 8, 16, 32)
TEST_TAG_COUNT = 64  # the tag count of a narrowed random model


def layout(width_divisor: int = 1, tag_count: int = TAG_COUNT):
    """({conv index: (in, out, kernel, stride)}, [(a, b, c, projection or None, stride)]) of upstream's
    bottleneck blocks: 1x1 a, 3x3 b (stride here), 1x1 c, plus a 1x1 projection where the shape changes."""
    convs: dict[int, tuple[int, int, int, int]] = {0: (3, 64 // width_divisor, 7, 2)}
    blocks: list[tuple[int, int, int, int | None, int]] = []
    n, channels = 1, 64 // width_divisor

    def block(mid: int, out: int, stride: int = 1, projection_first: bool = True) -> None:
        nonlocal n, channels
        mid, out = mid // width_divisor, out // width_divisor
        if channels == out and stride == 1:
            a, b, c, p = n, n + 1, n + 2, None
            n += 3
        else:  # upstream numbers the projection first, except in the block of n_Conv_97..100
            p, a, b, c = (n, n + 1, n + 2, n + 3) if projection_first else (n + 3, n, n + 1, n + 2)
            convs[p] = (channels, out, 1, stride)
            n += 4
        convs[a], convs[b], convs[c] = (channels, mid, 1, 1), (mid, mid, 3, stride), (mid, out, 1, 1)
        blocks.append((a, b, c, p, stride))
        channels = out

    for mid, out, first_stride, repeats in ((64, 256, 1, 3), (128, 512, 2, 8), (256, 1024, 2, 20)):
        for i in range(repeats):
            block(mid, out, first_stride if i == 0 else 1)
    block(256, 1024, 2, projection_first=False)  # a second downsampling inside upstream's third stage
    for _ in range(19):
        block(256, 1024)
    for mid, out in ((512, 2048), (1024, 4096)):
        for i in range(3):
            block(mid, out, 2 if i == 0 else 1)
    assert n == HEAD, n
    convs[HEAD] = (channels, tag_count, 1, 1)
    return convs, blocks


def build_model(torch, width_divisor: int = 1, tag_count: int = TAG_COUNT):
    """Upstream's DeepDanbooruModel in eval mode (random weights until loaded). Input NHWC float32 in [0, 1]."""
    nn, F = torch.nn, torch.nn.functional

    class DeepDanbooruModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            convs, self.blocks = layout(width_divisor, tag_count)
            for index, (cin, cout, kernel, stride) in sorted(convs.items()):
                conv = nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, bias=index != HEAD)
                setattr(self, f"n_Conv_{index}", conv)
            self.n_MaxPool_0 = nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2))

        def forward(self, pixels):
            def conv(index: int):
                return getattr(self, f"n_Conv_{index}")

            x = F.relu(self.n_Conv_0(F.pad(pixels.permute(0, 3, 1, 2), [2, 3, 2, 3], value=0)))
            x = self.n_MaxPool_0(F.pad(x, [0, 1, 0, 1], value=float("-inf")))
            for a, b, c, projection, stride in self.blocks:
                shortcut = x if projection is None else conv(projection)(x)
                y = F.relu(conv(a)(x))
                y = F.relu(conv(b)(F.pad(y, [1, 1, 1, 1] if stride == 1 else [0, 1, 0, 1], value=0)))
                x = F.relu(torch.add(conv(c)(y), shortcut))
            logits = conv(HEAD)(x).mean(dim=(2, 3))
            return torch.sigmoid(logits)

    return DeepDanbooruModel().eval()


def verified_weights(path: Path, expected_sha256: str = WEIGHTS_SHA256) -> str:
    """The file's sha256, or ExportError when it is not the expected checkpoint (checked before unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(
            f"DeepDanbooru weights {path} do not exist",
            hint=f"download {WEIGHTS_FILE} ({WEIGHTS_URL}) on a machine that reaches GitHub and pass its path",
        )
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ExportError(
            f"DeepDanbooru weights {path} have sha256 {actual}, expected {expected_sha256.lower()} ({WEIGHTS_FILE})",
            hint="the file is not the TorchDeepDanbooru v1 checkpoint, or it is truncated; download it again",
        )
    return actual


def fetch_weights(url: str | None = None, cache: Path | None = None, timeout_s: float = 60.0) -> Path:
    """The checkpoint from its release (or MIRROR_SCAN_DEEPDANBOORU_URL, a mirror of it) into the user's cache,
    streamed to a temp file, checked against WEIGHTS_SHA256 and only then renamed into place; a cached copy
    that verifies is used as it is. ExportError (nothing kept) when the release is unreachable or the bytes
    are not the checkpoint."""
    import hashlib
    import os
    import urllib.error
    import urllib.request

    import platformdirs

    url = url or os.environ.get("MIRROR_SCAN_DEEPDANBOORU_URL") or WEIGHTS_URL
    cache = cache or Path(platformdirs.user_cache_dir("mirror-scan"))
    target = cache / WEIGHTS_FILE
    if target.is_file() and sha256_file(target) == WEIGHTS_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    manual = f"download {WEIGHTS_FILE} on a machine that reaches it and pass --deepdanbooru-weights PATH"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer, open(tmp, "wb") as out:  # noqa: S310
            while chunk := answer.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise ExportError(f"DeepDanbooru weights could not be downloaded from {url}: {reason}", hint=manual) from None
    if digest.hexdigest() != WEIGHTS_SHA256:
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f"what {url} served has sha256 {digest.hexdigest()}, not the checkpoint's {WEIGHTS_SHA256}; not kept",
            hint=manual,
        )
    os.replace(tmp, target)
    log.info("DeepDanbooru weights downloaded to %s (sha256 verified)", target)
    return target


def random_tags(tag_count: int, extra: Iterable[str] = ()) -> list[str]:
    """Filler tags, then every tag a policy reads (at the end, so no code may assume an index)."""
    named = list(dict.fromkeys([*RATING_TAGS, *POLICY_TAGS, *extra]))
    if tag_count < len(named):
        raise ExportError(f"a random DeepDanbooru model needs at least {len(named)} tags, not {tag_count}")
    return [f"filler_tag_{i:04d}" for i in range(tag_count - len(named))] + named


def _load_weights(torch, path: Path, width_divisor: int):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # verified first; no code unpickled
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("tags"), list):
        raise ExportError(f"DeepDanbooru weights {path} hold no 'tags' list", hint="is it model-resnet_custom_v3.pt?")
    tags = checkpoint.pop("tags")
    model = build_model(torch, width_divisor, len(tags))
    try:
        model.load_state_dict(checkpoint, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # torch's message spans lines
        raise ExportError(f"DeepDanbooru weights {path} do not fit the architecture: {detail}") from None
    return model, [str(tag) for tag in tags]


def _random_model(torch, width_divisor: int, tags: list[str]):
    with torch.random.fork_rng():
        torch.manual_seed(0)  # reproducible, and the caller's random state is left alone
        model = build_model(torch, width_divisor, len(tags))
        # Default init drives every logit far from 0 after 60 residual blocks, so all scores would be 0 or 1.
        # Scale the head so logits on a generated picture spread about 2 wide: every kind of score occurs.
        with torch.no_grad():
            probe = torch.from_numpy(to_dd_input(generated_image(0, 256, 256))[None])
            logits = torch.logit(model(probe).clamp(1e-6, 1 - 1e-6))
            head = getattr(model, f"n_Conv_{HEAD}")
            head.weight.mul_(2.0 / max(float(logits.std()), 1e-6))
    return model


def _parity_pictures(count: int) -> list:
    """Generated pictures whose targets differ in height and width (one needs upscaling)."""
    sizes = [(300, 200), (120, 90), (200, 520), (700, 610), (64, 64), (1000, 700)]
    return [generated_image(100 + i, *sizes[i % len(sizes)]) for i in range(count)]


def export_deepdanbooru(
    out_dir: Path,
    weights: Path | None,
    *,
    expected_sha256: str = WEIGHTS_SHA256,
    width_divisor: int = 1,
    parity_count: int = 4,
    extra_tags: Iterable[str] = (),
) -> dict[str, Any]:
    """Write deepdanbooru.onnx and deepdanbooru-tags.json into `out_dir`; return the manifest's "deepdanbooru"
    entry. `weights`: the local checkpoint (sha256 must be `expected_sha256`), or None for random weights.
    `width_divisor` > 1 narrows the network for fast tests; it is refused for the real checkpoint."""
    torch, _ = _import_export_stack()
    started = time.monotonic()
    if width_divisor not in TEST_WIDTH_DIVISORS:
        raise ExportError(f"DeepDanbooru width divisor {width_divisor} is not one of {TEST_WIDTH_DIVISORS}")
    weights_sha = None
    if weights is not None:
        if width_divisor != 1 and expected_sha256.lower() == WEIGHTS_SHA256:
            raise ExportError("a narrowed DeepDanbooru is for random-weight tests only, never the real checkpoint")
        weights_sha = verified_weights(weights, expected_sha256)
        model, tags = _load_weights(torch, Path(weights), width_divisor)
    else:
        tags = random_tags(TAG_COUNT if width_divisor == 1 else TEST_TAG_COUNT, extra_tags)
        model = _random_model(torch, width_divisor, tags)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Reference scores from torch, per resize target (a batch has one height and width).
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for picture in _parity_pictures(parity_count):
        pixels = to_dd_input(picture)
        groups.setdefault(pixels.shape, []).append(pixels)
    batches = [np.stack(group) for group in groups.values()]
    with torch.no_grad():
        reference = [model(torch.from_numpy(batch)).numpy() for batch in batches]

    model_path = out_dir / FILES["model"]
    example = torch.from_numpy(np.concatenate([batches[0], batches[0]]))  # batch 2: the batch axis stays symbolic
    _export_onnx(torch, model, example, model_path, "pixels", "scores", {0: "batch", 1: "height", 2: "width"})
    onnx_out = [_ort_run(model_path, batch) for batch in batches]
    parity = _parity(np.concatenate(reference), None if any(o is None for o in onnx_out) else np.concatenate(onnx_out))
    parity.update(pictures=sum(len(b) for b in batches), input_shapes=[list(b.shape) for b in batches])
    if not parity["checked"] or parity["min_cosine"] < MIN_PARITY_COSINE or parity["max_abs_diff"] > MAX_SCORE_DIFF:
        raise ExportError(
            f"ONNX DeepDanbooru disagrees with torch: {parity}",
            hint="report the tool versions; the bundle was not written",
        )
    parity["threshold_max_abs_diff"] = MAX_SCORE_DIFF

    tags_path = out_dir / FILES["tags"]
    tags_path.write_text(json.dumps({"tags": tags}, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    entry: dict[str, Any] = {
        "files": dict(FILES),
        "sha256": {name: sha256_file(out_dir / name) for name in FILES.values()},
        "input": {
            "name": "pixels",
            "layout": "NHWC",
            "dtype": "float32",
            "values": "RGB / 255, after convert('RGB') and a LANCZOS resize to (width, height) = resize target",
            "dynamic_axes": ["batch", "height", "width"],
        },
        "output": {"name": "scores", "activation": "sigmoid", "per": "tag, in the order of the tag list"},
        "resize_targets": [list(target) for target in RESIZE_TARGETS],
        "resize_rule": "first target whose w*h has the smallest absolute difference from the picture's pixels",
        "tag_count": len(tags),
        "random_weights": weights is None,
        "weights": None if weights is None else {"file": Path(weights).name, "sha256": weights_sha},
        "width_divisor": width_divisor,  # 1 for every real export; >1 only in random-weight test bundles
        "opset": OPSET,
        "upstream": UPSTREAM,
        "parity": parity,
    }
    entry["export_seconds"] = round(time.monotonic() - started, 2)
    return entry
