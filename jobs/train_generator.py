"""Job: train the small latent-conditioned generator on a dataset's images
(`train-generator` stage). Arguments as `megdecode train-generator --help`.

    python jobs/train_generator.py --data runs/demo --out runs/demo/generator
    python jobs/train_generator.py --store S --bids B --latents L --out G --steps 1500 --max-seconds 300

`--data DIR` means DIR/store, DIR/bids and DIR/latents (what `megdecode demo` writes).
Library: `megdecode.generate.train`.
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable


def main(argv: list[str] | None = None) -> int:
    """`megdecode train-generator ARGV`; returns its exit status."""
    ensure_importable()
    from megdecode.cli import run

    return run(["train-generator", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
