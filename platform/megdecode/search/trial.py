"""What a Tune trial runs: one config over N seeds in lockstep, on data shared by the node.

One trial = one flat config from the search space, trained for every seed of the space in
lockstep (`train.Trainer`, one epoch each per step), so the trial can report the mean and
standard deviation over seeds of every validation metric after every epoch: ASHA stops
and Optuna ranks on the *mean*. Seeds live inside the trial rather than in Tune's
`Repeater` because the Repeater cannot resume an interrupted search and hides the per-epoch
mean from the scheduler; here a resumed search sees whole trials only.

At the end of a trial each seed is scored on the test sets and saved as a model bundle in
the trial's checkpoint (``<experiment>/<trial>/checkpoint_000000/seed<s>/``), next to
``seeds.json`` (per-seed metrics and per-epoch history). Nothing in a trial talks to
MLflow: the driver-side callback of `megdecode.search.mlflow` is the only writer;
`megdecode.search.driver.run_search` drives the search.

Data: the epoch store is read once per search through Ray Data (`epoch_store.read_ray_dataset`,
one read task per shard file, run by the cluster; the metadata, tiny, comes from pyarrow
and every MEG row is checked against it), at the full stored window, and shipped to the
trials with `tune.with_parameters` (one `ray.put`). Trials on a node map the same
shared-memory object store buffers (numpy arrays deserialise zero-copy, read-only), and
each trial slices its window as a view (`SharedEpochs.run_data`), so memory does not grow
with the number of trials, and worker nodes need no access to the store's disk: Ray moves
the object to each node once. Reading the store through Ray Data inside every trial would
instead re-read and copy it per trial; minibatch shuffling needs each split in memory
anyway, so streaming per trial buys nothing here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from megdecode.config import ConfigError
from megdecode.data import store as epoch_store
from megdecode.latents.targets import load_target
from megdecode.train import FitConfig, RunData, SplitTensors, Trainer

logger = logging.getLogger(__name__)

SPLIT_GROUPS = {"train": ("train",), "val": ("val",), "test": ("test", "test_large")}
SEEDS_FILE = "seeds.json"
CURVE = "curve/"  # prefix of the last epoch's values in a trial's final report


class InjectedFault(RuntimeError):
    """Raised on purpose by a fault-injection drill (`TrialPlan.fail_trials`)."""


@dataclass
class SharedEpochs:
    """Every epoch of the store at the full stored window, per split group, plus latents.

    meg[group]: (N_group, C, T_full) float32, rows in store order, exactly the rows
    `train.load_run_data` selects for that split group; latents: target -> (ids (L,), (L, F), parts).
    """

    manifest: epoch_store.Manifest
    meg: dict[str, np.ndarray]
    meta: dict[str, pd.DataFrame]
    latents: dict[str, tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]]  # target -> ids, values, parts

    @classmethod
    def load(cls, store: str | Path, latents_dir: str | Path, latent_names: list[str],
             reader: str = "ray") -> SharedEpochs:
        """Read the store and the named latents; one pass per split group.

        reader: "ray" (Ray Data on the running cluster, the search's path) or "arrow"
        (pyarrow in this process, `epoch_store.load_epochs`); both give the same arrays.
        """
        if reader not in ("ray", "arrow"):
            raise ValueError(f"reader: expected 'ray' or 'arrow', got {reader!r}")
        manifest = epoch_store.read_manifest(store)
        meg, meta = {}, {}
        if reader == "ray":  # one Ray Data pass (each pass costs seconds of start-up), then split in memory
            every = tuple(s for splits in SPLIT_GROUPS.values() for s in splits)
            X, all_meta = _read_with_ray_data(store, every)
        for group, splits in SPLIT_GROUPS.items():
            if reader == "ray":
                keep = all_meta["split"].isin(splits).to_numpy()
                meg[group], meta[group] = X[keep], all_meta[keep].reset_index(drop=True)
            else:
                meg[group], meta[group] = epoch_store.load_epochs(store, splits=splits)
            if not len(meta[group]):
                raise ValueError(f"the store {store} has no epochs with split in {splits}")
        latents = {name: load_target(latents_dir, name) for name in latent_names}
        return cls(manifest, meg, meta, latents)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in self.meg.values())

    def run_data(self, cfg: FitConfig) -> RunData:
        """The `RunData` that `train.load_run_data(cfg)` reads from disk, as views of our arrays."""
        t = cfg.train
        if t.latent not in self.latents:
            raise KeyError(f"latent {t.latent!r} was not loaded for this search; loaded: {sorted(self.latents)}")
        latent_ids, latents, parts = self.latents[t.latent]
        window = epoch_store.time_slice(self.manifest, t.tmin, t.tmax)
        subjects = sorted(self.manifest.subjects)
        index = pd.Index(latent_ids)

        def split(group: str) -> SplitTensors:
            meta = self.meta[group]
            row = index.get_indexer(meta["image_id"].to_numpy())
            if (row < 0).any():
                missing = meta["image_id"].to_numpy()[row < 0][:5].tolist()
                raise KeyError(f"{int((row < 0).sum())} epochs have no {t.latent!r} latent, e.g. image ids {missing}")
            with warnings.catch_warnings():  # the object store's arrays are read-only; we never write
                warnings.simplefilter("ignore", UserWarning)
                meg = torch.from_numpy(self.meg[group][:, :, window])
            return SplitTensors(
                meg=meg,
                subject=torch.from_numpy(meta["subject"].map({s: i for i, s in enumerate(subjects)}).to_numpy(np.int64, copy=True)),
                target=torch.from_numpy(latents[row]),
                meta=meta,
            )

        times = np.asarray(self.manifest.times)[window]
        return RunData(
            train=split("train"), val=split("val"), test=split("test"), subjects=subjects,
            ch_names=list(self.manifest.ch_names), pos2d=np.asarray(self.manifest.pos2d),
            sfreq=self.manifest.sfreq, tmin=float(times[0]), tmax=float(times[-1]),
            latent_ids=latent_ids, latents=latents, latent_parts=parts,
        )


def _read_with_ray_data(store: str | Path, splits: tuple[str, ...]) -> tuple[np.ndarray, pd.DataFrame]:
    """The rows of `splits`: MEG through Ray Data, metadata (tiny) through pyarrow.

    The read is shaped for one whole-store pass: one read task per shard file (no
    splitting into many small blocks), whole blocks handed back as Arrow tables (no
    re-batching, no pandas/numpy conversion of the metadata), no progress bars. On the
    tiny store this is dominated by Ray Data's fixed start-up; per byte it costs what a
    pyarrow read costs, as the tensor column is viewed zero-copy and copied once into X.

    Ray Data may hand blocks back in any order, so every MEG row is put at the position
    of its (subject, session, run, trial_index) in the metadata; a row that is missing,
    unknown or seen twice is an error, never a silently shifted epoch/latent pairing.
    """
    meta = epoch_store.load_metadata(store, splits=splits)
    key = ["subject", "session", "run", "trial_index"]
    position = {k: i for i, k in enumerate(zip(*(meta[c].astype(str) for c in key), strict=True))}
    if len(position) != len(meta):
        raise ValueError(f"the store {store} holds duplicate (subject, session, run, trial_index) rows")
    n_files = len(epoch_store.read_manifest(store).files)
    X: np.ndarray | None = None
    seen = np.zeros(len(meta), bool)
    with _whole_file_reads(n_files):
        ds = epoch_store.read_ray_dataset(store, splits=splits).select_columns(["meg", *key])
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            block = cast(pa.Table, batch)
            if not block.num_rows:
                continue
            rows = _tensor_rows(block.column("meg"))
            if X is None:
                X = np.empty((len(meta), *rows.shape[1:]), np.float32)
            keys = zip(*(block.column(c).to_numpy(zero_copy_only=False).astype(str) for c in key), strict=True)
            at = np.array([position.get(k, -1) for k in keys])
            if (at < 0).any() or seen[at].any() or len(np.unique(at)) != len(at):
                raise RuntimeError(f"Ray Data returned rows of {store} that the metadata does not list once")
            X[at] = rows
            seen[at] = True
    if not seen.all():
        raise RuntimeError(f"Ray Data read {int(seen.sum())} rows of {store} for {splits}, the metadata has {len(meta)}")
    return (X if X is not None else np.empty((0, 0, 0), np.float32)), meta


def _tensor_rows(column: Any) -> np.ndarray:
    """(B, C, T) from an Arrow tensor column: zero-copy for the store's canonical type."""
    array = column.combine_chunks()
    if hasattr(array, "to_numpy_ndarray"):  # pyarrow's canonical fixed_shape_tensor
        return array.to_numpy_ndarray()
    return np.asarray(array.to_numpy(zero_copy_only=False))  # Ray's own tensor types


@contextlib.contextmanager
def _whole_file_reads(n_files: int) -> Iterator[None]:
    """Ray Data settings for one read of a few large, known files, restored afterwards.

    - ``read_op_min_num_blocks = n_files``: one read task per file (the store's
      datasource never splits a file; the default, 200, would matter to Ray's own
      Parquet reader, which splits a few files into many small blocks).
    - no progress bars: they cost driver time and clutter the Tune output.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    settings = {"read_op_min_num_blocks": max(1, n_files), "enable_progress_bars": False}
    saved = {k: getattr(ctx, k) for k in settings}
    for key, value in settings.items():
        setattr(ctx, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(ctx, key, value)


@dataclass(frozen=True)
class TrialPlan:
    """What every trial shares besides the data: the base config, the space's fixed keys, the seeds.

    A trial's config is base, then `fixed`, then the trial's own keys: the merge of
    `search.SearchSpace.to_fit_config`, which `search.load_space` has already checked on the
    extremes of the space. The plan holds no `SearchSpace`, so a Tune worker imports neither
    the YAML nor the Optuna machinery (seconds of start-up per worker).

    fail_trials: fault-injection drill (tests, chaos checks): the trials numbered so (1-based,
    in creation order, as in their names ``trial_0003_...``) raise `InjectedFault` after
    their first epoch (unless it is their last) on every attempt, so that retries and
    failure handling can be exercised deterministically. Empty in normal use.
    """

    base: FitConfig
    fixed: dict[str, Any]
    seeds: tuple[int, ...]
    searched: tuple[str, ...] = ()  # the keys the space searches (for tables and figures)
    device: str = "cpu"
    threads: int = 1  # torch threads of a trial = the CPUs Tune reserved for it
    fail_trials: frozenset[int] = field(default_factory=frozenset)

    def fit_config(self, flat: dict[str, Any], seed: int) -> FitConfig:
        try:
            cfg = FitConfig.from_flat_dict(self.base.to_flat_dict() | self.fixed | dict(flat))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid trial config: {exc}") from exc
        return cfg.replace(train=cfg.train.replace(seed=seed, device=self.device))


def trial_name(trial: Any) -> str:
    """``trial_0003_<id>``: creation order first, so names sort and the reporter stays narrow."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(number):04d}_{trial.trial_id}" if number.isdigit() else f"trial_{trial.trial_id}"


def trial_number(name: str) -> int | None:
    parts = name.split("_")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "trial" and parts[1].isdigit() else None


def seed_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """{key_mean, key_std} over seeds for every numeric key; std is the sample std (ddof=1)."""
    out: dict[str, float] = {}
    for key in rows[0]:
        values = np.array([float(r[key]) for r in rows if key in r], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def _current_row(trainer: Trainer) -> dict[str, float]:
    """This epoch's row, or the best epoch's row once the seed has stopped (the model it keeps)."""
    row = trainer.history[trainer.best_epoch] if trainer.done and trainer.best_epoch >= 0 else trainer.history[-1]
    return {k: v for k, v in row.items() if k != "epoch"}


def run_trial(config: dict[str, Any], shared: SharedEpochs, plan: TrialPlan) -> None:
    """The Tune trainable: every seed in lockstep, one report per epoch, bundles at the end.

    Reports {epoch, <metric>_mean, <metric>_std} after every epoch (ASHA's time attribute
    is ``epoch``); the last report also carries the final metrics, the checkpoint and
    where the trial's time went (`TIMING` keys, see `TrialClock`).
    """
    from ray import tune

    clock = TrialClock()
    name = tune.get_context().get_trial_name()
    torch.set_num_threads(plan.threads)
    cfgs = [plan.fit_config(config, seed) for seed in plan.seeds]
    data = shared.run_data(cfgs[0])
    trainers = [Trainer(cfg, data) for cfg in cfgs]
    clock.lap("setup")
    epoch = 0
    while True:
        for trainer in trainers:
            if not trainer.done:
                trainer.step()
        epoch += 1
        clock.lap("epochs")
        metrics: dict[str, Any] = {"epoch": epoch, **seed_stats([_current_row(t) for t in trainers])}
        if not all(t.done for t in trainers):
            tune.report(metrics)  # blocks until the driver has taken the result (Tune's function API)
            clock.lap("report")
            if trial_number(name) in plan.fail_trials:
                raise InjectedFault(f"{name}: fault injected after epoch {epoch} (TrialPlan.fail_trials)")
            continue
        # The last epoch and the final metrics share one report: ASHA stops a trial that
        # reaches max_t on that epoch's report, so a later report would never arrive. The
        # final (best-epoch) values take the metric names Optuna and ASHA read; the last
        # epoch's own values ride along as curve/<name> for the per-epoch curves.
        curve = {f"{CURVE}{k}": v for k, v in metrics.items() if k != "epoch"}
        folder = Path(tempfile.mkdtemp(prefix="megdecode-trial-"))
        try:
            final = _finish(trainers, folder) | {"epoch": epoch} | curve
            clock.lap("finish")
            tune.report(final | clock.metrics(), checkpoint=tune.Checkpoint.from_directory(str(folder)))
        finally:  # report() has copied the checkpoint to the experiment's storage
            shutil.rmtree(folder, ignore_errors=True)
        return


TIMING = "timing/"  # prefix of a trial's timing keys in its final report


class TrialClock:
    """Where a trial's seconds go, reported with its final result (``timing/*``).

    Phases (seconds): ``setup`` (configs, window views, models and optimisers), ``epochs``
    (training and validation of every seed), ``report`` (blocked in `tune.report` until the
    driver has processed the epoch: Tune's function API reports synchronously), ``finish``
    (test sets and bundles). Instants (Unix time): ``process_start_at`` (the worker process
    was created; None off Linux) and ``start_at`` (the trainable was entered, so imports
    and the object-store get of the shared data are done). The driver's own clock (trial
    added, trial complete) turns these into actor start + imports, and the cost of the last
    report (checkpoint upload) and of the driver's completion work.
    """

    def __init__(self) -> None:
        self.start_at = time.time()
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {"setup": 0.0, "epochs": 0.0, "report": 0.0, "finish": 0.0}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now

    def metrics(self) -> dict[str, float]:
        out = {f"{TIMING}{k}_s": v for k, v in self.seconds.items()}
        out[f"{TIMING}start_at"] = self.start_at
        started = process_start_time()
        if started is not None:
            out[f"{TIMING}process_start_at"] = started
        return out


def process_start_time() -> float | None:
    """When this process was created (Unix time, ~10 ms resolution); None without Linux's /proc."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


def _finish(trainers: list[Trainer], folder: Path) -> dict[str, float]:
    """Test every seed and save its bundle in `folder`; mean/std of the final metrics.

    The trial's best seed is chosen on val/top5 (never on test).
    """
    seeds: list[dict[str, Any]] = []
    for trainer in trainers:
        seed = trainer.cfg.train.seed
        result = trainer.finish(folder / f"seed{seed}")
        seeds.append({"seed": seed, "metrics": result.metrics, "history": result.history, "bundle": f"seed{seed}"})
    best = max(seeds, key=lambda s: s["metrics"]["val/top5"])
    (folder / SEEDS_FILE).write_text(json.dumps({"best_seed": best["seed"], "seeds": seeds}, default=float))
    return seed_stats([s["metrics"] for s in seeds]) | {"best_seed": float(best["seed"]), "final": 1.0}


def fit_config_from_params(params: dict[str, str], seed: int) -> FitConfig:
    """The FitConfig of one seed of a trial, from its MLflow parent-run params (strings)."""
    known = FitConfig().to_flat_dict()
    flat = {k: (None if v == "None" else v) for k, v in params.items() if k in known}
    if not flat:
        raise ConfigError("these params hold no FitConfig key; is this a trial's parent run?")
    cfg = FitConfig.from_flat_dict(flat)
    return cfg.replace(train=cfg.train.replace(seed=seed))
