"""Background and artefact generators of the twin: spectra, ERD, amplitudes, bad channel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch

from megdecode.twin import noise as twin_noise
from megdecode.twin.config import TwinConfig

SF = 200.0


def _cfg(**changes) -> TwinConfig:
    return TwinConfig.preset("tiny").replace(sfreq=SF, **changes)


def _band(x: np.ndarray, lo: float, hi: float) -> float:
    f, p = welch(x, fs=SF, nperseg=512, axis=-1)
    return float(p[..., (f >= lo) & (f < hi)].mean())


def test_background_is_one_over_f_at_the_requested_rms() -> None:
    rng = np.random.default_rng(0)
    gain = rng.standard_normal((20, 10))
    meg = twin_noise.background(_cfg(background_ft=300.0), gain, 40_000, rng)
    assert twin_noise.rms(meg) == pytest.approx(300e-15, rel=1e-3)
    ratio = _band(meg, 2, 4) / _band(meg, 20, 40)  # 1/f: ~10x more power per Hz at 10x lower f
    assert 5 < ratio < 20


def test_alpha_peaks_near_its_frequency_and_desynchronises_after_onsets() -> None:
    rng = np.random.default_rng(1)
    onsets = np.arange(200, 39_000, 300)
    meg = twin_noise.alpha(
        _cfg(alpha_erd_depth=0.8), rng.standard_normal((5, 2)), 10.0, onsets, 40_000, rng
    )
    assert _band(meg, 9, 11) > 20 * _band(meg, 20, 30)
    env = twin_noise.erd_envelope(_cfg(alpha_erd_depth=0.8), onsets, 40_000)
    assert env.max() == pytest.approx(1.0) and env.min() == pytest.approx(0.2, abs=0.01)
    assert env[onsets[3] - 10] == pytest.approx(1.0) and env[onsets[3] + 120] < 0.3


def test_line_noise_and_drift_land_where_expected() -> None:
    rng = np.random.default_rng(2)
    meg = twin_noise.line_and_drift(_cfg(line_noise_ft=100.0, drift_ft=0.0), 4, 20_000, rng)
    assert _band(meg, 59, 61) > 1e4 * _band(meg, 30, 50)
    drift = twin_noise.line_and_drift(_cfg(line_noise_ft=0.0, drift_ft=1000.0), 4, 20_000, rng)
    assert _band(drift, 0, 0.5) > 1e4 * _band(drift, 5, 50)
    silent = twin_noise.line_and_drift(_cfg(line_noise_ft=0.0, drift_ft=0.0), 4, 100, rng)
    assert not silent.any()


def test_artefacts_follow_their_rates_and_topographies() -> None:
    rng = np.random.default_rng(3)
    n = int(120 * SF)  # two minutes
    blink_gain, cardiac_gain = rng.standard_normal((30, 2)), rng.standard_normal((30, 1))
    meg, truth = twin_noise.artefacts(
        _cfg(blink_rate_per_min=10.0, cardiac_ft=0.0), blink_gain, cardiac_gain, n, rng
    )
    assert 8 <= len(truth["blinks_s"]) <= 35
    assert 0.7 * 1500e-15 <= np.abs(meg).max() <= 2 * 1.3 * 1500e-15  # overlapping blinks add
    topo = blink_gain.sum(1)
    corr = np.corrcoef(meg[:, np.abs(meg).max(0).argmax()], topo)[0, 1]
    assert abs(corr) > 0.99
    none, _ = twin_noise.artefacts(
        _cfg(blink_ft=0.0, cardiac_ft=0.0), blink_gain, cardiac_gain, n, rng
    )
    assert not none.any()


@pytest.mark.parametrize("mode", ["noisy", "flat", "none"])
def test_break_channel_modes(mode: str) -> None:
    names = ["MLC11-1609", "MRO11-1609", "MZC01-1609"]
    data = np.full((3, 1000), 1e-13)
    twin_noise.break_channel(_cfg(bad_channel_mode=mode), data, names, np.random.default_rng(0))
    if mode == "flat":
        assert not data[1].any()
    elif mode == "noisy":
        assert data[1].std() > 100 * data[0].std() + 1e-13
    else:
        assert np.all(data == 1e-13)
