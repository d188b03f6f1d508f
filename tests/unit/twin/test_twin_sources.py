"""Twin sources: tuning curves, waveforms, feature drives and stimulus-locked activity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from megdecode.twin import helmet
from megdecode.twin import sources as twin_sources
from megdecode.twin.config import TwinConfig


def test_tuning_curves() -> None:
    x = np.array([-2.0, 0.0, 0.5, 10.0])
    np.testing.assert_allclose(twin_sources.tuning(x, "linear", 1.5), x)
    np.testing.assert_allclose(twin_sources.tuning(x, "rectified", 1.5), [0, 0, 0.5, 10])
    sat = twin_sources.tuning(x, "saturating", 1.5)
    assert (
        sat[0] == 0
        and sat[2] == pytest.approx(0.5, rel=0.05)
        and sat[3] == pytest.approx(1.5, rel=1e-3)
    )
    with pytest.raises(ValueError, match="tuning"):
        twin_sources.tuning(x, "cubic", 1.0)


def test_waveform_peaks_at_its_latency() -> None:
    t = np.arange(0, 1, 0.001)
    wave = twin_sources.waveform(t, np.array([[0.2], [0.35]]), 0.03, 0.3)
    assert t[wave.argmax(1)] == pytest.approx([0.2, 0.35], abs=0.003)
    assert wave.min() < 0  # the rebound


def test_population_and_subject_sources_are_inside_the_head_and_tangential() -> None:
    cfg = TwinConfig.preset("tiny")
    pop = twin_sources.anatomy(cfg, 11, 16)
    subj = twin_sources.subject_sources(cfg, pop, np.random.default_rng(0))
    for g in twin_sources.GROUPS:
        rel = subj[g].rr - helmet.SPHERE_ORIGIN
        assert np.linalg.norm(rel, axis=1).max() <= twin_sources.MAX_SOURCE_RADIUS + 1e-9
        assert np.abs((rel * subj[g].nn).sum(1)).max() < 1e-9
        assert not np.allclose(subj[g].rr, pop[g].rr)
    assert pop["early"].rr[:, 1].mean() < pop["late"].rr[:, 1].mean() + 0.03  # occipital
    assert pop["late"].rr[:, 2].mean() < pop["early"].rr[:, 2].mean()  # ventral


def test_drive_follows_the_mixing_weights() -> None:
    cfg = TwinConfig.preset("tiny").replace(
        late_mix_low=0.0, late_mix_sem=1.0, tuning="linear", late_feature_gain=1.0
    )
    src = twin_sources.anatomy(cfg, 11, 16)["late"]
    rng = np.random.default_rng(0)
    low, sem = rng.standard_normal((50, 11)), rng.standard_normal((50, 16))
    base = twin_sources.image_drive(cfg, "late", src, low, sem)
    np.testing.assert_allclose(twin_sources.image_drive(cfg, "late", src, 0 * low, sem), base)
    assert not np.allclose(twin_sources.image_drive(cfg, "late", src, low, 0 * sem), base)


def test_source_activity_is_locked_to_onsets_and_configured_latencies() -> None:
    cfg = TwinConfig.preset("tiny").replace(
        sfreq=500.0,
        latency_jitter_s=0.0,
        source_latency_sd_s=0.0,
        amplitude_jitter=0.0,
        early_latency_s=0.1,
        late_latency_s=0.3,
        offset_latency_s=0.15,
    )
    pop = twin_sources.anatomy(cfg, 11, 16)
    trials = pd.DataFrame({"sample": [500, 1500], "image_index": [0, 1]})
    drives = {g: np.ones((2, cfg.n_sources_per_group)) for g in twin_sources.GROUPS}
    act = twin_sources.source_activity(cfg, pop, trials, drives, 2500, np.random.default_rng(0))
    n = cfg.n_sources_per_group
    for k, latency in enumerate([0.1, 0.3, 0.5 + 0.15]):
        peak = act[k * n : (k + 1) * n, 500:1400].mean(0).argmax() / cfg.sfreq
        assert peak == pytest.approx(latency, abs=0.004)
    assert np.all(act[:, :500] == 0)
