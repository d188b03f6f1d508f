"""Window grids, the per-window loop and the curve figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megdecode.evaluation.windows import peak_time, plot_window_curves, window_curve, window_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_sliding_grid_covers_the_stored_epoch() -> None:
    grid = window_grid("sliding")
    assert len(grid) == 57  # (1.5 s - 0.1 s) / 25 ms + 1
    assert grid[0] == (-0.5, -0.4) and grid[-1] == (0.9, 1.0)
    assert np.allclose(np.diff([t0 for t0, _ in grid]), 0.025)
    assert all(abs((t1 - t0) - 0.1) < 1e-9 for t0, t1 in grid)
    assert (0.0, 0.1) in grid  # onset-aligned window lands exactly on the grid


def test_growing_grid_is_clipped_to_the_epoch() -> None:
    grid = window_grid("growing")
    assert grid == [(0.0, round(0.1 * i, 6)) for i in range(1, 11)]
    # A longer epoch gives the paper's full range, [0, 0.1] ... [0, 1.5].
    long = window_grid("growing", epoch_tmax=2.0)
    assert len(long) == 15 and long[-1] == (0.0, 1.5)


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
    assert list(table.columns) == ["tmin", "tmax", "center", "top5", "median_rank"]
    assert table["center"].tolist() == pytest.approx([0.05, 0.1, 0.15])
    assert peak_time(table, "top5") == pytest.approx(0.15)


def test_window_curve_rejects_non_mapping_results() -> None:
    with pytest.raises(TypeError, match="mapping"):
        window_curve(lambda a, b: 0.3, [(0.0, 0.1)], progress=False)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="reserved"):
        window_curve(lambda a, b: {"tmin": 1.0}, [(0.0, 0.1)], progress=False)


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
                    "tmin": t0,
                    "tmax": t1,
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
        {"tmin": 0.0, "tmax": [0.1, 0.2, 0.3], "center": [0.05, 0.1, 0.15], "top5": [0.1, 0.3, 0.4]}
    )
    _assert_png(
        plot_window_curves(growing, "top5", 0.025, tmp_path / "growing.png", truth_latencies=[0.15])
    )
    with pytest.raises(ValueError, match="top1"):
        plot_window_curves(growing, "top1", 0.005, tmp_path / "x.png")
