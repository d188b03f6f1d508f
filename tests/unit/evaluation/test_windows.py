"""Window grids, slicing, one model per window, the peak and the curve figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fixtures.configs import SMALL_BRAIN
from megdecode.cli import app
from megdecode.data import store as epoch_store
from megdecode.evaluation.baseline import convnet_metrics
from megdecode.evaluation.windows import (
    chance_level,
    curve_peak,
    onset_latencies,
    plot_window_curves,
    slice_window,
    times_of,
    window_curve,
    window_grid,
    window_table,
)
from megdecode.models.ridge import RidgeConfig
from megdecode.rundata import RunData
from megdecode.train_config import FitConfig, TrainConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_sliding_grid_covers_the_stored_epoch() -> None:
    grid = window_grid("sliding")
    assert len(grid) == 57  # (1.5 s - 0.1 s) / 25 ms + 1
    assert grid[0] == (-0.5, -0.4) and grid[-1] == (0.9, 1.0)
    assert np.allclose(np.diff([t0 for t0, _ in grid]), 0.025)
    assert all(abs((t1 - t0) - 0.1) < 1e-9 for t0, t1 in grid)
    assert (0.0, 0.1) in grid  # onset-aligned window lands exactly on the grid


def test_growing_grid_ends_on_the_full_epoch() -> None:
    grid = window_grid("growing")
    assert grid == [(-0.5, round(-0.5 + 0.1 * i, 6)) for i in range(1, 16)]
    assert grid[-1] == (-0.5, 1.0)  # the last growing window is the full epoch
    # Whatever the epoch, the last window is all of it, on the step grid or not.
    assert window_grid("growing", epoch_tmax=2.0)[-1] == (-0.5, 2.0)
    odd = window_grid("growing", epoch_tmin=-0.2, epoch_tmax=0.75, step=0.2)
    assert odd == [(-0.2, 0.0), (-0.2, 0.2), (-0.2, 0.4), (-0.2, 0.6), (-0.2, 0.75)]
    # An explicit start (the paper's onset-aligned growing windows) keeps that start.
    onset = window_grid("growing", start=0.0)
    assert onset[0] == (0.0, 0.1) and onset[-1] == (0.0, 1.0) and len(onset) == 10


def test_grid_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="kind"):
        window_grid("tumbling")
    with pytest.raises(ValueError, match="does not fit"):
        window_grid("sliding", epoch_tmin=0.0, epoch_tmax=0.05)
    with pytest.raises(ValueError, match="outside the epoch"):
        window_grid("growing", start=1.2)


def test_window_curve_calls_once_per_window_in_order() -> None:
    calls: list[tuple[float, float]] = []

    def fit_eval(tmin: float, tmax: float) -> dict[str, float]:
        calls.append((tmin, tmax))
        return {"top5": tmax, "median_rank": 0.5 - tmax / 10}

    windows = window_grid("sliding", epoch_tmin=0.0, epoch_tmax=0.2, stride=0.05)
    table = window_curve(fit_eval, windows, progress=True)
    assert calls == windows
    assert list(table.columns) == ["start", "end", "center", "top5", "median_rank"]
    assert table["center"].tolist() == pytest.approx([0.05, 0.1, 0.15])
    assert curve_peak(table, "top5") == pytest.approx(0.15)


def test_window_curve_rejects_non_mapping_results() -> None:
    with pytest.raises(TypeError, match="mapping"):
        window_curve(lambda a, b: 0.3, [(0.0, 0.1)], progress=False)
    with pytest.raises(ValueError, match="reserved"):
        window_curve(lambda a, b: {"start": 1.0}, [(0.0, 0.1)], progress=False)


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_writes_a_png_with_chance_truth_and_bands(tmp_path: Path) -> None:
    rows = []
    for model, gain in (("ridge", 0.3), ("convnet", 0.8)):
        for t0, t1 in window_grid("sliding"):
            c = (t0 + t1) / 2
            rows.append(
                {
                    "model": model,
                    "start": t0,
                    "end": t1,
                    "center": c,
                    "top5": 0.025 + gain * np.exp(-(((c - 0.2) / 0.05) ** 2)),
                    "top5_std": 0.01,
                }
            )
    table = pd.DataFrame(rows)
    out = plot_window_curves(
        table,
        "top5",
        0.025,
        tmp_path / "figs" / "sliding.png",
        truth_latencies={"low-level": 0.1, "semantic": 0.2},
        hue="model",
    )
    _assert_png(out)
    growing = pd.DataFrame(
        {"start": 0.0, "end": [0.1, 0.2, 0.3], "center": [0.05, 0.1, 0.15], "top5": [0.1, 0.3, 0.4]}
    )
    _assert_png(
        plot_window_curves(growing, "top5", 0.025, tmp_path / "growing.png", truth_latencies=[0.15])
    )
    by_end = plot_window_curves(
        table, "top5", 0.025, tmp_path / "end.png", truth_latencies=[0.2], hue="model", x="end"
    )
    _assert_png(by_end)  # the paper's reading: sliding windows by their end
    with pytest.raises(ValueError, match="top1"):
        plot_window_curves(growing, "top1", 0.005, tmp_path / "x.png")
    with pytest.raises(ValueError, match="x must be"):
        plot_window_curves(growing, "top5", 0.005, tmp_path / "x.png", x="tmax")


def test_slice_window_keeps_both_ends_and_the_values(run: RunData) -> None:
    part = slice_window(run, 0.1, 0.2)
    times = times_of(run)
    keep = (times >= 0.1 - 1e-9) & (times <= 0.2 + 1e-9)
    assert part.train.meg.shape[2] == keep.sum() == 6  # 0.1 .. 0.2 s at 50 Hz
    assert (part.tmin, part.tmax) == pytest.approx((0.1, 0.2))
    np.testing.assert_array_equal(part.test.meg.numpy(), run.test.meg.numpy()[:, :, keep])
    assert part.train.meg.is_contiguous() and run.train.meg.shape[2] == 41  # source untouched
    with pytest.raises(ValueError, match="holds no samples"):
        slice_window(run, 0.7, 0.9)
    with pytest.raises(ValueError, match="holds 1 sample"):
        slice_window(run, 0.59, 0.7)


def test_slice_window_cuts_the_samples_the_store_reader_cuts(run: RunData) -> None:
    """A window fitted on sliced epochs sees the samples `load_epochs` would read for it."""
    times = times_of(run)
    stored = np.round(times, 6)  # the manifest keeps times rounded to the microsecond
    for tmin, tmax in window_grid("sliding", run.tmin, run.tmax, stride=0.025):
        cut = epoch_store.window_slice(stored, run.sfreq, tmin, tmax)
        part = slice_window(run, tmin, tmax)
        assert part.train.meg.shape[2] == cut.stop - cut.start
        assert part.tmin == pytest.approx(times[cut.start])


def test_ridge_curve_peaks_in_the_signal_window(run: RunData) -> None:
    # Retrieval saturates in every window touching the signal, even by its end sample;
    # means over 2 samples dilute those edge windows, which leaves one best window.
    ridge = RidgeConfig(decim=2)
    table = window_table(run, "sliding", "ridge", stride=0.05, ridge=ridge, progress=False)
    assert list(table.columns[:5]) == ["model", "kind", "start", "end", "center"]
    assert len(table) == 15 and (table["model"] == "ridge").all()
    # every window touching the signal ranks the 24 large-set images perfectly: a plateau,
    # whose middle the smoothed curve finds
    assert curve_peak(table, "large_mean_rank", smooth=5) == pytest.approx(0.25, abs=0.05)
    at_peak = table.loc[table["center"].sub(0.25).abs().idxmin()]
    assert at_peak["large_top5"] > 0.9
    before = table[table["end"] < 0.15]  # no signal at all: chance
    assert before["large_mean_rank"].between(0.3, 0.7).all()


def test_growing_windows_end_on_the_full_window(run: RunData) -> None:
    table = window_table(run, "growing", "ridge", start=0.0, step=0.15, progress=False)
    assert table[["start", "end", "center"]].values.tolist() == [
        [0.0, 0.15, 0.075],
        [0.0, 0.3, 0.15],
        [0.0, 0.45, 0.225],
        [0.0, 0.6, 0.3],
    ]
    top5 = table["large_top5"].to_numpy()
    assert top5[0] < 0.5 < 0.9 < top5[1:].min()  # only windows reaching 0.2 s see the signal
    # By default the windows grow from the epoch start, and the last is the full epoch:
    full = window_table(run, "growing", "ridge", step=0.3, progress=False)
    assert (full["start"] == run.tmin).all() and full["end"].iloc[-1] == pytest.approx(run.tmax)


def test_convnet_windows_train_the_brain_module(run: RunData) -> None:
    cfg = FitConfig(model=SMALL_BRAIN, train=TrainConfig(max_epochs=1, batch_size=64))
    table = window_table(run, model="convnet", windows=[(0.2, 0.3)], fit_config=cfg, progress=False)
    assert len(table) == 1 and table["model"].iloc[0] == "convnet"
    assert {"small_top5_avg", "large_median_rank", "best_epoch", "val_top5"} <= set(table.columns)
    # the row is the brain module trained and scored on that window alone (same seed)
    alone = convnet_metrics(slice_window(run, 0.2, 0.3), cfg)
    for key in ("large_top5", "small_top5_avg", "large_median_rank", "best_epoch"):
        assert table[key].iloc[0] == pytest.approx(alone[key]), key
    with pytest.raises(ValueError, match="model must be"):
        window_table(run, model="svm", windows=[(0.2, 0.3)])


def test_peak_and_chance_helpers() -> None:
    table = pd.DataFrame(
        {
            "center": [0.0, 0.1, 0.2, 0.3, 0.4],
            "small_top5": [0.2, 0.9, 0.6, 0.7, 0.2],
            "small_mean_rank": [0.5, 0.1, 0.3, 0.3, 0.5],
            "small_chance_top5": 0.25,
        }
    )
    assert curve_peak(table, "small_top5") == pytest.approx(0.1)
    assert curve_peak(table, "small_mean_rank") == pytest.approx(0.1)  # lower is better
    assert curve_peak(table, "small_top5", smooth=3) == pytest.approx(0.2)  # plateau middle
    assert chance_level(table, "small_top5") == 0.25
    assert chance_level(table, "small_mean_rank") == 0.5
    # a distractor-extended large set has its own, smaller chance than the large set
    sets = table.assign(large_chance_top5=5 / 24, large_distractors_chance_top5=5 / 60)
    assert chance_level(sets, "large_top5") == pytest.approx(5 / 24)
    assert chance_level(sets, "large_distractors_top5") == pytest.approx(5 / 60)
    with pytest.raises(ValueError, match="empty"):
        curve_peak(table.iloc[:0], "small_top5")
    with pytest.raises(ValueError, match="smooth"):
        curve_peak(table, "small_top5", smooth=0)
    latencies = {"early": 0.13, "late": 0.25, "offset": 0.67, "offset_after_image_offset": 0.17}
    assert onset_latencies(latencies) == {"early": 0.13, "late": 0.25, "offset": 0.67}


def test_window_table_figure_is_a_png(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "start": [0.0, 0.1],
            "end": [0.1, 0.2],
            "center": [0.05, 0.15],
            "small_top5_avg": [0.3, 0.8],
            "small_chance_top5": 0.25,
        }
    )
    path = plot_window_curves(
        table,
        "small_top5_avg",
        chance_level(table, "small_top5_avg"),
        tmp_path / "f.png",
        truth_latencies=onset_latencies({"early": 0.13}),
    )
    _assert_png(path)


def test_cli_windows_writes_table_and_figure(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves"
    result = CliRunner().invoke(
        app,
        [
            "windows",
            "--data",
            str(tiny_run),
            "--latent",
            "handcrafted",
            "--kind",
            "sliding",
            "--model",
            "ridge",
            "--stride",
            "0.3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    table = pd.read_csv(out / "windows-handcrafted-ridge-sliding.csv")
    assert len(table) == 5 and {"small_top5", "large_mean_rank"} <= set(table.columns)
    assert list(table.columns[2:5]) == ["start", "end", "center"]
    _assert_png(out / "windows-handcrafted-ridge-sliding.png")
    assert "peak" in result.output and "window center" in result.output
    args = ["windows", "--data", str(tiny_run), "--kind", "growing", "--step", "0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--by", "end"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    growing = pd.read_csv(out / "windows-handcrafted-ridge-growing.csv")
    assert growing[["start", "end"]].values.tolist() == [[-0.5, 0.0], [-0.5, 0.5], [-0.5, 1.0]]
    assert "window end" in result.output
    bad = CliRunner().invoke(app, [*args, "--out", str(out), "--by", "middle"])
    assert bad.exit_code != 0 and "--by" in bad.output
