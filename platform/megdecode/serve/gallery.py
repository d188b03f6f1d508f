"""Top-k retrieval against a bundle's gallery: which candidate images a latent points to.

Same rule as `megdecode.evaluation.retrieval` (cosine similarity between a predicted latent and each
candidate latent), with the gallery normalised once at load so a request costs one
(N, F) x (F, M) product. Categories and image paths come from the bundle's
``extra["gallery_meta"]`` (bundles from `train.make_bundle`); older bundles fall back to
the epoch store's metadata when a store is given, else report no category.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

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
    def from_bundle(cls, bundle: ModelBundle, store: str | Path | None = None) -> Gallery:
        ids = np.asarray(bundle.gallery_ids)
        latents = np.asarray(bundle.gallery, np.float32)
        norms = np.maximum(np.linalg.norm(latents, axis=1, keepdims=True), 1e-8)
        meta = bundle.extra.get("gallery_meta") or {}
        categories = [str(c) for c in meta.get("category", [])]
        paths = [str(p) for p in meta.get("image_path", [])]
        if len(categories) != len(ids) and store is not None:
            categories, paths = _from_store(ids, Path(store))
        if len(categories) != len(ids):
            categories, paths = [""] * len(ids), [""] * len(ids)
        return cls(ids, latents / norms, categories, paths)

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
            out.append([{"image_id": int(self.ids[j]), "category": self.categories[j],
                         "score": round(float(row[j]), 6)} for j in order])
        return out

    def rank_of(self, pred: np.ndarray, image_id: int) -> int:
        """0-based rank of `image_id` for one prediction (F,), pessimistic ties as evaluate."""
        where = np.flatnonzero(self.ids == image_id)
        if not len(where):
            raise KeyError(f"image {image_id} is not in the gallery")
        p = np.asarray(pred, np.float32)
        sim = self.unit @ (p / max(float(np.linalg.norm(p)), 1e-8))
        return int((sim >= sim[where[0]]).sum() - 1)


def _from_store(ids: np.ndarray, store: Path) -> tuple[list[str], list[str]]:
    from megdecode.data.store import load_metadata

    meta = load_metadata(store).drop_duplicates("image_id").set_index("image_id").reindex(ids)
    return meta["category"].fillna("").astype(str).tolist(), meta["image_path"].fillna("").astype(str).tolist()
