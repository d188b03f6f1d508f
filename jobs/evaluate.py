"""Job: evaluate a model bundle. With --generate: reconstructions on Ray, scored, in MLflow.

    python jobs/evaluate.py --generate --bundle runs/demo/models/handcrafted-seed0 \
        --generator runs/demo/generator --bids runs/demo/bids --out runs/demo/generate_eval \
        --tracking-uri sqlite:///runs/demo/mlflow.db
    python jobs/evaluate.py --generate --bundle models:/megdecode-brain@champion ...
    python jobs/evaluate.py BUNDLE            # retrieval re-scoring (= megdecode evaluate)

Library: `megdecode.generate.evaluate` (decode, post-process, generate on a Ray Data
actor pool, metrics, grid, MLflow).
"""

from __future__ import annotations

import argparse
import os
import sys

from _bootstrap import ensure_importable


def main(argv: list[str]) -> None:
    ensure_importable()
    if "--generate" not in argv:
        from megdecode.cli import app

        app(["evaluate", *argv])
        return
    from megdecode.generate.evaluate import GenEvalConfig, generator_defaults, run_and_log
    from megdecode.logs import setup_logging
    from megdecode.raycluster import init_ray

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generate", action="store_true", required=True)
    p.add_argument("--bundle", required=True, help="bundle folder or models:/NAME@ALIAS")
    p.add_argument("--generator", required=True, help="generator folder")
    p.add_argument("--bids", required=True, help="BIDS root (images under bids/stimuli)")
    p.add_argument("--images-root", default="")
    p.add_argument("--store", default="", help="default: the bundle's store")
    p.add_argument("--latents", default="", help="default: the bundle's latents folder")
    p.add_argument("--out", required=True)
    p.add_argument("--tracking-uri", default=os.environ.get("MEGDECODE_TRACKING_URI"))
    p.add_argument("--run-id", default=None, help="log into this MLflow run instead of a new one")
    p.add_argument("--experiment", default="megdecode-generate")
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--kinds", default="single,averaged,oracle,random",
                   help="rows to generate, comma-separated (single = one image per trial: most of the work)")
    p.add_argument("--metric-weights", default="", help="folder of metric network weights")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps; default the generator's")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=0)
    p.add_argument("--address", default=None, help="Ray address; default a local cluster")
    p.add_argument("--num-cpus", type=int, default=None)
    args = p.parse_args(argv)
    setup_logging()
    gen_defaults = generator_defaults(args.generator)
    changes = {k: v for k, v in (("steps", args.steps), ("guidance_scale", args.guidance_scale)) if v is not None}
    generate = gen_defaults.replace(seed=args.seed, **changes)
    cfg = GenEvalConfig(bundle=args.bundle, generator=args.generator, bids_root=args.bids, images_root=args.images_root,
                        store=args.store, latents_dir=args.latents, out=args.out, max_images=args.max_images,
                        metric_weights=args.metric_weights, actors=args.actors, generate=generate,
                        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()))
    import ray

    init_ray(args.address, num_cpus=args.num_cpus)
    try:
        table, grid, run_id = run_and_log(cfg, args.tracking_uri, args.run_id, args.experiment)
    finally:
        ray.shutdown()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"grid -> {grid}" + (f"; MLflow run {run_id}" if run_id else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
