"""Per-window decoding tables on synthetic epochs whose signal lives in one known window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from megdecode.cli import app
from megdecode.evaluation.curves import (
    chance_level,
    curve_peak,
    onset_latencies,
    retrieval_metrics,
    save_window_figure,
    shuffle_targets,
    slice_window,
    times_of,
    window_table,
)
from megdecode.models.brain import BrainConfig
from megdecode.rundata import RunData, SplitTensors
from megdecode.train import FitConfig, TrainConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SFREQ = 50.0
SIGNAL = (0.2, 0.3)  # s: the only window whose samples carry the latent
SMALL = BrainConfig(hidden_channels=16, merger_channels=16, fourier_freqs=3, depth=1,
                    projection_hidden=16)


def synthetic_run(seed: int = 0, n_channels: int = 8, dim: int = 6) -> RunData:
    """Epochs -0.2..0.6 s at 50 Hz (T=41); a linear image of the latent during SIGNAL only.

    Splits: 80 train images x 2 trials, 10 val x 2, 12 small-test images x 3 repetitions,
    24 large-only test images x 1 (36 large candidates).
    """
    rng = np.random.default_rng(seed)
    n_images = 80 + 10 + 12 + 24
    latents = rng.standard_normal((n_images, dim)).astype(np.float32)
    ids = np.arange(100, 100 + n_images)
    times = np.round(-0.2 + np.arange(41) / SFREQ, 6)
    mixing = rng.standard_normal((n_channels, dim))
    on = (times >= SIGNAL[0] - 1e-9) & (times <= SIGNAL[1] + 1e-9)

    def split(rows: np.ndarray, reps: int, name: str) -> SplitTensors:
        image = np.repeat(rows, reps)
        X = 0.3 * rng.standard_normal((len(image), n_channels, len(times)))
        X[:, :, on] += (latents[image] @ mixing.T)[:, :, None]
        meta = pd.DataFrame({"image_id": ids[image], "split": name, "subject": "S1"})
        return SplitTensors(meg=torch.from_numpy(X.astype(np.float32)),
                            subject=torch.zeros(len(image), dtype=torch.long),
                            target=torch.from_numpy(latents[image]), meta=meta)

    test = [split(np.arange(90, 102), 3, "test"), split(np.arange(102, 126), 1, "test_large")]
    test_all = SplitTensors(meg=torch.cat([t.meg for t in test]),
                            subject=torch.cat([t.subject for t in test]),
                            target=torch.cat([t.target for t in test]),
                            meta=pd.concat([t.meta for t in test], ignore_index=True))
    pos2d = rng.uniform(0.1, 0.9, (n_channels, 2))
    return RunData(train=split(np.arange(80), 2, "train"), val=split(np.arange(80, 90), 2, "val"),
                   test=test_all, subjects=["S1"], ch_names=[f"M{i}" for i in range(n_channels)],
                   pos2d=pos2d, sfreq=SFREQ, tmin=float(times[0]), tmax=float(times[-1]),
                   latent_ids=ids, latents=latents)


@pytest.fixture(scope="module")
def run() -> RunData:
    return synthetic_run()


def test_slice_window_keeps_both_ends_and_the_values(run: RunData) -> None:
    part = slice_window(run, 0.1, 0.2)
    times = times_of(run)
    keep = (times >= 0.1 - 1e-9) & (times <= 0.2 + 1e-9)
    assert part.train.meg.shape[2] == keep.sum() == 6  # 0.1 .. 0.2 s at 50 Hz
    assert (part.tmin, part.tmax) == pytest.approx((0.1, 0.2))
    np.testing.assert_array_equal(part.test.meg.numpy(), run.test.meg.numpy()[:, :, keep])
    assert part.train.meg.is_contiguous() and run.train.meg.shape[2] == 41  # source untouched
    with pytest.raises(ValueError, match="holds 0 samples"):
        slice_window(run, 0.7, 0.9)


def test_shuffled_targets_are_other_images_latents_consistently(run: RunData) -> None:
    shuffled = shuffle_targets(run, seed=1)
    for split in ("train", "val"):
        old, new = getattr(run, split), getattr(shuffled, split)
        frame = pd.DataFrame(new.target.numpy()).assign(image=new.meta["image_id"].to_numpy())
        assert (frame.groupby("image").nunique() == 1).all().all()  # one target per image
        assert not np.isclose(new.target.numpy(), old.target.numpy()).all(axis=1).any()
    # a permutation: the same set of vectors over train+val images
    before = np.unique(torch.cat([run.train.target, run.val.target]).numpy(), axis=0)
    after = np.unique(torch.cat([shuffled.train.target, shuffled.val.target]).numpy(), axis=0)
    np.testing.assert_array_equal(before, after)
    assert torch.equal(shuffled.test.target, run.test.target)
    assert not torch.equal(shuffle_targets(run, seed=2).train.target, shuffled.train.target)


def test_perfect_predictions_score_perfectly(run: RunData) -> None:
    metrics = retrieval_metrics(run.test.target.numpy(), run)
    for test_set in ("small", "large"):
        assert metrics[f"{test_set}_top5"] == metrics[f"{test_set}_top5_avg"] == 1.0
        assert metrics[f"{test_set}_mean_rank"] == metrics[f"{test_set}_median_rank"] == 0.0
    assert metrics["small_chance_top5"] == pytest.approx(5 / 12)
    assert metrics["large_chance_top5"] == pytest.approx(5 / 36)


def test_ridge_curve_peaks_in_the_signal_window(run: RunData) -> None:
    table = window_table(run, "sliding", "ridge", stride=0.05, progress=False)
    assert list(table.columns[:5]) == ["model", "kind", "tmin", "tmax", "center"]
    assert len(table) == 15 and (table["model"] == "ridge").all()
    assert curve_peak(table, "large_mean_rank") == pytest.approx(0.25, abs=0.05)
    at_peak = table.loc[table["center"].sub(0.25).abs().idxmin()]
    assert at_peak["large_top5"] > 0.9
    before = table[table["tmax"] < 0.15]  # no signal at all: chance
    assert before["large_mean_rank"].between(0.3, 0.7).all()


def test_growing_windows_start_at_zero(run: RunData) -> None:
    table = window_table(run, "growing", "ridge", step=0.15, progress=False)
    assert table[["tmin", "tmax"]].values.tolist() == [[0.0, 0.15], [0.0, 0.3], [0.0, 0.45], [0.0, 0.6]]
    top5 = table["large_top5"].to_numpy()
    assert top5[0] < 0.5 < 0.9 < top5[1:].min()  # only windows reaching 0.2 s see the signal


def test_convnet_windows_train_the_brain_module(run: RunData) -> None:
    cfg = FitConfig(model=SMALL, train=TrainConfig(max_epochs=1, batch_size=64))
    table = window_table(run, model="convnet", windows=[(0.2, 0.3)], fit_config=cfg, progress=False)
    assert len(table) == 1 and table["model"].iloc[0] == "convnet"
    assert {"small_top5_avg", "large_median_rank", "best_epoch", "val_top5"} <= set(table.columns)
    assert 0.0 <= table["large_top5"].iloc[0] <= 1.0
    with pytest.raises(ValueError, match="model must be"):
        window_table(run, model="svm", windows=[(0.2, 0.3)])


def test_peak_and_chance_helpers() -> None:
    table = pd.DataFrame({"center": [0.0, 0.1, 0.2, 0.3, 0.4],
                          "small_top5": [0.2, 0.9, 0.6, 0.7, 0.2],
                          "small_mean_rank": [0.5, 0.1, 0.3, 0.3, 0.5],
                          "small_chance_top5": 0.25})
    assert curve_peak(table, "small_top5") == pytest.approx(0.1)
    assert curve_peak(table, "small_mean_rank") == pytest.approx(0.1)  # lower is better
    assert curve_peak(table, "small_top5", smooth=3) == pytest.approx(0.2)  # plateau middle
    assert chance_level(table, "small_top5") == 0.25
    assert chance_level(table, "small_mean_rank") == 0.5
    with pytest.raises(ValueError, match="empty"):
        curve_peak(table.iloc[:0], "small_top5")
    with pytest.raises(ValueError, match="smooth"):
        curve_peak(table, "small_top5", smooth=0)
    latencies = {"early": 0.13, "late": 0.25, "offset": 0.67, "offset_after_image_offset": 0.17}
    assert onset_latencies(latencies) == {"early": 0.13, "late": 0.25, "offset": 0.67}


def test_window_figure_is_a_png(tmp_path: Path) -> None:
    table = pd.DataFrame({"tmin": [0.0, 0.1], "tmax": [0.1, 0.2], "center": [0.05, 0.15],
                          "small_top5_avg": [0.3, 0.8], "small_chance_top5": 0.25})
    path = save_window_figure(table, tmp_path / "f.png", truth={"early": 0.13},
                              metric="small_top5_avg")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_cli_windows_writes_table_and_figure(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves"
    result = CliRunner().invoke(app, ["windows", "--data", str(tiny_run), "--latent", "handcrafted",
                                      "--kind", "sliding", "--model", "ridge", "--stride", "0.3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    table = pd.read_csv(out / "windows-handcrafted-ridge-sliding.csv")
    assert len(table) == 5 and {"small_top5", "large_mean_rank"} <= set(table.columns)
    assert (out / "windows-handcrafted-ridge-sliding.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "peak" in result.output
