"""Neural sources of the MEG twin: where they are, what they encode, when they fire.

Three source groups respond to every image (latencies and widths from the config):
- "early": occipital (V1/V2-like), peaks `early_latency_s` after onset, driven mostly by
  the image's low-level factors;
- "late": bilateral ventral temporal, peaks `late_latency_s` after onset, driven mostly by
  the category's semantic embedding;
- "offset": lateral occipito-parietal, peaks `offset_latency_s` after the image offset.
Each source's trial amplitude is gain * (1 + feature_gain * g(drive)), where drive is a
weighted mix (`<group>_mix_low`, `<group>_mix_sem`) of unit-variance random projections
of the features and g the rectifying/saturating tuning curve. Positions, orientations and
tuning weights are shared "anatomy" plus a subject-specific part; the per-trial latency
jitter and amplitude variability are drawn per trial and group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from megdecode.twin import helmet
from megdecode.twin.config import TwinConfig

logger = logging.getLogger(__name__)

GROUPS = ("early", "late", "offset")
MAX_SOURCE_RADIUS = 0.85 * helmet.HEAD_RADIUS  # keep sources well inside the inner skull


@dataclass
class GroupSources:
    """One source group of one subject. rr, nn: (n, 3) head frame, m; gain: (n,) relative;
    latency: (n,) s after onset (offset group: after image offset); w_low: (n, D_low);
    w_sem: (n, D_sem) tuning weights."""

    rr: np.ndarray
    nn: np.ndarray
    gain: np.ndarray
    latency: np.ndarray
    w_low: np.ndarray
    w_sem: np.ndarray

    def to_json(self) -> dict:
        return {k: np.round(v, 6).tolist() for k, v in vars(self).items()}


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def clip_radius(rr: np.ndarray, radius: float = MAX_SOURCE_RADIUS) -> np.ndarray:
    """Pull points (N, 3) back inside a ball of `radius` around the sphere origin."""
    rel = rr - helmet.SPHERE_ORIGIN
    norm = np.linalg.norm(rel, axis=1, keepdims=True)
    return helmet.SPHERE_ORIGIN + rel * np.minimum(1.0, radius / norm)


def bilateral(
    direction, radius: float, n: int, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """n points (N, 3) scattered (sd `spread`) around the two mirror-image (x -> -x) points
    at `radius` from the sphere origin along `direction`."""
    d = unit(direction)
    centres = np.array([d, d * [-1, 1, 1]]) * radius + helmet.SPHERE_ORIGIN
    rr = centres[np.arange(n) % 2] + spread * rng.standard_normal((n, 3))
    return clip_radius(rr)


def anatomy(cfg: TwinConfig, d_low: int, d_sem: int) -> dict[str, GroupSources]:
    """The population-level ("average subject") source groups, drawn from the config seed."""
    rng = np.random.default_rng([cfg.seed, 1_000_001])
    out = {}
    for g in GROUPS:
        n = cfg.n_sources_per_group
        rr = bilateral(
            getattr(cfg, f"{g}_direction"), cfg.source_radius_m, n, cfg.source_spread_m, rng
        )
        out[g] = GroupSources(
            rr=rr,
            nn=helmet.tangential_orientations(rr, rng),
            gain=np.ones(n),
            latency=getattr(cfg, f"{g}_latency_s")
            + cfg.source_latency_sd_s * rng.standard_normal(n),
            w_low=rng.standard_normal((n, d_low)),
            w_sem=rng.standard_normal((n, d_sem)),
        )
    return out


def subject_sources(
    cfg: TwinConfig, population: dict[str, GroupSources], rng: np.random.Generator
) -> dict[str, GroupSources]:
    """A subject's version of the population groups: moved, re-oriented, re-weighted."""
    out = {}
    m = cfg.subject_tuning_mix
    for g, pop in population.items():
        n = len(pop.rr)
        rr = clip_radius(pop.rr + cfg.subject_position_sd_m * rng.standard_normal((n, 3)))
        nn = pop.nn + 0.3 * helmet.tangential_orientations(rr, rng)
        radial = (rr - helmet.SPHERE_ORIGIN) / np.linalg.norm(
            rr - helmet.SPHERE_ORIGIN, axis=1, keepdims=True
        )
        nn = nn - (nn * radial).sum(1, keepdims=True) * radial
        out[g] = GroupSources(
            rr=rr,
            nn=nn / np.linalg.norm(nn, axis=1, keepdims=True),
            gain=np.exp(cfg.subject_gain_sd * rng.standard_normal(n)),
            latency=pop.latency + cfg.subject_latency_sd_s * rng.standard_normal(),
            w_low=np.sqrt(1 - m) * pop.w_low + np.sqrt(m) * rng.standard_normal(pop.w_low.shape),
            w_sem=np.sqrt(1 - m) * pop.w_sem + np.sqrt(m) * rng.standard_normal(pop.w_sem.shape),
        )
    return out


def tuning(drive: np.ndarray, kind: str, saturation: float) -> np.ndarray:
    """Source response to a unit-variance drive: linear, rectified, or rectified+saturating."""
    if kind == "linear":
        return drive
    if kind == "rectified":
        return np.maximum(drive, 0.0)
    if kind == "saturating":
        return saturation * np.tanh(np.maximum(drive, 0.0) / saturation)
    raise ValueError(f"tuning must be linear|rectified|saturating, got {kind!r}")


def image_drive(
    cfg: TwinConfig, group: str, src: GroupSources, low: np.ndarray, sem: np.ndarray
) -> np.ndarray:
    """(n_images, n_sources) tuned response amplitude factor 1 + feature_gain * g(drive).

    low: (n_images, D_low) unit-variance features; sem: (n_images, D_sem) unit-variance
    embeddings (zeros for catch images).
    """
    drive = getattr(cfg, f"{group}_mix_low") * low @ src.w_low.T / np.sqrt(low.shape[1]) + getattr(
        cfg, f"{group}_mix_sem"
    ) * sem @ src.w_sem.T / np.sqrt(sem.shape[1])
    return 1.0 + getattr(cfg, f"{group}_feature_gain") * tuning(
        drive, cfg.tuning, cfg.tuning_saturation
    )


def waveform(t: np.ndarray, latency: np.ndarray, width: float, rebound: float) -> np.ndarray:
    """Evoked component: Gaussian peak at `latency` plus a slower opposite-sign rebound.

    t: (T,) s; latency: (n, 1) or broadcastable; returns (n, T)."""
    main = np.exp(-0.5 * ((t - latency) / width) ** 2)
    # far enough (3 sd) and narrow enough (1.2 sd) not to move the main peak by > 1 ms
    late = np.exp(-0.5 * ((t - latency - 3.0 * width) / (1.2 * width)) ** 2)
    return main - rebound * late


def source_activity(
    cfg: TwinConfig,
    subject: dict[str, GroupSources],
    trials: pd.DataFrame,
    drives: dict[str, np.ndarray],
    n_samples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n_sources_total, n_samples) unit-scaled source time courses of one run, groups
    stacked in GROUPS order. trials needs `sample` and `image_index` (rows of `drives`)."""
    sf = cfg.sfreq
    widths = {g: getattr(cfg, f"{g}_width_s") for g in GROUPS}
    reach = (
        cfg.image_duration_s
        + cfg.offset_latency_s
        + 6 * max(widths.values())
        + 5 * cfg.latency_jitter_s
    )
    rel = np.arange(int(np.ceil(reach * sf))) / sf
    sizes = [len(subject[g].rr) for g in GROUPS]
    out = np.zeros((sum(sizes), n_samples))
    starts = np.cumsum([0] + sizes)
    for sample, img in zip(
        trials["sample"].to_numpy(), trials["image_index"].to_numpy(), strict=True
    ):
        stop = min(n_samples, sample + len(rel))
        for k, g in enumerate(GROUPS):
            src = subject[g]
            lat = src.latency + cfg.latency_jitter_s * rng.standard_normal()
            if g == "offset":
                lat = lat + cfg.image_duration_s
            amp = getattr(cfg, f"{g}_amp") * src.gain * drives[g][img]
            amp = amp * np.exp(cfg.amplitude_jitter * rng.standard_normal())
            wave = waveform(rel[: stop - sample], lat[:, None], widths[g], cfg.rebound)
            out[starts[k] : starts[k + 1], sample:stop] += amp[:, None] * wave
    return out


def response_window_mask(cfg: TwinConfig, samples: np.ndarray, n_samples: int) -> np.ndarray:
    """Boolean (n_samples,) mask of the stimulus-locked windows where the SNR is measured:
    onset .. image offset + offset latency + 2 offset widths."""
    span = cfg.image_duration_s + cfg.offset_latency_s + 2 * cfg.offset_width_s
    mask = np.zeros(n_samples, dtype=bool)
    for s in samples:
        mask[s : s + int(span * cfg.sfreq)] = True
    return mask
