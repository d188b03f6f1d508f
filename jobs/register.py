"""Ray job / CLI: promote a run's model bundle to the MLflow registry (`register` stage).
Arguments as `megdecode register --help`.

    python jobs/register.py --tracking-uri sqlite:///runs/demo/mlflow.db --run-id RUN_ID \
        [--name megdecode-brain] [--alias champion]

The run's artifacts must hold a bundle folder (the shallowest folder with a bundle.json
is used); serving then loads `name@alias`. Library: `megdecode.promote.promote_run`.
"""

from __future__ import annotations

import sys

from _bootstrap import ensure_importable


def main(argv: list[str] | None = None) -> int:
    """`megdecode register ARGV`; returns its exit status."""
    ensure_importable()
    from megdecode.cli import run

    return run(["register", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
