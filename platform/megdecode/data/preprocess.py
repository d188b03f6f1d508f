"""The paper's MEG preprocessing (Benchetrit et al. 2023 on THINGS-MEG), one run at a time.

Per run: pick MEG channels -> band-pass the continuous signal at the native rate ->
cut padded epochs at the exact native onset samples -> polyphase-resample the epochs
to 120 Hz -> drop the padding -> baseline. Robust scaling and clipping are separate
(`fit_robust_scaler`, `apply_scaler`): the scaler must be fitted on training epochs
only, which exist once the splits do.

Why epoch-then-resample and not resample-then-epoch: a continuous 120 Hz grid cannot
hold every onset, because onsets sit on the native grid (ten phases per 120 Hz sample at
1200 Hz), so resample-then-epoch rounds each onset by up to half an output sample
(±4.2 ms) with a jitter that depends on the trial. Cutting at the native onset sample
first and resampling each epoch makes t=0 an output sample for every trial, for any
native rate whose ratio to 120 Hz is rational (1200/600/400/300 Hz). It stays
anti-aliased because `scipy.signal.resample_poly` low-pass filters (Kaiser FIR at the new
Nyquist) while it resamples; each epoch carries a padding longer than half that FIR, so
no kept sample sees the zeros beyond the window. It is as fast: the polyphase filter
computes only output samples inside the padded windows, which tile the run about once
at THINGS' ~1.5 s trial spacing, in one vectorised call per batch of epochs
(benchmarks/preprocess_throughput.py times both orders). The band-pass (its 0.1 Hz
high-pass is a 33 s FIR) needs the continuous signal, so it runs first.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import mne
import numpy as np
import pandas as pd

from megdecode.config import ConfigError, FlatConfig

logger = logging.getLogger(__name__)

EVENT_COLUMNS = (
    "trial_index",
    "sample",
    "trial_type",
    "image_id",
    "category_id",
    "category",
    "image_path",
)
METADATA_COLUMNS = (
    "subject", "session", "run", "trial_index", "image_id", "category_id",
    "category", "trial_type", "image_path", "onset_sample",
)  # fmt: skip
_PICKS = {"mag": "mag", "grad": "grad", "meg": True}
_RESAMPLE_HALF_TAPS = 10  # scipy resample_poly's default FIR has 2*10*max(up, down)+1 taps
_CHUNK = 64  # epochs resampled per call: bounds the float64 native-rate working set
CAUSAL_ORDER = 4  # Butterworth order of each edge of the causal band-pass (filter_phase="causal")


@dataclass(frozen=True)
class PreprocessConfig(FlatConfig):
    """The paper pipeline's knobs; defaults reproduce THINGS-MEG at 120 Hz, T = 181."""

    picks: str = "mag"  # CTF axial gradiometers are typed "mag" by MNE; "meg" | "grad" too
    exclude: tuple[str, ...] = ("MRO11-1609",)  # broken THINGS-MEG channel (official pipeline)
    l_freq: float | None = 0.1  # THINGS official band-pass 0.1-40 Hz; None = no high-pass
    h_freq: float | None = 40.0  # None = no low-pass (the resampler still anti-aliases)
    filter_method: str = "fir"  # MNE default zero-phase FIR; "iir" = Butterworth, faster
    # "zero": the offline zero-phase filter above (non-causal: it looks ahead in time).
    # "causal": a Butterworth band-pass (order CAUSAL_ORDER, second-order sections) run
    # forwards only from the first sample of the run, zero initial state; filter_method is
    # then ignored. It is what a real-time stream can compute, so a model trained on a
    # store built with it sees exactly what `megdecode.serve.stream` feeds it online.
    filter_phase: str = "zero"
    sfreq: float = 120.0  # target rate (Hz)
    tmin: float = -0.5  # window start relative to image onset (s), snapped to the 120 Hz grid
    tmax: float = 1.0  # window end, inclusive: (-0.5, 1.0) at 120 Hz gives 181 samples
    baseline: tuple[float, float] | None = (-0.5, 0.0)  # mean over it is subtracted; None = off
    clip: float = 20.0  # after robust scaling, values are clipped to [-clip, clip]
    drop_catch: bool = True  # catch trials carry no image to decode
    scaler: str = "robust"  # "robust" (median / IQR per channel) | "none"
    quantile_range: tuple[float, float] = (25.0, 75.0)  # the IQR of the robust scaler (%)

    def __post_init__(self) -> None:
        if self.picks not in _PICKS:
            raise ConfigError(f"picks: expected one of {sorted(_PICKS)}, got {self.picks!r}")
        if self.filter_method not in ("fir", "iir"):
            raise ConfigError(f"filter_method: expected 'fir' or 'iir', got {self.filter_method!r}")
        if self.filter_phase not in ("zero", "causal"):
            raise ConfigError(f"filter_phase: expected 'zero' or 'causal', got {self.filter_phase!r}")
        if self.scaler not in ("robust", "none"):
            raise ConfigError(f"scaler: expected 'robust' or 'none', got {self.scaler!r}")
        if self.sfreq <= 0:
            raise ConfigError(f"sfreq: must be > 0, got {self.sfreq}")
        for key in ("l_freq", "h_freq"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{key}: must be > 0 or None, got {value}")
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise ConfigError(f"l_freq ({self.l_freq}) must be < h_freq ({self.h_freq})")
        if self.tmin >= self.tmax:
            raise ConfigError(f"tmin ({self.tmin}) must be < tmax ({self.tmax})")
        if self.baseline is not None:
            b0, b1 = self.baseline
            half = 0.5 / self.sfreq
            if b0 > b1 or b0 < self.tmin - half or b1 > self.tmax + half:
                raise ConfigError(
                    f"baseline {self.baseline} must be an ordered interval inside the window "
                    f"[{self.tmin}, {self.tmax}]"
                )
        if not self.clip > 0:
            raise ConfigError(f"clip: must be > 0, got {self.clip}")
        q0, q1 = self.quantile_range
        if not 0 <= q0 < q1 <= 100:
            raise ConfigError(
                f"quantile_range: need 0 <= q0 < q1 <= 100, got {self.quantile_range}"
            )


@dataclass
class EpochBlock:
    """The epochs of one run (or a stack of runs) on one channel list and time grid.

    data: (N, C, T) float32; metadata: N rows with `METADATA_COLUMNS`;
    pos2d: (C, 2) in [0, 1]; pos3d: (C, 3) metres; dropped: epochs left out, by reason.
    """

    data: np.ndarray
    metadata: pd.DataFrame
    ch_names: list[str]
    sfreq: float
    tmin: float
    pos2d: np.ndarray
    pos3d: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, c, _ = self.data.shape
        if len(self.metadata) != n or len(self.ch_names) != c:
            raise ValueError(
                f"EpochBlock: data {self.data.shape} does not match {len(self.metadata)} metadata "
                f"rows and {len(self.ch_names)} channel names"
            )

    @property
    def times(self) -> np.ndarray:
        """(T,) seconds relative to image onset."""
        return self.tmin + np.arange(self.data.shape[2]) / self.sfreq


class RecordingLike(Protocol):
    """What `preprocess_run` needs from `megdecode.data.bids.Recording`."""

    key: Any  # RunKey: subject, session, run
    raw: mne.io.BaseRaw
    events: pd.DataFrame


# ---------------------------------------------------------------- pure helpers


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


def epoch_indices(onsets: np.ndarray, n_before: int, n_after: int) -> np.ndarray:
    """(N, n_before + 1 + n_after) sample indices of windows centred on integer onsets."""
    return np.asarray(onsets, dtype=np.int64)[:, None] + np.arange(-n_before, n_after + 1)


def cut_epochs(data: np.ndarray, onsets: np.ndarray, n_before: int, n_after: int) -> np.ndarray:
    """(C, S) continuous data -> (N, C, n_before + 1 + n_after) windows around `onsets`.

    One contiguous slice copy per epoch: faster than fancy indexing with `epoch_indices`,
    which builds an (N, L) index array and copies twice (gather, then transpose).
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


def robust_scale(
    x: np.ndarray, center: np.ndarray, scale: np.ndarray, clip: float | None, out: np.ndarray | None = None
) -> np.ndarray:
    """(N, C, T) -> (x - center[c]) / scale[c], clipped to [-clip, clip] when clip is set.

    Computed in one array (`out` when given, e.g. a slice of a larger result; else a new one
    of the dtype of x - center), with no temporaries: the store build and the serving
    stream run it over every sample. `scale` must not be a wider dtype than x - center.
    """
    out = np.subtract(x, center[None, :, None], out=out)
    np.divide(out, scale[None, :, None], out=out)
    if clip is not None:
        np.clip(out, -clip, clip, out=out)
    return out


@dataclass(frozen=True)
class _Grid:
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


def _grid(sfreq_in: float, cfg: PreprocessConfig) -> _Grid:
    up, down = resample_ratio(sfreq_in, cfg.sfreq)
    k0, k1 = round(cfg.tmin * cfg.sfreq), round(cfg.tmax * cfg.sfreq)
    margin = 0 if up == down else math.ceil(_RESAMPLE_HALF_TAPS * max(up, down) / down) + 1
    start = math.floor((k0 - margin) / up) * up
    n_out = math.ceil((k1 + margin - start + 1) / up) * up
    return _Grid(up, down, start, n_out, slice(k0 - start, k1 - start + 1))


def _resample_epochs(data: np.ndarray, onsets: np.ndarray, grid: _Grid) -> np.ndarray:
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


def causal_sos(sfreq_in: float, cfg: PreprocessConfig) -> np.ndarray | None:
    """Second-order sections of the causal band-pass at the native rate; None = no filter.

    A band edge at or above Nyquist is dropped (the resampler still anti-aliases).
    """
    from scipy.signal import butter

    nyquist = sfreq_in / 2
    low = cfg.l_freq
    high = cfg.h_freq if cfg.h_freq is not None and cfg.h_freq < nyquist else None
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


# ---------------------------------------------------------------- MNE steps


def pick_meg(info: mne.Info, cfg: PreprocessConfig) -> np.ndarray:
    """Indices of the MEG channels to keep; bads are kept so every run has the same list."""
    picks = mne.pick_types(info, meg=_PICKS[cfg.picks], ref_meg=False, exclude=list(cfg.exclude))
    if len(picks) == 0:
        types = sorted(set(info.get_channel_types()))
        raise ValueError(
            f"no MEG channels left after picks={cfg.picks!r} and exclude={list(cfg.exclude)}; "
            f"channel types in the recording: {types}"
        )
    return picks


def sensor_positions(info: mne.Info) -> tuple[np.ndarray, np.ndarray]:
    """(pos2d (C, 2) in [0, 1], pos3d (C, 3) metres, device frame) for every channel of info.

    2-D comes from MNE's layout for the system (CTF-275 for THINGS and the twin, matched
    on the name before the serial suffix, e.g. "MLC11" of "MLC11-1609"): it is in the
    device frame, so it does not move with the head between sessions. Systems without a
    matching layout fall back to MNE's topomap projection of the 3-D locations.
    """
    pos3d = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=np.float64)
    if not np.isfinite(pos3d).all() or not np.abs(pos3d).any():
        logger.warning("channel locations are missing; pos3d are zeros and pos2d needs a layout")
        pos3d = np.nan_to_num(pos3d)
    xy = _layout_xy(info)
    if xy is None:
        if not np.abs(pos3d).any():
            raise ValueError("no sensor positions: no matching MNE layout and no channel locations")
        from mne.channels.layout import _find_topomap_coords  # MNE's topomap projection

        xy = _find_topomap_coords(info, picks=np.arange(info["nchan"]))
    span = np.ptp(xy, axis=0)
    pos2d = (xy - xy.min(axis=0)) / np.where(span > 0, span, 1.0)
    return pos2d, pos3d


def _layout_xy(info: mne.Info) -> np.ndarray | None:
    try:
        layout = mne.channels.find_layout(info)
    except (RuntimeError, ValueError):
        return None
    index = {name.split("-")[0]: i for i, name in enumerate(layout.names)}
    rows = [index.get(name.split("-")[0]) for name in info.ch_names]
    if any(row is None for row in rows):
        return None
    boxes = layout.pos[np.array(rows)]
    return boxes[:, :2] + boxes[:, 2:4] / 2  # box centres


def _check_events(events: pd.DataFrame, n_times: int, label: str) -> None:
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"{label}: events table lacks column(s) {missing}")
    outside = events[(events["sample"] < 0) | (events["sample"] >= n_times)]
    if len(outside):
        raise ValueError(
            f"{label}: {len(outside)} event(s) outside the recording (0..{n_times - 1}), "
            f"e.g. trial_index {outside['trial_index'].iloc[0]} at sample {outside['sample'].iloc[0]}"
        )


def preprocess_run(rec: RecordingLike, cfg: PreprocessConfig | None = None) -> EpochBlock:
    """One run -> unscaled epochs (N, C, T) float32 in tesla, plus metadata and positions."""
    cfg = cfg or PreprocessConfig()
    raw, key = rec.raw, rec.key
    label = f"sub-{key.subject} ses-{key.session} run-{key.run}"
    sfreq_in = float(raw.info["sfreq"])
    if sfreq_in < cfg.sfreq:
        raise ValueError(f"{label}: sampling rate {sfreq_in} Hz is below the target {cfg.sfreq} Hz")
    _check_events(rec.events, raw.n_times, label)
    events = rec.events
    dropped = {"catch": 0, "edge": 0}
    if cfg.drop_catch:
        is_catch = events["trial_type"].to_numpy() == "catch"
        dropped["catch"] = int(is_catch.sum())
        events = events[~is_catch]

    grid = _grid(sfreq_in, cfg)
    onsets = events["sample"].to_numpy(dtype=np.int64)
    inside = (onsets + grid.start_in >= 0) & (onsets + grid.start_in + grid.n_in <= raw.n_times)
    dropped["edge"] = int((~inside).sum())
    events, onsets = events[inside], onsets[inside]

    picks = pick_meg(raw.info, cfg)
    data = raw.get_data(picks=picks).astype(np.float64, copy=False)
    if cfg.filter_phase == "causal":
        sos = causal_sos(sfreq_in, cfg)
        if sos is not None:
            from scipy.signal import sosfilt

            data = sosfilt(sos, data, axis=-1, zi=causal_zi(sos, data.shape[0]))[0]
    elif cfg.l_freq is not None or cfg.h_freq is not None:
        with warnings.catch_warnings(record=True) as caught:  # e.g. run shorter than the FIR
            warnings.simplefilter("always")
            data = mne.filter.filter_data(
                data,
                sfreq_in,
                cfg.l_freq,
                cfg.h_freq,
                method=cfg.filter_method,
                n_jobs=1,
                copy=False,
                verbose=False,
            )
        for warning in caught:
            logger.warning("%s: band-pass: %s", label, warning.message)
    epochs = _resample_epochs(data, onsets, grid)
    tmin = (grid.start + grid.keep.start) / cfg.sfreq
    if cfg.baseline is not None:
        times = tmin + np.arange(epochs.shape[2]) / cfg.sfreq
        epochs = baseline_correct(epochs, times, cfg.baseline).astype(np.float32, copy=False)

    metadata = pd.DataFrame(
        {
            "subject": str(key.subject),
            "session": str(key.session),
            "run": str(key.run),
            "trial_index": events["trial_index"].to_numpy(dtype=np.int64),
            "image_id": events["image_id"].to_numpy(dtype=np.int64),
            "category_id": events["category_id"].to_numpy(dtype=np.int64),
            "category": events["category"].astype(str).to_numpy(),
            "trial_type": events["trial_type"].astype(str).to_numpy(),
            "image_path": events["image_path"].astype(str).to_numpy(),
            "onset_sample": onsets,
        },
        columns=list(METADATA_COLUMNS),
    )
    info = mne.pick_info(raw.info, picks)
    pos2d, pos3d = sensor_positions(info)
    if dropped["edge"]:
        logger.warning(
            "%s: dropped %d epoch(s) too close to the recording edges", label, dropped["edge"]
        )
    logger.info(
        "%s: %d epochs x %d channels x %d samples (%d catch dropped)",
        label,
        *epochs.shape,
        dropped["catch"],
    )
    return EpochBlock(epochs, metadata, list(info.ch_names), cfg.sfreq, tmin, pos2d, pos3d, dropped)


# ---------------------------------------------------------------- scaling


@dataclass
class RobustScaler:
    """Per-channel centre (median) and scale (IQR), like sklearn's RobustScaler per channel.

    Plain arrays so that `to_dict()` can go into the store manifest and the model bundle.
    """

    center: np.ndarray  # (C,)
    scale: np.ndarray  # (C,)
    quantile_range: tuple[float, float] = (25.0, 75.0)

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "quantile_range": [float(q) for q in self.quantile_range],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustScaler:
        for k in ("center", "scale"):
            if k not in d:
                raise KeyError(f"scaler dict lacks {k!r}")
        q0, q1 = d.get("quantile_range", (25.0, 75.0))
        return cls(
            np.asarray(d["center"], dtype=np.float64),
            np.asarray(d["scale"], dtype=np.float64),
            (q0, q1),
        )


def fit_robust_scaler(
    x: np.ndarray, quantile_range: tuple[float, float] = (25.0, 75.0)
) -> RobustScaler:
    """(N, C, T) training epochs -> median and IQR per channel over all epochs and samples.

    One channel at a time, so the working copy is N*T values, not the whole array. A flat
    channel (IQR 0) gets scale 1, as in sklearn, instead of dividing by zero.
    """
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(
            f"fit_robust_scaler needs (N, C, T) epochs with N > 0, got shape {x.shape}"
        )
    q0, q1 = quantile_range
    center, scale = np.empty(x.shape[1]), np.empty(x.shape[1])
    for c in range(x.shape[1]):
        values = x[:, c, :].astype(np.float64).ravel()
        if not np.isfinite(values).all():
            raise ValueError(f"channel {c} has non-finite values; cannot fit the scaler")
        # `values` is this loop's own copy: the percentile may partition it in place.
        lo, center[c], hi = np.percentile(values, [q0, 50.0, q1], overwrite_input=True)
        scale[c] = hi - lo
    flat = scale <= 0
    if flat.any():
        logger.warning("%d channel(s) have zero IQR; their scale is set to 1", int(flat.sum()))
        scale[flat] = 1.0
    return RobustScaler(center, scale, (float(q0), float(q1)))


def fit_scaler(x: np.ndarray, cfg: PreprocessConfig) -> RobustScaler:
    """The scaler `cfg.scaler` asks for; "none" is the identity (centre 0, scale 1)."""
    if cfg.scaler == "none":
        return RobustScaler(np.zeros(x.shape[1]), np.ones(x.shape[1]), cfg.quantile_range)
    return fit_robust_scaler(x, cfg.quantile_range)


def apply_scaler(x: np.ndarray, scaler: RobustScaler, clip: float | None) -> np.ndarray:
    """(N, C, T) -> scaled and clipped float32: `robust_scale` in float32 into the output,
    a few hundred epochs at a time (no float64 copy of x; pass 2 of a build is
    memory-bound, and this was ~2x slower with whole-chunk temporaries)."""
    if x.ndim != 3 or x.shape[1] != len(scaler.center):
        raise ValueError(f"scaler has {len(scaler.center)} channels, data has shape {x.shape}")
    center = scaler.center.astype(np.float32)
    scale = scaler.scale.astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    for i in range(0, x.shape[0], 256):
        robust_scale(x[i : i + 256].astype(np.float32, copy=False), center, scale, clip, out=out[i : i + 256])
    return out
