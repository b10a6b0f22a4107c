"""A model bundle: a directory holding ONNX encoders, concept embeddings and manifest.json.

The manifest says everything a scanner needs (preprocessing, tokenizer, embedding size, which file is
which precision) and the sha256 of every file, so nothing is guessed at scan time. Loading verifies
every hash: a truncated or tampered encoder is refused with the file's name, never half-used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mirror_scan.errors import BundleError
from mirror_scan.hashing import sha256_file

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "mirror-scan-bundle"
BUNDLE_FORMAT_VERSION = 1

# Manifest "files" roles; the image roles are the precisions a scanner may pick.
IMAGE_ROLES = {"fp32": "image_fp32", "fp16": "image_fp16", "int8": "image_int8"}
REEXPORT = "re-export it with `mirror-scan model export`, or copy the bundle again"
REEXPORT_DD = "re-export it with `mirror-scan model export --with-deepdanbooru`, or copy the bundle again"
DEEPDANBOORU = "deepdanbooru"  # the optional manifest entry of the second model (model/deepdanbooru.py)


@dataclass(frozen=True)
class Preprocess:
    """The image transform of the exported model, as open_clip defines it for inference."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" | "bilinear"
    resize_mode: str  # "shortest" | "squash"
    fill_color: int = 0

    @classmethod
    def from_manifest(cls, raw: dict[str, Any], where: Path) -> Preprocess:
        try:
            size = raw["image_size"]
            prep = cls(
                size=(int(size[0]), int(size[1])),
                mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
                interpolation=str(raw["interpolation"]),
                resize_mode=str(raw["resize_mode"]),
                fill_color=int(raw.get("fill_color", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise BundleError(where, f"manifest 'preprocess' is incomplete ({err})", REEXPORT) from None
        if prep.interpolation not in ("bicubic", "bilinear"):
            raise BundleError(where, f"unsupported interpolation {prep.interpolation!r}", REEXPORT)
        if prep.resize_mode not in ("shortest", "squash"):
            raise BundleError(
                where,
                f"resize mode {prep.resize_mode!r} is not supported by this scanner",
                "export an architecture whose open_clip transform uses 'shortest' or 'squash'",
            )
        return prep


@dataclass(frozen=True)
class Concepts:
    """Text embeddings of prompts, L2-normalised, one row per prompt."""

    prompts: tuple[str, ...]
    matrix: np.ndarray  # float32 [P, D]

    def index(self) -> dict[str, int]:
        return {prompt: row for row, prompt in enumerate(self.prompts)}

    def select(self, prompts: tuple[str, ...]) -> np.ndarray:
        """Rows for `prompts`, in that order; KeyError names the first prompt that is missing."""
        where = self.index()
        return self.matrix[[where[p] for p in prompts]]

    def missing(self, prompts: tuple[str, ...]) -> list[str]:
        where = self.index()
        return [p for p in prompts if p not in where]


@dataclass(frozen=True)
class DeepDanbooruPart:
    """The bundle's "deepdanbooru" manifest entry, checked for shape (hashes are checked with the others)."""

    model_file: str
    tags_file: str
    resize_targets: tuple[tuple[int, int], ...]
    tag_count: int
    random_weights: bool
    raw: dict[str, Any]

    @classmethod
    def from_manifest(cls, raw: Any, where: Path) -> DeepDanbooruPart:
        try:
            files = raw["files"]
            part = cls(
                model_file=str(files["model"]),
                tags_file=str(files["tags"]),
                resize_targets=tuple((int(w), int(h)) for w, h in raw["resize_targets"]),
                tag_count=int(raw["tag_count"]),
                random_weights=bool(raw["random_weights"]),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(where, f"manifest 'deepdanbooru' entry is incomplete ({err})", REEXPORT_DD) from None
        for name in (part.model_file, part.tags_file):
            if name not in deepdanbooru_hashes(raw):
                raise BundleError(where, f"manifest 'deepdanbooru' names {name} without its sha256", REEXPORT_DD)
        if not part.resize_targets:
            raise BundleError(where, "manifest 'deepdanbooru' has no resize targets", REEXPORT_DD)
        return part


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    preprocess: Preprocess
    concepts: Concepts
    deepdanbooru: DeepDanbooruPart | None = None  # None: the bundle has CLIP only

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["model"]["embedding_dim"])

    @property
    def model_id(self) -> str:
        """Identifies the image encoder: equal ids mean equal embeddings (stored results reusable)."""
        model = self.manifest["model"]
        return f"{model['arch']}/{model['pretrained']}@{self.manifest['sha256'][self.file('image_fp32')][:12]}"

    def file(self, role: str) -> str:
        return self.manifest["files"][role]

    def image_encoder_path(self, precision: str) -> Path:
        role = IMAGE_ROLES[precision]
        if role not in self.manifest["files"]:
            hint = "export with --quantize int8" if precision == "int8" else REEXPORT
            raise BundleError(self.path, f"has no {precision} image encoder", hint)
        return self.path / self.file(role)

    def available_precisions(self) -> list[str]:
        return [p for p, role in IMAGE_ROLES.items() if role in self.manifest["files"]]

    @property
    def text_encoder_path(self) -> Path:
        return self.path / self.file("text")

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise BundleError(path, "does not exist", "pass --model DIR, or export one with `mirror-scan model export`")
    if not path.is_dir():
        raise BundleError(path, "is not a directory", "a bundle is the directory that holds manifest.json")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(path, "has no manifest.json", REEXPORT) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(path, f"manifest.json is not valid JSON ({err})", REEXPORT) from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(path, "manifest.json is not a mirror-scan bundle manifest", REEXPORT)
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(path, "manifest.json has no format_version", REEXPORT)
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            path,
            f"was made by a newer mirror-scan (bundle format {version}, this one reads {BUNDLE_FORMAT_VERSION})",
            "upgrade mirror-scan, or export the bundle again with this version",
        )
    for key in ("model", "preprocess", "tokenizer", "files", "sha256"):
        if key not in manifest:
            raise BundleError(path, f"manifest.json lacks '{key}'", REEXPORT)
    return manifest


def deepdanbooru_hashes(entry: Any) -> dict[str, str]:
    """The DeepDanbooru entry's {file: sha256}; empty when there is no entry (or it is malformed)."""
    hashes = entry.get("sha256") if isinstance(entry, dict) else None
    return dict(hashes) if isinstance(hashes, dict) else {}


def bundle_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """Every file's sha256: the CLIP files', and the DeepDanbooru entry's when there is one."""
    return {**manifest["sha256"], **deepdanbooru_hashes(manifest.get(DEEPDANBOORU))}


def check_files(path: Path, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Every file named in the manifest, with 'ok', 'missing' or 'sha256 mismatch'."""
    results = []
    for name, expected in sorted(bundle_hashes(manifest).items()):
        file = path / name
        if not file.is_file():
            results.append((name, "missing"))
        elif sha256_file(file) != expected:
            results.append((name, "sha256 mismatch"))
        else:
            results.append((name, "ok"))
    return results


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    dd_files = deepdanbooru_hashes(manifest.get(DEEPDANBOORU))
    for name, state in check_files(path, manifest):
        what, hint = ("DeepDanbooru file", REEXPORT_DD) if name in dd_files else ("file", REEXPORT)
        if state == "missing":
            raise BundleError(path, f"{what} {name} is missing", hint)
        if state != "ok":
            raise BundleError(path, f"{what} {name} does not match its sha256 (truncated or modified)", hint)


def load_concepts(path: Path, manifest: dict[str, Any]) -> Concepts:
    try:
        files = manifest["files"]
        prompts = json.loads((path / files["concept_prompts"]).read_text(encoding="utf-8"))["prompts"]
        matrix = np.load(path / files["concepts"], allow_pickle=False)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise BundleError(path, f"concept embeddings cannot be read ({err})", REEXPORT) from None
    dim = int(manifest["model"]["embedding_dim"])
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise BundleError(
            path,
            f"concept embeddings have shape {tuple(matrix.shape)}, but the model's embedding size is {dim}",
            "recompute them with `mirror-scan model concepts --model DIR`",
        )
    if matrix.shape[0] != len(prompts):
        raise BundleError(path, f"concept matrix has {matrix.shape[0]} rows for {len(prompts)} prompts", REEXPORT)
    return Concepts(prompts=tuple(prompts), matrix=np.ascontiguousarray(matrix, dtype=np.float32))


def load_bundle(path: Path | str, *, verify: bool = True) -> Bundle:
    path = Path(path)
    manifest = read_manifest(path)
    dd = DeepDanbooruPart.from_manifest(manifest[DEEPDANBOORU], path) if DEEPDANBOORU in manifest else None
    if verify:
        verify_files(path, manifest)
    preprocess = Preprocess.from_manifest(manifest["preprocess"], path)
    concepts = load_concepts(path, manifest)
    return Bundle(path=path, manifest=manifest, preprocess=preprocess, concepts=concepts, deepdanbooru=dd)
