"""The paper's MEG preprocessing (Benchetrit et al. 2023 on THINGS-MEG), one run at a time.

Per run: pick MEG channels -> (optionally) band-pass the continuous signal at the native
rate -> cut padded epochs at the exact native onset samples -> polyphase-resample the epochs
to 120 Hz -> drop the padding -> baseline. Robust scaling and clipping are separate
(`megdecode.data.scaling`): the scaler must be fitted on training epochs
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
(benchmarks/preprocess_throughput.py times both orders). A band-pass, when one is asked
for (its 0.1 Hz high-pass is a 33 s FIR), needs the continuous signal, so it runs first.

Two named presets (`PreprocessConfig.preset`), recorded in the store manifest:
- "paper" (default): the paper's minimal pipeline, no band-pass; the only filter is the
  resampler's anti-aliasing low-pass (Kaiser FIR, cut-off at the 60 Hz Nyquist of
  120 Hz). Drifts are left to the baseline correction and the robust scaler.
- "things-official": THINGS-MEG's official pipeline (Hebart et al. 2023), a 0.1-40 Hz
  band-pass before epoching.
Any other band is "custom" (set l_freq / h_freq, leave preset unset).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import mne
import numpy as np
import pandas as pd

from megdecode.config import ConfigError, FlatConfig
from megdecode.data.gaps import crosses_gap, gaps
from megdecode.data.meg_info import MEG_PICKS, compensation_grade, pick_meg, sensor_positions
from megdecode.data.signal import (
    baseline_correct,
    causal_sos,
    causal_zi,
    output_grid,
    resample_epochs,
)

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
CAUSAL_ORDER = 4  # Butterworth order of each edge of the causal band-pass (filter_phase="causal")
# Named band-passes (l_freq, h_freq) in Hz; None = that edge off.
PRESETS: dict[str, tuple[float | None, float | None]] = {
    "paper": (None, None),  # Benchetrit et al.: no band-pass, only the resampler's low-pass
    "things-official": (0.1, 40.0),  # THINGS-MEG's official pipeline
}
CUSTOM = "custom"  # any other band, given by l_freq / h_freq


@dataclass(frozen=True)
class PreprocessConfig(FlatConfig):
    """The paper pipeline's knobs; defaults reproduce the paper on THINGS-MEG at 120 Hz, T = 181.

    The band-pass is named by `preset` or given by l_freq / h_freq: `PreprocessConfig()`
    is "paper" (no band-pass), `PreprocessConfig(preset="things-official")` fills in
    0.1-40 Hz, and a band of your own (`PreprocessConfig(h_freq=30.0)`) is recorded as
    preset "custom". After construction `preset` always names the band in use.
    """

    # "paper" | "things-official" | "custom"; None (the default) = named after l_freq /
    # h_freq, i.e. "paper" when no band is given. A named preset with a band that differs
    # from its own is refused.
    preset: str | None = None
    picks: str = "mag"  # CTF axial gradiometers are typed "mag" by MNE; "meg" | "grad" too
    # broken THINGS-MEG channel (official pipeline); matched by sensor name, whatever the
    # system's serial (MRO11-4304 on another CTF-275 is dropped too)
    exclude: tuple[str, ...] = ("MRO11-1609",)
    l_freq: float | None = None  # high-pass edge (Hz); None = none (the paper's pipeline)
    h_freq: float | None = None  # low-pass edge (Hz); None = none (the resampler anti-aliases)
    filter_method: str = "fir"  # MNE default zero-phase FIR; "iir" = Butterworth, faster
    # "zero": the offline zero-phase filter above (non-causal: it looks ahead in time).
    # "causal": a Butterworth band-pass (order CAUSAL_ORDER, second-order sections) run
    # forwards only from the first sample of the run, zero initial state; filter_method is
    # then ignored. It is what a real-time stream can compute, so a model trained on a
    # store built with it sees exactly what `megdecode.serve.online_preprocess` feeds it
    # online.
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
        self._resolve_preset()
        if self.picks not in MEG_PICKS:
            raise ConfigError(f"picks: expected one of {sorted(MEG_PICKS)}, got {self.picks!r}")
        if self.filter_method not in ("fir", "iir"):
            raise ConfigError(f"filter_method: expected 'fir' or 'iir', got {self.filter_method!r}")
        if self.filter_phase not in ("zero", "causal"):
            raise ConfigError(
                f"filter_phase: expected 'zero' or 'causal', got {self.filter_phase!r}"
            )
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

    def replace(self, **changes: Any) -> PreprocessConfig:
        """A copy with `changes`; a new band renames the preset, a new preset brings its band.

        So `things.replace(l_freq=None, h_freq=None)` is "paper", and
        `paper.replace(preset="things-official")` gets 0.1-40 Hz.
        """
        band_changed = bool({"l_freq", "h_freq"} & set(changes))
        if band_changed and "preset" not in changes:
            changes["preset"] = None
        elif "preset" in changes and not band_changed and changes["preset"] != CUSTOM:
            changes |= {"l_freq": None, "h_freq": None}
        return super().replace(**changes)

    @property
    def band_pass(self) -> bool:
        """Whether a band-pass runs before epoching (the resampler's low-pass always does)."""
        return self.l_freq is not None or self.h_freq is not None

    def _resolve_preset(self) -> None:
        """Fill the band from a named preset, or name the preset after the band."""
        band = (self.l_freq, self.h_freq)
        if self.preset is None:
            named = next((name for name, b in PRESETS.items() if b == band), CUSTOM)
            object.__setattr__(self, "preset", named)
            return
        if self.preset == CUSTOM:
            return
        if self.preset not in PRESETS:
            raise ConfigError(f"preset: expected one of {[*PRESETS, CUSTOM]}, got {self.preset!r}")
        own = PRESETS[self.preset]
        if band == (None, None):
            object.__setattr__(self, "l_freq", own[0])
            object.__setattr__(self, "h_freq", own[1])
        elif band != own:
            raise ConfigError(
                f"preset {self.preset!r} is the band {own} Hz, but l_freq / h_freq are {band}: "
                "leave preset unset (or 'custom') for a band of your own"
            )


@dataclass
class EpochBlock:
    """The epochs of one run (or a stack of runs) on one channel list and time grid.

    data: (N, C, T) float32; metadata: N rows with `METADATA_COLUMNS`;
    pos2d: (C, 2) in [0, 1]; pos3d: (C, 3) metres; dropped: epochs left out, by reason
    ("catch", "edge": the window does not fit the run, "gap": it crosses a discontinuity);
    compensation_grade: the CTF gradient compensation of the data, as recorded (None: the
    file has no compensation, e.g. not CTF).
    """

    data: np.ndarray
    metadata: pd.DataFrame
    ch_names: list[str]
    sfreq: float
    tmin: float
    pos2d: np.ndarray
    pos3d: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)
    compensation_grade: int | None = None

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


# ---------------------------------------------------------------- MNE steps


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
    """One run -> unscaled epochs (N, C, T) float32 in tesla, plus metadata and positions.

    Epochs whose padded window does not fit the run ("edge") or crosses a discontinuity
    of the recording ("gap", `megdecode.data.gaps`) are dropped, counted in
    `EpochBlock.dropped` and logged.
    """
    cfg = cfg or PreprocessConfig()
    raw, key = rec.raw, rec.key
    label = f"sub-{key.subject} ses-{key.session} run-{key.run}"
    sfreq_in = float(raw.info["sfreq"])
    if sfreq_in < cfg.sfreq:
        raise ValueError(f"{label}: sampling rate {sfreq_in} Hz is below the target {cfg.sfreq} Hz")
    _check_events(rec.events, raw.n_times, label)
    events = rec.events
    dropped = {"catch": 0, "edge": 0, "gap": 0}
    if cfg.drop_catch:
        is_catch = events["trial_type"].to_numpy() == "catch"
        dropped["catch"] = int(is_catch.sum())
        events = events[~is_catch]

    grid = output_grid(sfreq_in, cfg.sfreq, cfg.tmin, cfg.tmax)
    onsets = events["sample"].to_numpy(dtype=np.int64)
    inside = (onsets + grid.start_in >= 0) & (onsets + grid.start_in + grid.n_in <= raw.n_times)
    dropped["edge"] = int((~inside).sum())
    events, onsets = events[inside], onsets[inside]
    spans = gaps(raw)
    crossing = crosses_gap(onsets + grid.start_in, grid.n_in, spans)
    dropped["gap"] = int(crossing.sum())
    events, onsets = events[~crossing], onsets[~crossing]

    picks = pick_meg(raw.info, cfg)
    data = raw.get_data(picks=picks).astype(np.float64, copy=False)
    if cfg.filter_phase == "causal":
        sos = causal_sos(sfreq_in, cfg.l_freq, cfg.h_freq)
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
    epochs = resample_epochs(data, onsets, grid)
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
    # verbose=False: MNE says it removes the compensators, whose reference channels are not picked
    info = mne.pick_info(raw.info, picks, verbose=False)
    pos2d, pos3d = sensor_positions(info)
    if dropped["edge"]:
        logger.warning(
            "%s: dropped %d epoch(s) too close to the recording edges", label, dropped["edge"]
        )
    if dropped["gap"]:
        logger.warning(
            "%s: dropped %d epoch(s) crossing a discontinuity of the recording (%d gap(s))",
            label,
            dropped["gap"],
            len(spans),
        )
    logger.info(
        "%s: %d epochs x %d channels x %d samples (%d catch dropped)",
        label,
        *epochs.shape,
        dropped["catch"],
    )
    return EpochBlock(
        epochs,
        metadata,
        list(info.ch_names),
        cfg.sfreq,
        tmin,
        pos2d,
        pos3d,
        dropped,
        compensation_grade(raw),
    )
