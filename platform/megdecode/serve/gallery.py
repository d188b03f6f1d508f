"""Top-k retrieval against a bundle's gallery: which candidate images a latent points to.

Same rule as `megdecode.evaluation.retrieval` (cosine similarity between a predicted latent and each
candidate latent), with the gallery normalised once at load so a request costs one
(N, F) x (F, M) product. Categories and image paths come from the bundle's
``gallery_meta`` ("" where the bundle knows none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from megdecode.bundle import ModelBundle

logger = logging.getLogger(__name__)


@dataclass
class Gallery:
    """ids (M,), unit-norm latents (M, F) float32, categories and paths (M,)."""

    ids: np.ndarray
    unit: np.ndarray
    categories: list[str]
    paths: list[str]

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> Gallery:
        latents = np.asarray(bundle.gallery, np.float32)
        norms = np.maximum(np.linalg.norm(latents, axis=1, keepdims=True), 1e-8)
        meta = bundle.gallery_meta
        return cls(
            np.asarray(bundle.gallery_ids),
            latents / norms,
            list(meta.categories),
            list(meta.image_paths),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def topk(self, pred: np.ndarray, k: int) -> list[list[dict[str, object]]]:
        """pred (N, F) -> per row the k best {image_id, category, score}, best first."""
        pred = np.asarray(pred, np.float32)
        unit = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-8)
        sim = unit @ self.unit.T
        k = min(k, len(self.ids))
        best = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out = []
        for row, cand in zip(sim, best, strict=True):
            order = cand[np.argsort(-row[cand], kind="stable")]
            out.append(
                [
                    {
                        "image_id": int(self.ids[j]),
                        "category": self.categories[j],
                        "score": round(float(row[j]), 6),
                    }
                    for j in order
                ]
            )
        return out

    def rank_of(self, pred: np.ndarray, image_id: int) -> int:
        """0-based rank of `image_id` for one prediction (F,), by evaluation's rule
        (`megdecode.evaluation.retrieval.retrieval_ranks`: ties broken at random, seed 0)."""
        from megdecode.evaluation.retrieval import retrieval_ranks

        where = np.flatnonzero(self.ids == image_id)
        if not len(where):
            raise KeyError(f"image {image_id} is not in the gallery")
        p = np.asarray(pred, np.float32)[None, :]
        return int(retrieval_ranks(p, self.unit, where[:1])[0])
