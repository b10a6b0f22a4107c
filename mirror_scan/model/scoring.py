"""Embeddings -> similarities, and stored similarities -> a policy's columns.

A scan stores similarities against every prompt the bundle has embedded, so a different built-in
policy can be applied later without reading an image; a policy with prompts that were not stored is
applied from the stored embeddings instead.
"""

from __future__ import annotations

import numpy as np

from mirror_scan.errors import BundleError
from mirror_scan.model.bundle import Bundle
from mirror_scan.model.infer import ImageEncoder
from mirror_scan.policy import Policy


def similarities(embeddings: np.ndarray, concepts: np.ndarray) -> np.ndarray:
    """Cosine similarity of L2-normalised image and text embeddings: [N, D] x [P, D] -> [N, P]."""
    return np.asarray(embeddings, dtype=np.float32) @ np.asarray(concepts, dtype=np.float32).T


def require_prompts(bundle: Bundle, policy: Policy) -> None:
    missing = bundle.concepts.missing(policy.prompts)
    if missing:
        raise BundleError(
            bundle.path,
            f"has no embeddings for {len(missing)} prompt(s) of policy {policy.name} (first: {missing[0]!r})",
            f"run `mirror-scan model concepts --model {bundle.path} --policy {policy.source}`",
        )


def columns(prompts: tuple[str, ...], policy: Policy) -> np.ndarray | None:
    """Indices of the policy's prompts within `prompts`, or None if some are absent."""
    where = {p: i for i, p in enumerate(prompts)}
    try:
        return np.array([where[p] for p in policy.prompts], dtype=np.intp)
    except KeyError:
        return None


def policy_sims(
    sims: np.ndarray, embedding: np.ndarray, stored_prompts: tuple[str, ...], policy: Policy, bundle: Bundle | None
) -> np.ndarray:
    """A stored result's similarities in the policy's column order, from the stored similarities when
    they cover the policy's prompts, else from the stored (fp16) embeddings and the bundle's concepts."""
    cols = columns(stored_prompts, policy)
    if cols is not None:
        return sims[:, cols]
    if bundle is None:
        raise BundleError(
            "(none)",
            f"policy {policy.name} uses prompts the stored results were not scored on",
            "pass --model DIR so they can be computed from the stored embeddings",
        )
    require_prompts(bundle, policy)
    return similarities(embedding.astype(np.float32), bundle.concepts.select(policy.prompts))


class Scorer:
    """Pixels -> (embeddings [N, D], similarities against all the bundle's concept prompts [N, P])."""

    def __init__(self, bundle: Bundle, device: str = "auto", precision: str = "auto", threads: int = 0):
        self.bundle = bundle
        self.device = device  # the bundle's second model (DeepDanbooru) is placed as asked for this one
        self.encoder = ImageEncoder(bundle, device=device, precision=precision, threads=threads)

    @property
    def placement(self):
        return self.encoder.placement

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self.encoder(pixels)
        return embeddings, similarities(embeddings, self.bundle.concepts.matrix)


def result_model_id(bundle: Bundle, scorer: Scorer, limits) -> str:
    """Results are reused for the same bytes under the same key: the model, its precision, and what the
    decode hands it (full coverage scores more crops than the centre one; the reduced and thumbnail512
    resizes other pixels: ":reduced", ":thumbnail512"), and whether they carry DeepDanbooru's scores for
    the pictures the policy calls anime (":dd": results stored before DeepDanbooru was added have none,
    and are not reused as if they had)."""
    model_id = f"{bundle.model_id}:{scorer.placement.precision}"
    if limits.coverage == "full":
        model_id += ":full"
    resize = getattr(limits, "resize", "exact")
    if resize != "exact":
        model_id += f":{resize}"
    return model_id + (":dd" if getattr(limits, "deepdanbooru", False) else "")
