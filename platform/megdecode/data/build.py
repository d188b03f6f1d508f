"""BIDS dataset -> epoch store: the preprocessing stage end to end.

Pass 1, per run (one Ray Data call each on an actor pool when Ray is used): read, pick, filter, resample,
epoch, baseline, into the run cache. Between the passes the driver assigns splits from
the runs' metadata alone. Pass 2, per subject (one Ray task each, `subject_pass`): fit
the robust scaler on the training epochs only, scale and clip everything, write the
subject's Parquet shards; the driver then writes the manifest. Scaling waits until the
splits exist because a scaler that has seen test epochs leaks their statistics into
training. No MEG array passes through the driver, so both passes use every CPU.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megdecode import files
from megdecode.data import bids, bids_remote, runcache
from megdecode.data import store as epoch_store
from megdecode.data.preprocess import PreprocessConfig, preprocess_run
from megdecode.data.splits import SplitConfig, assign_splits
from megdecode.data.subject_pass import SubjectJob, run_subjects, stack_order
from megdecode.logs import PhaseClock, StageProgress, progress, verbose

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildReport:
    """What `build_epoch_store` wrote, for the CLI summary and for benchmarks."""

    store: Path | str  # a URI for a store on an object store
    n_runs: int
    n_epochs: int
    n_channels: int
    n_times: int
    seconds: float
    split_counts: dict[str, int]
    n_runs_reused: int = 0  # runs taken from the run cache instead of recomputed
    # wall seconds of "runs" (pass 1), "splits" (driver, metadata only), "subjects" (pass 2 +
    # manifest): where the time goes, for benchmarks/preprocess_scaling.py
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # epochs left out by the preprocessing over all runs, by reason ("catch"; "edge": the
    # window does not fit the run; "gap": it crosses a discontinuity); per subject in the manifest
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def epochs_per_second(self) -> float:
        return self.n_epochs / self.seconds if self.seconds > 0 else float("nan")


def _preprocess_cached(
    root: str, key: bids.RunKey, cfg: PreprocessConfig, cache_dir: str
) -> tuple[str, bool]:
    """Preprocess one run into the run cache unless a valid cache exists: (stem, reused)."""
    stem = runcache.cache_stem(Path(cache_dir), key, cfg)
    source = bids_remote.source_fingerprint(root, key)
    if runcache.load_block(stem, source) is not None:
        return str(stem), True
    with bids_remote.fetched_run(root, key) as local:  # a remote root: this run's files only
        block = preprocess_run(bids.read_run(local, key), cfg)
    runcache.save_block(block, stem, source)
    return str(stem), False


def _run_local(
    root: str | Path, keys: Sequence[bids.RunKey], cfg: PreprocessConfig, cache: Path
) -> list[tuple[str, bool]]:
    return [
        _preprocess_cached(str(root), key, cfg, str(cache))
        for key in progress(keys, desc="preprocess runs")
    ]


class _RunWorker:
    """Ray Data actor of pass 1: preprocesses each run it is handed into the run cache.

    An actor pays the import of mne/scipy once, and with two calls in flight per actor the
    next run is already queued when one ends: as one Ray Data task per run, each CPU sat
    idle ~0.15 s between runs and pass 1 scaled 1.46x from 1 to 2 CPUs, on the pool 1.69x
    (benchmarks/preprocess_scaling.py, phase "runs", demo twin).
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = PreprocessConfig.from_flat_dict(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stems, reused = [], []
        for root, cache, subject, session, run in zip(
            batch["root"],
            batch["cache"],
            batch["subject"],
            batch["session"],
            batch["run"],
            strict=True,
        ):
            key = bids.RunKey(str(subject), str(session), str(run))
            stem, was_reused = _preprocess_cached(str(root), key, self.cfg, str(cache))
            stems.append(stem)
            reused.append(was_reused)
        return {"stem": np.array(stems, dtype=object), "reused": np.array(reused, dtype=bool)}


def _run_ray(
    root: str | Path, keys: Sequence[bids.RunKey], cfg: PreprocessConfig, cache: Path
) -> list[tuple[str, bool]]:
    """Ray Data over the run files: one row, hence one map call, per run, on a pool of one
    actor per CPU of the cluster (at most one per run)."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("use_ray=True needs ray.init() first (the job or CLI starts Ray)")
    items = [
        {
            "root": str(root),
            "cache": str(cache),
            "subject": k.subject,
            "session": k.session,
            "run": k.run,
        }
        for k in keys
    ]
    pool = max(1, min(len(items), int(ray.cluster_resources().get("CPU", 1))))
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = (
        verbose()
    )  # quiet: our one bar (or a line every 10 s) instead of Ray Data's
    shown = StageProgress("preprocessed runs", len(items), logger, every_s=10.0)
    by_stem: dict[str, bool] = {}
    try:
        for row in (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(
                _RunWorker,
                batch_size=1,
                batch_format="numpy",
                num_cpus=1,
                fn_constructor_kwargs={"cfg": cfg.to_flat_dict()},
                compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=2),
            )
            .iter_rows()
        ):
            by_stem[str(row["stem"])] = bool(row["reused"])
            shown.step()
    finally:
        ctx.enable_progress_bars = bars
        shown.close()
    return [
        (stem, by_stem[stem]) for stem in (str(runcache.cache_stem(cache, k, cfg)) for k in keys)
    ]


def _subject_jobs(
    root: str | Path, keys: Sequence[bids.RunKey], stems: Sequence[str], split: SplitConfig
) -> list[SubjectJob]:
    """One job per subject (sorted labels), its rows split: the driver reads only the run
    cache's metadata tables; the MEG arrays stay on disk for the subjects' tasks."""
    metas: dict[str, list[pd.DataFrame]] = defaultdict(list)
    stems_of: dict[str, list[str]] = defaultdict(list)
    for stem in stems:
        meta = runcache.load_metadata(Path(stem))
        if meta is None:
            raise RuntimeError(f"run cache {stem} vanished or was corrupted during the build")
        subject = str(meta["subject"].iloc[0])
        metas[subject].append(meta)
        stems_of[subject].append(stem)
    subjects = sorted(metas)
    stacked = [stack_order(metas[s])[0] for s in subjects]
    # Splits are assigned over all subjects at once: validation images are shared.
    metadata = assign_splits(pd.concat(stacked, ignore_index=True), split)
    bounds = np.cumsum([0] + [len(m) for m in stacked])
    return [
        SubjectJob(
            subject,
            stems_of[subject],
            metadata.iloc[lo:hi].reset_index(drop=True),
            str(root),
            next(k for k in keys if str(k.subject) == subject),
        )
        for subject, lo, hi in zip(subjects, bounds[:-1], bounds[1:], strict=True)
    ]


def default_cache(out: str | Path) -> Path:
    """The run cache of a store: a hidden sibling folder, or for a store on an object
    store a local folder named after its URI."""
    if files.is_uri(out):
        digest = hashlib.sha256(str(out).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "megdecode-runs" / digest
    out = Path(out)
    return out.parent / f".{out.name}.runs"


def build_epoch_store(
    bids_root: str | Path,
    out: str | Path,
    preprocess: PreprocessConfig | None = None,
    split: SplitConfig | None = None,
    subjects: Sequence[str] | None = None,
    use_ray: bool = False,
    cache_dir: Path | None = None,
) -> BuildReport:
    """Preprocess every run under `bids_root` and (re)write the epoch store at `out`.

    Runs go through the run cache (default: a hidden sibling of `out`), so a rerun only
    recomputes runs that are missing or corrupt; the store itself is cheap to rewrite.
    With Ray, tasks write the run cache and the store's shards: on a multi-node cluster
    both folders must be on storage every node sees. `bids_root` and `out` may be
    object-store URIs (`megdecode.files`): each task fetches the runs it reads
    (`bids_remote`); the run cache is then local (default: under the temp folder), so on
    a multi-node cluster pass a `cache_dir` every node sees.
    """
    preprocess = preprocess or PreprocessConfig()
    split = split or SplitConfig()
    cache = Path(cache_dir) if cache_dir else default_cache(out)
    clock = PhaseClock("runs", "splits", "subjects")
    keys = bids_remote.find_runs(bids_root, subjects=subjects)
    if not keys:
        raise FileNotFoundError(f"no task-main MEG runs found under {bids_root}")
    logger.info(
        "preprocessing %d runs from %s (%s)", len(keys), bids_root, "ray" if use_ray else "local"
    )
    done = (_run_ray if use_ray else _run_local)(bids_root, keys, preprocess, cache)
    clock.lap("runs")
    reused = sum(r for _, r in done)
    if reused:
        logger.info("reused %d/%d runs from %s", reused, len(keys), cache)
    jobs = _subject_jobs(bids_root, keys, [stem for stem, _ in done], split)
    clock.lap("splits")
    with epoch_store.staged_store(out, overwrite=True) as staging:
        results = run_subjects(jobs, staging, preprocess, use_ray)
        manifest = epoch_store.finish_store(
            staging,
            [r.shards for r in results],
            preprocess_config=preprocess,
            split_config=split,
            scalers={r.shards.subject: r.scaler for r in results},
            compensation_grade={r.shards.subject: r.compensation_grade for r in results},
            dropped={r.shards.subject: r.dropped for r in results},
        )
    clock.lap("subjects")
    seconds = clock.total
    n_epochs = sum(len(job.metadata) for job in jobs)
    counts = pd.concat([job.metadata["split"] for job in jobs]).value_counts().to_dict()
    dropped: dict[str, int] = {}
    for by_reason in manifest.dropped.values():
        for reason, n in by_reason.items():
            dropped[reason] = dropped.get(reason, 0) + n
    logger.info(
        "wrote %d epochs to %s in %.1f s (left out: %s)", n_epochs, out, seconds, dropped or "none"
    )
    return BuildReport(
        store=out,
        n_runs=len(keys),
        n_epochs=n_epochs,
        n_channels=len(manifest.ch_names),
        n_times=len(manifest.times),
        seconds=seconds,
        split_counts={str(k): int(v) for k, v in counts.items()},
        n_runs_reused=reused,
        phase_seconds=clock.as_dict(),
        dropped=dropped,
    )
