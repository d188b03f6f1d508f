"""Training the small generator on the tiny twin: the job writes a loadable, trained folder."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from megdecode.config import ConfigError
from megdecode.data import store as epoch_store
from megdecode.generate import LatentGenerator, build_tiny_generator
from megdecode.generate.train import GenTrainConfig, load_trained, load_training_set

REPO = Path(__file__).resolve().parents[3]


def _cfg(run: Path, **changes: object) -> GenTrainConfig:
    base = GenTrainConfig(
        store=str(run / "store"),
        bids_root=str(run / "bids"),
        latents_dir=str(run / "latents"),
        size=16,
        patch=2,
        channels=(16, 32),
        steps=3,
        batch_size=8,
        max_seconds=0,
    )
    return base.replace(**changes)


def test_training_set_holds_train_and_val_images_only(tiny_run: Path) -> None:
    data = load_training_set(_cfg(tiny_run))
    meta = epoch_store.load_metadata(tiny_run / "store")
    test_ids = set(meta.loc[meta["split"].isin(["test", "test_large"]), "image_id"])
    assert len(data.ids) > 0 and not (set(data.ids.tolist()) & test_ids)
    assert data.images.shape == (len(data.ids), 3, 16, 16)
    assert float(data.images.min()) >= -1.0 and float(data.images.max()) <= 1.0
    assert data.latents["handcrafted"].shape[0] == len(data.ids)
    with pytest.raises(FileNotFoundError, match="no latents 'nope'"):
        load_training_set(_cfg(tiny_run, latents=("nope",)))
    with pytest.raises(ConfigError, match="cond_dropout"):
        _cfg(tiny_run, cond_dropout=1.0)


def test_job_writes_a_loadable_trained_folder(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gen"
    monkeypatch.syspath_prepend(str(REPO / "jobs"))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "train_generator.py",
            "--data",
            str(tiny_run),
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--max-seconds",
            "0",
            "--size",
            "16",
            "--patch",
            "2",
            "--channels",
            "16,32",
        ],
    )
    with pytest.raises(SystemExit) as done:  # the job forwards to `megdecode train-generator`
        runpy.run_path(str(REPO / "jobs" / "train_generator.py"), run_name="__main__")
    assert done.value.code == 0
    gen = load_trained(out)
    meta = json.loads((out / "generator.json").read_text())
    assert meta["trained"]["steps"] == 3 and meta["trained"]["n_images"] > 0
    assert (out / "loss.png").stat().st_size > 1000 and len(
        (out / "loss.csv").read_text().splitlines()
    ) == 4
    data = load_training_set(_cfg(tiny_run))
    stream = gen.encoder.stream("handcrafted")
    np.testing.assert_allclose(
        stream.mean.numpy(), data.latents["handcrafted"].mean(0), rtol=1e-5, atol=1e-6
    )
    images = gen.generate({"handcrafted": data.latents["handcrafted"][:2]}, steps=2)
    assert [im.size for im in images] == [(16, 16)] * 2


def test_random_init_folder_is_not_a_trained_generator(tmp_path: Path) -> None:
    path = build_tiny_generator(tmp_path / "t", {"handcrafted": 8})
    assert isinstance(LatentGenerator.from_dir(path), LatentGenerator)
    with pytest.raises(FileNotFoundError, match="no weights at .*random-init"):
        load_trained(path)
