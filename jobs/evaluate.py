"""Job: evaluate a model bundle (`evaluate` stage). Arguments as `megdecode evaluate --help`.
With --generate: reconstructions on Ray, scored, in MLflow.

    python jobs/evaluate.py --generate --bundle runs/demo/models/handcrafted-seed0 \
        --generator runs/demo/generator --bids runs/demo/bids --out runs/demo/generate_eval \
        --tracking-uri sqlite:///runs/demo/mlflow.db [--pred-stats bundle|set]
    python jobs/evaluate.py --generate --bundle models:/megdecode-brain@champion ...
    python jobs/evaluate.py BUNDLE            # retrieval re-scoring

Library: `megdecode.generate.evaluation` (decode, post-process, generate on a Ray Data
actor pool, metrics, grid, MLflow).
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable


def main(argv: list[str] | None = None) -> int:
    """`megdecode evaluate ARGV`; returns its exit status."""
    ensure_importable()
    from megdecode.cli import run

    return run(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
