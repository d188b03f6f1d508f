"""Pure signal processing shared by the offline preprocessing and the serving stream.

The contract between `megdecode.data.preprocess` (a whole run at once) and
`megdecode.serve.online_preprocess` (chunks as they arrive): both cut epochs at native
onset samples, resample them on the same `Grid` with the same polyphase filter,
baseline-correct them the same way and filter causally with the same sections, so a served window equals the stored
one (tests/integration/serve/test_stream_offline.py). No config objects here: plain numbers
in, arrays out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

_RESAMPLE_HALF_TAPS = 10  # scipy resample_poly's default FIR has 2*10*max(up, down)+1 taps
_CHUNK = 64  # epochs resampled per call: bounds the float64 native-rate working set
CAUSAL_ORDER = 4  # Butterworth order of each edge of the causal band-pass (filter_phase="causal")


def resample_ratio(sfreq_in: float, sfreq_out: float) -> tuple[int, int]:
    """(up, down) with sfreq_out / sfreq_in == up / down exactly, in lowest terms."""
    ratio = Fraction(sfreq_out).limit_denominator(10_000) / Fraction(sfreq_in).limit_denominator(
        10_000
    )
    if (
        not math.isclose(float(ratio), sfreq_out / sfreq_in, rel_tol=1e-9)
        or ratio.denominator > 100_000
    ):
        raise ValueError(f"cannot resample {sfreq_in} Hz -> {sfreq_out} Hz with a rational ratio")
    return ratio.numerator, ratio.denominator


def cut_epochs(data: np.ndarray, onsets: np.ndarray, n_before: int, n_after: int) -> np.ndarray:
    """(C, S) continuous data -> (N, C, n_before + 1 + n_after) windows around `onsets`.

    One contiguous slice copy per epoch: faster than fancy indexing with an
    (N, L) index array, which builds an (N, L) index array and copies twice (gather, then transpose).
    """
    starts = np.asarray(onsets, dtype=np.int64) - n_before
    length = n_before + n_after + 1
    if len(starts) and (starts.min() < 0 or starts.max() + length > data.shape[1]):
        raise ValueError(f"epoch windows reach outside the data (samples 0..{data.shape[1] - 1})")
    out = np.empty((len(starts), data.shape[0], length), dtype=data.dtype)
    for i, start in enumerate(starts):
        out[i] = data[:, start : start + length]
    return out


def baseline_correct(x: np.ndarray, times: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Subtract, per epoch and channel, the mean over `times` within `window` (inclusive).

    x: (..., T); times: (T,) seconds. Returns a new array of x's dtype.
    """
    tol = 1e-9 * max(1.0, float(np.abs(times).max()))
    mask = (times >= window[0] - tol) & (times <= window[1] + tol)
    if not mask.any():
        raise ValueError(
            f"baseline window {window} holds no sample of times {times[0]}..{times[-1]}"
        )
    return x - x[..., mask].mean(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Grid:
    """Where a padded native-rate window sits so that t=0 lands on an output sample.

    Output sample j of the padded window is at (start + j) / sfreq_out from the onset;
    `start` is a multiple of `up` so that it is a whole number of native samples.
    """

    up: int
    down: int
    start: int  # first padded output sample, relative to the onset
    n_out: int  # padded output samples per epoch
    keep: slice  # the kept samples k0..k1 (tmin..tmax) inside the padded window

    @property
    def start_in(self) -> int:
        return self.start * self.down // self.up

    @property
    def n_in(self) -> int:
        return self.n_out * self.down // self.up


def output_grid(sfreq_in: float, sfreq_out: float, tmin: float, tmax: float) -> Grid:
    """The padded window that resamples `sfreq_in` to `sfreq_out` with t=0 on an output
    sample and keeps tmin..tmax (seconds from the onset)."""
    up, down = resample_ratio(sfreq_in, sfreq_out)
    k0, k1 = round(tmin * sfreq_out), round(tmax * sfreq_out)
    margin = 0 if up == down else math.ceil(_RESAMPLE_HALF_TAPS * max(up, down) / down) + 1
    start = math.floor((k0 - margin) / up) * up
    n_out = math.ceil((k1 + margin - start + 1) / up) * up
    return Grid(up, down, start, n_out, slice(k0 - start, k1 - start + 1))


def resample_epochs(data: np.ndarray, onsets: np.ndarray, grid: Grid) -> np.ndarray:
    """(C, S) float64 continuous -> (N, C, T) float32 epochs on the output grid."""
    from scipy.signal import resample_poly  # scipy.signal: ~1 s to import, so only where used

    n_times = grid.keep.stop - grid.keep.start
    out = np.empty((len(onsets), data.shape[0], n_times), dtype=np.float32)
    for i in range(0, len(onsets), _CHUNK):
        starts = onsets[i : i + _CHUNK] + grid.start_in
        native = cut_epochs(data, starts, 0, grid.n_in - 1)
        if grid.up != grid.down:
            native = resample_poly(native, grid.up, grid.down, axis=-1)
        out[i : i + _CHUNK] = native[..., grid.keep]
    return out


def causal_sos(sfreq_in: float, l_freq: float | None, h_freq: float | None) -> np.ndarray | None:
    """Second-order sections of the causal band-pass at the native rate; None = no filter.

    A band edge at or above Nyquist is dropped (the resampler still anti-aliases).
    """
    from scipy.signal import butter

    nyquist = sfreq_in / 2
    low = l_freq
    high = h_freq if h_freq is not None and h_freq < nyquist else None
    if low is None and high is None:
        return None
    if low is not None and high is not None:
        return butter(CAUSAL_ORDER, [low, high], btype="bandpass", fs=sfreq_in, output="sos")
    if low is not None:
        return butter(CAUSAL_ORDER, low, btype="highpass", fs=sfreq_in, output="sos")
    return butter(CAUSAL_ORDER, high, btype="lowpass", fs=sfreq_in, output="sos")


def causal_zi(sos: np.ndarray, n_channels: int) -> np.ndarray:
    """Zero initial filter state (n_sections, C, 2): the run starts from rest, online and offline."""
    return np.zeros((sos.shape[0], n_channels, 2))
