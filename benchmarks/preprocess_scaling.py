"""Preprocessing throughput: the Ray Data stage on 1 vs 2 CPUs, and a plain MNE loop.

Builds (or reuses) a twin, then preprocesses the same runs three ways, each with an empty
run cache: `build_epoch_store(use_ray=True)` on a local Ray with 1 CPU, the same with 2
CPUs, and a single-process loop of plain MNE calls (read, pick, band-pass, Epochs,
resample, baseline) as the reference. Each Ray stage runs in a fresh interpreter (a second
Ray start in one process inherits the first one's leftovers), in alternating order over
--rounds (1, 2, 2, 1, ...: this machine's speed drifts over minutes), and the medians
are compared. Prints epochs/s and ratios, and per Ray stage the seconds of its phases:
pass 1 (one actor task per run), the driver's split assignment (metadata only), pass 2 (one
task per subject: scale, write shards) + manifest.
Pass 2 has one task per subject, so it scales only up to the number of subjects.
Default: every subject of the twin (what `make demo` preprocesses); with fewer runs the
fixed costs (Ray Data's start, each worker's first import of mne/scipy) weigh more.
Usage: python benchmarks/preprocess_scaling.py [--bids runs/demo/bids] [--subject BIGMEG1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
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


def in_subprocess(bids_root: Path, subjects: list[str], cpus: int, work: Path) -> tuple[int, float, dict[str, float]]:
    """`ray_stage` in a fresh interpreter: (epochs, seconds, phase seconds)."""
    cmd = [sys.executable, __file__, "--bids", str(bids_root), "--stage", str(cpus), "--work", str(work)]
    for subject in subjects:
        cmd += ["--subject", subject]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    got = json.loads(out)
    return int(got["n"]), float(got["seconds"]), dict(got["phases"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, default=Path("runs/demo/bids"))
    parser.add_argument("--subject", action="append", default=None)
    parser.add_argument("--rounds", type=int, default=2, help="alternating (1 CPU, 2 CPUs) pairs")
    parser.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)  # one Ray stage, JSON out
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.bids / "dataset_description.json").exists():
        from megdecode.data.simulate import TwinConfig, simulate

        simulate(TwinConfig.preset("demo"), args.bids, n_jobs=2)
    subjects = args.subject or sorted({key.subject for key in bids.find_runs(args.bids)})
    mne.set_log_level("ERROR")
    if args.stage:
        n, t, phases = ray_stage(args.bids, subjects, args.stage, args.work)
        print(json.dumps({"n": n, "seconds": t, "phases": phases}))
        return
    work = Path(tempfile.mkdtemp(prefix="megdecode-scaling-"))
    runs: dict[int, list[tuple[int, float, dict[str, float]]]] = {1: [], 2: []}
    try:
        for r in range(args.rounds):
            for cpus in ((1, 2) if r % 2 == 0 else (2, 1)):
                runs[cpus].append(in_subprocess(args.bids, subjects, cpus, work / f"r{r}"))
                print(f"round {r}, {cpus} CPU(s): {runs[cpus][-1][1]:.1f} s", flush=True)
        n0, t0 = plain_mne(args.bids, subjects, PreprocessConfig())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n1 = runs[1][0][0]
    t1, t2 = (statistics.median(t for _, t, _ in runs[c]) for c in (1, 2))
    print(f"subjects {subjects}: {n1} epochs; medians of {args.rounds} fresh-interpreter run(s) per setting")
    print(f"ray stage, 1 CPU : {n1 / t1:7.1f} epochs/s ({t1:.1f} s; runs {', '.join(f'{t:.1f}' for _, t, _ in runs[1])})")
    print(f"ray stage, 2 CPUs: {n1 / t2:7.1f} epochs/s ({t2:.1f} s; runs {', '.join(f'{t:.1f}' for _, t, _ in runs[2])})")
    print(f"plain MNE loop   : {n0 / t0:7.1f} epochs/s ({t0:.1f} s, {n0} epochs)")
    for name in runs[1][0][2]:
        p1, p2 = (statistics.median(ph[name] for _, _, ph in runs[c]) for c in (1, 2))
        print(f"  phase {name:9s}: 1 CPU {p1:6.2f} s, 2 CPUs {p2:6.2f} s, {p1 / p2:.2f}x")
    print(f"scaling 2 vs 1 CPU: {t1 / t2:.2f}x (goal >= 1.7x)   ray 2 CPUs vs plain MNE: {t0 / t2:.2f}x")


if __name__ == "__main__":
    main()
