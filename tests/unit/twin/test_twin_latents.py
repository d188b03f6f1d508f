"""Ground-truth latents of the twin: the simulator's factors, in the latent cache format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megdecode.data import store as epoch_store
from megdecode.data.distractors import is_distractor
from megdecode.latents.cache import latent_info, load_latents
from megdecode.rundata import load_run_data
from megdecode.train_config import FitConfig, TrainConfig
from megdecode.twin import stimuli
from megdecode.twin.simulate import read_ground_truth
from megdecode.twin.truth_latents import NotATwinError, write_twin_latents


@pytest.fixture(scope="module")
def written(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("twin_latents")
    return {p.stem: p for p in write_twin_latents(tiny_run / "bids", out)}


def _factors(tiny_run: Path) -> pd.DataFrame:
    table = pd.read_parquet(tiny_run / "bids" / "sourcedata" / "twin" / "image_factors.parquet")
    return table[table["image_id"] >= 0].sort_values("image_id").reset_index(drop=True)


def test_both_files_are_latent_caches_keyed_by_image_id(
    tiny_run: Path, written: dict[str, Path]
) -> None:
    assert set(written) == {"twin-lowlevel", "twin-category"}
    truth = read_ground_truth(tiny_run / "bids")
    dims = {
        "twin-lowlevel": len(stimuli.LOW_LEVEL),
        "twin-category": len(truth["semantic_columns"]),
    }
    stored = epoch_store.load_metadata(tiny_run / "store")["image_id"].unique()
    for name, path in written.items():
        info = latent_info(path)
        assert info["name"] == name and info["dim"] == dims[name]
        ids, latents = load_latents(path)
        assert latents.shape == (len(ids), dims[name]) and latents.dtype == np.float32
        assert (np.diff(ids) > 0).all() and (ids > 0).all()  # sorted, unique, no catch (-1)
        assert np.isin(stored, ids).all()  # every kept epoch has a target


def test_lowlevel_is_the_simulators_features_standardised(
    tiny_run: Path, written: dict[str, Path]
) -> None:
    images = _factors(tiny_run)
    ids, low = load_latents(written["twin-lowlevel"])
    np.testing.assert_array_equal(ids, images["image_id"].to_numpy())
    shown = images["shown"].to_numpy(bool)  # the distractors do not move the targets
    assert (~shown).sum() > 0 and is_distractor(ids[~shown]).all()
    np.testing.assert_allclose(low[shown].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(low[shown].std(0), 1.0, atol=1e-4)
    raw = stimuli.low_level_features(images)
    for k in range(raw.shape[1]):  # a per-column affine map of the simulator's factors
        assert np.corrcoef(raw[:, k], low[:, k])[0, 1] > 0.9999


def test_category_is_the_embedding_the_sources_saw(
    tiny_run: Path, written: dict[str, Path]
) -> None:
    images = _factors(tiny_run)
    truth = read_ground_truth(tiny_run / "bids")
    categories = pd.read_parquet(tiny_run / "bids" / "sourcedata" / "twin" / "categories.parquet")
    ids, sem = load_latents(written["twin-category"])
    expected = categories.set_index("category_nr").loc[
        images["category_nr"], truth["semantic_columns"]
    ]
    scale = np.sqrt(1 + truth["config"]["semantic_within_sd"] ** 2)
    np.testing.assert_allclose(sem, expected.to_numpy() / scale, rtol=1e-6)
    per_category = pd.DataFrame(sem).groupby(images["category_nr"].to_numpy()).nunique()
    assert (per_category == 1).all().all()  # images of a category share it
    assert len(np.unique(sem, axis=0)) == images["category_nr"].nunique()


def test_train_reads_twin_latents_like_any_encoder(
    tiny_run: Path, written: dict[str, Path]
) -> None:
    cfg = FitConfig(
        store=str(tiny_run / "store"),
        latents_dir=str(written["twin-lowlevel"].parent),
        train=TrainConfig(latent="twin-lowlevel", tmin=0.0, tmax=0.3),
    )
    data = load_run_data(cfg)
    assert data.train.target.shape[1] == len(stimuli.LOW_LEVEL)
    ids, low = load_latents(written["twin-lowlevel"])
    first = int(data.train.meta["image_id"].iloc[0])
    np.testing.assert_array_equal(data.train.target[0].numpy(), low[np.searchsorted(ids, first)])


def test_real_data_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "bids").mkdir()
    with pytest.raises(NotATwinError, match="not a megdecode twin") as err:
        write_twin_latents(tmp_path / "bids", tmp_path / "latents")
    assert isinstance(err.value, FileNotFoundError) and "ground_truth.json" in str(err.value)
    assert not (tmp_path / "latents" / "twin-lowlevel.parquet").exists()
