"""The latents stage encodes never-shown distractors: the twin's own and a THINGS folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from megdecode.data import store as epoch_store
from megdecode.data.distractors import (
    DISTRACTOR_ID_BASE,
    DISTRACTOR_TABLE,
    distractor_id,
    is_distractor,
    scan_distractor_folder,
)
from megdecode.latents.cache import load_latents
from megdecode.latents.encoders.handcrafted import HandcraftedEncoder
from megdecode.latents.stage import build_latents


def _things_folder(root: Path) -> list[str]:
    """Extra images in the THINGS-images layout (<concept>/<file>), written by the test."""
    rng = np.random.default_rng(0)
    rel = ["aardvark/aardvark_13s.jpg", "aardvark/aardvark_14n.jpg", "zebra/zebra_15b.png"]
    for path in rel:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / path)
    (root / "README.txt").write_text("not an image: ignored")
    return rel


def test_the_twins_distractors_are_in_the_latent_table(tiny_run: Path) -> None:
    listed = pd.read_csv(tiny_run / "bids" / "stimuli" / DISTRACTOR_TABLE, sep="\t")
    ids, latents = load_latents(tiny_run / "latents" / "handcrafted.parquet")
    assert len(listed) > 0 and np.isin(listed["image_id"], ids).all()
    stored = epoch_store.load_metadata(tiny_run / "store")["image_id"].unique()
    assert np.isin(stored, ids).all() and not is_distractor(stored).any()
    extra = latents[np.isin(ids, listed["image_id"])]
    assert np.isfinite(extra).all() and len(np.unique(extra, axis=0)) == len(listed)


def test_a_things_folder_of_extra_images_joins_the_latents(tiny_run: Path, tmp_path: Path) -> None:
    rel = _things_folder(tmp_path / "extra")
    report = build_latents(
        tiny_run / "store",
        tiny_run / "bids",
        tmp_path / "latents",
        HandcraftedEncoder(),
        distractors=tmp_path / "extra",
    )
    n_twin = len(pd.read_csv(tiny_run / "bids" / "stimuli" / DISTRACTOR_TABLE, sep="\t"))
    assert report.n_distractors == n_twin + len(rel)
    ids, latents = load_latents(report.path)
    folder_ids = [distractor_id(p) for p in rel]
    assert np.isin(folder_ids, ids).all()
    stored = epoch_store.load_metadata(tiny_run / "store")["image_id"].unique()
    assert len(ids) == len(stored) + report.n_distractors  # no id taken twice
    mine = latents[np.searchsorted(ids, folder_ids)]
    expected = HandcraftedEncoder().encode([Image.open(tmp_path / "extra" / p) for p in rel])
    np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6)


def test_a_bad_distractor_folder_fails_clearly(tiny_run: Path, tmp_path: Path) -> None:
    def build(folder: Path) -> None:
        build_latents(
            tiny_run / "store",
            tiny_run / "bids",
            tmp_path / "latents",
            HandcraftedEncoder(),
            distractors=folder,
        )

    with pytest.raises(ValueError, match="does not exist"):
        build(tmp_path / "absent")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no image"):
        build(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cat_01.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cat_01.jpg is not a readable image"):
        build(tmp_path / "broken")
    assert not (tmp_path / "latents" / "handcrafted.parquet").exists()  # failed before encoding


def test_folder_ids_are_stable_distinct_and_above_every_real_id(tmp_path: Path) -> None:
    rel = _things_folder(tmp_path)
    table = scan_distractor_folder(tmp_path)
    assert sorted(table["image_path"]) == sorted(rel)
    assert table.set_index("image_path")["category"].to_dict() == {
        "aardvark/aardvark_13s.jpg": "aardvark",
        "aardvark/aardvark_14n.jpg": "aardvark",
        "zebra/zebra_15b.png": "zebra",
    }
    assert table["image_id"].is_unique and (table["image_id"] >= DISTRACTOR_ID_BASE).all()
    assert (table["image_id"] < 2**53).all()  # exact in JSON
    assert not table["shown"].any()
    assert distractor_id("zebra/zebra_15b.png") == distractor_id("zebra/zebra_15b.png")
    assert not is_distractor(np.array([-1, 1, 26_107, 10**9])).any()


def test_cli_latents_takes_a_distractor_folder(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from megdecode.cli import app

    rel = _things_folder(tmp_path / "extra")
    base = ["latents", "--store", str(tiny_run / "store"), "--bids", str(tiny_run / "bids")]
    ok = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "lat"), "--distractors", str(tmp_path / "extra")]
    )
    assert ok.exit_code == 0, ok.output + repr(ok.exception)
    ids, _ = load_latents(tmp_path / "lat" / "handcrafted.parquet")
    assert np.isin([distractor_id(p) for p in rel], ids).all()
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "lat2"), "--distractors", str(tmp_path / "empty")]
    )
    assert bad.exit_code != 0 and "holds no image" in str(bad.exception)
