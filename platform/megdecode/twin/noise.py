"""Everything in the MEG twin that is not the stimulus response, in sensor units (T).

Literature-typical ingredients, each scaled by a config knob (0 switches it off):
- ongoing brain background with a 1/f^beta power spectrum (beta ~ 1; He et al. 2010),
  generated in source space by FFT and projected through the leadfield;
- posterior alpha (8-12 Hz) whose amplitude drops by `alpha_erd_depth` from ~200 ms to
  ~1 s after each onset (event-related desynchronisation; Pfurtscheller & Lopes da Silva 1999);
- white sensor noise (CTF systems: a few fT/sqrt(Hz));
- power-line noise at `line_freq` and harmonics, slow drifts (< 0.1 Hz);
- blinks (~300 ms frontal bumps at a Poisson rate) and cardiac QRS complexes;
- one broken channel (noisy or flat).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft

from megdecode.twin import helmet
from megdecode.twin.config import TwinConfig

logger = logging.getLogger(__name__)

FT = 1e-15
KNEE_HZ = 1.0  # the 1/f spectrum is flat below this, so the RMS stays finite


def rms(x: np.ndarray) -> float:
    """Root mean square of all entries (one BLAS pass, no temporaries)."""
    flat = np.ascontiguousarray(x).ravel()
    return float(np.linalg.norm(flat) / np.sqrt(max(flat.size, 1)))


def spectral_noise(
    n_series: int, n_samples: int, sfreq: float, amplitude_of_f, rng: np.random.Generator
) -> np.ndarray:
    """(n_series, n_samples) Gaussian noise with amplitude spectrum `amplitude_of_f(f)`,
    each series scaled to unit variance (random complex spectrum -> irfft)."""
    f = np.fft.rfftfreq(n_samples, 1.0 / sfreq)
    spec = np.empty((n_series, len(f)), dtype=np.complex64)
    spec.real = rng.standard_normal(spec.shape, dtype=np.float32)
    spec.imag = rng.standard_normal(spec.shape, dtype=np.float32)
    spec *= amplitude_of_f(f).astype(np.float32)[None]
    spec[:, 0] = 0.0
    x = scipy.fft.irfft(spec, n=n_samples, axis=1)  # float32 in, float32 out
    return x / (x.std(axis=1, keepdims=True) + 1e-30)


def background(
    cfg: TwinConfig, gain: np.ndarray, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Brain 1/f background at the sensors, RMS `background_ft`. gain: (C, n_bg)."""
    if cfg.background_ft <= 0:
        return np.zeros((gain.shape[0], n_samples))
    beta = cfg.background_exponent
    src = spectral_noise(
        gain.shape[1], n_samples, cfg.sfreq, lambda f: np.maximum(f, KNEE_HZ) ** (-beta / 2), rng
    )
    meg = gain.astype(np.float32) @ src  # float32: ~1e-7 relative error, half the memory
    meg *= np.float32(cfg.background_ft * FT / rms(meg))
    return meg


def erd_envelope(cfg: TwinConfig, samples: np.ndarray, n_samples: int) -> np.ndarray:
    """(n_samples,) alpha amplitude factor: 1 at rest, down to 1 - depth after onsets."""
    sf = cfg.sfreq
    n = max(int(cfg.alpha_erd_duration_s * sf), 2)
    bump = np.sin(np.pi * np.arange(n) / n) ** 2  # smooth dip and recovery
    dip = np.zeros(n_samples)
    for s in samples:
        a = s + int(cfg.alpha_erd_latency_s * sf)
        b = min(n_samples, a + n)
        if a < n_samples:
            dip[a:b] = np.maximum(dip[a:b], bump[: b - a])
    return 1.0 - cfg.alpha_erd_depth * dip


def alpha(
    cfg: TwinConfig,
    gain: np.ndarray,
    freq_hz: float,
    samples: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Posterior alpha at the sensors: narrow-band (sd 1 Hz) around `freq_hz`, RMS
    `alpha_ft` before desynchronisation. gain: (C, n_alpha)."""
    if cfg.alpha_ft <= 0:
        return np.zeros((gain.shape[0], n_samples))
    src = spectral_noise(
        gain.shape[1], n_samples, cfg.sfreq, lambda f: np.exp(-0.5 * (f - freq_hz) ** 2), rng
    )
    meg = gain.astype(np.float32) @ src
    meg *= np.float32(cfg.alpha_ft * FT / rms(meg))
    meg *= erd_envelope(cfg, samples, n_samples).astype(np.float32)[None]
    return meg


def sensor_noise(
    cfg: TwinConfig, n_channels: int, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """White noise with spectral density `sensor_noise_ft_sqrt_hz` up to Nyquist."""
    sd = cfg.sensor_noise_ft_sqrt_hz * np.sqrt(cfg.sfreq / 2) * FT
    return rng.standard_normal((n_channels, n_samples), dtype=np.float32) * np.float32(sd)


def line_and_drift(
    cfg: TwinConfig, n_channels: int, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Mains hum (fundamental + harmonics below Nyquist, 1/k amplitude, random phase per
    channel) and slow drifts (a few shared < 0.05 Hz waves and a trend, mixed per channel).

    Built as (C, K) weights @ (K, T) basis so that it costs one matrix product.
    """
    t = np.arange(n_samples) / cfg.sfreq
    basis, weights = [], []
    for k in (1, 2, 3):
        f = k * cfg.line_freq
        if cfg.line_noise_ft > 0 and f < cfg.sfreq / 2:
            amp = cfg.line_noise_ft * FT / k * rng.uniform(0.5, 1.5, n_channels)
            phase = rng.uniform(0, 2 * np.pi, n_channels)
            basis += [np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)]
            weights += [amp * np.cos(phase), amp * np.sin(phase)]
    if cfg.drift_ft > 0:
        n_waves = 4
        for _ in range(n_waves):
            f = rng.uniform(0.002, 0.05)
            basis.append(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)))
            weights.append(cfg.drift_ft * FT / np.sqrt(n_waves) * rng.standard_normal(n_channels))
        basis.append(t / max(t[-1], 1e-9) - 0.5)
        weights.append(cfg.drift_ft * FT * rng.standard_normal(n_channels))
    if not basis:
        return np.zeros((n_channels, n_samples))
    return np.stack(weights, axis=1).astype(np.float32) @ np.stack(basis).astype(np.float32)


def _topography(gain: np.ndarray) -> np.ndarray:
    topo = gain.sum(axis=1)
    return topo / np.abs(topo).max()


def _impulses(times_s: np.ndarray, weights: np.ndarray, sfreq: float, n_samples: int) -> np.ndarray:
    train = np.zeros(n_samples)
    idx = np.round(times_s * sfreq).astype(int)
    ok = (idx >= 0) & (idx < n_samples)
    np.add.at(train, idx[ok], weights[ok])
    return train


def artefacts(
    cfg: TwinConfig,
    blink_gain: np.ndarray,
    cardiac_gain: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict]:
    """Blinks and heartbeats at the sensors (C, T), and the blink onsets (s) for the truth.

    Each is an impulse train (random times/weights) convolved with a fixed shape and
    projected through a fixed topography (peak |topography| = 1 -> amplitude in fT).
    """
    sf = cfg.sfreq
    duration = n_samples / sf
    blinks = np.sort(rng.uniform(0, duration, rng.poisson(cfg.blink_rate_per_min * duration / 60)))
    tb = np.arange(int(0.4 * sf)) / sf
    blink_shape = (tb / 0.1) ** 2 * np.exp(2 - 2 * tb / 0.1)  # gamma-like bump, peak 1 at 100 ms
    blink_ts = np.convolve(
        _impulses(blinks, rng.uniform(0.7, 1.3, len(blinks)), sf, n_samples), blink_shape
    )[:n_samples]
    beats = np.arange(rng.uniform(0, 1), duration, 1.0 / cfg.heart_rate_hz)
    beats = beats + 0.03 * rng.standard_normal(len(beats))
    lead = int(0.1 * sf)  # the QRS shape starts 100 ms before the R peak
    tc = (np.arange(lead + int(0.5 * sf)) - lead) / sf
    qrs = -tc / 0.012 * np.exp(0.5 - 0.5 * (tc / 0.012) ** 2) + 0.3 * np.exp(
        -0.5 * ((tc - 0.25) / 0.05) ** 2
    )
    cardiac_ts = np.convolve(_impulses(beats, np.ones(len(beats)), sf, n_samples), qrs)[
        lead : lead + n_samples
    ]
    topo = np.c_[
        cfg.blink_ft * FT * _topography(blink_gain), cfg.cardiac_ft * FT * _topography(cardiac_gain)
    ]
    meg = topo.astype(np.float32) @ np.stack([blink_ts, cardiac_ts]).astype(np.float32)
    return meg, {"blinks_s": np.round(blinks, 4).tolist()}


def break_channel(
    cfg: TwinConfig, data: np.ndarray, ch_names: list[str], rng: np.random.Generator
) -> None:
    """In place: make `cfg.bad_channel` flat (zeros) or noisy (white noise + steps)."""
    if cfg.bad_channel_mode == "none":
        return
    if cfg.bad_channel not in ch_names:
        raise ValueError(f"bad_channel {cfg.bad_channel!r} is not one of the CTF channels")
    k = ch_names.index(cfg.bad_channel)
    if cfg.bad_channel_mode == "flat":
        data[k] = 0.0
    elif cfg.bad_channel_mode == "noisy":
        n = data.shape[1]
        steps = np.cumsum(rng.standard_normal(n) * (rng.uniform(size=n) < 0.5 / cfg.sfreq))
        data[k] += cfg.bad_channel_noise_ft * FT * (rng.standard_normal(n) + 3 * steps)
    else:
        raise ValueError(f"bad_channel_mode must be noisy|flat|none, got {cfg.bad_channel_mode!r}")


def nuisance_sources(cfg: TwinConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Positions/orientations (head frame) of the background, alpha, blink and cardiac dipoles.

    Eyes and heart are outside the brain; in the sphere model we place proxy dipoles just
    inside the inner skull under the frontal pole and the skull base: only their sensor
    topographies matter.
    """
    o, r = helmet.SPHERE_ORIGIN, helmet.HEAD_RADIUS
    n = cfg.n_background_sources
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    bg_rr = o + d * (0.8 * r * rng.uniform(0.3, 1.0, (n, 1)) ** (1 / 3))
    alpha_rr = o + 0.8 * r * np.array([[0.35, -0.8, 0.5], [-0.35, -0.8, 0.5]]) / np.linalg.norm(
        [0.35, -0.8, 0.5]
    )
    eye = np.array([0.35, 0.85, -0.4]) / np.linalg.norm([0.35, 0.85, -0.4])
    blink_rr = o + 0.82 * r * np.array([eye, eye * [-1, 1, 1]])
    cardiac_rr = o + 0.82 * r * np.array([[0.2, -0.3, -0.93]]) / np.linalg.norm([0.2, -0.3, -0.93])
    out = {"background": bg_rr, "alpha": alpha_rr, "blink": blink_rr, "cardiac": cardiac_rr}
    return {k: np.c_[v, helmet.tangential_orientations(v, rng)] for k, v in out.items()}
