"""A THINGS-size run, measured: every stage on the `full` twin at several sizes, projected.

A size is a number of THINGS-size runs of one `full`-preset subject (1200 Hz, ~205 trials,
~6 min per run; 10 runs = one session), or SxR for S subjects of R runs each. The preset is
cut to the runs kept: categories, test and catch images and distractors in proportion
(R/120 of THINGS-MEG's 12 x 10 runs), so runs keep their THINGS length. Each size runs in
its own interpreter (its peaks are its own) through every stage:

    simulate    twin.simulate (one run in memory at a time)
    preprocess  data.build_epoch_store on a local Ray (2 CPUs): read, filter, epoch, 120 Hz
    latents     twin.truth_latents: twin-lowlevel (11 ground-truth low-level factors; cheap,
                no image encoder)
    load        rundata.load_run_data: the store's epochs -> float32 tensors
    ridge       evaluation.baseline.ridge_predictions: one ridge per subject on train+val
    convnet     the paper's brain module (models.brain.paper_config: 4 subjects, F=768,
                ~6.4M params), `--batches` Adam steps of 128 real epochs (twin-lowlevel
                lifted to 768 dims by a fixed random matrix), extrapolated to one epoch
    evaluate    evaluation.baseline.retrieval_metrics of the ridge's test predictions

Per stage: wall seconds, CPU seconds (driver + Ray processes: the exponents are fitted on
them, as the wall time of a shared machine is too noisy), epochs/s, peak RSS of the driver, peak summed RSS of its child
processes (raylet, GCS, Ray workers: psutil over the process tree, sampled every 0.2 s;
shared pages, the object store's included, count once per process that maps them) and the
object store's peak (`ray._private.internal_api.memory_summary(stats_only=True)`: bytes
of plasma in use, sampled every 0.5 s while Ray is up). Then fits each stage's wall time
and peak against N (epochs of one subject), flags stages whose exponent exceeds 1.2 and
projects to THINGS-MEG: 4 subjects x 24,648 epochs (27,048 trials less catch).
Usage: python benchmarks/things_scale.py [--sizes 2 10 20 2x2] [--out DIR] [--keep]
       [--json docs/scale.json]
       python benchmarks/things_scale.py --report docs/scale.json   # re-print a saved run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

GB = 1e9
THINGS_RUNS = 120  # 12 sessions x 10 runs per subject
THINGS_SUBJECTS = 4
BATCH = 128
# Dense bf16 throughput assumed for the GPU-hour projection: H100 SXM's 989 TFLOP/s peak
# at 35% model FLOPs utilisation (small convs and a 6.4M-param model rarely do better).
GPU_FLOPS = 989e12 * 0.35


class Sampler:
    """Peak RSS of this process, of its descendants, and of Ray's object store, sampled
    by a daemon thread until `stop()`."""

    def __init__(self, period_s: float = 0.2) -> None:
        import psutil  # vendored by Ray (ray/thirdparty_files); on sys.path once ray is imported

        self._me = psutil.Process()
        self._psutil = psutil
        self.period_s = period_s
        self.driver = self.children = self.store = self.store_samples = 0
        # CPU seconds of the descendants: first and last reading per pid (pids that start
        # or end during the stage count from 0 or up to their last sample)
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._cpu_driver = time.process_time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _store_bytes(self) -> int | None:
        """Plasma bytes in use, or None when Ray is down or reports no usage line."""
        import ray

        if not ray.is_initialized():
            return None
        from ray._private.internal_api import memory_summary

        text = memory_summary(stats_only=True)
        hit = re.search(r"Plasma memory usage (\d+) MiB", text)
        return int(hit.group(1)) * 2**20 if hit else None

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self.driver = max(self.driver, self._me.memory_info().rss)
            total = 0
            for child in self._me.children(recursive=True):
                with contextlib.suppress(self._psutil.Error):  # exited since listed
                    total += child.memory_info().rss
                    cpu = child.cpu_times()
                    self._cpu_first.setdefault(child.pid, 0.0 if tick else cpu.user + cpu.system)
                    self._cpu_last[child.pid] = cpu.user + cpu.system
            self.children = max(self.children, total)
            if tick % max(1, int(0.5 / self.period_s)) == 0:
                try:
                    used = self._store_bytes()
                    self.store = max(self.store, used or 0)
                    self.store_samples += used is not None
                except Exception:  # noqa: BLE001 - Ray starting or stopping: skip this sample
                    pass
            tick += 1
            self._stop.wait(self.period_s)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        cpu_children = sum(v - self._cpu_first[k] for k, v in self._cpu_last.items())
        return {
            "cpu_driver_s": time.process_time() - self._cpu_driver,  # all its threads
            "cpu_children_s": cpu_children,
            "peak_driver": self.driver,
            "peak_children": self.children,
            "store": self.store,
            "store_samples": self.store_samples,  # 0: Ray was down, the store is not measured
        }


def things_part(n_subjects: int, n_runs: int) -> Any:
    """The `full` preset cut to `n_runs` THINGS-size runs per subject (module docstring)."""
    from megdecode.twin.config import TwinConfig

    full = TwinConfig.preset("full")
    frac = n_runs / THINGS_RUNS
    n_cat = max(full.n_groups, round(full.n_categories * frac))
    sessions, runs = (n_runs // 10, 10) if n_runs % 10 == 0 else (1, n_runs)
    return full.replace(
        n_subjects=n_subjects,
        n_sessions=sessions,
        n_runs=runs,
        n_categories=n_cat,
        n_test_categories=max(2, round(full.n_test_categories * frac)),
        n_catch_images=max(2, round(full.n_catch_images * frac)),
        n_distractors=round(full.n_distractors * frac),
    )


def things_epochs_per_subject() -> int:
    """Epochs (non-catch trials) of one full THINGS-MEG-like subject."""
    from megdecode.twin.config import TwinConfig

    c = TwinConfig.preset("full")
    return c.n_categories * c.n_exp_per_category + c.n_test_categories * c.n_sessions


def convnet_steps(data: Any, n_batches: int) -> dict[str, float]:
    """Seconds per Adam step of the paper's brain module on real batches, and FLOPs/sample."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from megdecode.losses import CombinedLoss, LossConfig
    from megdecode.models.brain import BrainModule, paper_config

    torch.manual_seed(0)
    _, c, t = data.train.meg.shape
    cfg = paper_config(n_channels=c, n_times=t, n_subjects=THINGS_SUBJECTS, out_dim=768)
    model = BrainModule(cfg, data.pos2d)
    loss_fn = CombinedLoss(LossConfig())
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=3e-4)
    lift = torch.randn(data.train.target.shape[1], 768) / math.sqrt(data.train.target.shape[1])
    times: list[float] = []
    gen = torch.Generator().manual_seed(0)
    # reshuffled passes over train, as many as it takes (a small size has < 1 batch per pass)
    batches = (b for _ in range(n_batches + 1) for b in data.train.batches(BATCH, gen))
    for k, batch in zip(range(n_batches + 1), batches, strict=False):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(batch.meg, batch.subject)
        loss_fn(out.clip, out.mse, batch.target @ lift, batch.image).total.backward()
        opt.step()
        if k > 0:  # the first step allocates and warms up
            times.append(time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(batch.meg[:8], batch.subject[:8])
        loss_fn(out.clip, out.mse, batch.target[:8] @ lift, None).total.backward()
    return {
        "step_s": float(np.median(times)),
        "steps": len(times),
        "flops_per_sample": counter.get_total_flops() / 8,
        "params": float(model.count_parameters()["total"]),
    }


def run_size(n_subjects: int, n_runs: int, out: Path, n_batches: int, keep: bool) -> dict:
    """Every stage on one size, each under its own `Sampler`; returns the measurements."""
    import pandas as pd
    import ray  # also puts the vendored psutil on sys.path for Sampler

    from megdecode.data.build import build_epoch_store
    from megdecode.evaluation.baseline import retrieval_metrics, ridge_predictions
    from megdecode.rundata import load_run_data
    from megdecode.train_config import FitConfig, TrainConfig
    from megdecode.twin.simulate import simulate
    from megdecode.twin.truth_latents import write_twin_latents

    cfg = things_part(n_subjects, n_runs)
    stages: dict[str, dict[str, Any]] = {}
    held: dict[str, Any] = {}

    def stage(name: str, fn: Callable[[], int]) -> None:
        sampler = Sampler()
        start = time.perf_counter()
        n = fn()
        wall = time.perf_counter() - start
        stages[name] = {"wall_s": wall, "n": n, "per_s": n / wall, **sampler.stop()}
        row = stages[name]
        print(
            f"  {name:<10} {wall:8.1f} s {row['per_s']:9.1f}/s driver "
            f"{row['peak_driver'] / GB:5.2f} GB children {row['peak_children'] / GB:5.2f} GB "
            f"store {row['store'] / GB:5.2f} GB",
            file=sys.stderr,
            flush=True,
        )

    def preprocess() -> int:
        # a cluster of its own even when another user's `ray start` runs on this machine
        # (ray.init() without an address attaches to that one)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            report = build_epoch_store(out / "bids", out / "store", use_ray=True)
        finally:
            ray.shutdown()
        return int(report.n_epochs)

    def load() -> int:
        fit = FitConfig(
            store=str(out / "store"),
            latents_dir=str(out / "latents"),
            train=TrainConfig(latent="twin-lowlevel"),
        )
        held["data"] = load_run_data(fit)
        d = held["data"]
        return len(d.train.meta) + len(d.val.meta) + len(d.test.meta)

    def ridge() -> int:
        held["pred"], _ = ridge_predictions(held["data"])
        return len(held["data"].train.meta) + len(held["data"].val.meta)

    def convnet() -> int:
        held["convnet"] = convnet_steps(held["data"], n_batches)
        return held["convnet"]["steps"] * BATCH

    def latents() -> int:
        paths = write_twin_latents(out / "bids", out / "latents")
        return len(pd.read_parquet(paths[0]))

    def evaluate() -> int:
        held["metrics"] = retrieval_metrics(held["pred"], held["data"])
        return len(held["data"].test.meta)

    stage("simulate", lambda: simulate(cfg, out / "bids").n_trials)
    stage("preprocess", preprocess)
    stage("latents", latents)
    bids_bytes = sum(f.stat().st_size for f in (out / "bids").rglob("*") if f.is_file())
    if not keep:  # the raw runs: nothing downstream reads them again
        for sub in (out / "bids").glob("sub-*"):
            shutil.rmtree(sub, ignore_errors=True)
    stage("load", load)
    stage("ridge", ridge)
    stage("convnet", convnet)
    stage("evaluate", evaluate)
    stages["convnet"]["per_s"] = BATCH / held["convnet"]["step_s"]  # steps only, no set-up
    d = held["data"]
    n_train = len(d.train.meta)
    return {
        "n_subjects": n_subjects,
        "n_runs": n_runs,
        "n_epochs": len(d.train.meta) + len(d.val.meta) + len(d.test.meta),
        "n_train": n_train,
        "shape": list(d.train.meg.shape[1:]),
        "stages": stages,
        "convnet": {**held["convnet"], "epoch_s": held["convnet"]["step_s"] * n_train / BATCH},
        "metrics": {k: v for k, v in held["metrics"].items() if "top5" in k},
        "bids_bytes": bids_bytes,
    }


def parse_size(text: str) -> tuple[int, int]:
    """'10' -> (1 subject, 10 runs); '2x5' -> (2 subjects, 5 runs each)."""
    subjects, _, runs = text.rpartition("x")
    return int(subjects or 1), int(runs)


def fit_stage(n: np.ndarray, y: np.ndarray, target: float) -> dict[str, float]:
    """Exponent of y ~ N^k (log-log least squares) and the projection to `target`: linear
    (a + b N) when k <= 1.2, else the power law through the largest size."""
    k = float(np.polyfit(np.log(n), np.log(np.maximum(y, 1e-9)), 1)[0])
    if k <= 1.2:
        b, a = np.polyfit(n, y, 1)
        proj = a + b * target
        model = f"{a:.3g} + {b:.3g} N"
    else:
        proj = y[-1] * (target / n[-1]) ** k
        model = f"{y[-1]:.3g} (N/{int(n[-1])})^{k:.2f}"
    return {"exponent": k, "projected": float(proj), "model": model}


# how each stage's cost adds up over THINGS' 4 subjects: per subject (summed wall time,
# one subject's peak at a time) or over the pooled epochs of all subjects
PER_SUBJECT = {"simulate", "preprocess", "latents", "ridge"}


def project(rows: list[dict]) -> dict[str, dict]:
    """Per stage: exponents and projections of wall time and peaks to THINGS-MEG."""
    one = [r for r in rows if r["n_subjects"] == 1]
    n = np.array([r["n_epochs"] for r in one], dtype=float)
    per_subject = things_epochs_per_subject()
    out = {}
    for name in one[0]["stages"]:
        pooled = name not in PER_SUBJECT
        target = per_subject * (THINGS_SUBJECTS if pooled else 1)
        wall = np.array([r["stages"][name]["wall_s"] for r in one])
        if name == "convnet":
            # a fixed number of steps of a fixed shape: a step's cost does not depend on N
            # (its spread is the machine's load), an epoch is n_train / BATCH steps
            step = float(np.median([r["convnet"]["step_s"] for r in one]))
            wall = np.array([step * r["n_train"] / BATCH for r in one])
        fits = {"wall_s": fit_stage(n, wall, target)}
        for key in ("peak_driver", "peak_children", "store"):
            y = np.array([r["stages"][name][key] for r in one], dtype=float)
            fits[key] = fit_stage(n, np.maximum(y, 1.0), target)
            if len(n) > 2 and n[-1] >= 1.8 * n[-2] and y[-1] < 1.1 * y[-2]:
                # saturated (e.g. a pool of workers each holding one run): < 10% growth over
                # the last doubling; the largest measurement is the projection
                fits[key].update(projected=float(y[-1]), model=f"flat at {y[-1] / GB:.2f} GB")
        time_key = "wall_s"
        if all("cpu_driver_s" in r["stages"][name] for r in one) and name != "convnet":
            # CPU seconds (driver + Ray processes): what the stage costs, less sensitive
            # than wall time to other users' load on a shared machine
            cpu = [
                r["stages"][name]["cpu_driver_s"] + r["stages"][name]["cpu_children_s"] for r in one
            ]
            fits["cpu_s"] = fit_stage(n, np.maximum(np.array(cpu), 1e-3), target)
            time_key = "cpu_s"
        total_wall = fits["wall_s"]["projected"] * (1 if pooled else THINGS_SUBJECTS)
        superlinear = max(fits[time_key]["exponent"], fits["peak_driver"]["exponent"]) > 1.2
        out[name] = {
            "scope": "pooled" if pooled else "per subject",
            "target_n": target,
            "things_wall_s": total_wall,
            "things_cpu_s": fits["cpu_s"]["projected"] * (1 if pooled else THINGS_SUBJECTS)
            if "cpu_s" in fits
            else None,
            "flag_from": time_key,
            # pooled: superlinear in the epochs across subjects (against the rule); per
            # subject: superlinear within one subject only, linear in the number of subjects
            "flag": ("ACROSS SUBJECTS" if pooled else "within subject") if superlinear else "",
            **fits,
        }
    return out


def print_report(rows: list[dict], proj: dict[str, dict]) -> None:
    print(
        f"\n{'size':>6} {'N':>6} {'stage':<10} {'wall s':>8} {'cpu s':>8} {'epochs/s':>9} "
        f"{'driver GB':>9} {'children GB':>11} {'store GB':>8}"
    )
    for r in rows:
        size = f"{r['n_subjects']}x{r['n_runs']}"
        for name, s in r["stages"].items():
            print(
                f"{size:>6} {r['n_epochs']:>6} {name:<10} {s['wall_s']:>8.1f} "
                f"{s.get('cpu_driver_s', math.nan) + s.get('cpu_children_s', math.nan):>8.1f} "
                f"{s['per_s']:>9.1f} "
                f"{s['peak_driver'] / GB:>9.2f} {s['peak_children'] / GB:>11.2f} "
                f"{s['store'] / GB:>8.2f}"
            )
    print(f"\nprojection to THINGS-MEG ({THINGS_SUBJECTS} x {things_epochs_per_subject()} epochs)")
    print(
        f"{'stage':<10} {'scope':<12} {'k(time)':>7} {'k(mem)':>7} {'wall h':>8} "
        f"{'driver GB':>9} {'children GB':>11} {'store GB':>8}  flag"
    )
    for name, p in proj.items():
        print(
            f"{name:<10} {p['scope']:<12} {p[p['flag_from']]['exponent']:>7.2f} "
            f"{p['peak_driver']['exponent']:>7.2f} {p['things_wall_s'] / 3600:>8.2f} "
            f"{p['peak_driver']['projected'] / GB:>9.1f} "
            f"{p['peak_children']['projected'] / GB:>11.1f} {p['store']['projected'] / GB:>8.1f}"
            f"  {p['flag']}"
        )
    singles = {r["n_runs"]: r for r in rows if r["n_subjects"] == 1}
    for r in rows:
        base = singles.get(r["n_runs"])
        if r["n_subjects"] == 1 or base is None:
            continue
        s = r["n_subjects"]
        print(f"\n{s} subjects x {r['n_runs']} runs against {s} x one subject's (wall ratio):")
        for name, st in r["stages"].items():
            ratio = st["wall_s"] / (s * base["stages"][name]["wall_s"])
            print(
                f"  {name:<10} {st['wall_s']:8.1f} s / {s} x {base['stages'][name]['wall_s']:.1f}"
                f" s = {ratio:.2f}"
            )
    from ridge_memory import model_bytes  # benchmarks/ is sys.path[0] when run as a script

    big = max((r for r in rows if r["n_subjects"] == 1), key=lambda r: r["n_epochs"])
    c, t = big["shape"]
    n_fit = round(things_epochs_per_subject() * big["n_train"] / big["n_epochs"])
    print(
        f"ridge, one subject's train+val N={n_fit} (its share at the largest size): model "
        f"{model_bytes(n_fit, 5, n_fit * c * t * 4) / GB:.1f} GB (input + 8 N^2 + 16 (4N/5)^2,"
        " benchmarks/ridge_memory.py)"
    )
    conv = rows[-1]["convnet"]
    train_share = big["n_train"] / big["n_epochs"]
    samples = THINGS_SUBJECTS * things_epochs_per_subject() * train_share
    gpu_s = conv["flops_per_sample"] * samples / GPU_FLOPS
    print(
        f"\nconvnet: {conv['params'] / 1e6:.2f}M params, {conv['flops_per_sample'] / 1e9:.2f} "
        f"GFLOP/sample fwd+bwd; a THINGS epoch (~{samples:.0f} train samples) ~{gpu_s:.0f} s "
        f"on one H100 at {GPU_FLOPS / 1e12:.0f} TFLOP/s (989 bf16 peak x 0.35): "
        f"{100 * gpu_s / 3600:.2f} GPU-h per 100 epochs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["2", "10", "20", "2x2"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/things_scale"))
    parser.add_argument("--keep", action="store_true", help="keep each size's bids/ and store/")
    parser.add_argument("--batches", type=int, default=6, help="timed ConvNet steps per size")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, default=None, help="only re-print this JSON")
    args = parser.parse_args()
    if args.report is not None:
        rows = json.loads(args.report.read_text())["sizes"]
        proj = project(rows)
        print_report(rows, proj)
        args.report.write_text(json.dumps({"sizes": rows, "projection": proj}, indent=1))
        return
    if args.one is not None:  # child: one size, its JSON on the last stdout line
        s, r = parse_size(args.one)
        print(json.dumps(run_size(s, r, args.out / args.one, args.batches, args.keep)))
        return
    rows = []
    for size in args.sizes:
        c = things_part(*parse_size(size))
        print(
            f"size {size}: {c.n_subjects} subject(s) x {c.n_sessions} session(s) x {c.n_runs} "
            f"runs, {c.n_categories} categories, {c.sfreq:g} Hz",
            file=sys.stderr,
            flush=True,
        )
        cmd = [sys.executable, __file__, "--one", size, "--out", str(args.out)]
        cmd += ["--batches", str(args.batches)] + (["--keep"] if args.keep else [])
        env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if not args.keep:
            shutil.rmtree(args.out / size, ignore_errors=True)
        if args.json:  # after every size, so an interrupted run keeps what it measured
            args.json.write_text(json.dumps({"sizes": rows}, indent=1))
    proj = project(rows)
    print_report(rows, proj)
    if args.json:
        args.json.write_text(json.dumps({"sizes": rows, "projection": proj}, indent=1))


if __name__ == "__main__":
    main()
