"""The epochs of a search that does not fit the object store: each trial streams them.

`search.shared.SharedEpochs` puts every epoch in Ray's object store once, for all trials;
past the object store budget (`search.epoch_memory`) a search uses `StreamedEpochs`
instead. The driver reads only the metadata and plans the row groups of each split
(`megdecode.data.store.row_groups.plan_row_groups`, verified like every store read) and
ships that plan with the latents: kilobytes per thousand epochs. Each trial then reads the
MEG itself, a buffer of row groups at a time (`megdecode.rundata_stream.StreamedSplit`),
so a trial holds at most `stream_buffer_rows` epochs of MEG per split it is reading, plus
one row group while decoding it.

Why pyarrow in the trial and not Ray Data: Ray Data's read tasks need CPUs of their own,
and the running trials hold the cluster's CPUs (Tune reserves `cpus_per_trial` for each).
A trial that iterated a Ray Dataset would wait for read tasks that cannot be scheduled
until a trial ends: with every CPU taken by trials, the search deadlocks. The trial's own
process reads through the store's verified reader instead, on the CPUs Tune gave it.

On several nodes each trial reads the store where it runs, so the store must be a URI or a
shared mount (`search.cluster_storage` checks it before any trial).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from megdecode.data import store as epoch_store
from megdecode.data.store.row_groups import RowGroupRows, plan_row_groups
from megdecode.latents.targets import load_target
from megdecode.rundata import SPLIT_GROUPS, Latents, RunData, load_run_data
from megdecode.rundata_stream import StreamConfig, build_streamed_run_data
from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)


class EpochSource(Protocol):
    """What a trial and the search report need of the search's epochs, shared or streamed."""

    @property
    def nbytes(self) -> int:
        """MEG bytes this object carries to every trial."""
        ...

    def run_data(self, cfg: FitConfig) -> RunData[Any]:
        """The trial's `RunData` for `cfg`'s window and latent."""
        ...

    def resident_run_data(self, cfg: FitConfig) -> RunData[Any]:
        """`cfg`'s `RunData` in memory as `SplitTensors` (the ridge baseline needs arrays)."""
        ...


@dataclass
class StreamedEpochs:
    """The row-group plan and metadata of each split group, the latents, the read settings."""

    store: str
    latents_dir: str
    manifest: epoch_store.Manifest
    parts: dict[str, list[RowGroupRows]]
    meta: dict[str, pd.DataFrame]
    latents: dict[str, Latents]
    config: StreamConfig

    @classmethod
    def load(
        cls,
        store: str | Path,
        latents_dir: str | Path,
        latent_names: list[str],
        config: StreamConfig | None = None,
    ) -> StreamedEpochs:
        """Plan every split group's reads (metadata only) and load the named latents."""
        manifest = epoch_store.read_manifest(store)
        parts, meta = {}, {}
        for group, splits in SPLIT_GROUPS.items():
            meta[group], parts[group] = plan_row_groups(store, splits)
            if not len(meta[group]):
                raise ValueError(f"the store {store} has no epochs with split in {splits}")
        latents = {name: load_target(latents_dir, name) for name in latent_names}
        return cls(
            str(store), str(latents_dir), manifest, parts, meta, latents, config or StreamConfig()
        )

    @property
    def nbytes(self) -> int:
        return 0  # no MEG travels with the plan

    @property
    def rows(self) -> int:
        return sum(len(m) for m in self.meta.values())

    def run_data(self, cfg: FitConfig) -> RunData[Any]:
        """The streamed `RunData` of `cfg`: the rows `rundata.load_run_data(cfg)` reads."""
        t = cfg.train
        if t.latent not in self.latents:
            raise KeyError(
                f"latent {t.latent!r} was not loaded for this search; loaded: {sorted(self.latents)}"
            )
        return build_streamed_run_data(
            self.store, self.manifest, self.parts, self.meta, self.latents[t.latent],
            t.latent, t.tmin, t.tmax, self.config,
        )  # fmt: skip

    def resident_run_data(self, cfg: FitConfig) -> RunData[Any]:
        """`cfg`'s window read from the store into memory (the driver's ridge baseline)."""
        return load_run_data(replace(cfg, store=self.store, latents_dir=self.latents_dir))
