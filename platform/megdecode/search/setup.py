"""What defines a search, saved as ``search.json`` so that `--resume` trains the same space
on the same data and logs to the same MLflow experiment (`search.driver.run_search`).

With a Tune ``storage`` (a folder or an object-store URI) the file is kept next to Tune's
state too, so a driver with an empty ``out`` (a new Ray job, a new head node) resumes from
the storage alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from megdecode import files
from megdecode.rundata_stream import DEFAULT_BUFFER_ROWS, StreamConfig
from megdecode.search.epoch_memory import EPOCH_MODES

logger = logging.getLogger(__name__)

SETUP_FILE = "search.json"


class NothingToResumeError(FileNotFoundError):
    """`--resume` names no saved search (no search.json, or no Tune state where it says)."""


@dataclass(frozen=True)
class SearchSetup:
    """What defines a search; saved as ``<experiment>/search.json`` so `--resume` reuses it.

    None means "the space's value" (num_samples, time_budget_s, seeds, max_concurrent).
    """

    space: str
    data: str
    out: str
    experiment: str
    tracking_uri: str
    num_samples: int | None = None
    time_budget_s: float | None = None
    seeds: int | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    cpus_per_trial: int | None = None  # None: the cluster's CPUs / max_concurrent
    gpus_per_trial: float = 0.0
    sampler_seed: int = 0
    fail_trials: tuple[int, ...] = ()  # fault-injection drill, see `TrialPlan`
    scheduler: str = (
        "asha"  # "asha" (early stopping on the per-epoch mean) | "fifo" (none: baselines)
    )
    # Multi-node: local paths are refused unless a shared mount (NFS) makes them the same
    # on every node (`search.cluster_storage`).
    assume_shared_fs: bool = False
    # The shared epochs may take this much of the smallest node's object store; half leaves
    # room for Ray Data's blocks during the read and the trials' own objects.
    max_object_store_fraction: float = 0.5
    object_store_budget_bytes: int | None = None  # overrides the fraction (operators, tests)
    # "auto": share the epochs through the object store when they fit the budget above, else
    # each trial streams them from the store; "shared": refuse what does not fit; "stream".
    # Saved with the search: a resume keeps it (a streamed shuffle differs from the shared one).
    epochs: str = "auto"
    stream_buffer_rows: int = DEFAULT_BUFFER_ROWS  # MEG rows a streaming trial holds per split
    storage: str | None = None  # Tune's storage (a folder or s3://, gs://); None: `out`
    # A finished trial's actor runs the next trial (no new worker process, no re-import). A
    # pending trial whose actor is still starting elsewhere is moved onto it, so on several
    # nodes with slow actor starts the trials can gather on the node that started first.
    reuse_actors: bool = True

    def __post_init__(self) -> None:
        if self.epochs not in EPOCH_MODES:
            raise ValueError(f"epochs: expected one of {EPOCH_MODES}, got {self.epochs!r}")
        StreamConfig(self.stream_buffer_rows)  # validates
        if self.scheduler not in ("asha", "fifo"):
            raise ValueError(f"scheduler: expected 'asha' or 'fifo', got {self.scheduler!r}")
        if not 0 < self.max_object_store_fraction <= 1:
            raise ValueError(
                f"max_object_store_fraction: expected in (0, 1], got {self.max_object_store_fraction}"
            )
        if self.object_store_budget_bytes is not None and self.object_store_budget_bytes < 0:
            raise ValueError(
                f"object_store_budget_bytes: expected >= 0, got {self.object_store_budget_bytes}"
            )

    def cluster_settings(self) -> dict[str, Any]:
        """The fields that describe the cluster a search runs on, not the search itself:
        a resume takes them from its own command line."""
        return {
            "assume_shared_fs": self.assume_shared_fs,
            "max_object_store_fraction": self.max_object_store_fraction,
            "object_store_budget_bytes": self.object_store_budget_bytes,
        }

    @property
    def path(self) -> Path:
        """The driver's folder of this search: search.json, the summary, trials.csv."""
        return Path(self.out) / self.experiment

    @property
    def tune_path(self) -> str | Path:
        """Tune's experiment folder (its state, trial checkpoints): `path`, or under `storage`."""
        return files.join(self.storage, self.experiment) if self.storage else self.path

    def save(self) -> None:
        """Write search.json to `path` and, with a `storage`, next to Tune's state too: a
        resume whose driver has another `out` (a new `ray job submit` unpacks into a new
        working dir, a new head node has an empty disk) finds the search there."""
        text = json.dumps(asdict(self), indent=2)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / SETUP_FILE).write_text(text)
        if self.storage:
            files.write_text(files.join(self.tune_path, SETUP_FILE), text)

    @classmethod
    def load(cls, *folders: str | Path) -> SearchSetup:
        """The setup saved in the first of `folders` (local paths or URIs) that holds one."""
        for folder in folders:
            file = files.join(folder, SETUP_FILE)
            if files.exists(file):
                raw = json.loads(files.read_text(file))
                return cls(**raw | {"fail_trials": tuple(raw.get("fail_trials", ()))})
        raise NothingToResumeError(
            f"nothing to resume: no {SETUP_FILE} in {' nor in '.join(map(str, folders))}"
            " (not a megdecode search folder)"
        )

    def resumed(self) -> SearchSetup:
        """The interrupted search this command names, read back from `path` or else from
        `tune_path` (a `storage` given on the command line).

        The search itself (space, data, seeds, MLflow) is the saved one; where this driver
        writes its report (`out`), where Tune's state is (`storage`, when given) and the
        cluster settings come from this command.
        """
        saved = SearchSetup.load(self.path, *([self.tune_path] if self.storage else []))
        if saved.tracking_uri != self.tracking_uri:
            logger.warning(
                "resume logs to the interrupted search's MLflow store %s, not %s",
                saved.tracking_uri,
                self.tracking_uri,
            )
        if self.storage and saved.storage and self.storage != saved.storage:
            logger.warning(
                "resuming from %s; the search was started with --storage %s",
                self.storage,
                saved.storage,
            )
        storage = self.storage or saved.storage
        return replace(saved, out=self.out, storage=storage, **self.cluster_settings())


def latest_experiment(out: Path) -> str:
    """The most recently started search under `out` (for `--resume` without a name)."""
    found = sorted(Path(out).glob(f"*/{SETUP_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise NothingToResumeError(
            f"nothing to resume under {out}; with --storage, name the search with --experiment"
        )
    return found[-1].parent.name
