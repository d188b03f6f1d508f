"""Wall time and peak memory of one subject's ridge fit, projected to THINGS size.

The per-subject ridge (`megdecode.models.subject_ridge`) fits one subject at a time, so
its peak is one subject's fit: THINGS-MEG has N ~ 20k train+val rows per subject,
D = C x T = 271 x 181 (1.5 s at 120 Hz, the broken channel dropped) at decim 1 and
F = 768. Each size N runs in its own subprocess (its peak RSS is its own) on arrays
shaped like the full twin's preprocessed epochs (float32 (N, 271, 181), a linear image
of a random latent plus noise): the solver's cost depends on the shapes only, not on the
values. One BLAS thread (threadpoolctl), as in the other benchmarks on this shared VM.

Prints per N: wall time of `fit_ridge`, peak RSS, the input's size and the model of
`megdecode.models.ridge` (input + 8 N^2 + 2 x 8 (N (K-1)/K)^2 bytes); then projects to
N = 20k: time by a least-squares fit of t = a N^2 + b N^3 (the Gram and the per-fold
eigendecompositions), memory by the model with the smallest-N measurement's overhead.
`--store STORE` instead fits once on a real one-subject store's train+val epochs (e.g. one
session of the full twin subject) and prints its cost next to the model's.
Usage: python benchmarks/ridge_memory.py [--sizes 2000 4000 6000] [--target 20000]
       python benchmarks/ridge_memory.py --store runs/full1/store
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

C, T, F = 271, 181, 768
GB = 1e9


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed_fit(X: np.ndarray, Y: np.ndarray, folds: int, decim: int) -> dict[str, Any]:
    """Fit once with one BLAS thread; seconds, peak RSS (this process) and the input."""
    from threadpoolctl import threadpool_limits

    from megdecode.models.ridge import RidgeConfig, fit_ridge

    rss_data = _peak_rss()
    with threadpool_limits(limits=1, user_api="blas"):
        started = time.perf_counter()
        model = fit_ridge(X, Y, RidgeConfig(cv_folds=folds, decim=decim))
        seconds = time.perf_counter() - started
    return {
        "n": len(X),
        "shape": list(X.shape),
        "seconds": seconds,
        "peak_rss": _peak_rss(),
        "rss_after_data": rss_data,
        "input_bytes": X.nbytes,
        "alpha": model.alpha,
        "form": model.form,
    }


def _fit_once(n: int, folds: int, decim: int) -> dict[str, Any]:
    """Build synthetic arrays of N epochs, fit once."""
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((n, F)).astype(np.float32)
    X = np.empty((n, C, T), dtype=np.float32)
    mixing = rng.standard_normal((F, 64)).astype(np.float32) / np.sqrt(F)
    pattern = rng.standard_normal((64, C * T)).astype(np.float32)
    for i in range(0, n, 500):  # blockwise, so no N x D temporary beyond X itself
        block = (Y[i : i + 500] @ mixing) @ pattern
        block += 5.0 * rng.standard_normal(block.shape, dtype=np.float32)
        X[i : i + 500] = block.reshape(-1, C, T)
    return _timed_fit(X, Y, folds, decim)


def _fit_store(store: str, folds: int, decim: int) -> dict[str, Any]:
    """Fit one subject's ridge on a real store's train+val epochs (the full twin subject's:
    1200 Hz recorded, 120 Hz stored), against a random F-dim target: the cost is the
    shapes', so this checks the synthetic sizes' model on real epochs."""
    from megdecode.data import store as epoch_store

    X, meta = epoch_store.load_epochs(store, splits=["train", "val"])
    if meta["subject"].nunique() != 1:
        raise SystemExit(f"{store}: expected one subject, got {sorted(meta.subject.unique())}")
    Y = np.random.default_rng(0).standard_normal((len(X), F)).astype(np.float32)
    return _timed_fit(X, Y, folds, decim)


def model_bytes(n: int, folds: int, input_bytes: float) -> float:
    """The docstring's model of the dual form's peak: input + Gram + fold block + vectors."""
    m = n * (folds - 1) / folds
    return input_bytes + 8 * n**2 + 2 * 8 * m**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 6000])
    parser.add_argument("--target", type=int, default=20000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--decim", type=int, default=1)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--store",
        default=None,
        help="instead: one fit on this one-subject store's train+val epochs (e.g. a session "
        "of the full twin subject), printed next to the model's prediction for its shape",
    )
    args = parser.parse_args()
    if args.store is not None:
        row = _fit_store(args.store, args.folds, args.decim)
        n, c, t = row["shape"]
        print(
            f"real epochs {args.store}: X float32 ({n}, {c}, {t}), F={F}, decim {args.decim}, "
            f"{row['form']} form: fit {row['seconds']:.1f} s, peak RSS "
            f"{row['peak_rss'] / GB:.2f} GB (input {row['input_bytes'] / GB:.2f} GB, model "
            f"{model_bytes(n, args.folds, row['input_bytes']) / GB:.2f} GB)"
        )
        return
    if args.one is not None:  # child: one size
        print(json.dumps(_fit_once(args.one, args.folds, args.decim)))
        return

    rows = []
    print(
        f"one subject's ridge: X float32 (N, {C}, {T}), F={F}, decim {args.decim}, "
        f"{args.folds}-fold CV, 21 alphas, 1 BLAS thread"
    )
    print(f"{'N':>6} {'form':>6} {'fit s':>8} {'peak RSS GB':>12} {'input GB':>9} {'model GB':>9}")
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--folds",
            str(args.folds),
            "--decim",
            str(args.decim),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{n:>6} {row['form']:>6} {row['seconds']:>8.1f} {row['peak_rss'] / GB:>12.2f} "
            f"{row['input_bytes'] / GB:>9.2f} "
            f"{model_bytes(n, args.folds, row['input_bytes']) / GB:>9.2f}"
        )
    n = np.array([r["n"] for r in rows], dtype=float)
    t = np.array([r["seconds"] for r in rows])
    coef, *_ = np.linalg.lstsq(np.stack([n**2, n**3], axis=1), t, rcond=None)
    coef = np.clip(coef, 0, None)
    target_input = args.target * C * (-(-T // args.decim)) * 4
    overhead = rows[0]["peak_rss"] - model_bytes(rows[0]["n"], args.folds, rows[0]["input_bytes"])
    projected = model_bytes(args.target, args.folds, target_input) + max(overhead, 0)
    t_target = coef @ [args.target**2, args.target**3]
    print(
        f"\nprojection to N={args.target}: input {target_input / GB:.1f} GB, peak RSS "
        f"~{projected / GB:.1f} GB (model + {max(overhead, 0) / GB:.2f} GB overhead measured "
        f"at N={rows[0]['n']}), fit ~{t_target / 60:.0f} min on one thread "
        f"(t = {coef[0]:.3g} N^2 + {coef[1]:.3g} N^3 s)"
    )


if __name__ == "__main__":
    main()
