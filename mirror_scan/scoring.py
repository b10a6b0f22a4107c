"""Embeddings -> per-prompt cosine similarities for one policy's prompts."""

from __future__ import annotations

import numpy as np

from .bundle import Bundle
from .errors import BundleError
from .infer import ImageEncoder
from .policy import Policy


def concept_matrix(bundle: Bundle, policy: Policy) -> np.ndarray:
    """[P, D] text embeddings in the policy's column order; a clear error if the bundle lacks some."""
    missing = bundle.concepts.missing(policy.prompts)
    if missing:
        raise BundleError(
            bundle.path,
            f"has no embeddings for {len(missing)} prompt(s) of policy {policy.name} (first: {missing[0]!r})",
            f"run `mirror-scan model concepts --model {bundle.path} --policy {policy.source}`",
        )
    return bundle.concepts.select(policy.prompts)


def similarities(embeddings: np.ndarray, concepts: np.ndarray) -> np.ndarray:
    """Cosine similarity of L2-normalised image and text embeddings: [N, D] x [P, D] -> [N, P]."""
    return np.asarray(embeddings, dtype=np.float32) @ concepts.T


class Scorer:
    """Image encoder plus the policy's concept matrix: pixels in, (embeddings, similarities) out."""

    def __init__(self, bundle: Bundle, policy: Policy, device: str = "auto", precision: str = "auto", threads: int = 0):
        self.bundle = bundle
        self.policy = policy
        self.concepts = concept_matrix(bundle, policy)
        self.encoder = ImageEncoder(bundle, device=device, precision=precision, threads=threads)

    @property
    def placement(self):
        return self.encoder.placement

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self.encoder(pixels)
        return embeddings, similarities(embeddings, self.concepts)
