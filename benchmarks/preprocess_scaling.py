"""Preprocessing throughput: the Ray Data stage on 1 vs 2 CPUs, and a plain MNE loop.

Builds (or reuses) a twin, then preprocesses the same runs several ways, each with an
empty run cache: `build_epoch_store(use_ray=True)` on a local Ray with 1 CPU and with 2
CPUs, and a single-process loop of plain MNE calls (read, pick, band-pass, Epochs,
resample, baseline) as the reference. "1 CPU" is measured twice: Ray told num_cpus=1 on
this 2-core machine (its raylet, GCS, the driver and Ray Data's executor then have the
other core to themselves), and the whole stage confined to one core (CPU affinity of the
interpreter, inherited by every Ray process it starts): the second is a 1-core machine,
the first is not. Each Ray stage runs in a fresh interpreter (a second Ray start in one
process inherits the first one's leftovers), in an order rotated every round (this
machine's speed drifts over minutes), and the medians are compared. Prints epochs/s and
ratios, and per Ray stage the seconds of its phases: pass 1 (one actor task per run), the
driver's split assignment (metadata only), pass 2 (one task per subject: scale, write
shards) + manifest.
Pass 2 has one task per subject, so it scales only up to the number of subjects.
Default: every subject of the twin (what `make demo` preprocesses); with fewer runs the
fixed costs (Ray Data's start, each worker's first import of mne/scipy) weigh more.
Usage: python benchmarks/preprocess_scaling.py [--bids runs/demo/bids] [--subject BIGMEG1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
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


def ray_stage(
    root: Path, subjects: list[str], cpus: int, work: Path
) -> tuple[int, float, dict[str, float]]:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=cpus)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        start = time.perf_counter()
        report = build_epoch_store(
            root,
            work / f"store{cpus}",
            subjects=subjects,
            use_ray=True,
            cache_dir=work / f"cache{cpus}",
        )
        return report.n_epochs, time.perf_counter() - start, report.phase_seconds
    finally:
        ray.shutdown()


def plain_mne(root: Path, subjects: list[str], cfg: PreprocessConfig) -> tuple[int, float]:
    """The textbook single-process MNE loop, for reference (no splits, no store)."""
    start, n = time.perf_counter(), 0
    for key in bids.find_runs(root, subjects=subjects):
        rec = bids.read_run(root, key)
        raw = rec.raw.pick("mag", exclude=list(cfg.exclude)).load_data()
        if cfg.band_pass:
            raw.filter(cfg.l_freq, cfg.h_freq, verbose=False)
        ev = rec.events[rec.events.trial_type != "catch"]
        events = np.c_[ev["sample"].to_numpy(), np.zeros(len(ev), int), np.ones(len(ev), int)]
        epochs = mne.Epochs(
            raw,
            events,
            tmin=cfg.tmin,
            tmax=cfg.tmax,
            baseline=cfg.baseline,
            preload=True,
            verbose=False,
        )
        epochs.resample(cfg.sfreq, verbose=False)
        n += len(epochs)
    return n, time.perf_counter() - start


# (label, Ray's num_cpus, cores the stage may run on: None = all of the machine's)
SETTINGS = (("1 CPU (Ray)", 1, None), ("1 core", 1, {0}), ("2 CPUs", 2, None))


def in_subprocess(
    bids_root: Path, subjects: list[str], cpus: int, cores: set[int] | None, work: Path
) -> tuple[int, float, dict[str, float]]:
    """`ray_stage` in a fresh interpreter, on `cores` only if given: (epochs, seconds, phase seconds)."""
    cmd = [
        sys.executable,
        __file__,
        "--bids",
        str(bids_root),
        "--stage",
        str(cpus),
        "--work",
        str(work),
    ]
    for subject in subjects:
        cmd += ["--subject", subject]
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    out = (
        subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=pin)
        .stdout.strip()
        .splitlines()[-1]
    )
    got = json.loads(out)
    return int(got["n"]), float(got["seconds"]), dict(got["phases"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, default=Path("runs/demo/bids"))
    parser.add_argument("--subject", action="append", default=None)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds over the three settings, order rotated each round",
    )
    parser.add_argument(
        "--stage", type=int, default=0, help=argparse.SUPPRESS
    )  # one Ray stage, JSON out
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.bids / "dataset_description.json").exists():
        from megdecode.twin.config import TwinConfig
        from megdecode.twin.simulate import simulate

        simulate(TwinConfig.preset("demo"), args.bids, n_jobs=2)
    subjects = args.subject or sorted({key.subject for key in bids.find_runs(args.bids)})
    mne.set_log_level("ERROR")
    if args.stage:
        n, t, phases = ray_stage(args.bids, subjects, args.stage, args.work)
        print(json.dumps({"n": n, "seconds": t, "phases": phases}))
        return
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit(
            "this benchmark compares 1 and 2 cores: run it where at least 2 are available"
        )
    work = Path(tempfile.mkdtemp(prefix="megdecode-scaling-"))
    runs: dict[str, list[tuple[int, float, dict[str, float]]]] = {
        label: [] for label, _, _ in SETTINGS
    }
    try:
        for r in range(args.rounds):
            for label, cpus, cores in SETTINGS[r % 3 :] + SETTINGS[: r % 3]:
                runs[label].append(
                    in_subprocess(
                        args.bids, subjects, cpus, cores, work / f"r{r}-{cpus}-{bool(cores)}"
                    )
                )
                print(f"round {r}, {label}: {runs[label][-1][1]:.1f} s", flush=True)
        n0, t0 = plain_mne(args.bids, subjects, PreprocessConfig())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n1 = runs["2 CPUs"][0][0]
    med = {label: statistics.median(t for _, t, _ in runs[label]) for label in runs}
    print(
        f"subjects {subjects}: {n1} epochs; medians of {args.rounds} fresh-interpreter run(s) per setting"
    )
    for label in runs:
        listed = ", ".join(f"{t:.1f}" for _, t, _ in runs[label])
        print(
            f"ray stage, {label:11s}: {n1 / med[label]:7.1f} epochs/s ({med[label]:.1f} s; runs {listed})"
        )
    print(f"plain MNE loop (1 process): {n0 / t0:7.1f} epochs/s ({t0:.1f} s, {n0} epochs)")
    for name in runs["2 CPUs"][0][2]:
        p = {label: statistics.median(ph[name] for _, _, ph in runs[label]) for label in runs}
        cells = ", ".join(f"{label} {p[label]:6.2f} s" for label in runs)
        print(f"  phase {name:9s}: {cells}; 2 CPUs vs 1 core {p['1 core'] / p['2 CPUs']:.2f}x")
    two = med["2 CPUs"]
    print(
        f"scaling 2 CPUs vs 1 core: {med['1 core'] / two:.2f}x (goal >= 1.7x); "
        f"vs Ray num_cpus=1 on 2 cores: {med['1 CPU (Ray)'] / two:.2f}x; ray 2 CPUs vs plain MNE: {t0 / two:.2f}x"
    )


if __name__ == "__main__":
    main()
