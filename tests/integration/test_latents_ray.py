"""Latents encoded on a Ray Data actor pool equal the local loop, and use the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megdecode.latents.cache import load_latents
from megdecode.latents.distributed import ray_encode_fn
from megdecode.latents.registry import encoder_factory, make_encoder
from megdecode.latents.stage import build_latents

pytestmark = pytest.mark.ray


def test_actor_pool_matches_local_encoding(tiny_run: Path, tmp_path: Path) -> None:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=2)
    try:
        encode_fn = ray_encode_fn(encoder_factory("handcrafted"), actors=2)
        report = build_latents(tiny_run / "store", tiny_run / "bids", tmp_path, make_encoder("handcrafted"),
                               batch_size=8, encode_fn=encode_fn)
        ids, latents = load_latents(report.path)
        local_ids, local = load_latents(tiny_run / "latents" / "handcrafted.parquet")
        assert np.array_equal(ids, local_ids)
        np.testing.assert_array_equal(latents, local)

        def must_not_run(paths, batch_size):  # type: ignore[no-untyped-def]
            raise AssertionError("everything is cached; nothing should be encoded")

        build_latents(tiny_run / "store", tiny_run / "bids", tmp_path, make_encoder("handcrafted"),
                      encode_fn=must_not_run)
    finally:
        ray.shutdown()
