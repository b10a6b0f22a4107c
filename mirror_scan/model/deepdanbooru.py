"""DeepDanbooru at scan time: the optional second model of a bundle (numpy, Pillow and onnxruntime; no torch).

horde-safety's NSFWChecker runs DeepDanbooru on pictures its CLIP rules call anime. Its input path is
reproduced exactly here (horde_safety/nsfw_checker_class.py, `get_closest_resize_target` and
`check_for_nsfw_anime_only`, Haidra-Org/horde-safety commit ebea47ad14792ee1130d79a905428e3fb818c0ee):
pick the first resize target whose pixel count is closest to the picture's, `convert("RGB")`, resize to
that (width, height) with LANCZOS, float32 / 255, NHWC. The model's outputs are sigmoid scores, one per tag.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mirror_scan.errors import BundleError, DeviceError
from mirror_scan.model.bundle import REEXPORT_DD as REEXPORT
from mirror_scan.model.bundle import Bundle, DeepDanbooruPart

# Tags whose scores are always returned: horde-safety's NSFWAnimeScores keys.
RATING_TAGS = ("rating:safe", "rating:questionable", "rating:explicit")
# Every other tag is returned only above this: horde's lowest tag threshold is 0.5 (bikini 0.6), so nothing
# it uses is lost, and a stored result holds tens of tags rather than all ~9,000. A policy that compares a
# tag with a lower threshold names it in `always`.
SPARSE_ABOVE = 0.05


def horde_resize_targets() -> tuple[tuple[int, int], ...]:
    """(width, height) targets in horde-safety's order, built by its own loop (NSFWChecker.__init__):
    (i, j) before (j, i), and duplicates kept, since the order decides ties."""
    targets: list[tuple[int, int]] = []
    for i in range(128, 769, 128):
        for j in range(128, 769, 128):
            targets.append((i, j))
            if i != j:
                targets.append((j, i))
    return tuple(targets)


RESIZE_TARGETS = horde_resize_targets()


def choose_target(width: int, height: int, targets: Sequence[tuple[int, int]] = RESIZE_TARGETS) -> tuple[int, int]:
    """The first target whose w*h is nearest the picture's pixel count (aspect ratio ignored, as upstream:
    a 256x256 picture gets 128x512, which comes first among equals)."""
    pixels = width * height
    best = (targets[0][0], targets[0][1])
    for w, h in targets:
        if abs(w * h - pixels) < abs(best[0] * best[1] - pixels):
            best = (w, h)
    return best


def to_dd_input(img: Image.Image, targets: Sequence[tuple[int, int]] = RESIZE_TARGETS) -> np.ndarray:
    """HWC float32 in [0, 1], bit for bit what horde-safety feeds the model (less its batch axis)."""
    target = choose_target(*img.size, targets)
    resized = img.convert("RGB").resize(target, Image.Resampling.LANCZOS)
    # Divide (not multiply by 1/255): float32 division is what upstream does, and the two differ in the last bit.
    return np.asarray(resized, dtype=np.float32) / 255


def load_tags(path: Path, part: DeepDanbooruPart) -> tuple[str, ...]:
    try:
        tags = json.loads((path / part.tags_file).read_text(encoding="utf-8"))["tags"]
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise BundleError(path, f"DeepDanbooru tag list cannot be read ({err})", REEXPORT) from None
    if len(tags) != part.tag_count or not all(isinstance(t, str) for t in tags):
        problem = f"DeepDanbooru tag list has {len(tags)} entries, manifest says {part.tag_count}"
        raise BundleError(path, problem, REEXPORT)
    return tuple(tags)


class DeepDanbooru:
    """The bundle's DeepDanbooru ONNX: PIL images -> per image, {tag: raw sigmoid score}.

    Each result holds the three rating tags and the tags in `always` (those the model has), and every other
    tag whose score is > SPARSE_ABOVE (0.05): a tag that is absent scored at most that. Scores are raw
    float32 sigmoids (unrounded): horde-safety rounds the ratings and its tag_results to 4 decimals and
    compares nsfw tags unrounded; that is the policy's business.
    """

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        threads: int = 0,
        max_batch: int = 8,
        always: Iterable[str] = (),
    ) -> None:
        from mirror_scan.model.infer import CPU, DEVICES, Placement, cuda_session, ort_session

        part = bundle.deepdanbooru
        if part is None:
            raise BundleError(bundle.path, "has no DeepDanbooru model", "export it with --with-deepdanbooru")
        if device not in DEVICES:
            raise DeviceError(f"unknown device {device!r}", hint="use one of: auto, cuda, cpu")
        self.part = part
        self.tags = load_tags(bundle.path, part)
        self.max_batch = max(1, max_batch)
        path = bundle.path / part.model_file
        session, note = None, "CPU requested"
        if device in ("auto", "cuda"):
            session, note = cuda_session(path, threads)
            if session is None and device == "cuda":
                raise DeviceError(f"--device cuda: {note}", hint="use --device auto or --device cpu")
        if session is None:
            session = ort_session(path, [CPU], threads)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(self.tags):
            problem = f"DeepDanbooru model has {width} outputs for {len(self.tags)} tags"
            raise BundleError(bundle.path, problem, REEXPORT)
        self.placement = Placement(provider=session.get_providers()[0], precision="fp32", note=note)
        kept = {*RATING_TAGS, *always}
        self._always = [i for i, tag in enumerate(self.tags) if tag in kept]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] float32 (one resize target) -> [N, tags] sigmoid scores."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return out.astype(np.float32, copy=False)

    def tag_scores(self, images: list[Image.Image]) -> list[dict[str, float]]:
        """Per image, in order: rating tags plus every tag scoring > SPARSE_ABOVE. Images sharing a resize
        target run as one batch (up to max_batch); the model takes one height and width per batch."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, img in enumerate(images):
            groups.setdefault(choose_target(*img.size, self.part.resize_targets), []).append(index)
        results: list[dict[str, float]] = [{} for _ in images]
        for members in groups.values():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start : start + self.max_batch]
                scores = self.run(np.stack([to_dd_input(images[i], self.part.resize_targets) for i in chunk]))
                for i, row in zip(chunk, scores, strict=True):
                    keep = sorted({*self._always, *np.flatnonzero(row > SPARSE_ABOVE).tolist()})
                    results[i] = {self.tags[k]: float(row[k]) for k in keep}
        return results
