"""CTF-275 geometry from the files mne ships, and the sphere-model forward on it."""

from __future__ import annotations

import re
from pathlib import Path

import mne
import numpy as np
import pytest
from mne.io.constants import FIFF
from scipy.spatial import cKDTree

from megdecode.twin import helmet


@pytest.fixture(scope="module")
def geom() -> helmet.SensorGeometry:
    return helmet.ctf272_geometry()


@pytest.fixture(scope="module")
def info(geom: helmet.SensorGeometry) -> mne.Info:
    return helmet.make_info(geom, 300.0, helmet.head_transform(geom, np.zeros(3), np.zeros(3)))


def _group(geom: helmet.SensorGeometry, prefixes: tuple[str, ...]) -> np.ndarray:
    return np.array([name.startswith(prefixes) for name in geom.ch_names])


def test_272_things_channel_names(geom: helmet.SensorGeometry) -> None:
    assert len(geom.ch_names) == 272 and len(set(geom.ch_names)) == 272
    assert all(re.fullmatch(r"M[LRZ][CFOPT]\d\d-1609", n) for n in geom.ch_names)
    assert "MRO11-1609" in geom.ch_names and "MLC11-1609" in geom.ch_names
    assert not {f"{m}-1609" for m in helmet.MISSING_IN_THINGS} & set(geom.ch_names)


def test_sensors_sit_on_the_ctf_helmet_surface(geom: helmet.SensorGeometry) -> None:
    helmet = mne.bem.read_bem_surfaces(
        Path(mne.__file__).parent / "data" / "helmets" / "CTF_275.fif.gz", verbose="error"
    )[0]
    rr, tris = helmet["rr"], helmet["tris"]
    # densely sample every triangle, then ask for the nearest surface point of each sensor
    w = np.array(
        [(a, b) for a in np.linspace(0, 1, 25) for b in np.linspace(0, 1, 25) if a + b <= 1]
    )
    v0, v1, v2 = rr[tris[:, 0]], rr[tris[:, 1]], rr[tris[:, 2]]
    pts = v0[:, None] + w[None, :, :1] * (v1 - v0)[:, None] + w[None, :, 1:] * (v2 - v0)[:, None]
    dist, _ = cKDTree(pts.reshape(-1, 3)).query(geom.pos)
    assert dist.max() < 0.002
    outward = ((geom.pos - geom.helmet_center) * geom.normals).sum(1)
    assert np.all(outward > 0)
    np.testing.assert_allclose(np.linalg.norm(geom.normals, axis=1), 1.0)


def test_sensor_regions_are_anatomically_placed(geom: helmet.SensorGeometry) -> None:
    y_front = geom.pos[_group(geom, ("MLF", "MRF", "MZF")), 1].mean()
    y_back = geom.pos[_group(geom, ("MLO", "MRO", "MZO")), 1].mean()
    assert y_front - y_back > 0.1  # device frame: y points to the nose
    assert geom.pos[_group(geom, ("ML",)), 0].mean() < -0.03
    assert geom.pos[_group(geom, ("MR",)), 0].mean() > 0.03
    assert (
        geom.pos[_group(geom, ("MZC",)), 2].mean()
        > geom.pos[_group(geom, ("MLT", "MRT")), 2].mean()
    )
    assert geom.pos2d.min() >= 0 and geom.pos2d.max() <= 1


def test_info_has_ctf_gradiometers_and_the_stim_channel(info: mne.Info) -> None:
    assert len(info["ch_names"]) == 273 and info["ch_names"][-1] == helmet.STIM_CHANNEL
    meg = mne.pick_types(info, meg=True)
    assert len(meg) == 272
    assert {info["chs"][i]["coil_type"] for i in meg} == {FIFF.FIFFV_COIL_CTF_GRAD}
    assert mne.channel_type(info, 272) == "stim"
    assert info["line_freq"] == 60.0


def test_forward_is_physical(geom: helmet.SensorGeometry, info: mne.Info) -> None:
    direction = np.array([0.0, -1.0, 0.15]) / np.linalg.norm([0.0, -1.0, 0.15])
    rr = helmet.SPHERE_ORIGIN + 0.06 * direction[None]  # occipital
    tangential = helmet.tangential_orientations(rr, np.random.default_rng(0))
    gain = helmet.leadfield(info, np.r_[rr, rr], np.r_[tangential, direction[None]])
    assert gain.shape == (272, 2)
    peak_ft = np.abs(gain[:, 0]).max() * 10e-9 * 1e15  # 10 nAm
    assert 20 < peak_ft < 2000
    assert np.abs(gain[:, 1]).max() < 1e-3 * np.abs(gain[:, 0]).max()  # radial: silent
    top = [geom.ch_names[i] for i in np.argsort(np.abs(gain[:, 0]))[-10:]]
    assert all(name[2] in "OP" for name in top), top


def test_head_movement_changes_the_forward(geom: helmet.SensorGeometry, info: mne.Info) -> None:
    rr = helmet.SPHERE_ORIGIN + np.array([[0.03, -0.04, 0.02]])
    nn = helmet.tangential_orientations(rr, np.random.default_rng(1))
    moved = helmet.make_info(
        geom,
        300.0,
        helmet.head_transform(geom, np.array([0.004, 0.0, 0.0]), np.deg2rad([2.0, 0.0, 0.0])),
    )
    a, b = helmet.leadfield(info, rr, nn), helmet.leadfield(moved, rr, nn)
    change = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0.01 < change < 0.8


def test_sources_outside_the_head_are_refused(info: mne.Info) -> None:
    rr = helmet.SPHERE_ORIGIN + np.array([[0.0, 0.0, 0.079]])
    with pytest.raises(ValueError, match="inner skull"):
        helmet.leadfield(info, rr, np.array([[1.0, 0.0, 0.0]]))
