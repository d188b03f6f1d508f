"""The second pass of the preprocessing stage, per subject: stack, scale, clip, write.

Why a second pass: the robust scaler is fitted per subject on its training epochs only
(a scaler that has seen test epochs leaks their statistics into training), and the
splits exist only once every run is preprocessed, because validation images are drawn
over all subjects at once. Splits need metadata only, so the driver assigns them from
the run cache's small metadata tables; the heavy part of each subject (load its runs,
stack them, fit the scaler, scale, write its Parquet files) runs as one Ray task per
subject, so subjects use every CPU and no MEG array passes through the driver. Local
builds call the same `scale_and_write` in a loop: both paths write the same bytes.

A subject's rows are stacked in recording order (`splits.recording_order`: session, run,
trial_index), whatever order its runs finished in; `stack_order` applies it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megdecode.data import bids, runcache
from megdecode.data import store as epoch_store
from megdecode.data.preprocess import EpochBlock, PreprocessConfig
from megdecode.data.scaling import RobustScaler, apply_scaler, fit_scaler
from megdecode.data.sensors import require_same_sensors
from megdecode.data.splits import recording_order

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubjectJob:
    """What one subject's task needs; small enough to ship to a Ray worker."""

    subject: str
    stems: list[str]  # run cache stems of the subject's runs (`runcache.cache_stem`)
    metadata: pd.DataFrame  # its rows in `stack_order`, with split and repetition assigned
    bids_root: str
    first_run: bids.RunKey  # its header gives the native rate stored next to the scaler


@dataclass(frozen=True)
class SubjectResult:
    """What one subject's task hands back: file names and statistics, no MEG data."""

    shards: epoch_store.SubjectShards
    scaler: dict[str, Any]  # RobustScaler.to_dict() plus "raw_sfreq"
    compensation_grade: int | None = None  # CTF gradient compensation of its runs, as recorded
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # epochs left out, by reason


def stack_order(metadatas: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """The stacked metadata in recording order, and the order as row indices into the
    plain concatenation of `metadatas`."""
    metadata = pd.concat(list(metadatas), ignore_index=True)
    order = recording_order(metadata)
    return metadata.loc[order].reset_index(drop=True), order


def concat_blocks(blocks: Sequence[EpochBlock]) -> EpochBlock:
    """Stack runs of one subject; channels, time grids and compensation grades must agree.

    Each run's epochs are copied once, straight to their sorted rows (a concatenate then
    a reorder would copy the subject's whole array twice).
    """
    first = blocks[0]
    for block in blocks[1:]:
        require_same_sensors(first.ch_names, block.ch_names, "the subject's first run", "a run")
        if block.compensation_grade != first.compensation_grade:
            raise ValueError(
                f"runs of one subject were recorded at CTF compensation grades "
                f"{first.compensation_grade} and {block.compensation_grade}; cannot stack"
            )
        if block.sfreq != first.sfreq or block.data.shape[2] != first.data.shape[2]:
            raise ValueError("runs of one subject have different time grids; cannot stack")
    metadata, order = stack_order([b.metadata for b in blocks])
    where = np.empty_like(order)
    where[order] = np.arange(len(order))  # row of the stack that each concatenated row lands on
    dtype = np.result_type(*(b.data for b in blocks))
    data = np.empty((len(order), *first.data.shape[1:]), dtype=dtype)
    lo = 0
    for block in blocks:
        hi = lo + len(block.data)
        data[where[lo:hi]] = block.data
        lo = hi
    return EpochBlock(
        data=data,
        metadata=metadata,
        ch_names=list(first.ch_names),
        sfreq=first.sfreq,
        tmin=first.tmin,
        pos2d=first.pos2d,
        pos3d=first.pos3d,
        dropped=total_dropped(blocks),
        compensation_grade=first.compensation_grade,
    )


def total_dropped(blocks: Sequence[EpochBlock]) -> dict[str, int]:
    """Epochs left out over `blocks`, by reason (the sum of each run's counts)."""
    total: dict[str, int] = {}
    for block in blocks:
        for reason, n in block.dropped.items():
            total[reason] = total.get(reason, 0) + int(n)
    return total


def scale_subject(block: EpochBlock, cfg: PreprocessConfig) -> tuple[EpochBlock, RobustScaler]:
    """A scaler fitted on this subject's training epochs only (splits assigned), then clip."""
    metadata = block.metadata
    train = metadata["split"].to_numpy() == "train"
    if not train.any():
        raise ValueError(f"subject {metadata['subject'].iloc[0]} has no training epochs")
    scaler = fit_scaler(block.data[train], cfg.scaler, cfg.quantile_range)
    data = apply_scaler(block.data, scaler, cfg.clip)
    scaled = EpochBlock(
        data=data,
        metadata=metadata,
        ch_names=block.ch_names,
        sfreq=block.sfreq,
        tmin=block.tmin,
        pos2d=block.pos2d,
        pos3d=block.pos3d,
        dropped=block.dropped,
        compensation_grade=block.compensation_grade,
    )
    return scaled, scaler


def raw_sfreq(root: str | Path, key: bids.RunKey) -> float:
    """The recording's native sampling rate, from its header (no data is loaded)."""
    from megdecode.data.bids_remote import fetched_run

    with fetched_run(root, key) as local:
        return float(bids.read_run(local, key, preload=False).raw.info["sfreq"])


def scale_and_write(
    job: SubjectJob,
    staging: str,
    cfg: PreprocessConfig,
    rows_per_file: int = 1024,
    row_group_rows: int = 256,
) -> SubjectResult:
    """One subject: load its cached runs (checksums checked), stack, scale, write its shards
    into the staging store (`epoch_store.staged_store`)."""
    blocks = []
    for stem in job.stems:
        block = runcache.load_block(Path(stem))
        if block is None:
            raise RuntimeError(f"run cache {stem} vanished or was corrupted during the build")
        blocks.append(block)
    block = concat_blocks(blocks)
    mine = job.metadata[list(block.metadata.columns)]
    if not block.metadata.equals(mine):
        raise RuntimeError(
            f"subject {job.subject}: the run cache changed during the build; rerun it"
        )
    block.metadata = job.metadata
    scaled, scaler = scale_subject(block, cfg)
    del block, blocks  # the unscaled copy is no longer needed while the shards are written
    written = epoch_store.write_subject(staging, scaled, rows_per_file, row_group_rows)
    # The native rate goes next to the scaler: online preprocessing (serving's stream)
    # needs both to rebuild the model's input from raw samples.
    stats = scaler.to_dict() | {"raw_sfreq": raw_sfreq(job.bids_root, job.first_run)}
    logger.info("subject %s: %d epochs scaled and written", job.subject, len(scaled.metadata))
    return SubjectResult(written, stats, scaled.compensation_grade, dict(scaled.dropped))


def run_subjects(
    jobs: Sequence[SubjectJob], staging: str | Path, cfg: PreprocessConfig, use_ray: bool
) -> list[SubjectResult]:
    """`scale_and_write` for every subject, as Ray tasks (one CPU each) or in a loop; results
    in the order of `jobs`."""
    if not use_ray:
        return [scale_and_write(job, str(staging), cfg) for job in jobs]
    import ray

    task = ray.remote(num_cpus=1)(scale_and_write)
    # Largest subjects first, so a big one does not start last and finish alone.
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].metadata))
    refs = {i: task.remote(jobs[i], str(staging), cfg) for i in order}
    try:
        return [ray.get(refs[i]) for i in range(len(jobs))]
    except Exception:
        # The caller removes the staging folder next: let the other subjects' tasks end
        # first, or one still writing would recreate part of it. They are not cancelled:
        # in Ray 2.60 cancelling a task just as it completes can abort the driver
        # ("Tried to complete task that was not pending", seen in CI).
        ray.wait(list(refs.values()), num_returns=len(refs))
        raise
    except BaseException:  # Ctrl-C: stop the others rather than finish them
        for ref in refs.values():
            ray.cancel(ref)
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=60)
        raise
