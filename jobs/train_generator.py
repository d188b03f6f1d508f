"""Job: train the small latent-conditioned generator on a dataset's images.

    python jobs/train_generator.py --data runs/demo --out runs/demo/generator
    python jobs/train_generator.py --store S --bids B --latents L --out G --steps 1500 --max-seconds 300

`--data DIR` means DIR/store, DIR/bids and DIR/latents (what `megdecode demo` writes).
Library: `megdecode.generate.train`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _bootstrap import ensure_importable


def main(argv: list[str] | None = None) -> Path:
    ensure_importable()
    from megdecode.generate.train import GenTrainConfig, train_generator
    from megdecode.logs import setup_logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="folder with store/, bids/, latents/")
    p.add_argument("--store", type=Path)
    p.add_argument("--bids", type=Path)
    p.add_argument("--latents", type=Path, help="latents folder")
    p.add_argument("--images-root", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--latent", action="append", help="condition latent(s); default handcrafted")
    p.add_argument("--steps", type=int, default=GenTrainConfig.steps)
    p.add_argument("--max-seconds", type=float, default=GenTrainConfig.max_seconds)
    p.add_argument("--batch-size", type=int, default=GenTrainConfig.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=GenTrainConfig.lr)
    p.add_argument("--ema-decay", type=float, default=GenTrainConfig.ema_decay)
    p.add_argument("--size", type=int, default=GenTrainConfig.size, help="image side in pixels")
    p.add_argument("--patch", type=int, default=GenTrainConfig.patch, help="space-to-depth factor")
    p.add_argument("--channels", default=",".join(map(str, GenTrainConfig.channels)), help="UNet widths, e.g. 64,128")
    p.add_argument("--no-coords", action="store_true", help="no coordinate channels into the UNet")
    p.add_argument("--no-global-cond", action="store_true", help="condition through cross-attention only")
    p.add_argument("--threads", type=int, default=int(os.environ.get("MEGDECODE_TORCH_THREADS", "1")),
                   help="torch threads (1 is fastest on a busy 2-core machine)")
    args = p.parse_args(argv)
    setup_logging()
    import torch

    torch.set_num_threads(args.threads)
    store = args.store or (args.data / "store" if args.data else None)
    bids = args.bids or (args.data / "bids" if args.data else None)
    latents = args.latents or (args.data / "latents" if args.data else None)
    if not (store and bids and latents):
        p.error("give --data, or --store, --bids and --latents")
    cfg = GenTrainConfig(store=str(store), bids_root=str(bids), latents_dir=str(latents),
                         images_root=str(args.images_root or ""), latents=tuple(args.latent or ["handcrafted"]),
                         steps=args.steps, max_seconds=args.max_seconds, batch_size=args.batch_size, seed=args.seed, lr=args.lr, ema_decay=args.ema_decay,
                         size=args.size, patch=args.patch, coords=not args.no_coords, global_cond=not args.no_global_cond, channels=tuple(int(c) for c in args.channels.split(",")))
    out = train_generator(cfg, args.out)
    print(f"generator -> {out} (loss curve {out / 'loss.png'})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
