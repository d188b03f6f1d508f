"""How each twin factor's decoding grows with training trials: is the demo data-limited?

The demo's reconstructions get position, size and contrast right far more often than the
colour (docs/twin_reconstructions.md). This script asks whether that is the model or the
amount of data: it retrains one brain-module config (by default the demo champion's, from
its bundle) on random fractions of the training trials, and on a twin with more exemplars
per category (`--exemplars`, built once under --work: THINGS-MEG shows 12 per category,
the demo 6), and prints per factor of `twin-lowlevel` the Pearson r between decoded and
true latents on the large test set's single trials (hundreds of images: a steadier r than
the small set) and on the small set averaged over repetitions (per subject), next to test
top-5. Same seeds, same epochs budget, one run on one machine. For scale it also prints
the noise-free ceiling: per factor, r of the best linear read-out of the sources' true
response amplitudes (all source groups of the twin's population anatomy, every non-catch
image), before any sensor mixing, latency jitter or noise.

Usage: python benchmarks/twin_factor_curve.py [--bundle runs/demo/champion] [--fractions 0.25,0.5,1]
           [--seeds 2] [--exemplars 12] [--work runs/bench/factor_curve]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from megdecode.bundle_io import load_bundle
from megdecode.data.build import build_epoch_store
from megdecode.generate.evaluation import (
    LARGE_KIND,
    GenEvalConfig,
    decode_test_set,
    fidelity_table,
)
from megdecode.rundata import RunData, SplitTensors, load_run_data
from megdecode.train import fit
from megdecode.train_config import FitConfig
from megdecode.twin import sources as twin_sources
from megdecode.twin.config import TwinConfig
from megdecode.twin.simulate import make_stimuli, simulate
from megdecode.twin.stimuli import LOW_LEVEL
from megdecode.twin.truth_latents import write_twin_latents

LATENT = "twin-lowlevel"
DERIVED = (
    "model.n_channels",
    "model.n_times",
    "model.n_subjects",
    "model.out_dim",
)  # set by the data


def bundle_config(bundle: Path) -> dict[str, object]:
    """The flat FitConfig a bundle was trained with, minus what the data determine."""
    flat = dict(load_bundle(bundle).fit_config.flat)
    for key in DERIVED:
        flat.pop(key, None)
    if flat.get("train.latent") != LATENT:
        raise SystemExit(
            f"{bundle} decodes {flat.get('train.latent')!r}; this script scores {LATENT!r}"
        )
    return flat


def twin_with_exemplars(n: int, work: Path) -> Path:
    """The demo twin with n exemplars per category (built once): returns its run folder."""
    run = work / f"demo-ex{n}"
    if not (run / "store" / "manifest.json").exists():
        start = time.perf_counter()
        simulate(replace(TwinConfig.preset("demo"), n_exp_per_category=n), run / "bids", n_jobs=2)
        build_epoch_store(run / "bids", run / "store")
        print(
            f"built the demo twin with {n} exemplars per category in {time.perf_counter() - start:.0f} s"
        )
    if not (run / "latents" / f"{LATENT}.parquet").exists():
        write_twin_latents(run / "bids", run / "latents")
    return run


def noise_free_ceiling(cfg: TwinConfig) -> dict[str, float]:
    """Per low-level factor: r of a least-squares read-out of the true source amplitudes."""
    _, images, low, sem = make_stimuli(cfg)
    sources = twin_sources.anatomy(cfg, low.shape[1], sem.shape[1])
    real = (images["trial_type"] != "catch").to_numpy()
    amps = np.concatenate(
        [twin_sources.image_drive(cfg, g, sources[g], low, sem) for g in twin_sources.GROUPS],
        axis=1,
    )
    design = np.c_[amps[real], np.ones(int(real.sum()))]
    fitted = design @ np.linalg.lstsq(design, low[real], rcond=None)[0]
    return {
        name: float(np.corrcoef(fitted[:, j], low[real][:, j])[0, 1])
        for j, name in enumerate(LOW_LEVEL)
    }


def subsample(data: RunData, fraction: float, seed: int) -> RunData:
    """The same data with a random `fraction` of the training trials."""
    if fraction >= 1.0:
        return data
    t = data.train
    keep = np.sort(
        np.random.default_rng(seed).choice(
            len(t.meta), int(round(fraction * len(t.meta))), replace=False
        )
    )
    kept = SplitTensors(
        t.meg[keep], t.subject[keep], t.target[keep], t.meta.iloc[keep].reset_index(drop=True)
    )
    return replace(data, train=kept)


def score(
    flat: dict[str, object], run: Path, fraction: float, seed: int, work: Path
) -> list[dict[str, object]]:
    """Train on `fraction` of `run`'s training trials; per-factor r rows (one per scored kind)."""
    cfg = FitConfig.from_flat_dict(
        flat
        | {"store": str(run / "store"), "latents_dir": str(run / "latents"), "train.seed": seed}
    )
    data = subsample(load_run_data(cfg), fraction, seed)
    start = time.perf_counter()
    result = fit(cfg, out_dir=Path(tempfile.mkdtemp(dir=work)), data=data)
    seconds = time.perf_counter() - start
    assert result.bundle_path is not None
    inputs = decode_test_set(
        GenEvalConfig(bundle=str(result.bundle_path)), load_bundle(result.bundle_path)
    )
    r = fidelity_table(inputs, ["averaged"]).pivot_table(
        index="kind", columns="dimension", values="r"
    )
    return [
        {
            "data": run.name,
            "fraction": fraction,
            "seed": seed,
            "n_train": len(data.train.meta),
            "kind": "large, single" if kind == LARGE_KIND else kind,
            "seconds": seconds,
            "test_top5": result.metrics.get("test/top5", float("nan")),
            **{d: float(r.loc[kind, d]) for d in LOW_LEVEL},
        }
        for kind in r.index
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/demo/champion"))
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="run folder with store/ and latents/ (default: the bundle's)",
    )
    parser.add_argument("--fractions", default="0.25,0.5,1")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--exemplars",
        type=int,
        default=12,
        help="also a twin with this many per category (0: skip)",
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench/factor_curve"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    flat = bundle_config(args.bundle)
    run = args.data or Path(str(flat["store"])).parent
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = [(run, float(f)) for f in args.fractions.split(",")]
    if args.exemplars:
        jobs.append((twin_with_exemplars(args.exemplars, args.work), 1.0))
    rows = []
    for data_run, fraction in jobs:
        for seed in range(args.seeds):
            rows += score(flat, data_run, fraction, seed, args.work)
            print(
                f"{data_run.name} x{fraction:g} seed {seed}: {rows[-1]['seconds']:.0f} s",
                flush=True,
            )
    table = pd.DataFrame(rows)
    table.to_csv(args.work / "factor_curve.csv", index=False)
    means = table.groupby(["kind", "data", "fraction"], sort=False)[
        ["n_train", "test_top5", *LOW_LEVEL]
    ].mean()
    print(
        f"mean over {args.seeds} seed(s) of per-factor r (decoded vs true {LATENT}); rows: scored set, data, fraction"
    )
    print(means.round(2).to_string())
    ceiling = noise_free_ceiling(TwinConfig.preset("demo"))
    print("noise-free ceiling (demo twin):", " ".join(f"{k} {v:.2f}" for k, v in ceiling.items()))
    print(f"table: {args.work / 'factor_curve.csv'}")


if __name__ == "__main__":
    main()
