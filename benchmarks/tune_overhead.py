"""What Ray Tune costs around a training run: a Tune trial vs the same `fit()` called directly.

One config (the paper's brain module, one seed, a fixed number of epochs calibrated so that
`fit()` takes about --seconds, no early stopping) is trained, in one run on one machine, in
alternating rounds (the machine is shared, so each round compares neighbours in time and
the median is the headline):

- direct: `fit()` in this process, imports done: read the epochs from disk (pyarrow),
  train, test, save the bundle;
- search: `tune.run_search` over a space whose only config is this one (--trials trials,
  one at a time, 1 CPU each) on a local Ray that is already up, end to end: the store read
  once through Ray Data into the object store, the trial in a Tune worker, MLflow logging
  from the driver (ridge, registry off; summary table and summary run on).

Two overheads, both against the direct `fit()` of the same round:

- per trial: the trial's wall time as the Tune driver sees it, from the scheduler step that
  created it (actor start, worker imports, object-store get of the shared data included)
  to Tune marking it complete (last report, checkpoint upload included). This is what a
  search pays per trial; the goal (issue 5) is < +10% for a ~1-minute trial. Tune's own
  `time_total_s` (the worker's time inside `train()`, which leaves out actor start,
  imports and the driver's turn after each report) is printed next to it, not used.
- whole search: `run_search` wall / (trials x direct fit). On top of the trials it holds
  what a search pays once: the Ray Data read, Tuner start and stop, the searcher check,
  the summary and the MLflow writes still queued when the last trial ends. With 1 trial of
  1 minute these fixed seconds are a large share; they amortise over the trials of a real
  search (several trials, several seeds, longer epochs). Ray's start is printed, not counted.

Once, for reference: `fit()` in a fresh interpreter (imports included), as `megdecode train`
pays it. The split printed below comes from the trial's own clock (`search.trial.timing_metrics`,
reported in its final result) and the driver's (`SearchReport.timings`, a callback here).

    python benchmarks/tune_overhead.py [--data runs/demo] [--seconds 60] [--rounds 2] [--trials 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ray import tune

from megdecode.demo import TwinRun, build_twin_run
from megdecode.models.brain import BrainConfig
from megdecode.rundata import load_run_data
from megdecode.train import Trainer, fit
from megdecode.train_config import FitConfig, TrainConfig

# The paper's retrieval model (BrainConfig defaults): an epoch of the tiny twin then takes
# seconds, as real epochs do; a toy model's 0.1 s epochs would measure Tune's per-result
# bookkeeping instead of a training run.
MODEL: dict[str, object] = {}
THREADS = 1  # torch threads of the direct fit and of the trial (the trial reserves 1 CPU)
RAY_CPUS = 2  # the local cluster: the trial's CPU plus one for Ray Data's read tasks


def config(data: Path, epochs: int) -> FitConfig:
    brain = BrainConfig.from_flat_dict({k.removeprefix("model."): v for k, v in MODEL.items()})
    return FitConfig(
        store=str(data / "store"),
        latents_dir=str(data / "latents"),
        model=brain,
        train=TrainConfig(max_epochs=epochs, patience=epochs, batch_size=32, seed=0),
    )


def calibrate(data: Path, seconds: float) -> int:
    """Epochs for about `seconds` of `fit` (one warm-up epoch, then two timed)."""
    trainer = Trainer(config(data, 3), load_run_data(config(data, 3)))
    trainer.step()
    start = time.perf_counter()
    trainer.step()
    trainer.step()
    return max(3, round(seconds / ((time.perf_counter() - start) / 2)))


def in_subprocess(call: str) -> tuple[float, str]:
    """Run `call` (an expression of this module) in a fresh interpreter; (wall s, its stdout)."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
        f"torch.set_num_threads({THREADS}); from pathlib import Path; import tune_overhead as b; "
        f"print(b.{call})"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return time.perf_counter() - start, out.strip().splitlines()[-1]


@dataclass
class Direct:
    wall: float  # load + fit + test + bundle
    load: float  # load_run_data (pyarrow)
    epochs: float  # inside the epochs (Trainer.seconds)


def direct(data: Path, epochs: int, out: Path) -> Direct:
    start = time.perf_counter()
    cfg = config(data, epochs)
    run_data = load_run_data(cfg)
    loaded = time.perf_counter()
    result = fit(cfg, data=run_data, out_dir=out)
    return Direct(time.perf_counter() - start, loaded - start, result.metrics["train_seconds"])


class DriverClock(tune.Callback):
    """When the Tune driver created, started and completed each trial (Unix time).

    A trial is "added" at the start of the scheduler step in which it first appears: that
    step asks the searcher for it and starts its actor, so the trial's wall counts both.
    """

    def __init__(self) -> None:
        self.added: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self._step = time.time()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._step = time.time()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in trials:
            self.added.setdefault(trial.trial_id, self._step)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.time()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.completed[trial.trial_id] = time.time()


@dataclass
class Search:
    wall: float  # run_search, Ray already up
    timings: dict[str, float]  # SearchReport.timings
    trials: list[dict[str, float]] = field(default_factory=list)  # one split per trial


def tuned(data: Path, epochs: int, trials: int, work: Path) -> Search:
    from megdecode.search.driver import run_search
    from megdecode.search.setup import SearchSetup

    work.mkdir(parents=True, exist_ok=True)
    space = work / "space.yaml"
    fixed = "".join(f"  {k}: {v}\n" for k, v in MODEL.items())
    space.write_text(
        f"name: overhead\nseeds: 1\nnum_samples: {trials}\nmax_concurrent: 1\nmax_epochs: {epochs}\n"
        f"grace_period: {epochs}\nfixed:\n{fixed}  train.batch_size: 32\n  train.patience: {epochs}\n"
    )
    setup = SearchSetup(
        space=str(space),
        data=str(data),
        out=str(work / "out"),
        experiment="overhead",
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        cpus_per_trial=THREADS,
    )
    clock = DriverClock()
    start = time.perf_counter()
    report = run_search(setup, register=None, ridge=False, verbose=0, callbacks=[clock])
    search = Search(time.perf_counter() - start, dict(report.timings))
    for row in report.trials.sort_values("trial").itertuples():
        last = json.loads((setup.path / row.trial / "result.json").read_text().splitlines()[-1])
        tid = row.trial_id
        inside = {
            k.removeprefix("timing/"): float(v) for k, v in last.items() if k.startswith("timing/")
        }
        wall = clock.completed[tid] - clock.added[tid]
        worker = sum(inside[f"{k}_s"] for k in ("setup", "epochs", "report", "finish"))
        search.trials.append(
            {
                "wall": wall,
                "tune_total": float(last["time_total_s"]),
                "start": inside["start_at"] - clock.added[tid],  # actor + imports + data get
                "setup": inside["setup_s"],
                "epochs": inside["epochs_s"],
                "report": inside["report_s"],
                "finish": inside["finish_s"],
                "end": clock.completed[tid]
                - inside["start_at"]
                - worker,  # last report + driver's turn
            }
        )
    return search


def _fmt(values: list[float], spec: str = ".1f") -> str:
    return ", ".join(format(v, spec) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="run folder (store/, latents/); default: a tiny twin",
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="target duration of the direct fit"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating (fit, search) pairs")
    parser.add_argument(
        "--trials",
        type=int,
        default=1,
        help="trials per search (same config; the worker is reused)",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    import ray

    from megdecode.raycluster import init_ray

    rows: list[tuple[Direct, Search]] = []
    with tempfile.TemporaryDirectory(prefix="tune-overhead-") as tmp:
        work = Path(tmp)
        data = (
            args.data.resolve()
            if args.data
            else build_twin_run(TwinRun(size="tiny", seed=0), work / "twin")
        )
        epochs = int(in_subprocess(f"calibrate(Path({str(data)!r}), {args.seconds})")[1])
        cold, _ = in_subprocess(
            f"direct(Path({str(data)!r}), {epochs}, Path({str(work / 'cold')!r})).wall"
        )
        started = time.perf_counter()
        init_ray(num_cpus=RAY_CPUS)
        ray_start = time.perf_counter() - started
        try:
            for r in range(args.rounds):
                d = direct(data, epochs, work / f"direct{r}")
                s = tuned(data, epochs, args.trials, work / f"tune{r}")
                rows.append((d, s))
                per = statistics.mean(t["wall"] for t in s.trials)
                print(
                    f"round {r}: fit {d.wall:.1f} s | trial {per:.1f} s ({per / d.wall - 1:+.1%}) | "
                    f"search {s.wall:.1f} s ({s.wall / (args.trials * d.wall) - 1:+.1%}); each trial "
                    f"{_fmt([t['wall'] for t in s.trials])} s, of which actor start + imports + data get "
                    f"{_fmt([t['start'] for t in s.trials])} s",
                    flush=True,
                )
        finally:
            ray.shutdown()

    def col(key: str) -> list[float]:
        return [statistics.mean(t[key] for t in s.trials) for _, s in rows]

    def fixed(key: str) -> list[float]:
        return [s.timings.get(key, float("nan")) for _, s in rows]

    per_trial = statistics.median(
        statistics.mean(t["wall"] for t in s.trials) / d.wall for d, s in rows
    )
    whole = statistics.median(s.wall / (args.trials * d.wall) for d, s in rows)
    tune_total = statistics.median(
        statistics.mean(t["tune_total"] for t in s.trials) / d.wall for d, s in rows
    )
    # the same comparison without the epochs: immune to the epochs' own speed, which on a
    # shared machine moves by more than the overhead between neighbouring runs
    outside = [
        (statistics.mean(t["wall"] - t["epochs"] for t in s.trials), d.wall - d.epochs, d.wall)
        for d, s in rows
    ]
    outside_ratio = statistics.median((o - od) / w for o, od, w in outside)
    in_search = [s.timings["tune"] - sum(t["wall"] for t in s.trials) for _, s in rows]
    print(
        f"\n{epochs} epochs, 1 seed, {THREADS} thread(s), {args.trials} trial(s) per search, {args.rounds} rounds; "
        f"Ray start (not counted) {ray_start:.1f} s"
    )
    print(f"direct fit() in a fresh interpreter (imports included): {cold:.1f} s")
    print(
        f"direct fit() in this process:          {_fmt([d.wall for d, _ in rows])} s "
        f"(read {_fmt([d.load for d, _ in rows])}, epochs {_fmt([d.epochs for d, _ in rows])})"
    )
    print(f"per trial, as the Tune driver sees it: {_fmt(col('wall'))} s")
    print(f"  actor start + worker imports + data get: {_fmt(col('start'))}")
    print(f"  setup (configs, window views, model):   {_fmt(col('setup'), '.2f')}")
    print(
        f"  epochs:                                 {_fmt(col('epochs'))}"
        f"  (x direct: {_fmt([statistics.mean(t['epochs'] for t in s.trials) / d.epochs for d, s in rows], '.3f')})"
    )
    print(f"  per-epoch reports (driver round trips): {_fmt(col('report'), '.2f')}")
    print(f"  test + bundles:                         {_fmt(col('finish'), '.2f')}")
    print(f"  last report + checkpoint + completion:  {_fmt(col('end'), '.2f')}")
    print(f"  (Tune's time_total_s: {_fmt(col('tune_total'))})")
    print(f"whole search (Ray up):                 {_fmt([s.wall for _, s in rows])} s")
    print(f"  setup + Ray attach:                     {_fmt(fixed('start'), '.2f')}")
    print(f"  store read (Ray Data) + object store:   {_fmt(fixed('load'), '.2f')}")
    print(f"  Tuner.fit outside the trials:           {_fmt(in_search, '.2f')}")
    print(f"  searcher check:                         {_fmt(fixed('check'), '.2f')}")
    print(f"  summary + MLflow summary run:           {_fmt(fixed('report'), '.2f')}")
    print(f"  (MLflow writes, in the writer thread:   {_fmt(fixed('mlflow'), '.2f')})")
    print(
        f"per-trial overhead:   median {per_trial - 1:+.1%} (goal < +10%); by Tune's time_total_s {tune_total - 1:+.1%}"
    )
    print(
        f"  outside the epochs: trial {_fmt([o for o, _, _ in outside])} s vs direct {_fmt([od for _, od, _ in outside])} s "
        f"-> median {outside_ratio:+.1%} of the direct fit"
    )
    print(
        f"whole-search overhead: median {whole - 1:+.1%} ({args.trials} trial(s); fixed costs included)"
    )


if __name__ == "__main__":
    main()
