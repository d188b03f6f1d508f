"""Which statistics z-score the decoded latents: the bundle's (validation, as served) or each set's.

Prints, from one run on a run folder (default runs/demo, its champion and generator):

- the spread of the scaled latents relative to the training latents' std (mean over
  dimensions) for the single trials and the per-subject averages of the small test set,
  under pred_stats="bundle" (the validation predictions' statistics, what
  `/v1/reconstruct` uses) and pred_stats="set" (each decoded set's own);
- PixCorr and SSIM of the images drawn from each (same seeds, same generator);
- how many single-trial images of the evaluation path (pred_stats="bundle": latents
  decoded one window at a time by the folded model, images sampled in batches) are
  pixel-identical to the served path's (`serve.reconstruct.window_latents`, one image per
  request), and the largest latent difference between the two.

A bundle made before prediction statistics were stored gets them here exactly as
`train.fit` computes them (the MSE head on the validation split), in a temporary copy.

    python benchmarks/pred_stats.py [--run runs/demo] [--steps 20] [--max-single 80]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from megdecode.bundle import PredictionStats
from megdecode.bundle_io import load_bundle, save_bundle
from megdecode.data import store as epoch_store
from megdecode.generate.evaluation import GenEvalConfig, decode_test_set, image_paths
from megdecode.generate.metrics import compute_metrics
from megdecode.generate.pipeline import LatentGenerator
from megdecode.latents.cache import open_rgb
from megdecode.latents.targets import split_target
from megdecode.logs import setup_logging
from megdecode.predict import load_model, predict_windows
from megdecode.serve.model import load_served_model
from megdecode.serve.reconstruct import window_latents


def with_stats(bundle_dir: Path, dst: Path) -> Path:
    """`bundle_dir` itself when it stores prediction statistics, else a copy that does."""
    bundle = load_bundle(bundle_dir)
    if bundle.prediction_stats is not None:
        return bundle_dir
    model, _ = load_model(bundle_dir)
    X, meta = epoch_store.load_epochs(
        bundle.fit_config.store, splits=["val"], tmin=bundle.tmin, tmax=bundle.tmax
    )
    subject = np.array([bundle.subject_index(str(s)) for s in meta["subject"]], np.int64)
    _, mse = predict_windows(model, X, subject)
    bundle.prediction_stats = PredictionStats.of(mse, reference="val")
    return save_bundle(bundle, dst)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, default=Path("runs/demo"))
    p.add_argument("--bundle", type=Path, help="default RUN/champion")
    p.add_argument("--generator", type=Path, help="default RUN/generator")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (the app's default)")
    p.add_argument("--max-single", type=int, default=80, help="single trials drawn (the first K)")
    args = p.parse_args()
    setup_logging("WARNING")
    torch.set_num_threads(1)
    gen_dir = args.generator or args.run / "generator"
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = with_stats(args.bundle or args.run / "champion", Path(tmp) / "bundle")
        cfg = GenEvalConfig(
            bundle=str(bundle_dir),
            generator=str(gen_dir),
            bids_root=str(args.run / "bids"),
            out=tmp,
        )
        bundle = load_bundle(bundle_dir)
        stats = bundle.prediction_stats
        assert stats is not None
        decoded = {
            mode: decode_test_set(cfg.replace(pred_stats=mode), bundle)
            for mode in ("bundle", "set")
        }
        paths = image_paths(cfg, bundle)
        gen = LatentGenerator.from_dir(gen_dir)
        parts = [(n, int(w)) for n, w in bundle.latent_parts]
        print(
            f"bundle {args.bundle or args.run / 'champion'}: {bundle.latent_name}, stats from {stats.reference} "
            f"(n={stats.n}); generator {gen_dir}, {args.steps} steps"
        )
        print(
            f"{'kind':9s} {'pred_stats':10s} {'n':>5s} {'spread/train std':>16s} {'pixcorr':>8s} {'ssim':>6s}"
        )
        for kind in ("single", "averaged"):
            for mode, inputs in decoded.items():
                latents, ids = inputs.latents[kind], inputs.image_ids[kind]
                if kind == "single":
                    latents, ids = latents[: args.max_single], ids[: args.max_single]
                spread = float(np.mean(latents.std(0) / bundle.latent_std))
                images = gen.generate(
                    split_target(latents, parts), steps=args.steps, seeds=list(range(len(latents)))
                )
                scores = compute_metrics(images, [open_rgb(paths[int(i)]) for i in ids])
                print(
                    f"{kind:9s} {mode:10s} {len(latents):5d} {spread:16.3f} {scores['pixcorr']:8.3f} "
                    f"{scores['ssim']:6.3f}"
                )
        # the evaluation's single trials (bundle mode) against the served path, window by window
        state = load_served_model(str(bundle_dir))
        X, meta = epoch_store.load_epochs(
            bundle.fit_config.store, splits=["test"], tmin=bundle.tmin, tmax=bundle.tmax
        )
        k = min(args.max_single, len(meta), 20)
        offline = decoded["bundle"].latents["single"][:k]
        names = [n for n, _ in parts]
        served = np.concatenate(
            [
                np.concatenate([d[n] for n in names], axis=1)
                for d in (
                    window_latents(state, X[i], str(s)) for i, s in enumerate(meta["subject"][:k])
                )
            ]
        )
        batched = gen.generate(split_target(offline, parts), steps=args.steps, seeds=list(range(k)))
        one_by_one = [
            gen.generate(split_target(served[i : i + 1], parts), steps=args.steps, seeds=[i])[0]
            for i in range(k)
        ]  # as the app draws: one request, one image
        same = sum(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(batched, one_by_one, strict=True)
        )
        print(
            f"evaluation (bundle, batched sampling) vs served path (one window, one image), {k} single trials: "
            f"max |latent diff| {float(np.abs(offline - served).max()):.2e}, identical images {same}/{k}"
        )


if __name__ == "__main__":
    main()
