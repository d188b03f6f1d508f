"""Ray job / CLI: promote a run's model bundle to the MLflow model registry under an alias.

    python jobs/register.py --tracking-uri sqlite:///runs/demo/mlflow.db --run-id RUN_ID \
        [--name megdecode-brain] [--alias champion]

The run's artifacts must hold a bundle folder (the shallowest folder with a bundle.json
is used); serving then loads `name@alias` through `Tracker.resolve_alias`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

from _bootstrap import ensure_importable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="sqlite:///PATH/mlflow.db or http(s)://server")
    parser.add_argument("--run-id", required=True, help="a run whose artifacts contain a bundle")
    parser.add_argument("--name", default="megdecode-brain", help="registered model name")
    parser.add_argument("--alias", default="champion", help="alias set on the new version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    ensure_importable()
    from megdecode.tracking import Tracker

    tracker = Tracker(args.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = tracker.download_bundle(args.run_id, tmp)
        version = tracker.register_bundle(args.run_id, bundle, name=args.name, alias=args.alias)
    print(f"{args.name} version {version} -> @{args.alias} (run {args.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
