"""Several latents as one training target ("a+b"): loading, splitting, a bundle that knows its parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures.configs import SMALL_BRAIN
from megdecode.bundle_fields import BundleError, LatentPart
from megdecode.bundle_io import load_bundle
from megdecode.latents.cache import load_latents, write_latents
from megdecode.latents.targets import load_target, split_target, target_names
from megdecode.train import fit
from megdecode.train_config import FitConfig, TrainConfig


@pytest.fixture()
def two_latents(tiny_run: Path, tmp_path: Path) -> Path:
    """tiny_run's handcrafted latents, "half" (10 other features, ids in another order) and
    "partial" (like half, one image missing)."""
    out = tmp_path / "latents"
    out.mkdir()
    shutil.copy(tiny_run / "latents" / "handcrafted.parquet", out)
    ids, values = load_latents(out / "handcrafted.parquet")
    write_latents(out / "half.parquet", ids[::-1], 2.0 * values[::-1, :10], {"name": "half"})
    write_latents(
        out / "partial.parquet", ids[1:][::-1], 2.0 * values[1:, :10][::-1], {"name": "partial"}
    )
    return out


def test_names_are_split_on_plus_and_checked() -> None:
    assert target_names("autokl-avg+clip-text") == ["autokl-avg", "clip-text"]
    for bad in ("a+", "+a", "a+a"):
        with pytest.raises(ValueError):
            target_names(bad)


def test_concatenation_keeps_the_shared_images_aligned_and_splits_back(two_latents: Path) -> None:
    ids, values = load_latents(two_latents / "handcrafted.parquet")
    common, target, parts = load_target(two_latents, "handcrafted+partial")
    assert parts == [("handcrafted", values.shape[1]), ("partial", 10)]
    np.testing.assert_array_equal(common, np.sort(ids[1:]))
    row = {i: k for k, i in enumerate(ids)}
    expected = values[[row[i] for i in common]]
    blocks = split_target(target, parts)
    np.testing.assert_array_equal(blocks["handcrafted"], expected)
    np.testing.assert_array_equal(blocks["partial"], 2.0 * expected[:, :10])
    with pytest.raises(ValueError, match="features"):
        split_target(target[:, :-1], parts)
    with pytest.raises(FileNotFoundError, match="clip-text"):
        load_target(two_latents, "handcrafted+clip-text")


def test_one_model_trains_on_two_latents_and_its_bundle_splits_predictions(
    tiny_run: Path, two_latents: Path, tmp_path: Path
) -> None:
    cfg = FitConfig(
        store=str(tiny_run / "store"),
        latents_dir=str(two_latents),
        model=SMALL_BRAIN,
        train=TrainConfig(latent="handcrafted+half", max_epochs=1, batch_size=32),
    )
    result = fit(cfg, out_dir=tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    width = load_latents(two_latents / "handcrafted.parquet")[1].shape[1]
    assert bundle.latent_name == "handcrafted+half" and bundle.latent_parts == [
        ("handcrafted", width),
        ("half", 10),
    ]
    z = np.random.default_rng(0).normal(size=(3, width + 10)).astype(np.float32)
    assert {k: v.shape for k, v in bundle.split_latent(z).items()} == {
        "handcrafted": (3, width),
        "half": (3, 10),
    }
    # the bundle records the run's own scores
    assert bundle.metrics["val/top5"] == result.metrics["val/top5"]
    bundle.latent_parts = [LatentPart("handcrafted", width), LatentPart("half", 9)]
    with pytest.raises(BundleError, match="latent_parts"):
        bundle.validate()
