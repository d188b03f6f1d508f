"""What the live page replays: a run of the model's BIDS dataset, or noise standing in for one.

- a run of the BIDS dataset the model was trained on, at its native rate, with its events
  (sample, image id) so the page knows which image was on screen at each decode and can
  score the top-5 (`read_recording`);
- when no such recording is found, Gaussian noise with the subject's per-channel scale at
  the bundle's native rate, said so in the page: decodes flow, no hit rate (`noise_replay`).

Runs are opened without preloading, so a THINGS run (~0.8 GB at 1200 Hz) is read a block
at a time (`Replay.read`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode.bundle import ModelBundle
from megdecode.data.sensors import SensorMismatchError, match_sensors
from megdecode.serve.errors import ApiError

logger = logging.getLogger(__name__)

MAX_BLOCK_S = 10.0  # the most signal one data request returns
NOISE_S = 120.0  # length of the noise stand-in
EVENT_COLUMNS = ["sample", "image_id", "category", "image_path", "trial_type"]


@dataclass
class Replay:
    """A signal the page replays: (C, n_samples) at `sfreq`, channels in the bundle's order.

    events: sample, image_id, category, image_path, trial_type (empty for the noise).
    """

    source: str  # "recording" | "noise"
    subject: str
    run: str
    runs: list[str]
    sfreq: float
    n_samples: int
    channels: list[str]
    events: pd.DataFrame
    note: str
    read_block: Callable[[int, int], np.ndarray]
    lock: threading.Lock

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as (C, n) float32 little-endian, bounds checked."""
        limit = int(MAX_BLOCK_S * self.sfreq)
        if not 0 <= start < stop <= self.n_samples or stop - start > limit:
            raise ApiError(
                422,
                "invalid_range",
                f"need 0 <= start < stop <= {self.n_samples}, at most {limit} samples",
            )
        with self.lock:  # one reader per open file
            return np.ascontiguousarray(self.read_block(start, stop), "<f4")


def read_recording(
    root: Path, bundle: ModelBundle, subject: str, run: str | None, default_run: str
) -> Replay | str:
    """`run` of `subject` in `root` (else `default_run` when it exists, else the last run),
    or why none could be used."""
    from megdecode.data import bids

    try:
        keys = bids.find_runs(root, subjects=[subject])
    except FileNotFoundError as exc:
        return str(exc)
    names = [k.basename for k in keys]
    wanted = run or (default_run if default_run in names else names[-1])
    if wanted not in names:
        raise ApiError(404, "unknown_run", f"subject {subject} has runs {names}")
    key = keys[names.index(wanted)]
    try:
        rec = bids.read_run(root, key, preload=False)
    except (OSError, ValueError) as exc:
        logger.warning("live page: cannot read %s: %s", wanted, exc)
        return f"{wanted} could not be read ({type(exc).__name__})"
    raw = rec.raw
    try:  # by sensor name: a recording of another CTF system's serial replays too
        picks = match_sensors(
            bundle.ch_names, raw.ch_names, allow_extra=True,
            expected_label="the model", got_label=wanted,
        ).tolist()  # fmt: skip
    except SensorMismatchError as exc:
        return str(exc)
    events = rec.events[EVENT_COLUMNS].copy()
    return Replay(
        "recording",
        subject,
        wanted,
        names,
        float(raw.info["sfreq"]),
        int(raw.n_times),
        list(bundle.ch_names),
        events,
        f"{wanted} of {root}",
        lambda a, b: raw.get_data(picks=picks, start=a, stop=b),
        threading.Lock(),
    )


def noise_replay(bundle: ModelBundle, subject: str, why: str) -> Replay:
    """White noise at the subject's native rate and per-channel scale: the stand-in recording."""
    scaler = bundle.scalers.get(subject)
    sfreq = float(scaler.raw_sfreq or 0) if scaler is not None else 0.0
    if scaler is None or sfreq <= 0:
        raise ApiError(
            422,
            "live_unavailable",
            f"{why}; and the bundle records no native rate to replay noise at",
        )
    scale = np.asarray(scaler.scale, np.float64)[:, None]

    def read(start: int, stop: int) -> np.ndarray:
        # One seed per block start: the same request returns the same samples.
        return np.random.default_rng([0, start]).standard_normal((len(scale), stop - start)) * scale

    empty = pd.DataFrame(
        {
            "sample": pd.Series(dtype="int64"),
            "image_id": pd.Series(dtype="int64"),
            "category": "",
            "image_path": "",
            "trial_type": "",
        }
    )
    return Replay(
        "noise",
        subject,
        "noise",
        ["noise"],
        sfreq,
        int(NOISE_S * sfreq),
        list(bundle.ch_names),
        empty,
        f"{why}: replaying noise (no seen images, no hit rate)",
        read,
        threading.Lock(),
    )
