"""What Ray Tune costs around a training run: a Tune trial vs the same `fit()` called directly.

One config (the paper's brain module, one seed, a fixed number of epochs, no early stopping)
is trained, in one run on one machine, in alternating rounds (this machine is shared, so
each round compares neighbours in time and the median ratio is the headline):

- `fit()` in this process (imports done): load the epochs, train, test, save the bundle;
- `tune.run_search` over a space whose only config is this one (--trials trials, 1 at a
  time with all CPUs) on a local Ray that is already up: data loaded once into the object
  store, the trial in a Tune worker, MLflow logging from the driver (ridge, registry and
  summary table off), end to end.

Once, for reference: `fit()` in a fresh interpreter (imports included), as `megdecode
train` pays it. The epoch count is calibrated (in a subprocess) so that `fit()` takes about
--seconds (default 60). Also printed: where Tune's time goes, outside the trial (data
load, worker start and imports, MLflow) and inside it but outside the epochs, and the
epochs' own time in and out of Tune. Goal: overhead < 10% for a ~1-minute trial.

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
from pathlib import Path

import torch

from megdecode.models.brain import BrainConfig
from megdecode.train import FitConfig, TrainConfig, Trainer, fit, load_run_data

# The paper's retrieval model (BrainConfig defaults): an epoch of the tiny twin then takes
# seconds, as real epochs do; a toy model's 0.1 s epochs would measure Tune's per-result
# bookkeeping (~50 ms of driver CPU per reported epoch) instead of a training run.
MODEL: dict[str, object] = {}
THREADS = 2  # the trial gets all CPUs of the 2-CPU local cluster (1 trial at a time)


def tiny_twin(root: Path) -> Path:
    from megdecode.data.build import build_epoch_store
    from megdecode.data.simulate import TwinConfig, simulate
    from megdecode.latents.registry import build_latents, make_encoder

    simulate(TwinConfig.preset("tiny", seed=0), root / "bids")
    build_epoch_store(root / "bids", root / "store")
    build_latents(root / "store", root / "bids", root / "latents", make_encoder("handcrafted"))
    return root


def config(data: Path, epochs: int) -> FitConfig:
    brain = BrainConfig.from_flat_dict({k.removeprefix("model."): v for k, v in MODEL.items()})
    return FitConfig(store=str(data / "store"), latents_dir=str(data / "latents"), model=brain,
                     train=TrainConfig(max_epochs=epochs, patience=epochs, batch_size=32, seed=0))


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
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
            f"torch.set_num_threads({THREADS}); from pathlib import Path; import tune_overhead as b; "
            f"print(b.{call})")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out.strip().splitlines()[-1]


def direct(data: Path, epochs: int, out: Path) -> tuple[float, float]:
    """(wall s of load + fit + bundle, s inside the epochs)."""
    start = time.perf_counter()
    cfg = config(data, epochs)
    result = fit(cfg, data=load_run_data(cfg), out_dir=out)
    return time.perf_counter() - start, result.metrics["train_seconds"]


def tuned(data: Path, epochs: int, trials: int, work: Path) -> tuple[float, list[float], list[float]]:
    """(wall s of the search, each trial's time_total_s, each trial's s inside the epochs)."""
    from megdecode.tune import SearchSetup, run_search

    work.mkdir(parents=True, exist_ok=True)
    space = work / "space.yaml"
    fixed = "".join(f"  {k}: {v}\n" for k, v in MODEL.items())
    space.write_text(f"name: overhead\nseeds: 1\nnum_samples: {trials}\nmax_concurrent: 1\nmax_epochs: {epochs}\n"
                     f"grace_period: {epochs}\nfixed:\n{fixed}  train.batch_size: 32\n  train.patience: {epochs}\n")
    setup = SearchSetup(space=str(space), data=str(data), out=str(work / "out"), experiment="overhead",
                        tracking_uri=f"sqlite:///{work / 'mlflow.db'}", cpus_per_trial=THREADS)
    start = time.perf_counter()
    report = run_search(setup, register=None, ridge=False, verbose=0)
    wall = time.perf_counter() - start
    totals, inside = [], []
    for name in sorted(report.trials["trial"]):
        lines = (setup.path / name / "result.json").read_text().splitlines()
        totals.append(float(json.loads(lines[-1])["time_total_s"]))
        inside.append(float(json.loads(lines[-1])["train_seconds_mean"]))
    return wall, totals, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="run folder (store/, latents/); default: a tiny twin")
    parser.add_argument("--seconds", type=float, default=60.0, help="target duration of the direct fit")
    parser.add_argument("--rounds", type=int, default=2, help="alternating (fit, search) pairs")
    parser.add_argument("--trials", type=int, default=1, help="trials per search (same config; the worker is reused)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    import ray

    from megdecode.raycluster import init_ray

    rows = []
    with tempfile.TemporaryDirectory(prefix="tune-overhead-") as tmp:
        work = Path(tmp)
        data = args.data.resolve() if args.data else tiny_twin(work / "twin")
        epochs = int(in_subprocess(f"calibrate(Path({str(data)!r}), {args.seconds})")[1])
        cold, _ = in_subprocess(f"direct(Path({str(data)!r}), {epochs}, Path({str(work / 'cold')!r}))")
        started = time.perf_counter()
        init_ray(num_cpus=THREADS)
        ray_start = time.perf_counter() - started
        try:
            for r in range(args.rounds):
                warm, warm_inside = direct(data, epochs, work / f"direct{r}")
                wall, totals, inside = tuned(data, epochs, args.trials, work / f"tune{r}")
                rows.append((warm, warm_inside, wall / args.trials, totals, inside))
                print(f"round {r}: fit {warm:.1f} s, Tune {wall / args.trials:.1f} s per trial "
                      f"({wall / args.trials / warm - 1:+.1%})", flush=True)
        finally:
            ray.shutdown()
    median = statistics.median(per / warm for warm, _, per, _, _ in rows)
    outside = [per * args.trials - sum(t) for _, _, per, t, _ in rows]
    in_trial = [sum(t) - sum(i) for _, _, _, t, i in rows]
    epochs_ratio = [sum(i) / len(i) / wi for _, wi, _, _, i in rows]
    print(f"{epochs} epochs, 1 seed, {THREADS} threads, {args.trials} trial(s) per search; Ray start (not counted) {ray_start:.1f} s")
    print(f"fit() in a fresh interpreter (imports included): {cold:.1f} s")
    print("fit() in this process, per round:    " + ", ".join(f"{w:.1f}" for w, *_ in rows) + " s")
    print("Tune per trial, end to end, per round: " + ", ".join(f"{r[2]:.1f}" for r in rows) + " s")
    print("  outside the trials (data, worker start + imports, MLflow, report): "
          + ", ".join(f"{o:.1f}" for o in outside) + " s per search")
    print("  inside a trial, outside its epochs (setup, test, bundles): " + ", ".join(f"{s:.1f}" for s in in_trial) + " s")
    print("  epochs inside Tune / inside fit(): " + ", ".join(f"{e:.3f}" for e in epochs_ratio))
    print(f"Tune trial / fit(): median ratio {median:.3f} -> overhead {median - 1:+.1%} (goal < +10%)")


if __name__ == "__main__":
    main()
