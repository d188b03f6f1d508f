"""`load_generator`: the folder's files choose the pipeline; a folder without weights says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from megdecode.generate import build_tiny_generator
from megdecode.generate.loader import generator_kind, load_generator
from megdecode.generate.pipeline import LatentGenerator
from megdecode.generate.tiny_vd import build_tiny_vd
from megdecode.generate.versatile import VersatileGenerator


@pytest.fixture(scope="module")
def vd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vd(tmp_path_factory.mktemp("vd") / "vd")


def test_the_folder_picks_the_pipeline(vd_dir: Path, tmp_path: Path) -> None:
    twin = build_tiny_generator(tmp_path / "twin", {"handcrafted": 5}, size=16)
    assert generator_kind(vd_dir) == "versatile" and generator_kind(twin) == "twin"
    assert isinstance(load_generator(vd_dir), VersatileGenerator)
    assert isinstance(load_generator(twin), LatentGenerator)


def test_a_folder_without_weights_names_what_was_expected(vd_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError,
        match=r"no weights at .*absent \(no such folder\).*model_index.json.*generator.json",
    ):
        load_generator(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no weights at .*empty \(empty folder\)"):
        load_generator(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("not weights")
    with pytest.raises(FileNotFoundError, match="no weights at .*other: expected a Versatile"):
        load_generator(tmp_path / "other")
    no_vae = shutil.copytree(vd_dir, tmp_path / "no_vae")
    shutil.rmtree(no_vae / "vae")
    with pytest.raises(FileNotFoundError, match="no weights at .*no_vae.*missing vae/config.json"):
        load_generator(no_vae)
    no_null = shutil.copytree(vd_dir, tmp_path / "no_null")
    (no_null / "null_embeddings.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="null_embeddings.safetensors or the CLIP encoders"):
        load_generator(no_null)


def test_the_generator_deployment_serves_a_vd_folder(vd_dir: Path) -> None:
    """The Serve replica's own code (no Ray needed to call it) renders PNGs from VD."""
    from megdecode.serve.generator import Generator

    replica = Generator.func_or_class({"weights": str(vd_dir), "num_gpus": 0.0})
    assert replica.info()["ready"], replica.info()["error"]
    conditions = replica.info()["conditions"]
    rng = np.random.default_rng(0)
    latents = {k: rng.normal(size=(1, f)).astype(np.float32) for k, f in conditions.items()}
    out = replica._generate(latents, 2, 3.0, 0)
    assert out["png"][0][:8] == b"\x89PNG\r\n\x1a\n"


def test_the_evaluation_actor_generates_from_a_vd_folder(vd_dir: Path) -> None:
    """`megdecode evaluate --generate --generator DIR` generates through the same loader."""
    from megdecode.generate.evaluation.ray_generate import _GenerateActor
    from megdecode.generate.loader import load_generator

    conditions = load_generator(vd_dir, device="cpu").conditions
    parts = [(k, int(f)) for k, f in conditions.items()]
    width = sum(f for _, f in parts)
    rng = np.random.default_rng(1)
    batch = {
        "row": np.arange(2),
        "seed": np.array([5, 6]),
        "latent": rng.normal(size=(2, width)).astype(np.float32),
    }
    actor = _GenerateActor(str(vd_dir), parts, {"steps": 2, "guidance_scale": 3.0})
    first = actor(batch)["image"]
    assert first.shape[0] == 2 and first.dtype == np.uint8
    assert np.array_equal(first, actor(batch)["image"])  # deterministic for the seeds
