"""Epochs per second of `preprocess_run` on this machine, on a THINGS-sized synthetic run.

A 272-channel CTF-like Raw at 1200 Hz (default 3 minutes, one image onset every
1.5 ± 0.2 s) is built in memory, then preprocessed with the paper's band-pass (FIR,
the default), with a Butterworth IIR band-pass, and without a band-pass. For the
resampling-order decision it also times the alternative order (resample the continuous
signal, then epoch at rounded onsets) on the same data, and prints the onset error that
rounding costs. Usage: python benchmarks/preprocess_throughput.py [--minutes 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import mne
import numpy as np
import pandas as pd
from scipy.signal import resample_poly

from megdecode.data.preprocess import PreprocessConfig, cut_epochs, pick_meg, preprocess_run


@dataclass(frozen=True)
class _Key:
    subject: str = "BENCH"
    session: str = "01"
    run: str = "01"


@dataclass
class _Recording:
    key: _Key
    raw: mne.io.BaseRaw
    events: pd.DataFrame


def synthetic_recording(
    minutes: float, sfreq: float = 1200.0, n_channels: int = 272, seed: int = 0
) -> _Recording:
    """Random-walk-plus-noise MEG on real CTF-275 sensor geometry, with an events table."""
    canon = mne.channels.read_meg_canonical_info("ctf275")
    chs = canon["chs"][:n_channels]
    names = [ch["ch_name"].split("-")[0] + "-1609" for ch in chs]
    info = mne.create_info(names, sfreq, "mag")
    for ch, src in zip(info["chs"], chs, strict=True):
        ch["loc"][:] = src["loc"]
        ch["coil_type"] = src["coil_type"]
    rng = np.random.default_rng(seed)
    n_times = int(minutes * 60 * sfreq)
    data = 1e-13 * (
        rng.standard_normal((n_channels, n_times))
        + 0.01 * rng.standard_normal((n_channels, n_times)).cumsum(1)
    )
    raw = mne.io.RawArray(data, info, verbose=False)
    onsets = np.arange(int(1.0 * sfreq), n_times - int(1.5 * sfreq), int(1.5 * sfreq))
    onsets = onsets + rng.integers(-int(0.2 * sfreq), int(0.2 * sfreq), size=len(onsets))
    n = len(onsets)
    events = pd.DataFrame(
        {
            "trial_index": np.arange(n),
            "onset": onsets / sfreq,
            "sample": onsets,
            "duration": 0.5,
            "trial_type": np.where(np.arange(n) % 20 == 19, "catch", "exp"),
            "image_id": np.arange(n),
            "category_id": np.arange(n) % 50,
            "category": [f"cat{i % 50}" for i in range(n)],
            "image_path": [f"images_meg/cat{i % 50}/img_{i}.png" for i in range(n)],
        }
    )
    return _Recording(_Key(), raw, events)


def resample_then_epoch(rec: _Recording, cfg: PreprocessConfig) -> tuple[np.ndarray, float]:
    """The rejected order: continuous band-pass + polyphase resample, then rounded onsets."""
    sfreq_in = rec.raw.info["sfreq"]
    data = rec.raw.get_data(picks=pick_meg(rec.raw.info, cfg))
    data = mne.filter.filter_data(
        data, sfreq_in, cfg.l_freq, cfg.h_freq, n_jobs=1, copy=False, verbose=False
    )
    down = round(sfreq_in / cfg.sfreq)
    low = resample_poly(data, 1, down, axis=-1)
    events = rec.events[rec.events["trial_type"] != "catch"]
    exact = events["sample"].to_numpy() / down
    onsets = np.round(exact).astype(int)
    epochs = cut_epochs(low, onsets, round(-cfg.tmin * cfg.sfreq), round(cfg.tmax * cfg.sfreq))
    return epochs, float(np.abs(onsets - exact).max() / cfg.sfreq)


def _time(fn, repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
        n = len(out.metadata) if hasattr(out, "metadata") else len(out[0])
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rec = synthetic_recording(args.minutes)
    print(
        f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f} (others share the CPUs)"
    )
    print(f"synthetic run: {rec.raw.info['nchan']} channels, {rec.raw.info['sfreq']:.0f} Hz, "
          f"{rec.raw.times[-1]:.0f} s, {len(rec.events)} trials")  # fmt: skip
    cases = {
        "band-pass FIR 0.1-40 Hz (things)": PreprocessConfig(preset="things-official"),
        "band-pass IIR 0.1-40 Hz": PreprocessConfig(preset="things-official", filter_method="iir"),
        "no band-pass (paper)": PreprocessConfig(),
    }
    rates = {}
    for name, cfg in cases.items():
        seconds, n = _time(lambda cfg=cfg: preprocess_run(rec, cfg), args.repeats)
        rates[name] = n / seconds
        print(f"{name:34s} {n:5d} epochs in {seconds:6.2f} s = {n / seconds:8.1f} epochs/s")
    things = PreprocessConfig(preset="things-official")
    seconds, n = _time(lambda: resample_then_epoch(rec, things), args.repeats)
    _, onset_error = resample_then_epoch(rec, things)
    fir = rates["band-pass FIR 0.1-40 Hz (things)"]
    print(
        f"{'alt: resample-then-epoch, FIR':34s} {n:5d} epochs in {seconds:6.2f} s = {n / seconds:8.1f} epochs/s"
    )
    print(f"ratio epoch-then-resample / resample-then-epoch throughput: {fir / (n / seconds):.2f}")
    print(
        f"onset error of resample-then-epoch: up to {onset_error * 1e3:.2f} ms; epoch-then-resample: 0 ms"
    )


if __name__ == "__main__":
    main()
