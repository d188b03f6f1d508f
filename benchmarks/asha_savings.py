"""What ASHA saves: the same search with early stopping (ASHA) and without (FIFO).

Both searches run in one process on one local Ray, one after the other, over the same
space, data, seeds and Optuna sampler seed. With `--num-samples` at most Optuna's 10
start-up trials, TPE draws the same configs in both (random start-up, same seed), so the
two differ only in ASHA stopping weak trials early. Printed: trial-epochs trained, summed
trial time, wall time, and the best trial's val/top5 (mean over seeds, the searched metric)
and test/top5, for both, plus the compute ratio.

    python benchmarks/asha_savings.py [--data runs/demo] [--space search_spaces/smoke.yaml]
        [--num-samples 8] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from megdecode.search.driver import run_search
from megdecode.search.setup import SearchSetup


def search(
    data: Path, space: Path, scheduler: str, work: Path, num_samples: int, seeds: int
) -> dict:
    setup = SearchSetup(
        space=str(space),
        data=str(data),
        out=str(work),
        experiment=scheduler,
        tracking_uri=f"sqlite:///{work / f'{scheduler}.db'}",
        num_samples=num_samples,
        seeds=seeds,
        scheduler=scheduler,
        time_budget_s=1e9,
        sampler_seed=0,
    )
    start = time.perf_counter()
    report = run_search(setup, register=None, ridge=False, verbose=0)
    wall = time.perf_counter() - start
    epochs, seconds, best = 0, 0.0, (-1.0, None, None)
    for name in sorted(report.trials["trial"]):
        results = [
            json.loads(line)
            for line in (setup.path / name / "result.json").read_text().splitlines()
        ]
        epochs += max(int(r.get("epoch", 0)) for r in results)
        seconds += float(results[-1]["time_total_s"])
        last = results[-1]
        score = float(last.get("val/top5_mean", -1.0))
        if "test/top5_mean" in last and score > best[0]:
            best = (score, float(last["test/top5_mean"]), name)
    configs = sorted(
        tuple(
            sorted(
                (k, str(v)) for k, v in row.items() if k.startswith(("model.", "loss.", "train."))
            )
        )
        for row in report.trials.to_dict(orient="records")
    )
    return {
        "trials": len(report.trials),
        "epochs": epochs,
        "trial_seconds": seconds,
        "wall": wall,
        "best_val": best[0],
        "best_test": best[1],
        "best_trial": best[2],
        "configs": configs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo"))
    parser.add_argument("--space", type=Path, default=Path("search_spaces/smoke.yaml"))
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    import ray

    from megdecode.raycluster import init_ray

    init_ray()
    try:
        with tempfile.TemporaryDirectory(prefix="asha-") as tmp:
            rows = {
                s: search(
                    args.data.resolve(),
                    args.space.resolve(),
                    s,
                    Path(tmp),
                    args.num_samples,
                    args.seeds,
                )
                for s in ("asha", "fifo")
            }
    finally:
        ray.shutdown()
    same = rows["asha"]["configs"] == rows["fifo"]["configs"]
    print(
        f"{args.num_samples} trials x {args.seeds} seeds on {args.data}, space {args.space.name}; "
        f"same configs in both searches: {same}"
    )
    print(
        f"{'scheduler':<10}{'trial-epochs':>14}{'trial s':>10}{'wall s':>10}{'best val/top5':>15}{'its test/top5':>15}"
    )
    for name, r in rows.items():
        print(
            f"{name:<10}{r['epochs']:>14}{r['trial_seconds']:>10.0f}{r['wall']:>10.0f}"
            f"{r['best_val']:>15.3f}{r['best_test'] if r['best_test'] is not None else float('nan'):>15.3f}"
        )
    a, f = rows["asha"], rows["fifo"]
    print(
        f"ASHA / FIFO: trial-epochs {a['epochs'] / f['epochs']:.2f}, trial time {a['trial_seconds'] / f['trial_seconds']:.2f}, "
        f"wall {a['wall'] / f['wall']:.2f}; best val/top5 {a['best_val']:.3f} vs {f['best_val']:.3f} "
        f"(best trial {a['best_trial']} vs {f['best_trial']})"
    )


if __name__ == "__main__":
    main()
