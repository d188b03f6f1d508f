"""BIDS dataset -> epoch store: the preprocessing stage end to end.

Per run (one Ray task each when Ray is used): read, pick, filter, resample, epoch,
baseline. Per subject: assign splits, fit the robust scaler on the training epochs only,
scale and clip everything, write Parquet shards. Scaling waits until the splits exist
because a scaler that has seen test epochs leaks their statistics into training.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megdecode.data import bids, runcache, shards
from megdecode.data.preprocess import (
    EpochBlock,
    PreprocessConfig,
    apply_scaler,
    fit_scaler,
    preprocess_run,
)
from megdecode.data.splits import SplitConfig, assign_splits
from megdecode.logs import progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildReport:
    """What `build_epoch_store` wrote, for the CLI summary and for benchmarks."""

    store: Path
    n_runs: int
    n_epochs: int
    n_channels: int
    n_times: int
    seconds: float
    split_counts: dict[str, int]
    n_runs_reused: int = 0  # runs taken from the run cache instead of recomputed

    @property
    def epochs_per_second(self) -> float:
        return self.n_epochs / self.seconds if self.seconds > 0 else float("nan")


def _preprocess_cached(root: str, key: bids.RunKey, cfg: PreprocessConfig, cache_dir: str) -> tuple[str, bool]:
    """Preprocess one run into the run cache unless a valid cache exists: (stem, reused)."""
    stem = runcache.cache_stem(Path(cache_dir), key, cfg)
    source = runcache.source_fingerprint(Path(root), key)
    if runcache.load_block(stem, source) is not None:
        return str(stem), True
    runcache.save_block(preprocess_run(bids.read_run(Path(root), key), cfg), stem, source)
    return str(stem), False


def _run_local(root: Path, keys: Sequence[bids.RunKey], cfg: PreprocessConfig, cache: Path) -> list[tuple[str, bool]]:
    return [_preprocess_cached(str(root), key, cfg, str(cache)) for key in progress(keys, desc="preprocess runs")]


def _run_ray(root: Path, keys: Sequence[bids.RunKey], cfg: PreprocessConfig, cache: Path) -> list[tuple[str, bool]]:
    """Ray Data over the run files: one row, hence one task, per run."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("use_ray=True needs ray.init() first (the job or CLI starts Ray)")

    def one(row: dict[str, Any]) -> dict[str, Any]:
        key = bids.RunKey(row["subject"], row["session"], row["run"])
        stem, reused = _preprocess_cached(row["root"], key, cfg, row["cache"])
        return {"stem": stem, "reused": reused}

    items = [{"root": str(root), "cache": str(cache), "subject": k.subject, "session": k.session, "run": k.run}
             for k in keys]
    rows = ray.data.from_items(items, override_num_blocks=len(items)).map(one, num_cpus=1).take_all()
    by_stem = {r["stem"]: bool(r["reused"]) for r in rows}
    return [(stem, by_stem[stem]) for stem in (str(runcache.cache_stem(cache, k, cfg)) for k in keys)]


def _raw_sfreq(root: Path, key: bids.RunKey) -> float:
    """The recording's native sampling rate, from its header (no data is loaded)."""
    return float(bids.read_run(root, key, preload=False).raw.info["sfreq"])


def concat_blocks(blocks: Sequence[EpochBlock]) -> EpochBlock:
    """Stack runs of one subject; channel lists and time grids must agree."""
    first = blocks[0]
    for block in blocks[1:]:
        if list(block.ch_names) != list(first.ch_names):
            raise ValueError("runs of one subject have different MEG channels; cannot stack")
        if block.sfreq != first.sfreq or block.data.shape[2] != first.data.shape[2]:
            raise ValueError("runs of one subject have different time grids; cannot stack")
    metadata = pd.concat([b.metadata for b in blocks], ignore_index=True)
    order = metadata.sort_values(["session", "run", "trial_index"], kind="stable").index.to_numpy()
    data = np.concatenate([b.data for b in blocks], axis=0)[order]
    return EpochBlock(
        data=data,
        metadata=metadata.loc[order].reset_index(drop=True),
        ch_names=list(first.ch_names),
        sfreq=first.sfreq,
        tmin=first.tmin,
        pos2d=first.pos2d,
        pos3d=first.pos3d,
    )


def scale_subject(block: EpochBlock, cfg: PreprocessConfig) -> tuple[EpochBlock, Any]:
    """A scaler fitted on this subject's training epochs only (splits assigned), then clip."""
    metadata = block.metadata
    train = metadata["split"].to_numpy() == "train"
    if not train.any():
        raise ValueError(f"subject {metadata['subject'].iloc[0]} has no training epochs")
    scaler = fit_scaler(block.data[train], cfg)
    data = apply_scaler(block.data, scaler, cfg.clip)
    scaled = EpochBlock(
        data=data,
        metadata=metadata,
        ch_names=block.ch_names,
        sfreq=block.sfreq,
        tmin=block.tmin,
        pos2d=block.pos2d,
        pos3d=block.pos3d,
    )
    return scaled, scaler


def build_epoch_store(
    bids_root: Path,
    out: Path,
    preprocess: PreprocessConfig | None = None,
    split: SplitConfig | None = None,
    subjects: Sequence[str] | None = None,
    use_ray: bool = False,
    cache_dir: Path | None = None,
) -> BuildReport:
    """Preprocess every run under `bids_root` and (re)write the epoch store at `out`.

    Runs go through the run cache (default: a hidden sibling of `out`), so a rerun only
    recomputes runs that are missing or corrupt; the store itself is cheap to rewrite.
    """
    preprocess = preprocess or PreprocessConfig()
    split = split or SplitConfig()
    bids_root, out = Path(bids_root), Path(out)
    cache = Path(cache_dir) if cache_dir else out.parent / f".{out.name}.runs"
    start = time.perf_counter()
    keys = bids.find_runs(bids_root, subjects=subjects)
    if not keys:
        raise FileNotFoundError(f"no task-main MEG runs found under {bids_root}")
    logger.info("preprocessing %d runs from %s (%s)", len(keys), bids_root, "ray" if use_ray else "local")
    done = (_run_ray if use_ray else _run_local)(bids_root, keys, preprocess, cache)
    reused = sum(r for _, r in done)
    if reused:
        logger.info("reused %d/%d runs from %s", reused, len(keys), cache)
    by_subject: dict[str, list[EpochBlock]] = defaultdict(list)
    for stem, _ in done:
        block = runcache.load_block(Path(stem))
        if block is None:
            raise RuntimeError(f"run cache {stem} vanished or was corrupted during the build")
        by_subject[str(block.metadata["subject"].iloc[0])].append(block)

    subjects_sorted = sorted(by_subject)
    stacked = [concat_blocks(by_subject[s]) for s in subjects_sorted]
    # Splits are assigned over all subjects at once: validation images are shared.
    metadata = assign_splits(pd.concat([b.metadata for b in stacked], ignore_index=True), split)
    bounds = np.cumsum([0] + [len(b.metadata) for b in stacked])
    blocks, scalers = [], {}
    for subject, block, lo, hi in zip(subjects_sorted, stacked, bounds[:-1], bounds[1:], strict=True):
        block.metadata = metadata.iloc[lo:hi].reset_index(drop=True)
        scaled, scaler = scale_subject(block, preprocess)
        blocks.append(scaled)
        # The native rate goes next to the scaler: online preprocessing (serving's stream)
        # needs both to rebuild the model's input from raw samples.
        first = next(k for k in keys if str(k.subject) == subject)
        scalers[subject] = scaler.to_dict() | {"raw_sfreq": _raw_sfreq(bids_root, first)}
    manifest = shards.write_store(
        out, blocks, preprocess_config=preprocess, split_config=split, scalers=scalers, overwrite=True
    )
    seconds = time.perf_counter() - start
    n_epochs = sum(len(b.metadata) for b in blocks)
    counts = pd.concat([b.metadata["split"] for b in blocks]).value_counts().to_dict()
    logger.info("wrote %d epochs to %s in %.1f s", n_epochs, out, seconds)
    return BuildReport(
        store=out,
        n_runs=len(keys),
        n_epochs=n_epochs,
        n_channels=len(manifest.ch_names),
        n_times=len(manifest.times),
        seconds=seconds,
        split_counts={str(k): int(v) for k, v in counts.items()},
        n_runs_reused=reused,
    )
