"""The stream's one-matrix preprocessing equals the offline steps run one after the other."""

from __future__ import annotations

import numpy as np
import pytest

from megdecode.data.preprocess import PreprocessConfig
from megdecode.serve.online_preprocess import OnlinePreprocessor
from megdecode.serve.stream import StreamSpec


@pytest.mark.parametrize(
    ("sfreq_in", "baseline"), [(300.0, (-0.5, 0.0)), (1200.0, (-0.2, 0.0)), (120.0, None)]
)
def test_banded_windows_equal_stepwise_windows(
    sfreq_in: float, baseline: tuple[float, float] | None
) -> None:
    n_channels = 5
    cfg = PreprocessConfig(preset="things-official", filter_phase="causal", baseline=baseline)
    rng = np.random.default_rng(0)
    spec = StreamSpec(
        cfg,
        sfreq_in,
        center=rng.normal(size=n_channels) * 0.1,
        scale=rng.uniform(0.5, 2, n_channels),
        tmin=0.0,
        tmax=0.5,
        n_times=61,
    )
    pre = OnlinePreprocessor(spec, n_channels, extra_capacity=int(4 * sfreq_in))
    pre.push(rng.standard_normal((n_channels, int(4 * sfreq_in))) * 3)
    onsets = np.arange(pre.first_onset, pre.last_ready_onset + 1, 7)
    assert len(onsets) > 3
    fast, ref = pre.windows(onsets), pre.windows_stepwise(onsets)
    assert fast.shape == (len(onsets), n_channels, 61) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-5)
    np.testing.assert_allclose(
        pre.windows(onsets[-1:]), ref[-1:], rtol=0, atol=2e-5
    )  # one window: no cut copy
    assert np.abs(ref).max() > 0.5  # not trivially zero


@pytest.mark.parametrize(
    ("cfg", "matches"),
    [
        (PreprocessConfig(), True),  # "paper": no band-pass, nothing for the stream to filter
        (PreprocessConfig(filter_phase="causal"), True),
        (PreprocessConfig(preset="things-official", filter_phase="causal"), True),
        (PreprocessConfig(preset="things-official"), False),  # zero-phase band-pass
    ],
)
def test_stream_matches_training_unless_the_store_band_passed_zero_phase(
    cfg: PreprocessConfig, matches: bool
) -> None:
    spec = StreamSpec(cfg, 300.0, np.zeros(2), np.ones(2), 0.0, 0.5, 61)
    assert spec.matches_training is matches


def _session(clock: list[float], max_backlog_s: float = 0.5):
    from megdecode.serve.stream_session import StreamSession

    rng = np.random.default_rng(0)
    spec = StreamSpec(
        PreprocessConfig(filter_phase="causal"),
        300.0,
        center=np.zeros(3),
        scale=np.ones(3),
        tmin=0.0,
        tmax=0.5,
        n_times=61,
    )
    return StreamSession(spec, 3, 0.025, max_backlog_s, clock=lambda: clock[0]), rng


def test_a_session_behind_real_time_skips_stale_onsets_but_a_fast_replay_loses_none() -> None:
    clock = [0.0]
    session, rng = _session(clock)
    session.push(rng.standard_normal((3, 600)))  # 2 s of signal at t=0: ahead of real time
    tick = session.due()
    assert (
        tick.skipped == 0
        and len(tick.onsets) > 10
        and np.all(np.diff(tick.onsets) == session.stride)
    )
    assert tick.lag_s < 0
    clock[0] = 5.0  # the model took 3 s longer than the signal: every queued window is stale
    for _ in range(4):
        session.push(rng.standard_normal((3, 30)))
    tick = session.due()
    assert (
        len(tick.onsets) == 1 and tick.skipped > 0 and tick.lag_s > 0.5
    )  # only the newest is decoded
    assert session.due().onsets.size == 0  # the queue was handed over
    assert session.room() >= session.max_chunk  # nothing pending: the reader may read a full chunk
