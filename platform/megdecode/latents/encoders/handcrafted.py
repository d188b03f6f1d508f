"""Hand-crafted image features: colour histograms, HOG and LBP (scikit-image).

A latent that needs no weights, so the demo and the tests have a real image target on a
machine without a model hub, and a low-level reference the learned latents must beat.
The paper's low-level baselines play the same role.

Features are raw, not L2-normalised as a whole: each part keeps its own scale (colour
and LBP histograms are fractions of pixels in [0, 1]; HOG is block-normalised by
scikit-image's L2-Hys). Training uses them as they are, with no per-dimension
standardisation: the CLIP loss and retrieval compare them by cosine similarity and the
MSE head regresses the raw values; only the MSE head's outputs are mapped onto the
training latents' per-dimension mean/std, for generation (`postprocess_mse`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from megdecode.config import FlatConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HandcraftedConfig(FlatConfig):
    # Every image is first resized to image_size x image_size (bilinear), so features do
    # not depend on the stimulus resolution and 64 px keeps HOG cheap (~1 ms/image).
    image_size: int = 64
    color_bins: int = 8  # histogram bins per RGB channel over 0..255
    hog_orientations: int = 9
    hog_pixels_per_cell: int = 16
    hog_cells_per_block: int = 2
    lbp_points: int = 8  # "uniform" LBP: lbp_points + 2 distinct codes
    lbp_radius: float = 1.0


class HandcraftedEncoder:
    """RGB images -> (N, F) float32: [colour hist (3*bins) | HOG | LBP hist (P+2)]."""

    name = "handcrafted"

    def __init__(self, config: HandcraftedConfig | None = None) -> None:
        self.config = config or HandcraftedConfig()
        c = self.config
        cells = c.image_size // c.hog_pixels_per_cell
        blocks = cells - c.hog_cells_per_block + 1
        if blocks < 1:
            raise ValueError(
                f"image_size {c.image_size} is too small for HOG cells of "
                f"{c.hog_pixels_per_cell} px in blocks of {c.hog_cells_per_block}"
            )
        self.hog_dim = blocks * blocks * c.hog_cells_per_block**2 * c.hog_orientations
        self.dim = 3 * c.color_bins + self.hog_dim + c.lbp_points + 2
        self.fingerprint = f"{self.name}|{self.config.to_json()}"

    def features(self, image: Image.Image) -> np.ndarray:
        """One image -> (F,) float32."""
        from skimage.color import rgb2gray
        from skimage.feature import hog, local_binary_pattern

        c = self.config
        size = (c.image_size, c.image_size)
        rgb = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR))
        n_pixels = c.image_size * c.image_size
        colour = [
            np.histogram(rgb[..., ch], bins=c.color_bins, range=(0, 256))[0] / n_pixels
            for ch in range(3)
        ]
        gray = rgb2gray(rgb)  # float in [0, 1]
        hog_vec = hog(
            gray,
            orientations=c.hog_orientations,
            pixels_per_cell=(c.hog_pixels_per_cell,) * 2,
            cells_per_block=(c.hog_cells_per_block,) * 2,
            block_norm="L2-Hys",
            feature_vector=True,
        )
        # LBP compares neighbours for equality, so it runs on integers (scikit-image warns
        # on floats, whose tiny differences make codes noisy).
        codes = local_binary_pattern(
            (gray * 255).round().astype(np.uint8), c.lbp_points, c.lbp_radius, method="uniform"
        )
        lbp = np.bincount(codes.astype(np.int64).ravel(), minlength=c.lbp_points + 2) / n_pixels
        return np.concatenate([*colour, hog_vec, lbp]).astype(np.float32)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, F) float32."""
        if not images:
            return np.empty((0, self.dim), np.float32)
        return np.stack([self.features(image) for image in images])
