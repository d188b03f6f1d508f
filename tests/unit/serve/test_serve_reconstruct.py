"""The reconstruction path shared by /v1/reconstruct and `megdecode reconstruct`, without Serve:
the bundle's prediction statistics scale the window, the card says when they are missing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.configs import bundle_brain
from megdecode.bundle import ModelBundle, PredictionStats
from megdecode.bundle_fields import FitRecord, GalleryMeta, LatentPart, LossState
from megdecode.bundle_io import save_bundle
from megdecode.generate import build_tiny_generator
from megdecode.generate.pipeline import LatentGenerator
from megdecode.models.brain import BrainModule
from megdecode.serve.errors import ApiError
from megdecode.serve.model import NO_STATS_WARNING, load_served_model
from megdecode.serve.reconstruct import reconstruct, render_png, window_latents

C, T, F = 6, 13, 5


def _bundle(path: Path, stats: bool) -> Path:
    cfg = bundle_brain(C, T, n_subjects=2, out_dim=F)
    torch.manual_seed(0)
    pos = np.random.default_rng(0).uniform(0, 1, (C, 2)).astype(np.float32)
    rng = np.random.default_rng(1)
    # statistics far from the head's raw outputs, so scaling with them is visible
    reference = (
        PredictionStats.of(rng.normal(size=(30, F)) * 0.01 + 0.5, reference="val")
        if stats
        else None
    )
    return save_bundle(
        ModelBundle(
            model_config=cfg.to_flat_dict(),
            state_dict=BrainModule(cfg, pos).state_dict(),
            loss=LossState(math.log(1 / 0.07), learned=True),
            tmin=0.0,
            tmax=0.1,
            sfreq=120.0,
            n_times=T,
            ch_names=[f"M{i}" for i in range(C)],
            pos2d=pos,
            subjects=["A", "B"],
            latent_name="handcrafted",
            latent_parts=[LatentPart("handcrafted", F)],
            latent_mean=rng.normal(size=F).astype(np.float32),
            latent_std=np.full(F, 2.0, np.float32),
            gallery=rng.normal(size=(4, F)).astype(np.float32),
            gallery_ids=np.arange(4, dtype=np.int64),
            gallery_meta=GalleryMeta.blank(4),
            fit_config=FitRecord({}),
            prediction_stats=reference,
        ),
        path,
    )


def test_card_states_the_prediction_stats_or_warns_that_they_are_missing(tmp_path: Path) -> None:
    card = load_served_model(str(_bundle(tmp_path / "new", stats=True))).card
    assert card["prediction_stats"] == {"reference": "val", "n": 30} and card["warnings"] == []
    old = load_served_model(str(_bundle(tmp_path / "old", stats=False))).card
    assert old["prediction_stats"] is None and old["warnings"] == [NO_STATS_WARNING]
    from megdecode.serve.schemas import ModelCard

    assert ModelCard(**old).model_dump()["warnings"] == [
        NO_STATS_WARNING
    ]  # /v1/model keeps both fields


def test_window_latents_are_z_scored_with_the_stored_stats(tmp_path: Path) -> None:
    state = load_served_model(str(_bundle(tmp_path / "b", stats=True)))
    window = np.random.default_rng(3).standard_normal((C, T)).astype(np.float32)
    latents = window_latents(state, window, "B")
    _, mse = state.forward(window[None], np.array([1]))
    stats, b = state.bundle.prediction_stats, state.bundle
    assert stats is not None
    want = (mse - stats.mean) / stats.std * b.latent_std + b.latent_mean
    np.testing.assert_allclose(latents["handcrafted"], want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(
        latents["handcrafted"], mse, atol=1e-2
    )  # the unscaled output is not what is drawn
    unscaled = window_latents(
        load_served_model(str(_bundle(tmp_path / "old", stats=False))), window, "B"
    )
    np.testing.assert_allclose(
        unscaled["handcrafted"], mse, rtol=1e-6
    )  # no stats: returned unchanged
    with pytest.raises(ApiError, match="C x T"):
        window_latents(state, window[:, :-1], "B")
    with pytest.raises(ApiError, match="unknown subject"):
        window_latents(state, window, "Z")


def test_offline_reconstruct_is_the_deployments_two_steps(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b", stats=True)
    gen_dir = build_tiny_generator(tmp_path / "g", {"handcrafted": F}, size=16)
    window = np.random.default_rng(4).standard_normal((C, T)).astype(np.float32)
    body = tmp_path / "window.json"
    body.write_text(json.dumps({"subject": "A", "data": window.tolist()}))
    made = reconstruct(str(bundle), gen_dir, body, steps=2, guidance=3.0, seed=5)
    assert made.png[:8] == b"\x89PNG\r\n\x1a\n" and made.model["prediction_stats"] == {
        "reference": "val",
        "n": 30,
    }
    state, pipeline = load_served_model(str(bundle)), LatentGenerator.from_dir(gen_dir)
    assert render_png(pipeline, window_latents(state, window, "A"), 2, 3.0, 5) == [made.png]
    assert reconstruct(str(bundle), gen_dir, body, steps=2, guidance=3.0, seed=6).png != made.png
