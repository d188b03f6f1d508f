"""How well each dimension of the decoded latents follows the truth, before any image is drawn.

A reconstruction can fail in two places: the brain module decodes the latent badly, or the
generator draws a good latent badly. The oracle row of the evaluation measures the second;
this module measures the first: for every dimension of the target, the Pearson correlation
across test images between the decoded latents (single trials, or averaged over an
image's repetitions) and the image's ground-truth latent,

    r_d = corr_i( decoded[i, d], truth[image(i), d] ),

the quantity a per-dimension "how much of this factor reached the generator" plot needs.
On the twin the dimensions are named factors (hue, size, position, ...), so the table says
which image properties a reconstruction can be expected to show; an embedding's dimensions
(CLIP, AutoKL) are summarised per part (mean and quartiles of r).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode.twin.stimuli import LOW_LEVEL

# Names of the dimensions of latents whose dimensions mean something on their own.
DIMENSION_NAMES: Mapping[str, Sequence[str]] = {"twin-lowlevel": LOW_LEVEL}
MAX_BARS = 32  # parts with more dimensions are drawn as a sorted curve instead of bars


def columnwise_r(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r of each column of pred (N, F) with the same column of truth (N, F).

    A constant column (no variance in either), or fewer than 3 rows, gives NaN rather than
    a made-up number.
    """
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(
            f"pred and truth must be (N, F) of one shape, got {pred.shape} and {truth.shape}"
        )
    if len(pred) < 3:
        return np.full(pred.shape[1], np.nan)
    p, t = pred - pred.mean(0), truth - truth.mean(0)
    denom = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(0) / np.where(denom > 0, denom, 1.0), np.nan)


def dimension_labels(parts: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
    """(part, dimension label) for every column of a target concatenated from `parts`."""
    labels = []
    for name, width in parts:
        names = DIMENSION_NAMES.get(name)
        if names is not None and len(names) == width:
            labels += [(name, str(n)) for n in names]
        else:
            labels += [(name, str(j)) for j in range(width)]
    return labels


def latent_fidelity(
    decoded: Mapping[str, np.ndarray],
    decoded_ids: Mapping[str, np.ndarray],
    truth: np.ndarray,
    truth_ids: np.ndarray,
    parts: Sequence[tuple[str, int]],
) -> pd.DataFrame:
    """Long table: kind, part, dimension, r (one row per decoded kind and target column).

    decoded[kind] (N_kind, F) is compared row by row with truth (M, F) at the row of its
    image id; every id must have a truth row.
    """
    index = pd.Index(np.asarray(truth_ids))
    labels = dimension_labels(parts)
    if len(labels) != truth.shape[1]:
        raise ValueError(f"parts cover {len(labels)} columns, the latents have {truth.shape[1]}")
    frames = []
    for kind, values in decoded.items():
        rows = index.get_indexer(np.asarray(decoded_ids[kind]))
        if (rows < 0).any():
            raise KeyError(f"{kind}: {int((rows < 0).sum())} rows have no ground-truth latent")
        r = columnwise_r(values, truth[rows])
        frames.append(
            pd.DataFrame(
                {
                    "kind": kind,
                    "part": [p for p, _ in labels],
                    "dimension": [d for _, d in labels],
                    "r": r,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind and part: dimensions, mean r, quartiles (NaN dimensions left out)."""
    g = table.dropna(subset=["r"]).groupby(["kind", "part"], sort=False)["r"]
    return pd.DataFrame(
        {
            "dims": g.size(),
            "mean_r": g.mean(),
            "q25": g.quantile(0.25),
            "median": g.median(),
            "q75": g.quantile(0.75),
        }
    ).reset_index()


def plot_fidelity(table: pd.DataFrame, path: Path) -> Path:
    """One panel per part: bars per named dimension (kinds side by side), or r sorted per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(table["part"]))
    kinds = list(dict.fromkeys(table["kind"]))
    fig, axes = plt.subplots(len(parts), 1, figsize=(7, 2.8 * len(parts)), squeeze=False)
    for ax, part in zip(axes[:, 0], parts, strict=True):
        sub = table[table.part == part]
        dims = list(dict.fromkeys(sub["dimension"]))
        if len(dims) <= MAX_BARS:
            width = 0.8 / len(kinds)
            for k, kind in enumerate(kinds):
                r = sub[sub.kind == kind].set_index("dimension").reindex(dims)["r"].to_numpy()
                ax.bar(
                    np.arange(len(dims)) + (k - (len(kinds) - 1) / 2) * width, r, width, label=kind
                )
            ax.set_xticks(np.arange(len(dims)), dims, rotation=45, ha="right", fontsize=8)
        else:
            for kind in kinds:
                r = np.sort(sub[sub.kind == kind]["r"].dropna().to_numpy())[::-1]
                ax.plot(np.arange(len(r)), r, label=kind)
            ax.set_xlabel("dimension (sorted by r)")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set(
            ylabel="r (decoded vs true)",
            title=part,
            ylim=(min(-0.1, float(np.nanmin(sub["r"])) - 0.05), 1.0),
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
