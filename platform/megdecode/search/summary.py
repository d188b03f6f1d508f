"""The printed results of a search: the summary table and the window figure.

`megdecode.search.report.write_report` writes both once the Tuner has returned: the top
configs by the search metric (mean±std over seeds) against ridge on the space's base
window and chance, and, when the space searches the window, the metric by window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megdecode.search.space import fit_config
from megdecode.search.trial import TrialPlan

# Columns of the summary table: (label, metric), each shown as mean±std over seeds.
SUMMARY_METRICS = (
    ("val/top5", "val/top5"),
    ("test/top5", "test/top5"),
    ("test/top5_avg", "test/top5_avg"),
    ("test_large/top5", "test_large/top5"),
    ("test/median_rank", "test/median_rank"),
)


def _pm(mean: float, std: float) -> str:
    return "-" if not np.isfinite(mean) else f"{mean:.3f}±{std:.3f}"


def summary_table(
    trials: pd.DataFrame,
    ridge: pd.DataFrame | None,
    by: str = "val/top5_mean",
    ascending: bool = False,
    top_k: int = 5,
) -> pd.DataFrame:
    """The top configs by `by` (the search metric's mean over seeds), then ridge and chance rows.

    `trials`: one row per finished trial with columns trial, the searched params, and
    `<metric>_mean` / `<metric>_std`; `ridge`: `evaluation.baseline.ridge_table` output (or None).
    Returns a frame of strings "mean±std" ready to print and log.
    """
    if not len(trials):
        return pd.DataFrame(columns=["rank", "config", *(label for label, _ in SUMMARY_METRICS)])
    top = trials.sort_values(by, ascending=ascending).head(top_k)
    param_cols = [c for c in trials.columns if c.startswith(("model.", "loss.", "train."))]
    rows = []
    for rank, (_, r) in enumerate(top.iterrows(), start=1):
        row = {"rank": str(rank), "config": r["trial"]} | {c: _short(r[c]) for c in param_cols}
        row |= {
            label: _pm(r.get(f"{m}_mean", np.nan), r.get(f"{m}_std", 0.0))
            for label, m in SUMMARY_METRICS
        }
        rows.append(row)
    blank = {c: "" for c in param_cols} | {"val/top5": "-"}
    if ridge is not None:
        ref = ridge.set_index(["test_set", "mode"])
        rows.append(
            {"rank": "", "config": "ridge (base window)"}
            | blank
            | {
                "test/top5": f"{ref.loc[('small', 'single-trial'), 'top5']:.3f}",
                "test/top5_avg": f"{ref.loc[('small', 'averaged'), 'top5']:.3f}",
                "test_large/top5": f"{ref.loc[('large', 'single-trial'), 'top5']:.3f}",
                "test/median_rank": f"{ref.loc[('small', 'single-trial'), 'median_rank']:.3f}",
            }
        )
    if len(top):
        best = top.iloc[0]
        chance = {
            k: f"{best.get(f'{k}/chance_top5_mean', np.nan):.3f}" for k in ("test", "test_large")
        }
        rows.append(
            {"rank": "", "config": "chance"}
            | blank
            | {
                "test/top5": chance["test"],
                "test/top5_avg": chance["test"],
                "test_large/top5": chance["test_large"],
                "test/median_rank": "0.500",
            }
        )
    return pd.DataFrame(rows).fillna("")


def window_figure(
    trials: pd.DataFrame, plan: TrialPlan, path: Path, metric: str = "test/top5"
) -> Path | None:
    """`metric` (mean±std over seeds) against each finished trial's window, when windows were searched."""
    from megdecode.evaluation.windows import plot_window_curves

    keys = set(plan.searched)
    if not keys & {"train.tmin", "train.tmax"} or trials.empty:
        return None
    base = fit_config(plan.base, plan.fixed).train
    table = pd.DataFrame(
        {
            "start": trials["train.tmin"] if "train.tmin" in keys else base.tmin,
            "end": trials["train.tmax"] if "train.tmax" in keys else base.tmax,
            metric: trials[f"{metric}_mean"],
            f"{metric}_std": trials[f"{metric}_std"],
        }
    ).astype(float)
    table["center"] = (table["start"] + table["end"]) / 2
    chance = float(trials[f"{metric.split('/')[0]}/chance_top5_mean"].iloc[0])
    return plot_window_curves(
        table,
        metric,
        chance,
        path,
        x="center",
        title=f"{metric} by window (mean ± std over {len(plan.seeds)} seeds)",
    )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
