"""Decode scheduling of one stream connection: which windows to decode, and when.

Windows are taken at "virtual onsets" every ``stride`` native samples (25 ms by default,
rounded to the native grid): decode k covers [onset_k + tmin, onset_k + tmax]. The
samples go through `megdecode.serve.online_preprocess.OnlinePreprocessor`; this module
decides which of the onsets it made ready are decoded, dropping those that fell too far
behind real time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from megdecode.serve.online_preprocess import OnlinePreprocessor
from megdecode.serve.stream import StreamError, StreamSpec

logger = logging.getLogger(__name__)


@dataclass
class Tick:
    """Onsets to decode now, how many were dropped, how far the newest is behind real time."""

    onsets: np.ndarray  # (K,) native samples
    skipped: int  # onsets dropped to catch up with real time
    lag_s: float  # wall clock minus the signal time of the newest window's last sample


class StreamSession:
    """Decode scheduling for one connection: a window every `stride` native samples.

    `push` filters a chunk and queues the onsets it made ready; `due` hands the queue
    over for one (stacked) decode. Real time is the wall clock since the first chunk
    against the signal received: a queued onset whose window ended more than
    `max_backlog_s` ago is dropped (and reported), except the newest, rather than
    decoded ever later by a model slower than the stride. A replay sent faster than real
    time is never behind, so it loses nothing.
    """

    def __init__(
        self,
        spec: StreamSpec,
        n_channels: int,
        stride_s: float,
        max_backlog_s: float,
        max_chunk_s: float = 2.0,
        clock=time.monotonic,
        picks: np.ndarray | None = None,
    ) -> None:
        # picks: rows of a received chunk in the model's channel order (a client that named
        # its channels); None when chunks arrive in the model's order.
        self.picks = picks
        self.stride = max(1, int(round(stride_s * spec.sfreq_in)))
        self.max_chunk = int(max_chunk_s * spec.sfreq_in)
        self.pre = OnlinePreprocessor(spec, n_channels, extra_capacity=self.max_chunk + self.stride)
        self.max_backlog_s, self.clock = max_backlog_s, clock
        self.next_onset = -(-self.pre.first_onset // self.stride) * self.stride
        self.t0: float | None = None
        self.queued: list[int] = []

    def room(self) -> int:
        """Samples the buffer can take before it overwrites one that a pending window needs."""
        first = (self.queued[0] if self.queued else self.next_onset) + self.pre.grid.start_in
        return self.pre.buffer.capacity - (self.pre.buffer.total - max(first, 0))

    @property
    def stride_s(self) -> float:
        return self.stride / self.pre.spec.sfreq_in

    def push(self, chunk: np.ndarray) -> int:
        """Filter (C, n) raw samples (rows as sent; `picks` applied) into the buffer; the number
        of onsets now queued."""
        if chunk.ndim != 2 or chunk.shape[1] > self.max_chunk:
            raise StreamError(f"a chunk must be (C, n) with n <= {self.max_chunk} samples")
        if self.picks is not None:
            chunk = chunk[self.picks]
        if self.t0 is None:
            self.t0 = self.clock()
        self.pre.push(chunk)
        last = self.pre.last_ready_onset
        if last >= self.next_onset:
            self.queued.extend(range(self.next_onset, last + 1, self.stride))
            self.next_onset = self.queued[-1] + self.stride
        return len(self.queued)

    def lag_s(self, onset: int) -> float:
        """Wall clock since the first chunk minus the signal time at the end of `onset`'s window."""
        end_sample = onset + self.pre.grid.start_in + self.pre.grid.n_in
        now = self.clock()
        return (now - (now if self.t0 is None else self.t0)) - end_sample / self.pre.spec.sfreq_in

    def due(self) -> Tick:
        """Take the queued onsets: all of them, or, when behind real time, the recent ones."""
        onsets = np.array(self.queued, np.int64)
        self.queued = []
        if not len(onsets):
            return Tick(onsets, 0, 0.0)
        lags = np.array([self.lag_s(int(o)) for o in (onsets[0], onsets[-1])])
        skipped = 0
        if lags[0] > self.max_backlog_s and len(onsets) > 1:
            stale = lags[0] - (onsets - onsets[0]) / self.pre.spec.sfreq_in > self.max_backlog_s
            stale[-1] = False
            skipped, onsets = int(stale.sum()), onsets[~stale]
        return Tick(onsets, skipped, float(lags[1]))
