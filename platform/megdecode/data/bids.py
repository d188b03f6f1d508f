"""Reader for THINGS-MEG (OpenNeuro ds004212) and for the MEG twin, which copies its layout.

One code path for the real CTF ``.ds`` recordings and the twin's ``.fif`` ones: runs are
located with mne-bids and read with `mne_bids.read_raw_bids`. A trial needs two tables:
the run's ``*_events.tsv`` (photodiode-corrected onsets in ``sample``, THINGS image number
in ``value``) and ``sourcedata/sample_attributes_P{n}.csv`` (the image path, hence the
category and the image file). ds004212 links them only by order (rows of one session/run
in the CSV = rows of that run's events.tsv), so they are joined here by position and the
join is checked (row counts, trial types, image numbers) before anyone trusts it.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import mne
import mne_bids
import numpy as np
import pandas as pd

from megdecode.logs import progress

logger = logging.getLogger(__name__)

TASK = "main"
RAW_EXTENSIONS = (".ds", ".fif")  # preference order: the original CTF recording wins
EVENTS_COLUMNS = ("onset", "duration", "trial_type", "things_category_nr", "value", "sample")
ATTRIBUTES_COLUMNS = ("trial_type", "image_path", "things_image_nr", "session_nr", "run_nr")
TRIAL_TYPES = ("exp", "test", "catch")
# ds004212 has a few rows whose events.tsv `value` disagrees with the CSV's
# `things_image_nr`; more than this many in one run means the two tables are misaligned.
MAX_IMAGE_NR_MISMATCHES = 20
IMAGE_TABLE_COLUMNS = ["image_id", "category_id", "category", "image_path", "trial_type"]


class BidsFormatError(ValueError):
    """A file exists but its content does not fit ds004212; the message names file and column."""


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


def _require_columns(df: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise BidsFormatError(f"{name} is missing column{plural} {', '.join(map(repr, missing))}")


def _numeric(df: pd.DataFrame, column: str, name: str) -> pd.Series:
    """Numbers with NaN for n/a; anything else that is not a number is an error."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        raise BidsFormatError(
            f"{name} column {column!r} has non-numeric value {df[column][bad].iloc[0]!r} "
            f"(row {int(np.flatnonzero(bad)[0])})"
        )
    return values.astype(np.float64)


def _integers(values: pd.Series, column: str, name: str) -> np.ndarray:
    bad = values.isna() | (values != values.round())
    if bad.any():
        raise BidsFormatError(
            f"{name} column {column!r} needs integers, row {int(np.flatnonzero(bad)[0])} "
            f"holds {values[bad].iloc[0]!r}"
        )
    return values.to_numpy().astype(np.int64)


def _read_events_tsv(root: Path, key: RunKey) -> pd.DataFrame:
    path = events_path(root, key)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.relative_to(root)} under {root}")
    table = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype={"trial_type": str})
    _require_columns(table, EVENTS_COLUMNS, path.name)
    bad = ~table["trial_type"].isin(TRIAL_TYPES)
    if bad.any():
        raise BidsFormatError(
            f"{path.name} column 'trial_type' has {sorted(set(table['trial_type'][bad].astype(str)))}, "
            f"expected {list(TRIAL_TYPES)}"
        )
    return table


@lru_cache(maxsize=8)
def _load_attributes(path: str, mtime_ns: int) -> pd.DataFrame:
    # Cached per (file, mtime) because `read_image_table` and a worker reading many runs
    # would otherwise parse the same ~27k-row CSV once per run.
    table = pd.read_csv(path, na_values=["n/a"], dtype={"trial_type": str, "image_path": str})
    name = f"sourcedata/{Path(path).name}"
    _require_columns(table, ATTRIBUTES_COLUMNS, name)
    for column in ("session_nr", "run_nr"):
        table[column] = _integers(_numeric(table, column, name), column, name)
    table["things_image_nr"] = _numeric(table, "things_image_nr", name)
    return table


def _read_attributes(root: Path, subject: str) -> pd.DataFrame:
    path = attributes_path(root, subject)
    if not path.is_file():
        raise FileNotFoundError(f"no sourcedata/{path.name} under {root}")
    return _load_attributes(str(path), path.stat().st_mtime_ns)


def _join(
    tsv: pd.DataFrame, attributes: pd.DataFrame, root: Path, key: RunKey, max_mismatches: int
) -> pd.DataFrame:
    """events.tsv rows + this run's sample_attributes rows, by position, checked."""
    tsv_name = events_path(root, key).name
    csv_name = f"sourcedata/{attributes_path(root, key.subject).name}"
    session, run = int(key.session), int(key.run)
    rows = attributes[(attributes["session_nr"] == session) & (attributes["run_nr"] == run)]
    rows = rows.reset_index(drop=True)
    if len(rows) != len(tsv):
        raise BidsFormatError(
            f"{tsv_name} has {len(tsv)} trials but {csv_name} has {len(rows)} rows "
            f"with session_nr={session}, run_nr={run}"
        )
    differ = rows["trial_type"].to_numpy() != tsv["trial_type"].to_numpy()
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        raise BidsFormatError(
            f"{tsv_name} and {csv_name} disagree on trial_type at trial {i} "
            f"({tsv['trial_type'][i]!r} vs {rows['trial_type'][i]!r}): the tables are misaligned"
        )
    catch = (tsv["trial_type"] == "catch").to_numpy()
    value = _numeric(tsv, "value", tsv_name).to_numpy()
    things_nr = rows["things_image_nr"].to_numpy()
    # Only non-catch rows: catch trials show non-THINGS images and get image_id -1 anyway.
    mismatch = ~catch & ~(value == things_nr)
    n_mismatch = int(mismatch.sum())
    if n_mismatch > max_mismatches:
        raise BidsFormatError(
            f"{tsv_name} 'value' and {csv_name} 'things_image_nr' differ on {n_mismatch} trials "
            f"(more than {max_mismatches}): the tables are misaligned"
        )
    if n_mismatch:
        logger.warning(
            "%s: 'value' differs from %s 'things_image_nr' on %d trial(s) %s; using things_image_nr, "
            "which belongs to the same row as image_path",
            tsv_name,
            csv_name,
            n_mismatch,
            np.flatnonzero(mismatch).tolist(),
        )
    image_id = np.where(mismatch, things_nr, value)
    image_id = _integers(pd.Series(np.where(catch, -1.0, image_id)), "things_image_nr", csv_name)
    category_nr = _numeric(tsv, "things_category_nr", tsv_name).fillna(-1.0).where(~catch, -1.0)
    if rows["image_path"].isna().any():
        i = int(np.flatnonzero(rows["image_path"].isna())[0])
        raise BidsFormatError(f"{csv_name} column 'image_path' is empty for trial {i} of {key}")
    image_path = rows["image_path"].astype(str).str.strip()
    return pd.DataFrame(
        {
            "trial_index": np.arange(len(tsv), dtype=np.int64),
            "onset": _numeric(tsv, "onset", tsv_name).to_numpy(),
            "sample": _integers(_numeric(tsv, "sample", tsv_name), "sample", tsv_name),
            "duration": _numeric(tsv, "duration", tsv_name).to_numpy(),
            "trial_type": tsv["trial_type"].astype(str).to_numpy(),
            "image_id": image_id,
            "category_id": _integers(category_nr, "things_category_nr", tsv_name),
            "category": [image_category(p) for p in image_path],
            "image_path": image_path.to_numpy(),
        }
    ).astype({"trial_type": str, "category": str, "image_path": str})


def image_category(image_path: str) -> str:
    """THINGS concept of an image: "images_meg/ice_cream/ice_cream_03s.jpg" -> "ice_cream"."""
    return "_".join(PurePosixPath(image_path).stem.split("_")[:-1])


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
    tsv = _read_events_tsv(root, key)
    return _join(tsv, _read_attributes(root, key.subject), root, key, max_image_nr_mismatches)


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
