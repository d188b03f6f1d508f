"""What a served decode must equal: the bundle's model run offline, in the test process.

The server runs the bundle through `megdecode.serve.model` (the folded serving layout,
windows stacked by ``@serve.batch`` or per stream tick) and ranks the gallery with
`megdecode.serve.gallery.Gallery`; the reference here rebuilds the unfolded module with
`megdecode.predict` and ranks by a plain cosine, so a served answer that matches it went
through the same window -> latent -> ranking path, one window and one subject at a time.

Tolerances (measured on the tiny bundle, float32 on CPU):
- LATENT_ATOL 1e-5: folded vs unfolded and batched vs one-window forwards differ by
  <= 2.4e-7 on latents of magnitude ~0.3; the wrong answers the tests must catch (another
  request's row, another subject's layer) differ by >= 3e-4 (`assert_discriminates` checks
  the margin on the test's own windows, so a fixture too weak to tell them apart fails).
- SCORE_ATOL 2e-6: served scores are cosines rounded to 6 decimals (<= 5e-7) from a
  latent within the float noise above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LATENT_ATOL = 1e-5
SCORE_ATOL = 2e-6


@dataclass
class OfflineDecoder:
    """The bundle's unfolded model and its gallery, as `megdecode evaluate` loads them."""

    model: Any  # megdecode.models.brain.BrainModule
    subjects: list[str]
    gallery_ids: np.ndarray  # (M,)
    gallery_unit: np.ndarray  # (M, F), unit rows

    @classmethod
    def load(cls, bundle_dir: Path) -> OfflineDecoder:
        from megdecode.predict import load_model

        model, bundle = load_model(bundle_dir)
        gallery = np.asarray(bundle.gallery, np.float64)
        unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        return cls(model, list(bundle.subjects), np.asarray(bundle.gallery_ids), unit)

    def latents(self, windows: np.ndarray, subjects: np.ndarray) -> np.ndarray:
        """windows (N, C, T), subject indices (N,) -> CLIP-head latents (N, F)."""
        from megdecode.predict import predict_windows

        clip, _ = predict_windows(self.model, windows.astype(np.float32), np.asarray(subjects))
        return clip

    def scores(self, latents: np.ndarray) -> np.ndarray:
        """latents (N, F) -> cosine similarity to every gallery image (N, M)."""
        z = np.asarray(latents, np.float64)
        return (z / np.linalg.norm(z, axis=1, keepdims=True)) @ self.gallery_unit.T


def assert_topk_matches(hits: list[dict[str, Any]], scores: np.ndarray, ids: np.ndarray) -> None:
    """`hits` (a served top-k, best first) is the top-k of the offline `scores` (M,) over `ids`.

    Tie-proof: each hit's score is the offline cosine of its image, the scores do not
    increase, and no image left out scores above the last hit (all within SCORE_ATOL)."""
    by_id = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    served_ids = [int(h["image_id"]) for h in hits]
    served = np.array([h["score"] for h in hits])
    assert len(set(served_ids)) == len(served_ids), served_ids
    np.testing.assert_allclose(
        served, [by_id[i] for i in served_ids], rtol=0, atol=SCORE_ATOL, err_msg=str(served_ids)
    )
    assert np.all(np.diff(served) <= SCORE_ATOL), served
    left_out = [s for i, s in by_id.items() if i not in set(served_ids)]
    assert not left_out or max(left_out) <= served[-1] + SCORE_ATOL, (served_ids, left_out)


def assert_same_decode(
    body: dict[str, Any], latent: np.ndarray, scores: np.ndarray, ids: np.ndarray
) -> None:
    """A /v1/decode response body equals the offline `latent` (F,) and its gallery `scores`."""
    np.testing.assert_allclose(np.asarray(body["latent"]), latent, rtol=0, atol=LATENT_ATOL)
    assert_topk_matches(body["top_k"], scores, ids)


def assert_discriminates(
    right: np.ndarray, wrong: np.ndarray, atol: float, what: str, margin: float = 10.0
) -> None:
    """Every row of the `wrong` answers is > `margin` x `atol` away from its `right` row: the
    comparison at `atol` can tell them apart (else the test would pass a broken server)."""
    gap = np.abs(np.asarray(right) - np.asarray(wrong)).max(axis=1)
    assert gap.min() > margin * atol, (
        f"{what}: the fixture cannot tell answers apart ({gap.min():.2e} <= {margin} x {atol})"
    )
