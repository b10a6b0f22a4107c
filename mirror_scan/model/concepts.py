"""Concept embeddings in a bundle: written under content-addressed names, then committed by an atomic
manifest replace, so a crash mid-update leaves the old, still-valid bundle."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from mirror_scan.atomic import atomic_write_bytes
from mirror_scan.hashing import sha256_bytes
from mirror_scan.model.bundle import MANIFEST, Bundle, load_bundle


def write_concepts(path: Path, manifest: dict[str, Any], prompts: list[str], matrix: np.ndarray) -> dict[str, Any]:
    """Write the concept files and the manifest naming them; returns the new manifest."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, matrix, allow_pickle=False)
    matrix_bytes = buf.getvalue()
    prompts_bytes = (json.dumps({"prompts": prompts}, ensure_ascii=False, indent=0) + "\n").encode("utf-8")
    tag = hashlib.sha256(matrix_bytes + prompts_bytes).hexdigest()[:12]
    names = {"concepts": f"concepts-{tag}.npy", "concept_prompts": f"concepts-{tag}.json"}
    old = {role: manifest.get("files", {}).get(role) for role in names}

    atomic_write_bytes(path / names["concepts"], matrix_bytes)
    atomic_write_bytes(path / names["concept_prompts"], prompts_bytes)
    new = json.loads(json.dumps(manifest))
    new.setdefault("files", {}).update(names)
    sha = new.setdefault("sha256", {})
    for name in old.values():
        if name and name not in names.values():
            sha.pop(name, None)
    sha[names["concepts"]] = sha256_bytes(matrix_bytes)
    sha[names["concept_prompts"]] = sha256_bytes(prompts_bytes)
    new["concept_count"] = len(prompts)
    atomic_write_bytes(path / MANIFEST, (json.dumps(new, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    for name in old.values():  # only after the manifest no longer names them
        if name and name not in names.values():
            (path / name).unlink(missing_ok=True)
    return new


def add_prompts(bundle: Bundle, prompts: list[str], embed) -> tuple[Bundle, list[str]]:
    """Embed the prompts the bundle lacks with `embed(list[str]) -> [N, D]` and commit them."""
    missing = [p for p in dict.fromkeys(prompts) if p not in bundle.concepts.index()]
    if not missing:
        return bundle, []
    new_rows = np.asarray(embed(missing), dtype=np.float32)
    matrix = np.concatenate([bundle.concepts.matrix, new_rows])
    write_concepts(bundle.path, bundle.manifest, [*bundle.concepts.prompts, *missing], matrix)
    return load_bundle(bundle.path), missing
