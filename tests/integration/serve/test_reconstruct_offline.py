"""/v1/reconstruct on a real Serve equals `megdecode reconstruct` on the same window, byte for byte.

The app serves the tiny bundle (which stores its validation prediction statistics) and a
random-init generator; the offline command loads the same folders. Equal PNG bytes mean
the same window -> latents -> scaled latents -> image path ran on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from serve_helpers import window
from typer.testing import CliRunner

from megdecode.bundle_io import load_bundle
from megdecode.cli import app

pytestmark = [pytest.mark.serve, pytest.mark.ray]


@pytest.fixture(scope="module")
def served(
    ray_local: None, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    from ray import serve

    from megdecode.generate.tiny import build_tiny_generator
    from megdecode.serve.app import free_port, start
    from megdecode.serve.config import ServeConfig

    b = load_bundle(tiny_bundle)
    weights = build_tiny_generator(
        tmp_path_factory.mktemp("gen") / "g", {b.latent_name: len(b.latent_mean)}, size=16
    )
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "megdecode-reconstruct-test",
            "http": {"port": free_port(), "num_cpus": 0.1},
            "decoder": {"model": str(tiny_bundle), "num_cpus": 0.2, "ingress_copy": "none"},
            "generator": {
                "weights": str(weights),
                "num_cpus": 0.2,
                "max_steps": 4,
                "default_steps": 2,
                "min_replicas": 1,
                "max_replicas": 1,
            },
        }
    )
    url = start(cfg, token="")
    yield url, weights
    serve.delete(cfg.app_name)


def test_served_png_equals_megdecode_reconstruct(
    served: tuple[str, Path], tiny_bundle: Path, tmp_path: Path
) -> None:
    url, generator = served
    card = requests.get(f"{url}/v1/model", timeout=30).json()
    assert card["prediction_stats"]["reference"] == "val" and card["prediction_stats"]["n"] > 1
    assert card["warnings"] == []
    subject, x = window(tiny_bundle, seed=7)
    body = tmp_path / "window.json"
    body.write_text(json.dumps({"subject": subject, "data": x.tolist()}))
    pngs = []
    for seed, steps in ((3, 2), (11, 3)):
        served_png = requests.post(
            f"{url}/v1/reconstruct",
            data=body.read_bytes(),
            timeout=120,
            headers={"content-type": "application/json"},
            params={"steps": steps, "seed": seed, "guidance": 2.5},
        )
        assert served_png.status_code == 200, served_png.text
        out = tmp_path / f"offline-{seed}.png"
        result = CliRunner().invoke(
            app,
            [
                "reconstruct",
                "--bundle",
                str(tiny_bundle),
                "--generator",
                str(generator),
                "--window",
                str(body),
                "--seed",
                str(seed),
                "--steps",
                str(steps),
                "--guidance",
                "2.5",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert "z-scored with the bundle's val statistics" in result.output
        assert out.read_bytes() == served_png.content
        pngs.append(served_png.content)
    assert pngs[0] != pngs[1]  # the comparison is not between two constant images
