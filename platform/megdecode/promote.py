"""Promote a run's model bundle to the MLflow model registry under an alias.

The search registers its best trial as ``megdecode-brain@champion`` by itself; this is
for any other run (a reproduced trial, a longer training): `megdecode register` and
``jobs/register.py`` both call `promote_run`. Serving then loads ``models:/name@alias``.
"""

from __future__ import annotations

import logging
import tempfile

logger = logging.getLogger(__name__)


def promote_run(
    tracking_uri: str, run_id: str, name: str = "megdecode-brain", alias: str = "champion"
) -> int:
    """Register the bundle in `run_id`'s artifacts (the shallowest folder with a bundle.json)
    as a new version of `name`, point `alias` at it; returns the version number.

    The bundle is downloaded and loaded first (`register_bundle` checks it), so a
    broken bundle never enters the registry.
    """
    from megdecode.model_registry import register_bundle, resolve_bundle
    from megdecode.tracking import Tracker

    if not tracking_uri or not run_id:
        raise ValueError("a tracking URI and a run id are needed to register a run's bundle")
    tracker = Tracker(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        bundle, _ = resolve_bundle(f"runs:/{run_id}", tracking_uri, tmp)
        version = register_bundle(tracker, run_id, bundle, name=name, alias=alias)
    logger.info("registered run %s as %s version %d (@%s)", run_id, name, version, alias)
    return version
