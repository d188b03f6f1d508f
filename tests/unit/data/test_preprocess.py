"""The paper preprocessing: pure helpers on hand-written arrays, then `preprocess_run` on
MNE RawArrays with real CTF-275 sensor geometry and signals placed at known onsets."""

from __future__ import annotations

import json

import mne
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.preprocessing import RobustScaler as SkRobustScaler

from megdecode.config import ConfigError
from megdecode.data.bids import Recording, RunKey
from megdecode.data.meg_info import sensor_positions
from megdecode.data.preprocess import (
    METADATA_COLUMNS,
    PreprocessConfig,
    preprocess_run,
)
from megdecode.data.scaling import (
    RobustScaler,
    apply_scaler,
    fit_robust_scaler,
    fit_scaler,
    robust_scale,
)
from megdecode.data.signal import baseline_correct, cut_epochs, resample_ratio
from megdecode.data.splits import SplitConfig, assign_splits, split_mask

KEY = RunKey("BIGMEG1", "02", "03")
CHANNELS = ("MLC11", "MLC12", "MRC11", "MRO11", "MZO01", "MLT11", "MRT11")  # MRO11 is excluded
NO_FILTER = {"l_freq": None, "h_freq": None}


def ctf_info(sfreq: float, bases: tuple[str, ...] = CHANNELS, extra: bool = True) -> mne.Info:
    """CTF axial gradiometers with THINGS names and canonical CTF-275 geometry,
    plus (extra) a stim, a reference and an EEG channel that picks must drop."""
    canon = {
        ch["ch_name"].split("-")[0]: ch
        for ch in mne.channels.read_meg_canonical_info("ctf275")["chs"]
    }
    names = [b + "-1609" for b in bases]
    types = ["mag"] * len(names)
    if extra:
        names += ["UPPT001", "BG1-1609", "EEG057"]
        types += ["stim", "ref_meg", "eeg"]
    info = mne.create_info(names, sfreq, types)
    for ch in info["chs"][: len(bases)]:
        src = canon[ch["ch_name"].split("-")[0]]
        ch["loc"][:] = src["loc"]
        ch["coil_type"] = src["coil_type"]
    return info


def events_table(onsets: np.ndarray, sfreq: float, catch: tuple[int, ...] = ()) -> pd.DataFrame:
    n = len(onsets)
    trial_type = np.array(["catch" if i in catch else "exp" for i in range(n)])
    return pd.DataFrame(
        {
            "trial_index": np.arange(n, dtype=np.int64),
            "onset": onsets / sfreq,
            "sample": np.asarray(onsets, dtype=np.int64),
            "duration": 0.5,
            "trial_type": trial_type,
            "image_id": np.where(trial_type == "catch", -1, 100 + np.arange(n)),
            "category_id": np.arange(n) % 3,
            "category": [f"cat{i % 3}" for i in range(n)],
            "image_path": [f"images_meg/cat{i % 3}/cat{i % 3}_{i:02d}.png" for i in range(n)],
        }
    )


def recording(
    sfreq: float, seconds: float, onsets_s: np.ndarray, signal, catch=(), info=None
) -> Recording:
    """Every MEG channel carries signal(t) (t: (S,) seconds) times a channel gain."""
    info = info or ctf_info(sfreq)
    times = np.arange(int(seconds * sfreq)) / sfreq
    data = np.zeros((info["nchan"], len(times)))
    meg = mne.pick_types(info, meg=True, ref_meg=False)
    data[meg] = signal(times)[None] * np.linspace(1.0, 2.0, len(meg))[:, None]
    # onsets deliberately off the 120 Hz grid: +0..6 native samples
    onsets = np.round(np.asarray(onsets_s) * sfreq).astype(np.int64) + np.arange(len(onsets_s)) % 7
    return Recording(
        KEY, mne.io.RawArray(data, info, verbose=False), events_table(onsets, sfreq, catch)
    )


ONSETS = np.arange(2.0, 26.0, 1.5)


# ------------------------------------------------------------------ pure helpers


def test_cut_epochs_on_a_hand_written_array() -> None:
    data = np.arange(20.0).reshape(2, 10)
    assert_allclose(
        cut_epochs(data, np.array([2, 5]), 1, 2),
        [[[1, 2, 3, 4], [11, 12, 13, 14]], [[4, 5, 6, 7], [14, 15, 16, 17]]],
    )
    with pytest.raises(ValueError, match="outside"):
        cut_epochs(data, np.array([8]), 1, 2)


def test_baseline_correct_subtracts_the_window_mean() -> None:
    x = np.array([[[1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 6.0, 6.0]]])
    times = np.array([-0.2, -0.1, 0.0, 0.1])
    assert_allclose(baseline_correct(x, times, (-0.2, 0.0)), [[[-1, 0, 1, 8], [-2, -2, 4, 4]]])
    assert_allclose(baseline_correct(x, times, (-0.2, -0.2)), [[[0, 1, 2, 9], [0, 0, 6, 6]]])
    with pytest.raises(ValueError, match="baseline window"):
        baseline_correct(x, times, (0.3, 0.4))


def test_robust_scale_and_clip_by_hand() -> None:
    x = np.array([[[1.0, 3.0, 9.0], [10.0, 20.0, 0.0]]])
    out = robust_scale(x, np.array([1.0, 10.0]), np.array([2.0, 5.0]), clip=1.5)
    assert_allclose(out, [[[0.0, 1.0, 1.5], [0.0, 1.5, -1.5]]])
    assert_allclose(robust_scale(x, np.zeros(2), np.ones(2), clip=None), x)


def test_fit_robust_scaler_median_and_iqr_by_hand() -> None:
    x = np.stack([np.arange(9.0), 5.0 * np.ones(9)])[None]  # (1, 2, 9); channel 1 is flat
    scaler = fit_robust_scaler(x)
    assert_allclose(scaler.center, [4.0, 5.0])
    assert_allclose(scaler.scale, [4.0, 1.0])  # IQR 6 - 2; flat channel -> 1, not 0


def test_fit_robust_scaler_matches_sklearn_per_channel() -> None:
    x = np.random.default_rng(0).standard_t(3, size=(6, 4, 11)) * [[[1.0], [3.0], [0.1], [10.0]]]
    ours = fit_robust_scaler(x, quantile_range=(10.0, 90.0))
    ref = SkRobustScaler(quantile_range=(10.0, 90.0)).fit(x.transpose(0, 2, 1).reshape(-1, 4))
    assert_allclose(ours.center, ref.center_)
    assert_allclose(ours.scale, ref.scale_)
    expected = (
        ref.transform(x.transpose(0, 2, 1).reshape(-1, 4)).reshape(6, 11, 4).transpose(0, 2, 1)
    )
    assert_allclose(apply_scaler(x, ours, clip=None), expected, rtol=1e-5, atol=1e-6)


def test_apply_scaler_clips_to_float32() -> None:
    x = np.random.default_rng(1).standard_normal((5, 3, 7))
    x[0, 1, 2] = 1e6
    scaler = fit_robust_scaler(x)
    out = apply_scaler(x, scaler, clip=2.0)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert out.max() == pytest.approx(2.0) and out.min() >= -2.0
    assert out[0, 1, 2] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="channels"):
        apply_scaler(x[:, :2], scaler, clip=2.0)


def test_apply_scaler_is_robust_scale_in_float32_across_chunks() -> None:
    """Bit for bit the float32 `robust_scale` (and so the plain numpy expression), over
    more epochs than one in-place chunk."""
    x = np.random.default_rng(3).standard_normal((600, 3, 5)) * 3.0
    scaler = fit_robust_scaler(x[:400])
    center, scale = scaler.center.astype(np.float32), scaler.scale.astype(np.float32)
    plain = (x.astype(np.float32) - center[None, :, None]) / scale[None, :, None]
    for clip, expected in ((None, plain), (2.5, np.clip(plain, -2.5, 2.5))):
        assert np.array_equal(robust_scale(x.astype(np.float32), center, scale, clip), expected)
        assert np.array_equal(apply_scaler(x, scaler, clip), expected)
    # float64 samples with float32 statistics (the serving stream): computed in float64
    wide = robust_scale(x, center, scale, None)
    assert wide.dtype == np.float64 and np.array_equal(
        wide, (x - center[None, :, None]) / scale[None, :, None]
    )


def test_scaler_dict_survives_json() -> None:
    scaler = fit_robust_scaler(np.random.default_rng(2).standard_normal((3, 4, 5)), (20.0, 80.0))
    back = RobustScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert_allclose(back.center, scaler.center)
    assert_allclose(back.scale, scaler.scale)
    assert back.quantile_range == (20.0, 80.0)


def test_fit_scaler_none_is_identity() -> None:
    x = np.random.default_rng(3).standard_normal((2, 3, 4))
    cfg = PreprocessConfig(scaler="none")
    scaler = fit_scaler(x, cfg.scaler, cfg.quantile_range)
    assert_allclose(apply_scaler(x, scaler, clip=None), x, rtol=1e-6)
    with pytest.raises(ValueError, match="scaler"):
        fit_scaler(x, "minmax")


def test_scaler_sees_train_epochs_only() -> None:
    """Val/test epochs with huge values must change neither centre nor scale."""
    rng = np.random.default_rng(4)
    meta = events_table(np.arange(12) * 100, 1200.0).assign(subject="S", session="01", run="01")
    meta.loc[[0, 1], "trial_type"] = "test"  # categories cat0, cat1 -> zero-shot test_large
    meta = assign_splits(meta, SplitConfig(val_fraction=0.5, seed=1))
    x = rng.standard_normal((12, 2, 5))
    train = split_mask(meta, "train")
    assert 0 < train.sum() < 12
    reference = fit_robust_scaler(x[train])
    x[~train] = 1e3 * rng.standard_normal(((~train).sum(), 2, 5)) + 500.0
    scaler = fit_robust_scaler(x[split_mask(meta, "train")])
    assert_allclose(scaler.center, reference.center)
    assert_allclose(scaler.scale, reference.scale)
    assert not np.allclose(fit_robust_scaler(x).center, reference.center)
    assert np.abs(apply_scaler(x, scaler, 20.0)[~train]).max() == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("sfreq", "ratio"),
    [(1200, (1, 10)), (600, (1, 5)), (400, (3, 10)), (300, (2, 5)), (120, (1, 1))],
)
def test_resample_ratio(sfreq: float, ratio: tuple[int, int]) -> None:
    assert resample_ratio(float(sfreq), 120.0) == ratio


# ------------------------------------------------------------------ config


def test_config_flat_round_trip() -> None:
    for cfg in (
        PreprocessConfig(),
        PreprocessConfig(preset="things-official", filter_phase="causal"),
        PreprocessConfig(h_freq=30.0, baseline=None, exclude=(), tmin=-0.2),
    ):
        flat = cfg.to_flat_dict()
        assert all(isinstance(v, (str, int, float, bool, type(None))) for v in flat.values())
        assert PreprocessConfig.from_flat_dict(flat) == cfg
        assert PreprocessConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"tmin": 1.0, "tmax": 1.0},
        {"tmin": 0.2, "tmax": -0.1},
        {"baseline": (-0.8, 0.0)},
        {"baseline": (0.0, 1.2)},
        {"baseline": (0.1, -0.1)},
        {"clip": 0.0},
        {"clip": -1.0},
        {"l_freq": 40.0, "h_freq": 1.0},
        {"h_freq": -5.0},
        {"sfreq": 0.0},
        {"picks": "eeg"},
        {"scaler": "standard"},
        {"quantile_range": (75.0, 25.0)},
        {"preset": "things"},
        {"preset": "paper", "l_freq": 0.1},
        {"preset": "things-official", "h_freq": 30.0},
    ],
)
def test_bad_config_values_raise(bad: dict) -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(**bad)


def test_presets_name_the_band() -> None:
    paper, things = PreprocessConfig(), PreprocessConfig(preset="things-official")
    assert paper.preset == "paper" and (paper.l_freq, paper.h_freq) == (None, None)
    assert not paper.band_pass
    assert things.preset == "things-official" and (things.l_freq, things.h_freq) == (0.1, 40.0)
    assert things.band_pass
    # A band of one's own is "custom"; a band equal to a preset's takes its name.
    assert PreprocessConfig(h_freq=30.0).preset == "custom"
    assert PreprocessConfig(l_freq=0.1, h_freq=40.0).preset == "things-official"
    # A store manifest of before the presets (band only) reads back with its name.
    old = {k: v for k, v in things.to_flat_dict().items() if k != "preset"}
    assert PreprocessConfig.from_flat_dict(old).preset == "things-official"
    # replace: a new band renames the preset, a new preset brings its band.
    assert things.replace(l_freq=None, h_freq=None) == paper
    assert paper.replace(preset="things-official") == things
    assert things.replace(h_freq=30.0).preset == "custom"


def test_presets_by_the_spectrum_of_the_output() -> None:
    """ "paper" passes everything below the 60 Hz Nyquist of 120 Hz (only the resampler's
    anti-aliasing low-pass runs); "things-official" keeps 10 Hz and removes 50 Hz and a
    0.02 Hz drift. Measured on the epochs, not read from the config."""
    sfreq = 1200.0

    def signal(t: np.ndarray) -> np.ndarray:
        return (
            np.sin(2 * np.pi * 10 * t)
            + np.sin(2 * np.pi * 50 * t)
            + 20 * np.sin(2 * np.pi * 0.02 * t)
        )

    rec = recording(sfreq, 60.0, np.arange(20.0, 40.0, 1.5), signal)

    def amplitudes(cfg: PreprocessConfig) -> tuple[float, float, float]:
        x = preprocess_run(rec, cfg.replace(baseline=None)).data[..., :180].astype(float)
        # 180 samples = 1.5 s: 10 Hz and 50 Hz are FFT bins 15 and 75
        spectrum = np.abs(np.fft.rfft(x - x.mean(-1, keepdims=True), axis=-1)) / 90
        drift = np.abs(x.mean(-1)).mean()  # the 0.02 Hz drift is an offset within an epoch
        return spectrum[..., 15].mean(), spectrum[..., 75].mean(), drift

    p10, p50, p_drift = amplitudes(PreprocessConfig())
    t10, t50, t_drift = amplitudes(PreprocessConfig(preset="things-official"))
    assert p10 == pytest.approx(1.5, rel=0.1) and p50 == pytest.approx(1.5, rel=0.1)
    assert t10 == pytest.approx(1.5, rel=0.1) and t50 < 0.01 * t10
    assert p_drift > 10 and t_drift < 0.1 * p_drift


# ------------------------------------------------------------------ preprocess_run


@pytest.mark.parametrize("sfreq", [1200.0, 600.0, 400.0, 300.0])
def test_onsets_land_exactly_on_the_output_grid(sfreq: float) -> None:
    """A 7 Hz sine must come out as sin(2 pi f (onset + t)) at every output sample; rounding
    onsets to the 120 Hz grid (resample-then-epoch) would err by up to 0.18."""
    f = 7.0
    rec = recording(sfreq, 28.0, ONSETS, lambda t: np.sin(2 * np.pi * f * t))
    block = preprocess_run(rec, PreprocessConfig(baseline=None, **NO_FILTER))
    assert block.data.shape == (len(ONSETS), len(CHANNELS) - 1, 181)
    assert block.data.dtype == np.float32
    assert block.times[0] == pytest.approx(-0.5) and block.times[60] == pytest.approx(0.0)
    assert block.times[-1] == pytest.approx(1.0)
    onset_s = block.metadata["onset_sample"].to_numpy() / sfreq
    expected = np.sin(2 * np.pi * f * (onset_s[:, None] + block.times[None]))
    assert_allclose(block.data[:, 0], expected, atol=3e-3)  # channel gain 1.0


def test_resampling_is_anti_aliased() -> None:
    """100 Hz at 1200 Hz would alias to 20 Hz at full amplitude if merely decimated."""
    rec = recording(1200.0, 28.0, ONSETS, lambda t: np.sin(2 * np.pi * 100.0 * t))
    block = preprocess_run(rec, PreprocessConfig(baseline=None, **NO_FILTER))
    assert np.abs(block.data[:, 0]).max() < 0.01


@pytest.mark.parametrize("preset", ["paper", "things-official"])
def test_evoked_peak_latency_and_baseline(preset: str) -> None:
    """A 15 ms Gaussian bump 200 ms after each onset, in noise: with either preset (the
    0.1-40 Hz band-pass is zero-phase) the evoked peak is at +200 ms and the baseline
    mean is 0."""
    sfreq, latency = 1200.0, 0.2
    rng = np.random.default_rng(5)
    onsets = np.arange(2.0, 58.0, 1.5)
    shifted = np.round(onsets * sfreq).astype(int) + np.arange(len(onsets)) % 7

    def signal(t: np.ndarray) -> np.ndarray:
        bump = sum(np.exp(-0.5 * ((t - s / sfreq - latency) / 0.015) ** 2) for s in shifted)
        return bump + 0.2 * rng.standard_normal(len(t)) + 3.0  # DC offset: baseline must go

    rec = recording(sfreq, 60.0, onsets, signal)
    block = preprocess_run(rec, PreprocessConfig(preset=preset))
    evoked = block.data.mean(axis=0)  # (C, T)
    peak = np.flatnonzero(np.isclose(block.times, latency))
    assert_array_equal(evoked.argmax(axis=1), np.full(len(evoked), peak[0]))
    assert evoked[:, peak[0]].min() > 0.5
    in_baseline = block.times <= 0.0
    # float32 epochs: without a high-pass the DC offset (3-6) is removed to its rounding
    assert_allclose(block.data[..., in_baseline].mean(axis=-1), 0.0, atol=1e-5)


def test_catch_dropped_channels_picked_and_metadata() -> None:
    rec = recording(600.0, 28.0, ONSETS, np.sin, catch=(2, 5))
    rec.raw.info["bads"] = ["MLC12-1609"]  # bads stay: every run must keep the same channels
    block = preprocess_run(rec, PreprocessConfig(**NO_FILTER))
    assert block.ch_names == [c + "-1609" for c in CHANNELS if c != "MRO11"]
    assert list(block.metadata.columns) == list(METADATA_COLUMNS)
    assert (block.metadata["trial_type"] == "exp").all()
    assert block.dropped == {"catch": 2, "edge": 0, "gap": 0}
    kept = rec.events[rec.events["trial_type"] != "catch"]
    assert_array_equal(block.metadata["trial_index"], kept["trial_index"])
    assert_array_equal(block.metadata["onset_sample"], kept["sample"])
    assert_array_equal(block.metadata["image_path"], kept["image_path"])
    assert set(block.metadata["subject"]) == {"BIGMEG1"}
    assert set(block.metadata["session"]) == {"02"} and set(block.metadata["run"]) == {"03"}
    keep_all = preprocess_run(rec, PreprocessConfig(drop_catch=False, exclude=(), **NO_FILTER))
    assert len(keep_all.metadata) == len(ONSETS) and "MRO11-1609" in keep_all.ch_names


def test_epochs_near_the_edges_are_dropped_and_counted() -> None:
    # the first window would start before 0 s, the last would end after 10 s
    onsets = np.array([0.45, 3.0, 6.0, 9.85])
    rec = recording(1200.0, 10.0, onsets, np.cos)
    block = preprocess_run(rec, PreprocessConfig(**NO_FILTER))
    assert block.dropped["edge"] == 2
    assert_array_equal(block.metadata["trial_index"], [1, 2])


def test_clear_errors() -> None:
    rec = recording(1200.0, 10.0, np.array([3.0, 6.0]), np.sin)
    rec.events.loc[1, "sample"] = rec.raw.n_times
    with pytest.raises(ValueError, match="outside the recording"):
        preprocess_run(rec, PreprocessConfig(**NO_FILTER))
    slow = recording(100.0, 10.0, np.array([3.0]), np.sin)
    with pytest.raises(ValueError, match="below the target"):
        preprocess_run(slow, PreprocessConfig(**NO_FILTER))
    with pytest.raises(ValueError, match="no MEG channels"):
        only_excluded = recording(
            1200.0, 10.0, np.array([3.0]), np.sin, info=ctf_info(1200.0, ("MRO11",))
        )
        preprocess_run(only_excluded, PreprocessConfig(**NO_FILTER))
    no_column = recording(1200.0, 10.0, np.array([3.0]), np.sin)
    no_column.events.drop(columns="image_path", inplace=True)
    with pytest.raises(ValueError, match="image_path"):
        preprocess_run(no_column, PreprocessConfig(**NO_FILTER))


def test_sensor_positions_layout_and_topomap_fallback() -> None:
    info = ctf_info(1200.0, extra=False)
    pos2d, pos3d = sensor_positions(info)
    assert pos2d.shape == (len(CHANNELS), 2) and pos3d.shape == (len(CHANNELS), 3)
    assert_allclose(pos2d.min(axis=0), 0.0)
    assert_allclose(pos2d.max(axis=0), 1.0)
    radius = np.linalg.norm(pos3d, axis=1)
    assert np.all((radius > 0.05) & (radius < 0.2))  # metres, a helmet
    left = np.array([n.startswith("ML") for n in info.ch_names])
    right = np.array([n.startswith("MR") for n in info.ch_names])
    assert pos2d[left, 0].max() < pos2d[right, 0].min()
    # Names no layout knows -> MNE's topomap projection of the 3-D positions instead.
    renamed = info.copy().rename_channels({n: f"X{i:03d}" for i, n in enumerate(info.ch_names)})
    fallback, _ = sensor_positions(renamed)
    assert_allclose(fallback.min(axis=0), 0.0)
    assert_allclose(fallback.max(axis=0), 1.0)
    assert np.corrcoef(fallback[:, 0], pos2d[:, 0])[0, 1] > 0.9
    assert np.corrcoef(fallback[:, 1], pos2d[:, 1])[0, 1] > 0.9
