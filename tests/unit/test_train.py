"""One training run on the tiny twin: determinism, callbacks, windows, best-epoch restore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fixtures.configs import SMALL_BRAIN
from megdecode.bundle_fields import LossState
from megdecode.cli import app
from megdecode.config import ConfigError
from megdecode.evaluation.retrieval import TEST_SPLITS
from megdecode.losses import CombinedLoss
from megdecode.predict import load_model
from megdecode.rundata import load_run_data
from megdecode.train import build_model, eval_step, fit, predict
from megdecode.train_config import FitConfig, TrainConfig


def _cfg(run: Path, **train: object) -> FitConfig:
    options = {"max_epochs": 3, "batch_size": 32, "patience": 5} | train
    return FitConfig(
        store=str(run / "store"),
        latents_dir=str(run / "latents"),
        model=SMALL_BRAIN,
        train=TrainConfig(**options),
    )


def test_same_seed_same_run_other_seed_other_run(tiny_run: Path) -> None:
    data = load_run_data(_cfg(tiny_run))
    a = fit(_cfg(tiny_run, seed=1), data=data)
    b = fit(_cfg(tiny_run, seed=1), data=data)
    c = fit(_cfg(tiny_run, seed=2), data=data)
    assert a.history == b.history
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(value, b.model.state_dict()[key], rtol=0, atol=0)
    assert a.history != c.history


def test_callback_gets_every_epoch_and_best_weights_are_restored(tiny_run: Path) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    cfg = _cfg(tiny_run, max_epochs=4)
    result = fit(cfg, callback=lambda epoch, row: seen.append((epoch, row)))
    assert [e for e, _ in seen] == list(range(len(result.history)))
    assert {"train/loss", "val/clip_loss", "val/top5", "temperature"} <= set(seen[0][1])
    best = int(result.metrics["best_epoch"])
    data = load_run_data(cfg)
    _, _, losses = predict(result.model, result.loss, data.val, cfg.train.batch_size)
    assert losses[1] == pytest.approx(result.history[best]["val/clip_loss"], rel=1e-5)
    test_clip, _, _ = predict(result.model, result.loss, data.test, cfg.train.batch_size)
    for key, test_set in (("test/top5", "small"), ("test_large/top5", "large")):
        assert result.metrics[key] == pytest.approx(
            _top5_by_hand(test_clip, data.test.meta, data.latent_ids, data.latents, test_set)
        )


def _top5_by_hand(
    pred: np.ndarray, meta: pd.DataFrame, latent_ids: np.ndarray, latents: np.ndarray, test_set: str
) -> float:
    """Single-trial top-5 written out: cosine similarity to every image of the test set, the
    share of trials with fewer than 5 images scoring above the true one."""
    keep = meta["split"].isin(TEST_SPLITS[test_set]).to_numpy()
    ids = meta["image_id"].to_numpy()[keep]
    images = np.unique(ids)
    candidates = latents[[list(latent_ids).index(i) for i in images]]
    p = pred[keep] / np.linalg.norm(pred[keep], axis=1, keepdims=True)
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    sim = p @ c.T
    true = sim[np.arange(len(ids)), np.searchsorted(images, ids)]
    return float(np.mean((sim > true[:, None]).sum(axis=1) < 5))


def test_training_batches_carry_image_ids_and_the_loss_masks_repeats(tiny_run: Path) -> None:
    """Subjects see the same images: a batch holds repeats, which the CLIP loss of
    train_step / eval_step must not treat as negatives."""
    data = load_run_data(_cfg(tiny_run))
    batch = next(data.val.batches(64))
    ids = data.val.meta["image_id"].to_numpy()[:64]
    codes = batch.image.numpy()
    assert ((codes[:, None] == codes[None, :]) == (ids[:, None] == ids[None, :])).all()
    assert len(np.unique(ids)) < len(ids)  # repeats are there to mask
    torch.manual_seed(0)
    model, loss_fn = build_model(SMALL_BRAIN, data), CombinedLoss()
    clip, _, losses = eval_step(model, loss_fn, batch)
    masked = loss_fn.clip(clip, batch.target, batch.image).item()
    assert losses[1].item() == pytest.approx(masked, rel=1e-6)
    assert abs(masked - loss_fn.clip(clip, batch.target, None).item()) > 1e-3


def test_window_is_sliced_from_the_stored_epochs(tiny_run: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_run, tmin=0.0, tmax=0.5, max_epochs=1)
    result = fit(cfg, out_dir=tmp_path / "bundle")
    assert result.model.cfg.n_times == 61  # 0..0.5 s at 120 Hz, both ends
    model, bundle = load_model(tmp_path / "bundle")
    assert (bundle.tmin, bundle.tmax, bundle.n_times) == (0.0, 0.5, 61)
    assert bundle.metrics["test/top5"] == result.metrics["test/top5"]
    assert len(bundle.gallery) == len(np.unique(bundle.gallery_ids))
    assert (
        bundle.fit_config.flat == cfg.to_flat_dict() and bundle.streamable
    )  # the tiny twin's store is real
    assert set(bundle.scalers) == set(bundle.subjects) and len(
        bundle.gallery_meta.categories
    ) == len(bundle.gallery)


def test_bundle_stores_the_validation_prediction_stats_of_the_restored_best_epoch(
    tiny_run: Path, tmp_path: Path
) -> None:
    """What z-scores a served window: the MSE head's val predictions with the best epoch's
    weights (early stopping makes the last epoch a worse one, so stats taken before the
    restore would differ)."""
    cfg = _cfg(tiny_run, tmin=0.0, tmax=0.5, max_epochs=12, patience=1, lr=3e-3)
    result = fit(cfg, out_dir=tmp_path / "bundle")
    assert (
        result.metrics["best_epoch"] < result.metrics["epochs"] - 1
    )  # early-stopped: best != last
    _, bundle = load_model(tmp_path / "bundle")
    # the loss state is the best epoch's learned temperature, restored with its weights
    assert (
        bundle.loss is not None and bundle.loss == LossState.of(result.loss) and bundle.loss.learned
    )
    best = result.history[int(result.metrics["best_epoch"])]
    assert bundle.loss.temperature == pytest.approx(best["temperature"], rel=1e-5)
    data = load_run_data(cfg)
    _, val_mse, _ = predict(result.model, result.loss, data.val, cfg.train.batch_size)
    stats = bundle.prediction_stats
    assert stats is not None and (stats.reference, stats.n) == ("val", len(data.val.meta))
    np.testing.assert_allclose(stats.mean, val_mse.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.std, val_mse.astype(np.float64).std(0), rtol=1e-6, atol=1e-7)


def test_a_tune_trials_trainer_saves_its_bundle_with_prediction_stats(
    tiny_run: Path, tmp_path: Path
) -> None:
    """Tune trials step `Trainer`s and save through `finish` (search.trial._finish): same stats."""
    from megdecode.bundle_io import load_bundle
    from megdecode.train import Trainer

    trainer = Trainer(
        _cfg(tiny_run, tmin=0.0, tmax=0.5, max_epochs=1),
        load_run_data(_cfg(tiny_run, tmin=0.0, tmax=0.5)),
    )
    trainer.step()
    stats = load_bundle(trainer.finish(tmp_path / "seed0").bundle_path).prediction_stats
    assert stats is not None and stats.reference == "val" and stats.n == len(trainer.data.val.meta)


def test_bad_configs_fail_clearly(tiny_run: Path) -> None:
    with pytest.raises(ConfigError, match="monitor"):
        TrainConfig(monitor="val/acc")
    with pytest.raises(ConfigError, match="tmin"):
        TrainConfig(tmin=0.5, tmax=0.1)
    with pytest.raises(FileNotFoundError, match="no latents 'clip-vision'"):
        load_run_data(_cfg(tiny_run, latent="clip-vision"))


def test_cli_train_then_evaluate_print_the_same_table(tiny_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "train",
        "--data",
        str(tiny_run),
        "--max-epochs",
        "1",
        "--out",
        str(tmp_path / "m"),
        "--no-ridge",
    ]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "m")])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    table_lines = [
        line for line in trained.output.splitlines() if line.strip().startswith(("small", "large"))
    ]
    assert len(table_lines) == 4
    for line in table_lines:
        assert line in evaluated.output


def test_cli_evaluate_refuses_a_store_with_the_bundles_channels_in_another_order(
    tiny_run: Path, tmp_path: Path
) -> None:
    """The model's input rows are the bundle's channel order: the same channels in another
    order would feed each channel to another channel's weights and score garbage silently.
    The twin's store lists its channels sorted, so the bundle's order is permuted here."""
    from megdecode.bundle_io import load_bundle, save_bundle
    from megdecode.train import Trainer

    cfg = _cfg(tiny_run, tmin=0.0, tmax=0.5, max_epochs=1)
    trainer = Trainer(cfg, load_run_data(cfg))
    trainer.step()
    bundle = load_bundle(trainer.finish(tmp_path / "trained").bundle_path)
    order = np.random.default_rng(0).permutation(len(bundle.ch_names))
    bundle.ch_names = [bundle.ch_names[i] for i in order]
    bundle.pos2d = bundle.pos2d[order]
    assert sorted(bundle.ch_names) == sorted(trainer.data.ch_names) != bundle.ch_names
    save_bundle(bundle, tmp_path / "permuted")
    refused = CliRunner().invoke(app, ["evaluate", str(tmp_path / "permuted")])
    assert refused.exit_code == 2, refused.output + repr(refused.exception)
    # the message names the mismatch (rich may wrap it, so words are checked one by one)
    assert all(w in refused.output for w in ("sensors", "bundle", "another", "order"))


def test_seeds_stepped_in_lockstep_equal_seeds_run_alone(tiny_run: Path) -> None:
    """Tune trials step several seeds together; each must equal its solo run."""
    from megdecode.train import Trainer

    data = load_run_data(_cfg(tiny_run))
    trainers = [Trainer(_cfg(tiny_run, seed=s, max_epochs=2), data) for s in (3, 4)]
    while not all(t.done for t in trainers):
        for t in trainers:
            if not t.done:
                t.step()
    for seed, trainer in zip((3, 4), trainers, strict=True):
        alone = fit(_cfg(tiny_run, seed=seed, max_epochs=2), data=data)
        assert trainer.finish().history == alone.history
