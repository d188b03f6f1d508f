"""The events table of one ds004212 run: ``*_events.tsv`` joined with ``sample_attributes``.

A trial needs two tables: the run's ``*_events.tsv`` (photodiode-corrected onsets in
``sample``, THINGS image number in ``value``) and ``sourcedata/sample_attributes_P{n}.csv``
(the image path, hence the category and the image file). ds004212 links them only by
order (rows of one session/run in the CSV = rows of that run's events.tsv), so they are
joined here by position and the join is checked (row counts, trial types, image numbers)
before anyone trusts it. Where the files are, and the run reader that calls this, is
`megdecode.data.bids`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

EVENTS_COLUMNS = ("onset", "duration", "trial_type", "things_category_nr", "value", "sample")
ATTRIBUTES_COLUMNS = ("trial_type", "image_path", "things_image_nr", "session_nr", "run_nr")
TRIAL_TYPES = ("exp", "test", "catch")
# ds004212 has a few rows whose events.tsv `value` disagrees with the CSV's
# `things_image_nr`; more than this many in one run means the two tables are misaligned.
MAX_IMAGE_NR_MISMATCHES = 20


class BidsFormatError(ValueError):
    """A file exists but its content does not fit ds004212; the message names file and column."""


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


def read_events_tsv(path: Path, root: Path) -> pd.DataFrame:
    """A run's events.tsv as read, its columns and trial types checked (`root` names it)."""
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


def read_attributes(path: Path, root: Path) -> pd.DataFrame:
    """A subject's sample_attributes CSV with integer session/run numbers (`root` names it)."""
    if not path.is_file():
        raise FileNotFoundError(f"no sourcedata/{path.name} under {root}")
    return _load_attributes(str(path), path.stat().st_mtime_ns)


def join_events(
    tsv: pd.DataFrame,
    attributes: pd.DataFrame,
    *,
    session: int,
    run: int,
    label: str,
    tsv_name: str,
    csv_name: str,
    max_mismatches: int,
) -> pd.DataFrame:
    """events.tsv rows + this run's sample_attributes rows, by position, checked.

    `session`/`run` select the CSV's rows; `label` (the run's basename), `tsv_name` and
    `csv_name` name the run and the two files in every error.
    """
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
        raise BidsFormatError(f"{csv_name} column 'image_path' is empty for trial {i} of {label}")
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
