"""The end of `make demo`: serve a model, decode a few test windows over HTTP, print them.

`decode_demo` starts a loopback Ray (unless one runs) and the app on a free port, posts
`n` test windows of the epoch store as raw float32 (the fast path a BCI client uses),
prints the top-5 images and the latency of each request, and shuts everything down.
`example_window` writes one such window as the JSON body of examples/window.json.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megdecode.data import store as epoch_store
from megdecode.serve.config import ServeConfig

logger = logging.getLogger(__name__)


def test_windows(
    store: str | Path, tmin: float, tmax: float, subjects: list[str], n: int, seed: int = 0
) -> tuple[np.ndarray, pd.DataFrame]:
    """n windows (n, C, T) of the store's small test set (subjects the model knows), with metadata."""
    X, meta = epoch_store.load_epochs(
        store,
        subjects=[s for s in subjects if s in epoch_store.read_manifest(store).subjects],
        splits=["test"],
        tmin=tmin,
        tmax=tmax,
    )
    if not len(meta):
        raise ValueError(f"store {store} has no test epochs for subjects {subjects}")
    rows = np.random.default_rng(seed).choice(len(meta), size=min(n, len(meta)), replace=False)
    return X[rows], meta.iloc[rows].reset_index(drop=True)


def example_window(
    store: str | Path, bundle_dir: str | Path, out: str | Path, seed: int = 0
) -> Path:
    """Write {"subject", "data"} of one test window shaped for `bundle_dir` (curl -d @out)."""
    from megdecode.bundle_io import load_bundle

    b = load_bundle(Path(bundle_dir))
    X, meta = test_windows(store, b.tmin, b.tmax, b.subjects, 1, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "subject": str(meta["subject"].iloc[0]),
                "data": np.round(X[0].astype(np.float64), 5).tolist(),
            }
        )
    )
    return out


MAX_RETRY_WAIT_S = 10.0  # the longest Retry-After the demo's client honours per 503


class StillOverloadedError(RuntimeError):
    """Every attempt at a request got a 503, waiting Retry-After between them."""


def post_honouring_retry_after(
    session: Any,
    url: str,
    *,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> tuple[Any, int]:
    """POST like a well-behaved client of the app: a 503 (overloaded, shed past
    ``http.max_queue_ms``, model still loading) is retried after its Retry-After seconds.

    On a loaded machine (a CI runner, a laptop running other jobs) a lone request can wait
    past the queue budget between the ingress and the decoder and be shed: the app is
    right to answer 503 fast, and the client's part is to come back later, not to fail.
    Returns (the first non-503 response, the number of 503s before it); raises
    `StillOverloadedError` with the last 503's body after `attempts` of them.
    """
    if attempts < 1:
        raise ValueError(f"attempts: expected >= 1, got {attempts}")
    for shed in range(attempts):
        r = session.post(url, **kwargs)
        if r.status_code != 503:
            return r, shed
        if shed + 1 < attempts:
            sleep(_retry_after_s(r.headers.get("retry-after")))
    raise StillOverloadedError(
        f"{url} answered 503 to {attempts} attempts (Retry-After honoured); last: {r.text[:300]}"
    )


def _retry_after_s(value: str | None) -> float:
    """Retry-After in seconds (the app sends an integer), bounded; 1 s when absent or a date."""
    try:
        return min(max(float(value or 1.0), 0.0), MAX_RETRY_WAIT_S)
    except ValueError:
        return 1.0


def decode_demo(
    bundle_or_uri: str | Path,
    store: str | Path,
    n: int = 5,
    tracking_uri: str | None = None,
    port: int | None = None,
) -> pd.DataFrame:
    """Serve `bundle_or_uri` (a bundle folder or models:/name@alias), decode n test windows, print.

    Returns one row per request: subject, true image and category, top-5 ids and
    categories, whether the true image is in them, client latency and server time (ms).
    """
    import ray
    import requests
    from ray import serve

    from megdecode.model_registry import resolve_bundle
    from megdecode.serve.app import free_port, start

    source = str(bundle_or_uri)
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "megdecode-demo",
            "http": {"port": port or free_port()},
            "decoder": {"model": source, "tracking_uri": tracking_uri or "", "num_cpus": 0.5},
        }
    )
    from megdecode.bundle_io import load_bundle

    bundle = load_bundle(resolve_bundle(source, cfg.tracking_uri())[0])
    X, meta = test_windows(store, bundle.tmin, bundle.tmax, bundle.subjects, n)
    started_ray = not ray.is_initialized()
    url = start(cfg, token="", store=str(store))
    rows = []
    try:
        session = requests.Session()
        for x, (_, m) in zip(X, meta.iterrows(), strict=True):
            t0 = time.perf_counter()
            r, shed = post_honouring_retry_after(
                session,
                f"{url}/v1/decode",
                data=x.tobytes(),
                timeout=60,
                headers={
                    "content-type": "application/octet-stream",
                    "x-shape": f"{x.shape[0]},{x.shape[1]}",
                    "x-subject": str(m["subject"]),
                },
            )
            latency = (time.perf_counter() - t0) * 1e3
            r.raise_for_status()
            body = r.json()
            top = body["top_k"][:5]
            rows.append(
                {
                    "subject": m["subject"],
                    "image_id": int(m["image_id"]),
                    "category": m["category"],
                    "top5_ids": [h["image_id"] for h in top],
                    "top5_categories": [h["category"] for h in top],
                    "hit": int(m["image_id"]) in [h["image_id"] for h in top],
                    "latency_ms": round(latency, 2),
                    "server_ms": body["timing"]["server_ms"],
                    "shed": shed,  # 503s answered before it (latency_ms includes their waits)
                }
            )
    finally:
        serve.delete(cfg.app_name)
        if started_ray:
            serve.shutdown()
            ray.shutdown()
    table = pd.DataFrame(rows)
    for row in rows:
        print(
            f"sub-{row['subject']} image {row['image_id']} ({row['category']}): top-5 "
            f"{list(zip(row['top5_ids'], row['top5_categories'], strict=True))} "
            f"{'HIT' if row['hit'] else 'miss'}  {row['latency_ms']:.1f} ms (server {row['server_ms']:.1f} ms)"
            + (f", after {row['shed']} x 503 overloaded" if row["shed"] else "")
        )
    return table
