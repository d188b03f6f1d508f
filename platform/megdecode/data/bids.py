"""Reader for THINGS-MEG (OpenNeuro ds004212) and for the MEG twin, which copies its layout.

One code path for the real CTF ``.ds`` recordings and the twin's ``.fif`` ones: runs are
located with mne-bids and read with `mne_bids.read_raw_bids`. This module says where a
run's files are and reads a run (its raw data and its events); the events table, the
run's ``*_events.tsv`` joined by position with the subject's ``sample_attributes`` CSV
and checked, is built in `megdecode.data.bids_events`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mne
import mne_bids
import pandas as pd

from megdecode.data.bids_events import (
    MAX_IMAGE_NR_MISMATCHES,
    BidsFormatError,
    join_events,
    read_attributes,
    read_events_tsv,
)
from megdecode.logs import progress

logger = logging.getLogger(__name__)

TASK = "main"
RAW_EXTENSIONS = (".ds", ".fif")  # preference order: the original CTF recording wins
IMAGE_TABLE_COLUMNS = ["image_id", "category_id", "category", "image_path", "trial_type"]


@dataclass(frozen=True)
class RunKey:
    """One run of task-main: labels as in the file names, without their prefixes."""

    subject: str  # "BIGMEG1"
    session: str  # "01"
    run: str  # "01"

    @property
    def basename(self) -> str:
        return f"sub-{self.subject}_ses-{self.session}_task-{TASK}_run-{self.run}"

    def __str__(self) -> str:
        return self.basename

    def sort_key(self) -> tuple:
        """Natural order, so that run-10 follows run-9 even without zero padding."""
        return tuple(_natural(label) for label in (self.subject, self.session, self.run))


@dataclass
class Recording:
    """A run's continuous data and its typed events table (see `read_events`)."""

    key: RunKey
    raw: mne.io.BaseRaw
    events: pd.DataFrame


def _natural(label: str) -> tuple:
    # re.split with a capture group alternates text and digits, so types line up.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", label)))


def _labels(values: str | Iterable[str] | None, prefix: str) -> list[str] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    return [str(v).removeprefix(prefix) for v in values]


def _bids_path(root: Path, key: RunKey, suffix: str, extension: str | None) -> mne_bids.BIDSPath:
    return mne_bids.BIDSPath(
        root=root,
        subject=key.subject,
        session=key.session,
        task=TASK,
        run=key.run,
        datatype="meg",
        suffix=suffix,
        extension=extension,
        check=False,
    )


def find_runs(
    root: str | Path,
    subjects: str | Iterable[str] | None = None,
    sessions: str | Iterable[str] | None = None,
) -> list[RunKey]:
    """All task-main MEG runs under `root` (.ds or .fif), sorted by subject, session, run.

    `subjects`/`sessions` are labels with or without their prefix ("BIGMEG1", "sub-BIGMEG1").
    A requested subject or session with no run is an error rather than an empty result,
    because a typo there would otherwise silently train on less data.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS root {root} does not exist")
    subs, sess = _labels(subjects, "sub-"), _labels(sessions, "ses-")
    paths = mne_bids.find_matching_paths(
        root,
        subjects=subs,
        sessions=sess,
        tasks=TASK,
        datatypes="meg",
        suffixes="meg",
        extensions=list(RAW_EXTENSIONS),
    )
    keys = set()
    for path in paths:
        if path.session is None or path.run is None:
            logger.warning("skipping %s: ds004212 runs have a session and a run", path.basename)
            continue
        keys.add(RunKey(path.subject, path.session, path.run))
    for label, wanted, found in (
        ("subject", subs, {k.subject for k in keys}),
        ("session", sess, {k.session for k in keys}),
    ):
        missing = sorted(set(wanted or ()) - found)
        if missing:
            raise FileNotFoundError(f"no task-{TASK} MEG runs for {label} {missing} under {root}")
    return sorted(keys, key=RunKey.sort_key)


def raw_path(root: str | Path, key: RunKey) -> mne_bids.BIDSPath:
    """The run's recording: ``_meg.ds`` if present, else ``_meg.fif`` (first split if split)."""
    root = Path(root)
    matches = [
        p
        for p in _bids_path(root, key, "meg", None).match(ignore_json=True)
        if p.extension in RAW_EXTENSIONS
    ]
    if not matches:
        folder = _bids_path(root, key, "meg", None).directory
        raise FileNotFoundError(f"no {key.basename}_meg{{{','.join(RAW_EXTENSIONS)}}} in {folder}")
    matches.sort(key=lambda p: (RAW_EXTENSIONS.index(p.extension), p.split or ""))
    return matches[0]


def events_path(root: str | Path, key: RunKey) -> Path:
    return Path(_bids_path(Path(root), key, "events", ".tsv").fpath)


def attributes_path(root: str | Path, subject: str) -> Path:
    """sourcedata/sample_attributes_P{n}.csv, n = the subject label's trailing digits."""
    match = re.search(r"(\d+)$", subject)
    if match is None:
        raise ValueError(
            f"subject label {subject!r} has no trailing number for sample_attributes_P<n>"
        )
    return Path(root) / "sourcedata" / f"sample_attributes_P{int(match.group(1))}.csv"


def read_events(
    root: str | Path, key: RunKey, *, max_image_nr_mismatches: int = MAX_IMAGE_NR_MISMATCHES
) -> pd.DataFrame:
    """Typed events table of one run, one row per trial, in presentation order.

    Columns: trial_index int64 (0.. within run), onset float64 (s), sample int64 (photo-
    diode-corrected onset, index into the run's data array: mne-bids writes it relative to
    the first sample, and CTF files start at 0), duration float64, trial_type str
    (exp|test|catch), image_id int64 (THINGS image nr, -1 for catch), category_id int64
    (things_category_nr; -1 for catch or n/a), category str, image_path str (relative).
    """
    root = Path(root)
    tsv = read_events_tsv(events_path(root, key), root)
    attributes = read_attributes(attributes_path(root, key.subject), root)
    return join_events(
        tsv,
        attributes,
        session=int(key.session),
        run=int(key.run),
        label=str(key),
        tsv_name=events_path(root, key).name,
        csv_name=f"sourcedata/{attributes_path(root, key.subject).name}",
        max_mismatches=max_image_nr_mismatches,
    )


def _read_raw(path: mne_bids.BIDSPath) -> mne.io.BaseRaw:
    # mne-bids reads both CTF .ds and FIF, so there is no fallback to mne.io.read_raw: the
    # events come from our own parser, and a channels.tsv that disagrees with the recording
    # is handled by on_ch_mismatch="warn" (the recording's own channel info is kept).
    # mne-bids reports sidecar problems as Python warnings; they go to our log instead so
    # that Ray workers do not print them once per run.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = mne_bids.read_raw_bids(path, on_ch_mismatch="warn", verbose=False)
    for warning in caught:
        logger.warning("%s: %s", path.basename, warning.message)
    return raw


def read_run(root: str | Path, key: RunKey, *, preload: bool = True) -> Recording:
    """The run's raw data (as recorded, all channels) and its events table."""
    root = Path(root)
    events = read_events(root, key)  # first: cheap, and fails before a large read
    path = raw_path(root, key)
    raw = _read_raw(path)
    if preload:
        raw.load_data(verbose=False)
    outside = (events["sample"] < 0) | (events["sample"] >= raw.n_times)
    if outside.any():
        raise BidsFormatError(
            f"{events_path(root, key).name} column 'sample' has {int(events['sample'][outside].iloc[0])}, "
            f"outside {path.basename} ({raw.n_times} samples)"
        )
    return Recording(key=key, raw=raw, events=events)


def read_image_table(root: str | Path) -> pd.DataFrame:
    """Unique images shown to any subject: image_id, category_id, category, image_path, trial_type.

    Built from the same joined events as `read_events`, so ids and paths agree with the
    epochs. One row per image_path; a THINGS image id naming two different images is an
    error, because latents are keyed by image_id. Catch images all have image_id -1.
    """
    root = Path(root)
    tables = [read_events(root, key) for key in progress(find_runs(root), desc="image table")]
    if not tables:
        raise FileNotFoundError(f"no task-{TASK} MEG runs under {root}")
    images = pd.concat(tables, ignore_index=True)[IMAGE_TABLE_COLUMNS].drop_duplicates()
    for column, subset in (("image_path", images), ("image_id", images[images.image_id >= 0])):
        dup = subset[column].duplicated(keep=False)
        if dup.any():
            clash = subset[dup].sort_values(column).head(2).to_dict("records")
            raise BidsFormatError(f"{column} {clash[0][column]!r} has conflicting rows: {clash}")
    return images.sort_values(["image_id", "image_path"]).reset_index(drop=True)


def image_file(root: str | Path, image_path: str, images_root: str | Path | None = None) -> Path:
    """Where an image lives. `images_root` defaults to root/"stimuli" (the twin).

    Tries ``images_root/image_path`` (twin, or a copy of ds004212's folders), then
    ``images_root/<concept>/<file>``, the layout of the THINGS-images download
    (``object_images/aardvark/aardvark_01b.jpg``), which is where real images come from.
    """
    base = Path(images_root) if images_root is not None else Path(root) / "stimuli"
    rel = PurePosixPath(str(image_path))
    candidates = [base / rel, base / rel.parent.name / rel.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise FileNotFoundError(f"image {image_path!r} not found (tried {tried})")
