"""A split whose MEG stays in the store: read a buffer of row groups at a time, per pass.

A search whose epochs do not fit the object store trains each trial on `StreamedSplit`s
(`megdecode.search.streamed`). A split keeps in memory only its per-row arrays (metadata,
subject numbers, image codes, the row of each epoch's latent) and at most `buffer_rows`
epochs of MEG: row groups are read through the store's verified reader
(`megdecode.data.store.row_groups`), the window cut as each is read. Targets are looked up
in the latent table per batch.

Batches. In store order without a generator (validation, test: the same batches as
`SplitTensors.batches`, so predictions come back in store order). With a generator:

- a split that fits the buffer is read whole, in store order, and permuted with one
  ``torch.randperm(N, generator)``: exactly `SplitTensors.batches`, so a streamed run with
  a large enough buffer is bit-identical to the in-memory run of the same seed. It is read
  once and kept (it fits the bound): the store's row groups mix splits, so re-reading a
  small validation split would cost a pass over most of the store every epoch;
- a larger split is read in buffers of whole row groups taken in an order drawn from the
  generator, each buffer permuted with the generator; the rows a buffer leaves over (fewer
  than a batch) open the next one. Every row appears once per pass and the order is
  deterministic for a seed, but it is not the in-memory order: results differ from a shared
  search's by the shuffle, as two seeds do.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from megdecode.data import store as epoch_store
from megdecode.data.store.row_groups import RowGroupReader, RowGroupRows
from megdecode.rundata import (
    SPLIT_GROUPS,
    Batch,
    Latents,
    RunData,
    assemble_run_data,
    latent_rows,
    subject_numbers,
)

logger = logging.getLogger(__name__)

DEFAULT_BUFFER_ROWS = 2048  # ~400 MB of THINGS epochs (271 x 181 float32); 8 row groups of 256


@dataclass(frozen=True)
class StreamConfig:
    """How a streamed split reads: MEG rows held at most per split while a pass runs."""

    buffer_rows: int = DEFAULT_BUFFER_ROWS

    def __post_init__(self) -> None:
        if self.buffer_rows < 2:
            raise ValueError(f"stream_buffer_rows: expected >= 2 rows, got {self.buffer_rows}")


@dataclass
class StreamedSplit:
    """One split's rows in store order; MEG read from `parts` (row groups) on every pass.

    meta: N rows, laid out as `parts`' kept rows end to end; latent_row: (N,) rows of
    `latents` (L, F). `peak_rows` is the most MEG rows a pass has held (the buffer bound).
    """

    store: str
    manifest: epoch_store.Manifest
    parts: list[RowGroupRows]
    window: slice
    meta: pd.DataFrame
    subject: torch.Tensor  # (N,) long
    latent_row: np.ndarray  # (N,) int
    latents: np.ndarray  # (L, F) float32, shared by the splits of a run
    buffer_rows: int = DEFAULT_BUFFER_ROWS
    image: torch.Tensor = field(init=False, repr=False)  # (N,) long image codes
    reader: RowGroupReader = field(init=False, repr=False)
    peak_rows: int = field(default=0, init=False)
    # the split's MEG when it fits the buffer: read once, kept for every later pass
    _resident: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if sum(p.kept for p in self.parts) != len(self.meta):
            raise ValueError(
                f"row groups hold {sum(p.kept for p in self.parts)} rows for {len(self.meta)} metadata rows"
            )
        codes, _ = pd.factorize(self.meta["image_id"])
        self.image = torch.from_numpy(codes.astype(np.int64))
        subjects = sorted(self.meta["subject"].unique())
        self.reader = RowGroupReader(self.store, self.window, self.manifest, subjects or None)

    @property
    def n_times(self) -> int:
        return self.window.stop - self.window.start

    @property
    def target(self) -> torch.Tensor:
        """(N, F): every row's latent, built on demand (bundles take the training mean/std)."""
        return torch.from_numpy(self.latents[self.latent_row])

    def batches(self, size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """`SplitTensors.batches` from the store; see the module docstring for the order."""
        n = len(self.meta)
        if size < 1:
            raise ValueError(f"batch size: expected >= 1, got {size}")
        whole = n <= self.buffer_rows
        largest = max((p.kept for p in self.parts), default=0)
        if not whole and largest + size - 1 > self.buffer_rows:
            raise ValueError(
                f"stream_buffer_rows={self.buffer_rows} cannot hold a row group of {self.store} "
                f"({largest} rows of this split) plus a partial batch ({size - 1} rows): "
                f"set it to at least {largest + size - 1}"
            )
        shuffle = generator is not None and not whole
        order = (
            torch.randperm(len(self.parts), generator=generator).tolist()
            if shuffle
            else range(len(self.parts))
        )
        if whole and self._resident is not None:  # read by an earlier pass, kept: it fits
            yield from self._emit(np.arange(n), self._resident, size, generator, True)
            return
        self.reader.start_pass()
        try:
            yield from self._pass(size, generator, order)
        finally:
            self.reader.end_pass()

    def _pass(
        self, size: int, generator: torch.Generator | None, order: Sequence[int]
    ) -> Iterator[Batch]:
        """One pass over the row groups in `order`, a buffer at a time."""
        starts = np.cumsum([0] + [p.kept for p in self.parts])
        carry_rows, carry_meg = np.empty(0, np.int64), None
        fill: list[int] = []
        held = 0
        for k, i in enumerate(order):
            fill.append(i)
            held += self.parts[i].kept
            last = k == len(order) - 1
            if (
                not last
                and len(carry_rows) + held + self.parts[order[k + 1]].kept <= self.buffer_rows
            ):
                continue
            rows, meg = self._read(fill, starts, carry_rows, carry_meg)
            fill, held = [], 0
            if last and len(rows) == len(self.meta):  # the whole split: keep it for later passes
                self._resident = meg
            rest = yield from self._emit(rows, meg, size, generator, last)
            carry_rows, carry_meg = rows[rest], meg[rest]

    def _emit(
        self,
        rows: np.ndarray,
        meg: np.ndarray,
        size: int,
        generator: torch.Generator | None,
        last: bool,
    ) -> Generator[Batch, None, np.ndarray]:
        """The batches of one buffer (permuted when shuffling); returns the rows left over
        (fewer than a batch, positions in the buffer) unless it is the pass's `last`."""
        perm = (
            torch.randperm(len(rows), generator=generator)
            if generator is not None
            else torch.arange(len(rows))
        )
        cut = len(rows) if last else len(rows) - len(rows) % size
        for begin in range(0, cut, size):
            local = perm[begin : min(begin + size, cut)].numpy()
            if generator is not None and len(local) < 2:
                continue  # the in-memory rule: a trailing singleton is dropped when shuffling
            yield self._batch(rows[local], meg[local])
        return perm[cut:].numpy()

    def _read(
        self,
        fill: list[int],
        starts: np.ndarray,
        carry_rows: np.ndarray,
        carry_meg: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The carried rows, then the row groups of `fill`: (split row indices (k,), MEG (k, C, T))."""
        rows = np.concatenate([carry_rows, *(np.arange(starts[i], starts[i + 1]) for i in fill)])
        meg = np.empty((len(rows), len(self.manifest.ch_names), self.n_times), np.float32)
        at = len(carry_rows)
        if carry_meg is not None and at:
            meg[:at] = carry_meg
        for i in fill:
            kept = self.parts[i].kept
            self.reader.read(self.parts[i], out=meg[at : at + kept])
            at += kept
        self.peak_rows = max(self.peak_rows, len(rows))
        return rows, meg

    def _batch(self, rows: np.ndarray, meg: np.ndarray) -> Batch:
        idx = torch.from_numpy(rows)
        return Batch(
            torch.from_numpy(meg),
            self.subject[idx],
            torch.from_numpy(self.latents[self.latent_row[rows]]),
            self.image[idx],
        )


def build_streamed_run_data(
    store: str | Path,
    manifest: epoch_store.Manifest,
    parts: Mapping[str, list[RowGroupRows]],
    meta: Mapping[str, pd.DataFrame],
    latents: Latents,
    latent: str,
    tmin: float,
    tmax: float,
    config: StreamConfig = StreamConfig(),
) -> RunData[StreamedSplit]:
    """The `RunData` that `rundata.build_run_data` gives for the same rows, streamed.

    parts[group], meta[group]: `megdecode.data.store.row_groups.plan_row_groups` of the
    group's splits (`SPLIT_GROUPS`), rows in store order.
    """
    window = epoch_store.window_slice(manifest.times, manifest.sfreq, tmin, tmax)
    subjects = sorted(manifest.subjects)
    splits = {
        group: StreamedSplit(
            store=str(store),
            manifest=manifest,
            parts=parts[group],
            window=window,
            meta=meta[group],
            subject=torch.from_numpy(subject_numbers(meta[group], subjects)),
            latent_row=latent_rows(meta[group], latents[0], latent),
            latents=latents[1],
            buffer_rows=config.buffer_rows,
        )
        for group in SPLIT_GROUPS
    }
    return assemble_run_data(splits, manifest, np.asarray(manifest.times)[window], latents)
