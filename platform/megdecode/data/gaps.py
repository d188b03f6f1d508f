"""Where a recording's samples are not one continuous signal, and which epochs cross there.

An epoch cut across a gap joins two unrelated stretches of signal: the step between them
is filtered and resampled into a transient that looks like a brain response. Two kinds of
gap exist in MEG files as MNE reads them:

- annotated spans: ``BAD_ACQ_SKIP`` (acquisition skipped samples; MNE writes it for
  several systems), ``BAD boundary`` / ``EDGE boundary`` (files concatenated);
- CTF trials: a ``.ds`` recorded in trial mode (several trials of ``block_size``
  samples each, as ``testdata_ctf_short_discontinuous.ds``) is read as one array, the
  trials back to back, and MNE marks no boundary between them.

THINGS-MEG runs are continuous (one trial per ``.ds``), so the preprocessing drops no
epoch there; on a trial-mode file it drops each epoch whose padded window crosses a
trial boundary and reports the count as ``dropped["gap"]``.
"""

from __future__ import annotations

import logging

import mne
import numpy as np
from mne.io.ctf.ctf import RawCTF

logger = logging.getLogger(__name__)

GAP_DESCRIPTIONS = ("BAD_ACQ_SKIP", "BAD boundary", "EDGE boundary")


def ctf_trial_starts(raw: mne.io.BaseRaw) -> list[int]:
    """Data-array indices where a CTF trial after the first begins (empty when continuous).

    MNE keeps the trial length of a ``.ds`` as ``block_size`` of its reader's extras, the
    only place that says where one trial ends: there is no public accessor.
    """
    extras = getattr(raw, "_raw_extras", None) or [{}]
    block = int(extras[0].get("block_size", 0) or 0) if isinstance(extras[0], dict) else 0
    if not isinstance(raw, RawCTF) or block <= 0 or raw.n_times <= block:
        return []
    return list(range(block, raw.n_times, block))


def annotated_gaps(raw: mne.io.BaseRaw) -> list[tuple[int, int]]:
    """[start, stop) data-array spans of the gap annotations (`GAP_DESCRIPTIONS`)."""
    spans = []
    offset = raw.first_time if raw.annotations.orig_time is not None else 0.0
    sfreq = float(raw.info["sfreq"])
    for annot in raw.annotations:
        if not str(annot["description"]).startswith(GAP_DESCRIPTIONS):
            continue
        start = int(round((float(annot["onset"]) - offset) * sfreq))
        stop = start + int(round(float(annot["duration"]) * sfreq))
        spans.append((start, stop))
    return spans


def gaps(raw: mne.io.BaseRaw) -> list[tuple[int, int]]:
    """Every gap as a [start, stop) span; a zero-length span (b, b) is a boundary at b."""
    return sorted(annotated_gaps(raw) + [(b, b) for b in ctf_trial_starts(raw)])


def crosses_gap(starts: np.ndarray, length: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """(N,) bool: whether the window [start, start + length) meets a gap.

    A boundary (b, b) is met when the window holds samples on both sides of it
    (start < b < start + length); a span [s, e) when the two overlap.
    """
    starts = np.asarray(starts, dtype=np.int64)
    hit = np.zeros(len(starts), dtype=bool)
    for s, e in spans:
        if e > s:
            hit |= (starts < e) & (s < starts + length)
        else:
            hit |= (starts < s) & (s < starts + length)
    return hit
