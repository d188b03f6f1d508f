"""How much memory the twin needs to simulate one run, checked before anything is written.

The simulator holds one run at a time (`simulate._simulate_subject` synthesises, writes and
drops each run before the next), so its peak is that of the longest run, not of the
study. A run's peak is a fixed number of bytes per channel-sample: the float32 run array,
the largest float32/float64 temporary of one noise source added into it, and the float64
copy that `mne.io.RawArray` makes when the run is written (measured with tracemalloc at
1200 Hz: ~21 bytes per channel-sample, the same for 1 and 2 runs). A config whose runs are
too long for the machine (e.g. the `full` preset cut to one session without cutting its
categories: ~2,250 trials in each of 10 runs, 61 min at 1200 Hz, ~25 GB per run) is refused
up front with the estimate, instead of being OOM-killed half-way through a run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from megdecode.twin.config import TwinConfig

logger = logging.getLogger(__name__)

# Peak bytes per channel-sample of one run (stim channel included); measured ~21, rounded up.
BYTES_PER_CHANNEL_SAMPLE = 24
FIXED_BYTES = 200e6  # tables, leadfields, imported modules' buffers: measured ~150 MB at tiny
N_CHANNELS = 273  # the CTF-275 twin's 272 MEG channels + the UPPT001 stim channel
MEMINFO = Path("/proc/meminfo")


class TwinMemoryError(MemoryError):
    """A run of this config does not fit the memory budget; raised before anything is written."""


@dataclass(frozen=True)
class RunEstimate:
    """The longest run of a config and its simulation peak (see the module docstring)."""

    n_trials: int
    n_samples: int
    minutes: float
    peak_bytes: int


def longest_run_trials(cfg: TwinConfig) -> int:
    """Trials of the fullest run: exp images are split evenly over all runs of the study,
    test images over the runs of each session, plus that run's catch trials
    (`twin.design.schedule_subject`)."""
    n_exp = cfg.n_categories * cfg.n_exp_per_category
    shown = math.ceil(n_exp / (cfg.n_sessions * cfg.n_runs)) + math.ceil(
        cfg.n_test_categories / cfg.n_runs
    )
    n_catch = 0
    if cfg.catch_fraction > 0:
        n_catch = max(1, round(cfg.catch_fraction * shown / (1 - cfg.catch_fraction)))
    return shown + n_catch


def estimate_run(cfg: TwinConfig, n_channels: int = N_CHANNELS) -> RunEstimate:
    """The longest run's length (its mean + 3 sd: fixations are uniform on
    isi_mean +- isi_jitter, sd jitter / sqrt(3) each) and its simulation peak."""
    n_trials = longest_run_trials(cfg)
    spread = 3 * cfg.isi_jitter_s / math.sqrt(3) * math.sqrt(n_trials)
    seconds = (
        cfg.run_lead_s
        + n_trials * (cfg.image_duration_s + cfg.isi_mean_s)
        + spread
        + cfg.run_tail_s
    )
    n_samples = math.ceil(seconds * cfg.sfreq)
    peak = int(FIXED_BYTES + BYTES_PER_CHANNEL_SAMPLE * n_channels * n_samples)
    return RunEstimate(n_trials, n_samples, seconds / 60, peak)


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), or None
    where there is no /proc (the check is then skipped)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_run_memory(
    cfg: TwinConfig, budget_bytes: float | None = None, n_parallel: int = 1
) -> RunEstimate:
    """Refuse a config whose `n_parallel` concurrent runs would not fit `budget_bytes`
    (default: the memory available now); returns the estimate when they fit."""
    est = estimate_run(cfg)
    budget = available_memory_bytes() if budget_bytes is None else budget_bytes
    need = est.peak_bytes * n_parallel
    if budget is not None and need > budget:
        raise TwinMemoryError(
            f"the twin's longest run needs ~{need / 1e9:.1f} GB to simulate "
            f"({n_parallel} at a time x {est.n_trials} trials, {est.minutes:.0f} min, "
            f"{est.n_samples} samples x {N_CHANNELS} channels at {cfg.sfreq:g} Hz, "
            f"~{BYTES_PER_CHANNEL_SAMPLE} B per channel-sample), over the "
            f"{budget / 1e9:.1f} GB budget: give it more runs or sessions, fewer categories "
            "or a lower sfreq (THINGS-MEG runs hold ~225 trials, ~6 min)"
        )
    logger.info(
        "twin: longest run %d trials, %.1f min, peak ~%.2f GB to simulate",
        est.n_trials,
        est.minutes,
        est.peak_bytes / 1e9,
    )
    return est
