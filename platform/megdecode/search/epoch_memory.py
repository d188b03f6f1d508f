"""Whether a search's epochs fit the object store: share them, stream them, or refuse.

A search ships its epochs to the trials through the object store (`search.shared`): one
copy on every node that runs a trial, so the smallest node's object store is the limit.
Past it Ray spills to disk or fails mid-search. `choose_epochs` decides before anything is
read, from the bytes the search needs (computed from the store manifest) and the budget:
``auto`` shares what fits and streams the rest (each trial reads its splits from the store
a buffer at a time, `search.streamed`; its shuffle differs from the shared one once a split
exceeds the buffer), ``shared`` refuses what does not fit, with both numbers, ``stream``
always streams.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from megdecode.data.store import Manifest
from megdecode.rundata import SPLIT_GROUPS

logger = logging.getLogger(__name__)

FLOAT32_BYTES = 4
EPOCH_MODES = ("auto", "shared", "stream")
SHARED_SPLITS = tuple(split for group in SPLIT_GROUPS.values() for split in group)


class EpochsTooLargeError(RuntimeError):
    """The search's epochs do not fit the object store budget."""


@dataclass(frozen=True)
class EpochBytes:
    """The size of the epochs a search shares: rows × channels × samples × 4 bytes (float32)."""

    rows: int
    subjects: int
    channels: int
    samples: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.channels * self.samples * FLOAT32_BYTES


def shared_epoch_bytes(
    manifest: Manifest,
    subjects: Iterable[str] | None = None,
    samples: int | None = None,
    splits: Sequence[str] = SHARED_SPLITS,
) -> EpochBytes:
    """What `search.shared.SharedEpochs.load` will hold, from the manifest alone.

    subjects: None = every subject of the store; samples: None = the full stored window
    (what the search shares, so that trials may search the window).
    """
    chosen = sorted(manifest.counts) if subjects is None else sorted(set(subjects))
    unknown = [s for s in chosen if s not in manifest.counts]
    if unknown:
        raise KeyError(f"subjects {unknown} are not in the store; it has {sorted(manifest.counts)}")
    rows = sum(manifest.counts[s].get(split, 0) for s in chosen for split in splits)
    return EpochBytes(
        rows=rows,
        subjects=len(chosen),
        channels=len(manifest.ch_names),
        samples=len(manifest.times) if samples is None else samples,
    )


def object_store_budget(
    node_stores: Sequence[float], fraction: float, budget_bytes: int | None = None
) -> int:
    """Bytes a search may put in the object store: `fraction` of the smallest node's store.

    node_stores: the object store size (bytes) of every alive node; budget_bytes, when
    given, is the budget itself (an operator's override, and tests).
    """
    if budget_bytes is not None:
        if budget_bytes < 0:
            raise ValueError(f"object store budget: expected bytes >= 0, got {budget_bytes}")
        return budget_bytes
    if not 0 < fraction <= 1:
        raise ValueError(f"max_object_store_fraction: expected in (0, 1], got {fraction}")
    if not node_stores:
        raise ValueError("no alive node reports an object store")
    return int(min(node_stores) * fraction)


def memory_problem(need: EpochBytes, budget: int) -> str | None:
    """The refusal message when `need` exceeds `budget` bytes, else None."""
    if need.nbytes <= budget:
        return None
    return (
        f"the search shares its epochs through the Ray object store and needs "
        f"{_size(need.nbytes)} ({need.rows} epochs of {need.subjects} subjects x "
        f"{need.channels} channels x {need.samples} samples x 4 bytes float32), but may use "
        f"{_size(budget)} (max_object_store_fraction of the smallest node's object store, "
        "or the explicit budget). Stream the epochs from the store instead (--epochs auto or "
        "stream), give the nodes a larger object store (`ray start --object-store-memory`), "
        "raise --max-object-store-fraction, or search on a store of fewer subjects or a "
        "shorter stored window"
    )


def node_object_stores() -> list[float]:
    """The object store size (bytes) of every alive node of the running Ray cluster."""
    import ray

    return [
        float(node["Resources"].get("object_store_memory", 0.0))
        for node in ray.nodes()
        if node.get("Alive")
    ]


def check_epochs_fit(
    manifest: Manifest, fraction: float, budget_bytes: int | None = None
) -> EpochBytes:
    """Raise `EpochsTooLargeError` if the store's shared epochs exceed the budget; else their size."""
    need = shared_epoch_bytes(manifest)
    stores = node_object_stores() if budget_bytes is None else []
    problem = memory_problem(need, object_store_budget(stores, fraction, budget_bytes))
    if problem is not None:
        raise EpochsTooLargeError(problem)
    return need


def choose_epochs(
    manifest: Manifest, mode: str, fraction: float, budget_bytes: int | None = None
) -> str:
    """ "shared" or "stream" for a search in `mode` (`EPOCH_MODES`), logging why.

    Raises `EpochsTooLargeError` in mode "shared" when the epochs exceed the budget. The
    budget is `object_store_budget` (the running cluster's nodes unless `budget_bytes`).
    """
    if mode not in EPOCH_MODES:
        raise ValueError(f"epochs: expected one of {EPOCH_MODES}, got {mode!r}")
    need = shared_epoch_bytes(manifest)
    stores = node_object_stores() if budget_bytes is None else []
    budget = object_store_budget(stores, fraction, budget_bytes)
    problem = memory_problem(need, budget)
    if mode == "shared" and problem is not None:
        raise EpochsTooLargeError(problem)
    chosen = mode if mode != "auto" else ("shared" if problem is None else "stream")
    logger.info(
        "epochs %s (--epochs %s): the shared epochs need %s, the object store budget is %s",
        chosen, mode, _size(need.nbytes), _size(budget),
    )  # fmt: skip
    return chosen


def _size(nbytes: float) -> str:
    """Bytes with a binary unit, e.g. ``1.5 GiB (1610612736 bytes)``."""
    value, unit = float(nbytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.1f} {unit} ({int(nbytes)} bytes)"
