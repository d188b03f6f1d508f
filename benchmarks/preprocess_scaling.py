"""Preprocessing throughput: the Ray Data stage on 1 vs 2 CPUs, and a plain MNE loop.

Builds (or reuses) a twin, then preprocesses the same runs three ways in one process,
each with an empty run cache: `build_epoch_store(use_ray=True)` on a local Ray with 1
CPU, the same with 2 CPUs, and a single-process loop of plain MNE calls (read, pick,
band-pass, Epochs, resample, baseline) as the reference. Prints epochs/s and ratios, and
per Ray run the seconds of its phases: pass 1 (one task per run), the driver's split
assignment (metadata only), pass 2 (one task per subject: scale, write shards) + manifest.
Pass 2 has one task per subject, so it scales only up to the number of subjects.
Default: every subject of the twin (what `make demo` preprocesses); with fewer runs the
fixed costs (Ray Data's start, each worker's first import of mne/scipy) weigh more.
Usage: python benchmarks/preprocess_scaling.py [--bids runs/demo/bids] [--subject BIGMEG1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import mne
import numpy as np

from megdecode.data import bids
from megdecode.data.build import build_epoch_store
from megdecode.data.preprocess import PreprocessConfig


def ray_stage(root: Path, subjects: list[str], cpus: int, work: Path) -> tuple[int, float, dict[str, float]]:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=cpus)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        start = time.perf_counter()
        report = build_epoch_store(root, work / f"store{cpus}", subjects=subjects, use_ray=True,
                                   cache_dir=work / f"cache{cpus}")
        return report.n_epochs, time.perf_counter() - start, report.phase_seconds
    finally:
        ray.shutdown()


def plain_mne(root: Path, subjects: list[str], cfg: PreprocessConfig) -> tuple[int, float]:
    """The textbook single-process MNE loop, for reference (no splits, no store)."""
    start, n = time.perf_counter(), 0
    for key in bids.find_runs(root, subjects=subjects):
        rec = bids.read_run(root, key)
        raw = rec.raw.pick("mag", exclude=list(cfg.exclude)).load_data()
        raw.filter(cfg.l_freq, cfg.h_freq, verbose=False)
        ev = rec.events[rec.events.trial_type != "catch"]
        events = np.c_[ev["sample"].to_numpy(), np.zeros(len(ev), int), np.ones(len(ev), int)]
        epochs = mne.Epochs(raw, events, tmin=cfg.tmin, tmax=cfg.tmax, baseline=cfg.baseline,
                            preload=True, verbose=False)
        epochs.resample(cfg.sfreq, verbose=False)
        n += len(epochs)
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, default=Path("runs/demo/bids"))
    parser.add_argument("--subject", action="append", default=None)
    args = parser.parse_args()
    if not (args.bids / "dataset_description.json").exists():
        from megdecode.data.simulate import TwinConfig, simulate

        simulate(TwinConfig.preset("demo"), args.bids, n_jobs=2)
    subjects = args.subject or sorted({key.subject for key in bids.find_runs(args.bids)})
    mne.set_log_level("ERROR")
    work = Path(tempfile.mkdtemp(prefix="megdecode-scaling-"))
    try:
        n1, t1, p1 = ray_stage(args.bids, subjects, 1, work)
        n2, t2, p2 = ray_stage(args.bids, subjects, 2, work)
        n0, t0 = plain_mne(args.bids, subjects, PreprocessConfig())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"subjects {subjects}: {n1} epochs")
    print(f"ray stage, 1 CPU : {n1 / t1:7.1f} epochs/s ({t1:.1f} s)")
    print(f"ray stage, 2 CPUs: {n2 / t2:7.1f} epochs/s ({t2:.1f} s)")
    print(f"plain MNE loop   : {n0 / t0:7.1f} epochs/s ({t0:.1f} s, {n0} epochs)")
    for name in p1:
        print(f"  phase {name:9s}: 1 CPU {p1[name]:6.2f} s, 2 CPUs {p2[name]:6.2f} s, {p1[name] / p2[name]:.2f}x")
    print(f"scaling 2 vs 1 CPU: {t1 / t2:.2f}x   ray 2 CPUs vs plain MNE: {t0 / t2:.2f}x")


if __name__ == "__main__":
    main()
