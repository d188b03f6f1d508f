"""Decoding over time: one model per time window, to see *when* the image is decodable.

The paper trains one decoder per window: sliding 100 ms windows with a 25 ms stride, and
growing windows whose last one is the full epoch, so that the growing curve ends on the
full-window result. Our stored epochs span -0.5 .. +1.0 s around image onset: sliding
windows run from the epoch start (pre-stimulus windows give a chance-level reference) to
the epoch end, growing windows are [epoch start, t] for t = start + step, ... up to and
including the epoch end. Times are in seconds, rounded to the microsecond so grids
compare exactly.

Every curve table has one row per window with its `start`, `end` and `center` (s after
image onset). The paper reads its curves by window *end* (`plot_window_curves(x="end")`);
a window's *centre* is what lines up with a response's peak time, so the twin's latency
checks compare `curve_peak(..., x="center")` of sliding windows with the simulated
latencies (see docs/window_latency.md for why those peaks can sit a grid step early).

The epochs are read once (the whole stored window) and each model's window is a slice
of those tensors in memory: a 57-window sliding curve would otherwise read the store 57
times. `window_table` fits the ridge baseline or the brain module on each slice
(`megdecode.evaluation.baseline`), `curve_peak` finds where the curve peaks and
`plot_window_curves` draws it with chance and, on the twin, the simulator's latencies.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from megdecode.data import store as epoch_store
from megdecode.evaluation.baseline import convnet_metrics, ridge_metrics
from megdecode.evaluation.retrieval import TEST_SPLITS
from megdecode.logs import progress as progress_bar
from megdecode.models.ridge import RidgeConfig
from megdecode.rundata import RunData, SplitTensors, load_run_data
from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)

Window = tuple[float, float]
MODELS = ("ridge", "convnet")

# The columns that place a window in time (s after image onset), first in every table.
WINDOW_COLUMNS = ("start", "end", "center")
X_AXES = WINDOW_COLUMNS


def _r(t: float) -> float:
    return round(t, 6)


def window_grid(
    kind: str,
    epoch_tmin: float = -0.5,
    epoch_tmax: float = 1.0,
    width: float = 0.1,
    stride: float = 0.025,
    start: float | None = None,
    step: float = 0.1,
) -> list[Window]:
    """Windows (start, end) in seconds, all inside [epoch_tmin, epoch_tmax].

    kind="sliding": [t, t + width] for t = epoch_tmin, epoch_tmin + stride, ... while the
        window fits; defaults give 57 windows, [-0.5, -0.4] ... [0.9, 1.0].
    kind="growing": [start, start + step], [start, start + 2 step], ..., and always the
        full span [start, epoch_tmax] last (appended when the epoch end is off the step
        grid), so the curve ends on the full-window model. start defaults to epoch_tmin:
        defaults give [-0.5, -0.4] ... [-0.5, 1.0] (15 windows, the last the full epoch).
    """
    if epoch_tmax <= epoch_tmin:
        raise ValueError(f"empty epoch [{epoch_tmin}, {epoch_tmax}]")
    tol = 1e-9
    if kind == "sliding":
        if width <= 0 or stride <= 0:
            raise ValueError(f"width and stride must be > 0, got {width}, {stride}")
        n = math.floor((epoch_tmax - epoch_tmin - width) / stride + tol) + 1
        if n < 1:
            raise ValueError(f"a {width} s window does not fit in [{epoch_tmin}, {epoch_tmax}]")
        return [
            (_r(epoch_tmin + i * stride), _r(epoch_tmin + i * stride + width)) for i in range(n)
        ]
    if kind == "growing":
        if step <= 0:
            raise ValueError(f"step must be > 0, got {step}")
        start = epoch_tmin if start is None else start
        if not epoch_tmin - tol <= start < epoch_tmax:
            raise ValueError(f"start {start} outside the epoch [{epoch_tmin}, {epoch_tmax})")
        n = math.floor((epoch_tmax - start) / step + tol)
        ends = [_r(start + i * step) for i in range(1, n + 1)]
        if not ends or ends[-1] < _r(epoch_tmax):
            ends.append(_r(epoch_tmax))
        return [(_r(start), end) for end in ends]
    raise ValueError(f"kind must be 'sliding' or 'growing', got {kind!r}")


def times_of(data: RunData) -> np.ndarray:
    """(T,) sample times (s) of the epochs held in `data`."""
    n = int(data.train.meg.shape[2])
    times = data.tmin + np.arange(n) / data.sfreq
    if abs(times[-1] - data.tmax) > 0.5 / data.sfreq:
        raise ValueError(f"{n} samples at {data.sfreq} Hz do not span [{data.tmin}, {data.tmax}] s")
    return times


def slice_window(data: RunData, tmin: float, tmax: float) -> RunData:
    """The samples with tmin <= t <= tmax (inclusive, `store.window_slice`) of every split.

    Tensors are copied contiguous so a model never holds a view of the full epochs.
    """
    times = times_of(data)
    cut = epoch_store.window_slice(times, data.sfreq, tmin, tmax)
    if cut.stop - cut.start < 2:
        raise ValueError(
            f"window [{tmin}, {tmax}] s holds {cut.stop - cut.start} sample(s) of "
            f"[{data.tmin:.4f}, {data.tmax:.4f}] s; a model needs 2 or more"
        )

    def take(split: SplitTensors) -> SplitTensors:  # windows are contiguous: a slice, copied
        meg = np.ascontiguousarray(split.meg.numpy()[:, :, cut])
        return dataclasses.replace(split, meg=torch.from_numpy(meg))

    return dataclasses.replace(
        data,
        train=take(data.train),
        val=take(data.val),
        test=take(data.test),
        tmin=float(times[cut.start]),
        tmax=float(times[cut.stop - 1]),
    )


def window_curve(
    fit_eval: Callable[[float, float], Mapping[str, float]],
    windows: Sequence[Window],
    progress: bool = True,
) -> pd.DataFrame:
    """Call fit_eval(start, end) once per window (it trains and scores one model).

    Returns one row per window, in the given order: start, end, center (`WINDOW_COLUMNS`),
    then the metrics the callable returned (a metric missing for some window is NaN there).
    """
    rows: list[dict[str, float]] = []
    items = progress_bar(windows, desc="windows", total=len(windows)) if progress else windows
    for i, (tmin, tmax) in enumerate(items):
        started = time.perf_counter()
        metrics = fit_eval(tmin, tmax)
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"fit_eval must return a mapping of metrics, got {type(metrics).__name__}"
            )
        clash = set(WINDOW_COLUMNS) & set(metrics)
        if clash:
            raise ValueError(f"fit_eval returned reserved key(s) {sorted(clash)}")
        rows.append({"start": tmin, "end": tmax, "center": _r((tmin + tmax) / 2), **metrics})
        if progress:
            shown = ", ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))
            )
            logger.info(
                "window %d/%d [%.3f, %.3f] s: %s (%.1f s)",
                i + 1,
                len(windows),
                tmin,
                tmax,
                shown,
                time.perf_counter() - started,
            )
    return pd.DataFrame(rows, columns=None if rows else list(WINDOW_COLUMNS))


def window_table(
    data: RunData | FitConfig,
    kind: str = "sliding",
    model: str = "ridge",
    *,
    windows: list[Window] | None = None,
    ridge: RidgeConfig | None = None,
    fit_config: FitConfig | None = None,
    progress: bool = True,
    **grid: float,
) -> pd.DataFrame:
    """One model per window -> one row per window: model, kind, start, end, center, then
    `baseline.retrieval_metrics` (plus alpha for ridge; best_epoch, val_top5 for convnet).

    data: loaded epochs (RunData, the whole span the windows need), or a FitConfig whose
    store/latent/window are loaded once. windows default to `window_grid(kind, data span,
    **grid)`. model="ridge" uses `ridge` (RidgeConfig); model="convnet" trains with
    `fit_config` (default: `data` when it is a FitConfig, else FitConfig()) per window,
    the window recorded in its TrainConfig.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if isinstance(data, FitConfig):
        fit_config = fit_config or data
        data = load_run_data(data)
    if windows is None:
        windows = window_grid(kind, epoch_tmin=data.tmin, epoch_tmax=data.tmax, **grid)
    epochs, cfg = data, fit_config or FitConfig()

    def fit_eval(tmin: float, tmax: float) -> dict[str, float]:
        part = slice_window(epochs, tmin, tmax)
        if model == "ridge":
            return ridge_metrics(part, ridge)
        return convnet_metrics(part, cfg.replace(train=cfg.train.replace(tmin=tmin, tmax=tmax)))

    table = window_curve(fit_eval, windows, progress=progress)
    table.insert(0, "model", model)
    table.insert(1, "kind", kind)
    return table


def _lower_is_better(metric: str) -> bool:
    return "rank" in metric


def curve_peak(
    table: pd.DataFrame, metric: str = "large_mean_rank", x: str = "center", smooth: int = 1
) -> float:
    """Time (column x: "center", "end" or "start") of the best window: highest top-k,
    lowest rank. Compare "center" of sliding windows with a response's peak latency; "end"
    is how the paper reads its curves.

    smooth > 1 first averages `smooth` neighbouring windows (centred): a response that
    decodes over a plateau of windows then peaks at the plateau's middle instead of at
    whichever window the noise favours. The table must be sorted by x.
    """
    if table.empty:
        raise ValueError("empty window table")
    if x not in table.columns:
        raise ValueError(f"no column {x!r} in the window table; columns: {list(table.columns)}")
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    values = table[metric].astype(float).rolling(smooth, center=True, min_periods=1).mean()
    best = np.nanargmin(values) if _lower_is_better(metric) else np.nanargmax(values)
    return float(table[x].to_numpy()[int(best)])


def chance_level(table: pd.DataFrame, metric: str) -> float:
    """Chance of `metric`: 0.5 for relative ranks, 5 / candidates for top-5."""
    if _lower_is_better(metric):
        return 0.5
    # the longest test-set name the metric starts with: "large_distractors_top5" is not "large"
    names = sorted(TEST_SPLITS, key=len, reverse=True)
    test_set = next((n for n in names if metric.startswith(f"{n}_")), metric.split("_", 1)[0])
    column = f"{test_set}_chance_top5"
    if column not in table.columns:
        raise ValueError(f"no chance column {column!r} for metric {metric!r}")
    return float(table[column].iloc[0])


def onset_latencies(latencies_s: Mapping[str, float]) -> dict[str, float]:
    """The twin's latencies that are times after image onset (drops *_after_image_offset)."""
    return {k: float(v) for k, v in latencies_s.items() if "after" not in k}


def plot_window_curves(
    table: pd.DataFrame,
    metric: str,
    chance: float,
    path: str | Path,
    truth_latencies: Mapping[str, float] | Sequence[float] | None = None,
    hue: str | None = None,
    x: str | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of `metric` against time, chance as a dashed line.

    chance: `chance_level(table, metric)` for a `window_table`. One line per value of
    column `hue` (e.g. model name) when given. x: "end" draws by window end, as the paper
    does; "center" by window centre, where a sliding curve peaks at a response's latency;
    None picks "end" for growing windows (all starts equal) and "center" otherwise. A
    column f"{metric}_std" is drawn as a band (e.g. over seeds). truth_latencies are the
    simulator's true response latencies (s), drawn as dotted vertical lines: on the twin,
    `onset_latencies(read_ground_truth(bids)["latencies_s"])`; None for real data. Drawn
    by end, sliding windows of one width w best catch a latency L in the window ending
    at L + w / 2, so the lines move there (the legend says so).
    Uses matplotlib's Agg canvas directly (no pyplot), so no global backend is changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric not in table.columns:
        raise ValueError(f"metric column {metric!r} not in table; columns: {list(table.columns)}")
    if x is None:
        x = "end" if len(table) > 1 and table["start"].nunique() == 1 else "center"
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    widths = (table["end"] - table["start"]).round(6).unique()
    shift = float(widths[0]) / 2 if x == "end" and len(widths) == 1 else 0.0
    fig = Figure(figsize=(6.4, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups = table.groupby(hue, sort=False) if hue else [(None, table)]
    for label, part in groups:
        part = part.sort_values(x)
        line = ax.plot(
            part[x], part[metric], marker=".", label=None if label is None else str(label)
        )
        std_col = f"{metric}_std"
        if std_col in part.columns:
            lo = part[metric] - part[std_col]
            hi = part[metric] + part[std_col]
            ax.fill_between(part[x], lo, hi, alpha=0.2, color=line[0].get_color())
    ax.axhline(chance, linestyle="--", color="grey", label=f"chance ({chance:.3g})")
    if truth_latencies is not None:
        items = (
            list(truth_latencies.items())
            if isinstance(truth_latencies, Mapping)
            else [(f"truth {t:.3f} s", t) for t in truth_latencies]
        )
        note = f" (+{shift * 1000:.0f} ms: window end)" if shift else ""
        for j, (name, t) in enumerate(items):
            ax.axvline(
                float(t) + shift, linestyle=":", color=f"C{(j + 3) % 10}", label=f"{name}{note}"
            )
    ax.axvline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel(f"window {x} (s after image onset)")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    logger.info("window curve written to %s", path)
    return path
