"""Latents encoded on a Ray Data actor pool equal the local loop, and use the cache; the pool
returns its results in the items' order."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from megdecode.latents.cache import load_latents
from megdecode.latents.distributed import map_in_row_order, ray_encode_fn
from megdecode.latents.registry import encoder_factory, make_encoder
from megdecode.latents.stage import build_latents

pytestmark = pytest.mark.ray


def test_actor_pool_matches_local_encoding(tiny_run: Path, tmp_path: Path) -> None:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=2)
    try:
        encode_fn = ray_encode_fn(encoder_factory("handcrafted"), actors=2)
        report = build_latents(
            tiny_run / "store",
            tiny_run / "bids",
            tmp_path,
            make_encoder("handcrafted"),
            batch_size=8,
            encode_fn=encode_fn,
        )
        ids, latents = load_latents(report.path)
        local_ids, local = load_latents(tiny_run / "latents" / "handcrafted.parquet")
        assert np.array_equal(ids, local_ids)
        np.testing.assert_array_equal(latents, local)

        def must_not_run(paths, batch_size):
            raise AssertionError("everything is cached; nothing should be encoded")

        build_latents(
            tiny_run / "store",
            tiny_run / "bids",
            tmp_path,
            make_encoder("handcrafted"),
            encode_fn=must_not_run,
        )

        class Scale:  # the first batch finishes last, so Ray yields the batches out of order
            def __init__(self, factor: int) -> None:
                self.factor = factor

            def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                time.sleep(1.0 if batch["row"][0] == 0 else 0.0)
                return {"row": batch["row"], "y": batch["x"] * self.factor}

        items = [{"x": i, "unused": str(i)} for i in range(10)]
        out = map_in_row_order(items, Scale, {"factor": 3}, "y", actors=2, batch_size=2, num_cpus=1)
        assert out.tolist() == [3 * i for i in range(10)]
    finally:
        ray.shutdown()
