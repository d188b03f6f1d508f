"""Experimental design of the MEG twin: which image is shown when, as THINGS-MEG does it.

Every subject sees the same images in its own order: each exp image exactly once over
the study; each test image once per session (so n_sessions repetitions); catch trials
(`catch_fraction` of each run) show object-free images. Trials are spread evenly over
sessions and runs and shuffled within a run. Timing: image for `image_duration_s`, then
fixation for U(isi_mean - isi_jitter, isi_mean + isi_jitter) seconds.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

NA = "n/a"
EVENT_COLUMNS = ("onset", "duration", "trial_type", "things_category_nr", "value", "sample")


def schedule_subject(
    images: pd.DataFrame,
    n_sessions: int,
    n_runs: int,
    catch_fraction: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Trials of one subject in presentation order.

    Returns one row per trial: session_nr, run_nr, trial_nr (all 1-based) and image_index
    (row position in `images`, which holds exp, test and catch rows).
    """
    if not 0.0 <= catch_fraction < 0.5:
        raise ValueError(f"catch_fraction must be in [0, 0.5), got {catch_fraction}")
    kind = images["trial_type"].to_numpy()
    exp_idx, test_idx, catch_idx = (np.flatnonzero(kind == k) for k in ("exp", "test", "catch"))
    if catch_fraction > 0 and len(catch_idx) == 0:
        raise ValueError("catch_fraction > 0 but the image table has no catch images")
    exp_per_run = np.array_split(rng.permutation(exp_idx), n_sessions * n_runs)
    rows = []
    for ses in range(n_sessions):
        test_per_run = np.array_split(rng.permutation(test_idx), n_runs)
        for run in range(n_runs):
            shown = np.r_[exp_per_run[ses * n_runs + run], test_per_run[run]].astype(int)
            n_catch = int(round(catch_fraction * len(shown) / (1 - catch_fraction)))
            if catch_fraction > 0:
                n_catch = max(n_catch, 1)
                shown = np.r_[shown, rng.choice(catch_idx, n_catch)]
            if len(shown) == 0:
                raise ValueError(
                    f"session {ses + 1} run {run + 1} has no trials: "
                    "too few images for this many sessions x runs"
                )
            for t, idx in enumerate(rng.permutation(shown), start=1):
                rows.append((ses + 1, run + 1, t, int(idx)))
    return pd.DataFrame(rows, columns=["session_nr", "run_nr", "trial_nr", "image_index"])


def add_timing(
    run_trials: pd.DataFrame,
    sfreq: float,
    image_duration_s: float,
    isi_mean_s: float,
    isi_jitter_s: float,
    lead_s: float,
    tail_s: float,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, int]:
    """Onsets for one run; returns (trials + sample, onset, offset columns, n_samples).

    Onsets are whole samples so that events.tsv, the stim channel and the simulated
    responses agree exactly (`onset` = `sample` / sfreq; first_samp = 0).
    """
    n = len(run_trials)
    fixation = rng.uniform(isi_mean_s - isi_jitter_s, isi_mean_s + isi_jitter_s, n)
    onset_s = lead_s + np.r_[0.0, np.cumsum(image_duration_s + fixation[:-1])]
    sample = np.round(onset_s * sfreq).astype(np.int64)
    out = run_trials.copy()
    out["sample"] = sample
    out["onset"] = sample / sfreq
    out["offset"] = out["onset"] + image_duration_s
    n_samples = int(np.ceil((out["offset"].iloc[-1] + tail_s) * sfreq))
    return out, n_samples


def _nr_or_na(values: pd.Series, is_catch: np.ndarray) -> list:
    return [NA if c else int(v) for v, c in zip(values, is_catch, strict=True)]


def events_table(
    run_trials: pd.DataFrame, images: pd.DataFrame, image_duration_s: float
) -> pd.DataFrame:
    """The BIDS *_events.tsv rows of one run, columns exactly `EVENT_COLUMNS`;
    value (THINGS image nr) and things_category_nr are "n/a" on catch trials."""
    img = images.iloc[run_trials["image_index"].to_numpy()]
    catch = (img["trial_type"] == "catch").to_numpy()
    table = pd.DataFrame(
        {
            "onset": run_trials["onset"].to_numpy(),
            "duration": np.full(len(img), image_duration_s),
            "trial_type": img["trial_type"].to_numpy(),
            "things_category_nr": _nr_or_na(img["category_nr"], catch),
            "value": _nr_or_na(img["image_id"], catch),
            "sample": run_trials["sample"].to_numpy(),
        }
    )
    return table[list(EVENT_COLUMNS)]


def sample_attributes(trials: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """sourcedata/sample_attributes_P{n}.csv for one subject (rows in events order)."""
    img = images.iloc[trials["image_index"].to_numpy()].reset_index(drop=True)
    catch = (img["trial_type"] == "catch").to_numpy()
    return pd.DataFrame(
        {
            "trial_type": img["trial_type"],
            "image_on": trials["onset"].to_numpy(),
            "image_off": trials["offset"].to_numpy(),
            "image_path": img["image_path"],
            "image_nr": img["image_nr"],
            "things_image_nr": _nr_or_na(img["image_id"], catch),
            "things_category_nr": _nr_or_na(img["category_nr"], catch),
            "session_nr": trials["session_nr"].to_numpy(),
            "run_nr": trials["run_nr"].to_numpy(),
            "trial_nr": trials["trial_nr"].to_numpy(),
        }
    )
