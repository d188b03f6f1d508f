"""Procedural stimuli: THINGS-like names and paths, determinism, category-specific pixels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megdecode.twin import stimuli


def _tables(seed: int = 0, n_categories: int = 16, n_groups: int = 4):
    rng = np.random.default_rng(seed)
    cats = stimuli.make_categories(n_categories, n_groups, 8, 0.4, rng)
    images = stimuli.make_image_table(cats, 3, np.array([1, 2]), 2, 0.05, rng)
    return cats, images


def _render(images, cats, i: int, size: int = 48) -> np.ndarray:
    row = images.iloc[i]
    cat = None if row["trial_type"] == "catch" else cats.set_index("category").loc[row["category"]]
    return stimuli.render(row, cat, size)


def test_category_names_are_things_like_and_unique() -> None:
    cats, _ = _tables(n_categories=40, n_groups=8)
    assert cats["category"].is_unique
    assert all(re.fullmatch(r"[a-z]+\d{3}", c) for c in cats["category"])
    assert sorted(cats["family"].unique()) == sorted(stimuli.FAMILIES)


def test_semantic_embeddings_cluster_by_group() -> None:
    cats, _ = _tables(n_categories=60, n_groups=6)
    emb = cats[[c for c in cats if c.startswith("sem_")]].to_numpy()
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    same = cats["group"].to_numpy()[:, None] == cats["group"].to_numpy()[None]
    off_diag = ~np.eye(len(cats), dtype=bool)
    assert dist[same & off_diag].mean() < 0.6 * dist[~same].mean()


def test_image_paths_follow_the_things_layout() -> None:
    cats, images = _tables()
    for row in images.itertuples():
        path = Path(row.image_path)
        folder = {"exp": "images_meg", "test": "images_test_meg", "catch": "images_catch_meg"}
        assert path.parts[0] == folder[row.trial_type]
        assert path.parts[1] == row.category
        assert re.fullmatch(rf"{row.category}_\d\d[bs]\.png", path.name)
        assert "_".join(path.stem.split("_")[:-1]) == row.category
    test = images[images.trial_type == "test"]
    assert set(test["category_nr"]) == {1, 2} and len(test) == 2
    exp = images[images.trial_type == "exp"]
    assert exp["image_id"].is_unique and len(exp) == 16 * 3
    assert (images.loc[images.trial_type == "catch", "image_id"] == -1).all()


def test_images_are_deterministic_given_the_seed() -> None:
    cats_a, images_a = _tables(seed=3)
    cats_b, images_b = _tables(seed=3)
    assert images_a.equals(images_b) and cats_a.equals(cats_b)
    np.testing.assert_array_equal(_render(images_a, cats_a, 5), _render(images_b, cats_b, 5))
    _, images_c = _tables(seed=4)
    assert not images_a[["hue", "size"]].equals(images_c[["hue", "size"]])


def test_images_differ_by_category_for_the_same_low_level_factors() -> None:
    cats, images = _tables()
    row = images.iloc[0].copy()
    by_name = cats.set_index("category")
    a = stimuli.render(row, by_name.iloc[0], 48).astype(float)
    b = stimuli.render(row, by_name.iloc[1], 48).astype(float)  # other family, same factors
    same = stimuli.render(row, by_name.iloc[0], 48).astype(float)
    assert np.abs(a - b).mean() > 5 * max(np.abs(a - same).mean(), 0.1)
    assert a.shape == (48, 48, 3)


@pytest.mark.parametrize("family", stimuli.FAMILIES)
def test_every_shape_family_draws_a_distinct_nonempty_shape(family: str) -> None:
    grid = np.linspace(-1.2, 1.2, 101)
    x, y = np.meshgrid(grid, grid)
    mask = stimuli._shape_mask(family, (0.5, 0.5, 0.5), x, y)
    assert 0.05 < mask.mean() < 0.7
    other = stimuli.FAMILIES[(stimuli.FAMILIES.index(family) + 1) % len(stimuli.FAMILIES)]
    assert (mask != stimuli._shape_mask(other, (0.5, 0.5, 0.5), x, y)).mean() > 0.03


def test_low_level_features_are_standardised_and_blank_for_catch() -> None:
    rng = np.random.default_rng(0)
    cats = stimuli.make_categories(400, 5, 4, 0.5, rng)  # many categories: hues cluster by category
    images = stimuli.make_image_table(cats, 3, np.array([]), 10, 0.05, rng)
    feats = stimuli.low_level_features(images)
    real = (images.trial_type != "catch").to_numpy()
    assert feats.shape == (len(images), len(stimuli.LOW_LEVEL))
    np.testing.assert_allclose(feats[real].mean(0), 0, atol=0.15)
    np.testing.assert_allclose(feats[real].std(0), 1, atol=0.15)
    assert np.all(feats[~real][:, 5:10] == 0)


def test_write_images_writes_rgb_pngs(tmp_path: Path) -> None:
    cats, images = _tables()
    subset = images.groupby("trial_type").head(2)
    total = stimuli.write_images(subset, cats, tmp_path, 32)
    assert total > 0
    for rel in subset["image_path"]:
        with Image.open(tmp_path / rel) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
