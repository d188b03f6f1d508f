"""The epochs and targets of one run, split, windowed and paired with their latents.

`build_run_data` is the one place that turns epochs into a `RunData`: it cuts the
window (`megdecode.data.store.window_slice`), pairs every epoch with its image's latent
and numbers the subjects. Its two callers differ only in where the epochs come from:
`load_run_data` reads the store from disk (`megdecode train`, `fit`, evaluation), and
`megdecode.search.shared.SharedEpochs.run_data` hands over arrays a Tune search read
once into Ray's object store. A trial therefore trains on exactly the data that
`megdecode train` reads for the same config, which is what makes a trial reproducible
outside Tune. A search whose epochs do not fit the object store streams them instead
(`megdecode.rundata_stream`): the same rows, latents and subject numbers
(`latent_rows`, `subject_numbers`, `assemble_run_data`), their MEG read per batch buffer.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np
import pandas as pd
import torch

from megdecode.config import ConfigError
from megdecode.data import store as epoch_store
from megdecode.latents.targets import load_target

if TYPE_CHECKING:
    from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)

# The splits of the store behind each split of a run: the test split holds both test sets.
SPLIT_GROUPS = {"train": ("train",), "val": ("val",), "test": ("test", "test_large")}
# A latent table as `megdecode.latents.targets.load_target` returns it:
# image ids (L,), values (L, F), parts [(name, F_name)] (blocks of F).
Latents = tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]


@dataclass
class Batch:
    """One minibatch. meg: (B, C, T) float32; subject: (B,) long; target: (B, F) float32;
    image: (B,) long, equal where rows show the same image (the CLIP loss's false negatives).
    """

    meg: torch.Tensor
    subject: torch.Tensor
    target: torch.Tensor
    image: torch.Tensor

    def to(self, device: str | torch.device) -> Batch:
        return Batch(
            self.meg.to(device),
            self.subject.to(device),
            self.target.to(device),
            self.image.to(device),
        )


class EpochSplit(Protocol):
    """What training, evaluation and bundles read of a split: `SplitTensors` holds it in
    memory, `megdecode.rundata_stream.StreamedSplit` streams its MEG from the store."""

    meta: pd.DataFrame  # N rows, store order
    image: torch.Tensor  # (N,) long image codes

    @property
    def target(self) -> torch.Tensor:
        """(N, F) float32: the latent of every row."""
        ...

    @property
    def n_times(self) -> int:
        """T, the samples of the window."""
        ...

    def batches(self, size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled (from `generator`) or in store order; see `SplitTensors.batches`."""
        ...


@dataclass
class SplitTensors:
    """All epochs of one split as tensors, so a batch is an index, not a Python loop."""

    meg: torch.Tensor  # (N, C, T)
    subject: torch.Tensor  # (N,)
    target: torch.Tensor  # (N, F)
    meta: pd.DataFrame  # N rows
    # (N,) long code of each row's image_id (equal codes = same image), from meta
    image: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if "image_id" not in self.meta.columns:
            raise ValueError("meta needs an image_id column (the CLIP loss masks repeated images)")
        if len(self.meta) != len(self.meg):
            raise ValueError(f"meta has {len(self.meta)} rows for {len(self.meg)} epochs")
        codes, _ = pd.factorize(self.meta["image_id"])
        self.image = torch.from_numpy(codes.astype(np.int64))

    @property
    def n_times(self) -> int:
        return int(self.meg.shape[2])

    def batches(self, size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled when a generator is given; a trailing singleton is dropped when shuffling."""
        n = len(self.meta)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, size):
            idx = order[start : start + size]
            if generator is not None and len(idx) < 2:
                continue
            yield Batch(self.meg[idx], self.subject[idx], self.target[idx], self.image[idx])


S = TypeVar("S", bound=EpochSplit)


@dataclass
class RunData(Generic[S]):
    """The epochs and targets of one run, split, with what the bundle must remember.

    S: the splits' type. `SplitTensors` (in memory) everywhere but in a search that streams
    its epochs (`megdecode.rundata_stream`); training and bundles take either.
    """

    train: S
    val: S
    test: S
    subjects: list[str]
    ch_names: list[str]
    pos2d: np.ndarray  # (C, 2)
    sfreq: float
    tmin: float  # time of the window's first sample (s)
    tmax: float  # time of its last sample
    latent_ids: np.ndarray  # (L,)
    latents: np.ndarray  # (L, F)
    latent_parts: list[tuple[str, int]] = field(
        default_factory=list
    )  # [(name, F_name)]: blocks of F


def split_groups(
    X: np.ndarray, meta: pd.DataFrame, store: str | Path
) -> tuple[dict[str, np.ndarray], dict[str, pd.DataFrame]]:
    """The rows of each `SPLIT_GROUPS` group, in store order: (meg, meta) per group.

    X: (N, C, T) epochs of `store` with their N metadata rows. Raises when a group has no
    epochs, since a run cannot train, stop early or be scored without it.
    """
    meg, metas = {}, {}
    for group, splits in SPLIT_GROUPS.items():
        keep = meta["split"].isin(splits).to_numpy()
        if not keep.any():
            raise ValueError(f"the store {store} has no epochs with split in {splits}")
        meg[group], metas[group] = X[keep], meta[keep].reset_index(drop=True)
    return meg, metas


def read_groups(
    store: str | Path, tmin: float | None = None, tmax: float | None = None
) -> tuple[dict[str, np.ndarray], dict[str, pd.DataFrame]]:
    """Every epoch of the store, per split group (pyarrow, one pass), at window [tmin, tmax]
    (None: the full stored window). The reader keeps only the window's samples, so memory is
    the window's epochs plus one row group."""
    every = [split for splits in SPLIT_GROUPS.values() for split in splits]
    X, meta = epoch_store.load_epochs(store, splits=every, tmin=tmin, tmax=tmax)
    return split_groups(X, meta, store)


def build_run_data(
    manifest: epoch_store.Manifest,
    meg: Mapping[str, np.ndarray],
    meta: Mapping[str, pd.DataFrame],
    latents: Latents,
    latent: str,
    tmin: float,
    tmax: float,
    *,
    times: np.ndarray | None = None,
) -> RunData[SplitTensors]:
    """The `RunData` of window [tmin, tmax] s and latent table `latents` (named `latent`).

    meg[group]: (N_group, C, T) float32 with rows matching meta[group], for each group of
    `SPLIT_GROUPS`; `times` (T,) are the times of its samples (default: the store's full
    window, ``manifest.times``). The window is a view of those arrays: a search shares one
    read-only copy of the epochs between its trials (no copy per trial), while a run read
    from disk has read its window only (`read_groups`).
    """
    times = np.asarray(manifest.times if times is None else times)
    window = epoch_store.window_slice(times, manifest.sfreq, tmin, tmax)
    subjects = sorted(manifest.subjects)

    def split(group: str) -> SplitTensors:
        rows = meta[group]
        epochs = meg[group][:, :, window]
        with warnings.catch_warnings():  # a search's arrays are read-only; nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(epochs)
        return SplitTensors(
            meg=tensor,
            subject=torch.from_numpy(subject_numbers(rows, subjects)),
            target=torch.from_numpy(latents[1][latent_rows(rows, latents[0], latent)]),
            meta=rows,
        )

    splits = {group: split(group) for group in SPLIT_GROUPS}
    return assemble_run_data(splits, manifest, times[window], latents)


def latent_rows(meta: pd.DataFrame, latent_ids: np.ndarray, latent: str) -> np.ndarray:
    """(N,) the row of the latent table of each epoch's image; an image without one is a KeyError."""
    row = pd.Index(latent_ids).get_indexer(meta["image_id"].to_numpy())
    if (row < 0).any():
        missing = meta["image_id"].to_numpy()[row < 0][:5].tolist()
        raise KeyError(
            f"{int((row < 0).sum())} epochs have no {latent!r} latent, e.g. image ids {missing}"
        )
    return row


def subject_numbers(meta: pd.DataFrame, subjects: list[str]) -> np.ndarray:
    """(N,) int64: each epoch's subject as its position in the sorted `subjects`."""
    number = {s: i for i, s in enumerate(subjects)}
    return meta["subject"].map(number).to_numpy(np.int64, copy=True)


def assemble_run_data(
    splits: Mapping[str, S], manifest: epoch_store.Manifest, kept: np.ndarray, latents: Latents
) -> RunData[S]:
    """The `RunData` of ready splits (one per `SPLIT_GROUPS` group); `kept`: the window's times."""
    latent_ids, values, parts = latents
    return RunData(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        subjects=sorted(manifest.subjects),
        ch_names=list(manifest.ch_names),
        pos2d=np.asarray(manifest.pos2d),
        sfreq=manifest.sfreq,
        tmin=float(kept[0]),
        tmax=float(kept[-1]),
        latent_ids=latent_ids,
        latents=values,
        latent_parts=parts,
    )


def load_run_data(cfg: FitConfig) -> RunData[SplitTensors]:
    """Read the store and the latent table of `cfg` from disk into its `RunData`."""
    if not cfg.store or not cfg.latents_dir:
        raise ConfigError("store and latents_dir must be set")
    t = cfg.train
    manifest = epoch_store.read_manifest(cfg.store)
    window = epoch_store.window_slice(manifest.times, manifest.sfreq, t.tmin, t.tmax)
    meg, meta = read_groups(cfg.store, t.tmin, t.tmax)
    latents = load_target(cfg.latents_dir, t.latent)
    times = np.asarray(manifest.times)[window]
    return build_run_data(manifest, meg, meta, latents, t.latent, t.tmin, t.tmax, times=times)
