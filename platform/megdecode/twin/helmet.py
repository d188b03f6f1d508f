"""Real CTF-275 sensor geometry and a sphere-model forward for the MEG twin.

No recording ships with the mne package, but two pieces of the CTF-275 system do:
- ``mne/channels/data/layouts/CTF-275.lout`` (via ``mne.channels.read_layout("CTF-275")``):
  the 2-D topographic layout of all 275 axial gradiometers with their CTF names
  ("MLC11-2622"; the suffix is the system serial, THINGS-MEG's is "-1609");
- ``mne/data/helmets/CTF_275.fif.gz``: the 342-vertex surface of the CTF-275 dewar
  helmet in MNE's (Neuromag-like, RAS) device frame: x right, y front, z up.
We lift each layout position onto the helmet: layout radius/azimuth become a polar
angle/azimuth around the helmet's best-fit sphere centre (scaled per azimuth so that the
layout's outer ring lands just above the helmet rim), and a ray along that direction is
intersected with the helmet mesh. The hit point is the lower coil of a CTF axial
gradiometer (``FIFFV_COIL_CTF_GRAD``, 50 mm baseline) whose axis is the outward mesh normal.
This is an approximation of the real coil positions (errors of ~1 cm), which is all the
twin needs: a real channel set, a real helmet and a physically computed leadfield.

THINGS-MEG has 272 of the 275 channels: MLF25, MRF43 and MRO13 are absent from its
recordings (channel list of the public THINGS-MEG analysis code), so we drop them too.

Forward: ``mne.make_sphere_model`` (origin `SPHERE_ORIGIN`, radius `HEAD_RADIUS`, head
frame) + ``mne.make_forward_solution`` on a discrete source space
(``mne.setup_volume_source_space(pos=dict(rr=..., nn=...))``), projected onto each
source's orientation. Radial dipoles are silent in a sphere, so callers use tangential
orientations (`tangential_orientations`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np
from mne.io.constants import FIFF

logger = logging.getLogger(__name__)

SYSTEM_SUFFIX = "-1609"
MISSING_IN_THINGS = ("MLF25", "MRF43", "MRO13")
STIM_CHANNEL = "UPPT001"
SPHERE_ORIGIN = np.array([0.0, 0.0, 0.04])  # head frame, m (MNE's default sphere origin)
HEAD_RADIUS = 0.08  # m; sources stay inside 0.9 * HEAD_RADIUS (the sphere's inner skull)
RIM_MARGIN_DEG = 8.0  # outermost sensors sit this far above the helmet rim


@dataclass(frozen=True)
class SensorGeometry:
    """272 CTF axial gradiometers in the device frame.

    ch_names: THINGS names ("MLC11-1609"); pos: (C, 3) lower-coil positions, m;
    normals: (C, 3) outward unit axes; pos2d: (C, 2) layout positions in [0, 1];
    helmet_center: (3,) best-fit sphere centre of the helmet surface, device frame, m;
    head_center: (3,) best-fit sphere centre of the sensor array, device frame, m: where
    the twin's spherical head sits (1.1-5 cm below the sensors, like a real head).
    """

    ch_names: tuple[str, ...]
    pos: np.ndarray
    normals: np.ndarray
    pos2d: np.ndarray
    helmet_center: np.ndarray
    head_center: np.ndarray


def _helmet_surface() -> dict:
    path = Path(mne.__file__).parent / "data" / "helmets" / "CTF_275.fif.gz"
    if not path.exists():
        raise FileNotFoundError(f"CTF helmet surface not shipped by mne: {path}")
    return mne.bem.read_bem_surfaces(path, verbose="error")[0]


def _fit_sphere(points: np.ndarray) -> np.ndarray:
    """Least-squares sphere centre: |p|^2 = 2 p.c + (r^2 - |c|^2) is linear in c."""
    a = np.c_[2 * points, np.ones(len(points))]
    sol, *_ = np.linalg.lstsq(a, (points**2).sum(1), rcond=None)
    return sol[:3]


def _ray_mesh(origin: np.ndarray, dirs: np.ndarray, rr: np.ndarray, tris: np.ndarray):
    """First hit of each ray (origin + t*dir, t > 0) with a triangle mesh (Moller-Trumbore).

    Returns hit points (R, 3) and the hit triangle index (R,); raises if a ray misses.
    """
    v0, v1, v2 = rr[tris[:, 0]], rr[tris[:, 1]], rr[tris[:, 2]]
    e1, e2 = v1 - v0, v2 - v0  # (T, 3)
    p = np.cross(dirs[:, None, :], e2[None])  # (R, T, 3)
    det = (p * e1[None]).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        s = origin - v0  # (T, 3)
        u = (p * s[None]).sum(-1) * inv
        q = np.cross(s, e1)  # (T, 3)
        v = (dirs @ q.T) * inv
        t = (e2 * q).sum(-1)[None] * inv
    ok = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    t = np.where(ok, t, np.inf)
    best = t.argmin(1)
    tbest = t[np.arange(len(dirs)), best]
    if not np.isfinite(tbest).all():
        raise RuntimeError(f"{int((~np.isfinite(tbest)).sum())} sensor rays missed the helmet")
    return origin + dirs * tbest[:, None], best


def _azimuth_profile(phi: np.ndarray, value: np.ndarray, n_bins: int = 24) -> np.ndarray:
    """Max of `value` per azimuth bin, circularly interpolated: (n_bins,) bin maxima."""
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    idx = np.clip(np.digitize(phi, edges) - 1, 0, n_bins - 1)
    out = np.full(n_bins, np.nan)
    for b in range(n_bins):
        if (idx == b).any():
            out[b] = value[idx == b].max()
    good = np.isfinite(out)
    centres = (edges[:-1] + edges[1:]) / 2
    return np.interp(centres, centres[good], out[good], period=2 * np.pi)


def _interp_profile(profile: np.ndarray, phi: np.ndarray) -> np.ndarray:
    n = len(profile)
    centres = -np.pi + (np.arange(n) + 0.5) * 2 * np.pi / n
    return np.interp(phi, centres, profile, period=2 * np.pi)


@functools.lru_cache(maxsize=1)
def ctf272_geometry() -> SensorGeometry:
    """The 272 THINGS-MEG channels placed on the CTF-275 helmet (see module docstring)."""
    layout = mne.channels.read_layout("CTF-275")
    base = [n.split("-")[0] for n in layout.names]
    keep = [i for i, b in enumerate(base) if b not in MISSING_IN_THINGS]
    names = tuple(base[i] + SYSTEM_SUFFIX for i in keep)
    xy = layout.pos[keep, :2] + layout.pos[keep, 2:4] / 2  # box centres
    pos2d = (xy - xy.min(0)) / (xy.max(0) - xy.min(0))
    uv = pos2d - (pos2d.min(0) + pos2d.max(0)) / 2  # u right, v front
    rho, phi = np.hypot(uv[:, 0], uv[:, 1]), np.arctan2(uv[:, 1], uv[:, 0])

    helmet = _helmet_surface()
    rr, tris = helmet["rr"], helmet["tris"]
    upper = rr[rr[:, 2] > np.percentile(rr[:, 2], 40)]
    centre = _fit_sphere(upper)
    rel = rr - centre
    theta_v = np.arccos(np.clip(rel[:, 2] / np.linalg.norm(rel, axis=1), -1, 1))
    phi_v = np.arctan2(rel[:, 1], rel[:, 0])
    rim = _azimuth_profile(phi_v, theta_v)  # polar angle of the helmet edge per azimuth
    rim = np.minimum(rim, np.minimum(np.roll(rim, 1), np.roll(rim, -1)))  # stay inside the edge
    outer = _azimuth_profile(phi, rho)  # layout's outer ring per azimuth
    theta = (
        rho / _interp_profile(outer, phi) * (_interp_profile(rim, phi) - np.deg2rad(RIM_MARGIN_DEG))
    )
    dirs = np.c_[np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)]
    pos, tri = _ray_mesh(centre, dirs, rr, tris)
    v0, v1, v2 = rr[tris[tri, 0]], rr[tris[tri, 1]], rr[tris[tri, 2]]
    normals = np.cross(v1 - v0, v2 - v0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    normals *= np.sign((normals * dirs).sum(1, keepdims=True))  # outward
    logger.debug("placed %d CTF sensors on the helmet (centre %s)", len(names), centre)
    return SensorGeometry(names, pos, normals, pos2d, centre, _fit_sphere(pos))


def _coil_frame(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing `normal` into a right-handed frame."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    ex = np.cross(helper, normal)
    ex /= np.linalg.norm(ex)
    return ex, np.cross(normal, ex)


def make_info(
    geom: SensorGeometry,
    sfreq: float,
    dev_head_t: mne.transforms.Transform,
    line_freq: float = 60.0,
) -> mne.Info:
    """Info with the 272 CTF gradiometers (type "mag", as read_raw_ctf gives) + UPPT001 stim."""
    names = list(geom.ch_names) + [STIM_CHANNEL]
    info = mne.create_info(names, sfreq, ["mag"] * len(geom.ch_names) + ["stim"])
    with info._unlock():
        for ch, r0, ez in zip(info["chs"], geom.pos, geom.normals, strict=False):
            ex, ey = _coil_frame(ez)
            ch["loc"] = np.r_[r0, ex, ey, ez]
            ch["coil_type"] = FIFF.FIFFV_COIL_CTF_GRAD
            ch["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
        info["dev_head_t"] = dev_head_t
        info["line_freq"] = line_freq
    return info


def head_transform(
    geom: SensorGeometry, shift_m: np.ndarray, rot_rad: np.ndarray
) -> mne.transforms.Transform:
    """Device -> head transform putting the sphere origin at the sensor array's centre,
    then moving the head by `rot_rad` (3 Euler angles about that origin) and `shift_m` (3,, m).

    head = R (dev - head_center) + SPHERE_ORIGIN + shift.
    """
    rot = mne.transforms.rotation3d(*rot_rad)
    trans = np.eye(4)
    trans[:3, :3] = rot
    trans[:3, 3] = SPHERE_ORIGIN + np.asarray(shift_m) - rot @ geom.head_center
    return mne.transforms.Transform("meg", "head", trans)


def tangential_orientations(rr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random unit orientations (N, 3) orthogonal to the radius from SPHERE_ORIGIN."""
    radial = rr - SPHERE_ORIGIN
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    raw = rng.standard_normal(rr.shape)
    nn = raw - (raw * radial).sum(1, keepdims=True) * radial
    return nn / np.linalg.norm(nn, axis=1, keepdims=True)


def leadfield(info: mne.Info, rr: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """Gain (C_meg, N) in T per A.m for dipoles at `rr` (N, 3, head frame, m) along `nn`."""
    if np.linalg.norm(rr - SPHERE_ORIGIN, axis=1).max() >= 0.9 * HEAD_RADIUS:
        raise ValueError("a source lies outside the inner skull sphere of the twin head model")
    sphere = mne.make_sphere_model(r0=SPHERE_ORIGIN, head_radius=HEAD_RADIUS, verbose="error")
    src = mne.setup_volume_source_space(
        pos=dict(rr=rr, nn=nn), sphere=sphere, mindist=0.0, verbose="error"
    )
    meg_info = mne.pick_info(info, mne.pick_types(info, meg=True))
    fwd = mne.make_forward_solution(
        meg_info, trans=None, src=src, bem=sphere, meg=True, eeg=False, verbose="error"
    )
    gain = fwd["sol"]["data"].reshape(len(meg_info["ch_names"]), -1, 3)  # (C, N, xyz)
    if gain.shape[1] != len(rr):
        raise RuntimeError(f"forward kept {gain.shape[1]} of {len(rr)} sources")
    return np.einsum("cnk,nk->cn", gain, nn)
