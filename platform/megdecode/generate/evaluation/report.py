"""What an evaluation leaves behind: the latent fidelity table, the metrics table, the grid,
the reconstructions, and the MLflow run that holds them.

`megdecode.generate.fidelity` scores the latents themselves (per-dimension r of each row's
latents vs the truth; column ``latent_r`` of the metrics table is its mean, the figure and
CSV hold every dimension, plus the large test set's single trials, scored but not drawn).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from megdecode.generate.evaluation.config import LARGE_KIND, NOT_SCALED, GenEvalConfig
from megdecode.generate.evaluation.decode import EvalInputs
from megdecode.generate.evaluation.scores import per_image_scores
from megdecode.generate.grid import save_grid

if TYPE_CHECKING:
    from megdecode.generate.features import FeatureNets
    from megdecode.tracking import Tracker

logger = logging.getLogger(__name__)


def fidelity_table(inputs: EvalInputs, kinds: list[str]) -> pd.DataFrame:
    """Per-dimension r of each kind's latents vs the truth (`fidelity.latent_fidelity`).

    Also scores `inputs.scored_only` (the large test set's single trials: more images than
    the small set, so a steadier r, though nothing is drawn from them)."""
    from megdecode.generate.fidelity import latent_fidelity

    decoded = {k: inputs.latents[k] for k in kinds} | {
        k: v for k, (v, _) in inputs.scored_only.items()
    }
    ids = {k: inputs.image_ids[k] for k in kinds} | {
        k: i for k, (_, i) in inputs.scored_only.items()
    }
    truth_ids, truth = inputs.truth
    return latent_fidelity(
        decoded, ids, truth, truth_ids, inputs.parts or [(inputs.latent_name, truth.shape[1])]
    )


def write_fidelity(inputs: EvalInputs, kinds: list[str], out: Path) -> pd.DataFrame:
    """`fidelity_table`, written as latent_fidelity.{csv,png} in `out` and logged."""
    from megdecode.generate.fidelity import plot_fidelity, summarise

    table = fidelity_table(inputs, kinds)
    table.to_csv(out / "latent_fidelity.csv", index=False)
    figure = out / "latent_fidelity.png"
    figure.unlink(missing_ok=True)
    if (table.kind != "oracle").any():
        plot_fidelity(table[table.kind != "oracle"], figure)
    for r in summarise(table).to_dict("records"):
        logger.info(
            "latent fidelity %s/%s: mean r %.3f over %d dims",
            r["kind"],
            r["part"],
            r["mean_r"],
            r["dims"],
        )
    return table


def format_markdown(table: pd.DataFrame) -> str:
    """The metrics table as GitHub markdown (higher is better except swav)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.to_dict("records"):
        lines.append(
            "| "
            + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    return "\n".join(lines) + "\n"


def write_grid(
    cfg: GenEvalConfig,
    inputs: EvalInputs,
    recon: dict[str, list[Image.Image]],
    seen: dict[str, list[Image.Image]],
    nets: FeatureNets | None,
    path: Path,
) -> Path:
    """One row per test image: seen | oracle | averaged | first single trial | random.

    Averaged rows are per (subject, image); the grid keeps each image's first subject.
    """
    first_kind = next(iter(recon))
    ids0 = inputs.image_ids[first_kind].tolist()
    base = np.array(list(dict.fromkeys(ids0)))
    columns: dict[str, list[Image.Image]] = {
        "seen": [seen[first_kind][ids0.index(i)] for i in base.tolist()]
    }
    for kind in [k for k in ("oracle", "averaged", "single", "random") if k in recon]:
        ids = inputs.image_ids[kind].tolist()
        first = {i: ids.index(i) for i in dict.fromkeys(ids)}
        columns[kind] = [recon[kind][first[int(i)]] for i in base]
    rank_kind = cfg.rank_by if cfg.rank_by in columns else next(k for k in columns if k != "seen")
    scores = per_image_scores(columns[rank_kind], columns["seen"], nets)
    how = "SwAV+SSIM" if nets is not None and "swav" in nets.nets else "SSIM"
    return save_grid(
        path,
        columns,
        scores,
        cfg.grid_per_group,
        title=f"{inputs.latent_name}: rows ranked by {how} of '{rank_kind}' (best / middle / worst)",
    )


def write_results(
    cfg: GenEvalConfig,
    inputs: EvalInputs,
    table: pd.DataFrame,
    recon: dict[str, list[Image.Image]],
    seen: dict[str, list[Image.Image]],
    nets: FeatureNets | None,
    out: Path,
) -> Path:
    """metrics.{csv,md}, grid.png and reconstructions.npz (each kind's images and image ids)
    in `out`; returns the grid's path."""
    table.to_csv(out / "metrics.csv", index=False)
    (out / "metrics.md").write_text(format_markdown(table))
    grid = write_grid(cfg, inputs, recon, seen, nets, out / "grid.png")
    arrays: dict[str, Any] = {k: np.stack([np.asarray(im) for im in v]) for k, v in recon.items()}
    arrays.update({f"{k}_image_ids": inputs.image_ids[k] for k in recon})
    np.savez_compressed(out / "reconstructions.npz", **arrays)
    return grid


def log_evaluation(
    tracker: Tracker,
    run_id: str,
    params: dict[str, Any],
    table: pd.DataFrame,
    grid: Path,
    out: Path,
) -> None:
    """An evaluation's `params` (every one: `Tracker.log_params` batches them), metrics as
    ``gen/<kind>/<metric>``, the pred_stats tag, the tables and figures, into run `run_id`."""
    from mlflow.entities import Metric, RunTag

    tracker.log_params(run_id, params)
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"gen/{r['kind']}/{k}", float(v), now, 0)
        for r in table.to_dict("records")
        for k, v in r.items()
        if k not in ("kind", "n", "pred_stats")
    ]
    fidelity = pd.read_csv(out / "latent_fidelity.csv")
    large = fidelity.loc[fidelity.kind == LARGE_KIND, "r"]
    if len(large):
        metrics.append(Metric("gen/test_large/latent_r", float(large.mean()), now, 0))
    used = sorted(set(table["pred_stats"]) - {NOT_SCALED})
    tags = [RunTag("megdecode.gen_eval.pred_stats", ", ".join(used))] if used else []
    tracker.client.log_batch(run_id, metrics=metrics, tags=tags)
    tracker.log_table(run_id, table, "generate_metrics.csv")
    tracker.log_artifacts(run_id, grid, "figures")
    if (out / "latent_fidelity.png").is_file():
        tracker.log_artifacts(run_id, out / "latent_fidelity.png", "figures")
    tracker.log_artifacts(run_id, out / "metrics.md", "tables")
    tracker.log_artifacts(run_id, out / "latent_fidelity.csv", "tables")
