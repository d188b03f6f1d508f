"""Per-run preprocessing results on disk, so a rerun redoes only what is missing.

Reading, filtering and resampling a run is the expensive part of the preprocessing
stage; scaling and writing the store are cheap. Each run's unscaled epochs are cached as
``<run>-<config hash>.npz`` + ``.parquet`` (metadata), committed by a ``.json`` marker
holding their sha256, written last. A rerun reuses a run only when its marker exists and
both checksums match: a partial or corrupt file is detected, logged and rebuilt, never
read. On a multi-node cluster the cache folder must be on storage every node sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode.data import bids
from megdecode.data.bids import RunKey
from megdecode.data.preprocess import EpochBlock, PreprocessConfig
from megdecode.data.store import sha256_file

logger = logging.getLogger(__name__)


def config_hash(cfg: PreprocessConfig) -> str:
    """Short digest of the preprocessing config: a changed config never reuses a cache."""
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:12]


def cache_stem(cache_dir: Path, key: RunKey, cfg: PreprocessConfig) -> Path:
    return Path(cache_dir) / f"{key.basename}-{config_hash(cfg)}"


def source_fingerprint(root: Path, key: RunKey) -> str:
    """Size and mtime of the run's recording files and its tables: a rewritten dataset
    (e.g. a twin simulated again with another seed) never reuses an old cache."""
    raw = Path(bids.raw_path(root, key).fpath)
    files = sorted(p for p in raw.rglob("*") if p.is_file()) if raw.is_dir() else [raw]
    files += [bids.events_path(root, key), bids.attributes_path(root, key.subject)]
    stats = [
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in files
        if p.exists()
    ]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def save_block(block: EpochBlock, stem: Path, source: str = "") -> None:
    """Write arrays and metadata, then the marker; a crash before the marker leaves no cache."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    marker = stem.with_suffix(".json")
    marker.unlink(missing_ok=True)
    arrays, table = stem.with_suffix(".npz"), stem.with_suffix(".parquet")
    with open(arrays, "wb") as handle:
        np.savez(
            handle,
            data=block.data,
            pos2d=block.pos2d,
            pos3d=block.pos3d,
            ch_names=np.asarray(block.ch_names),
            sfreq=block.sfreq,
            tmin=block.tmin,
        )
    block.metadata.to_parquet(table, index=False)
    info = {
        "npz": sha256_file(arrays),
        "parquet": sha256_file(table),
        "dropped": block.dropped,
        "compensation_grade": block.compensation_grade,
        "source": source,
    }
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, marker)


def load_block(stem: Path, source: str | None = None) -> EpochBlock | None:
    """The cached block, or None when absent, partial, corrupt or (when `source` is given)
    made from other input files; then it must be rebuilt."""
    marker, arrays, table = (
        stem.with_suffix(".json"),
        stem.with_suffix(".npz"),
        stem.with_suffix(".parquet"),
    )
    if not marker.exists():
        return None
    try:
        info = json.loads(marker.read_text())
        if source is not None and info.get("source") != source:
            logger.info("cached run %s was made from other input files; rebuilding it", stem.name)
            return None
        if "compensation_grade" not in info:  # written before the grade was recorded
            logger.info("cached run %s lacks its compensation grade; rebuilding it", stem.name)
            return None
        if sha256_file(arrays) != info["npz"] or sha256_file(table) != info["parquet"]:
            logger.warning("cached run %s does not match its checksum; rebuilding it", stem.name)
            return None
        with np.load(arrays) as npz:
            return EpochBlock(
                data=npz["data"],
                metadata=pd.read_parquet(table),
                ch_names=[str(c) for c in npz["ch_names"]],
                sfreq=float(npz["sfreq"]),
                tmin=float(npz["tmin"]),
                pos2d=npz["pos2d"],
                pos3d=npz["pos3d"],
                dropped=dict(info.get("dropped", {})),
                compensation_grade=info["compensation_grade"],
            )
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("cached run %s is unreadable (%s); rebuilding it", stem.name, exc)
        return None


def load_metadata(stem: Path) -> pd.DataFrame | None:
    """Only the cached run's metadata (its parquet checksum checked), or None like
    `load_block`. The driver needs the metadata of every run to assign splits; the MEG
    arrays are loaded, and their checksum checked, by the per-subject tasks."""
    marker, table = stem.with_suffix(".json"), stem.with_suffix(".parquet")
    if not marker.exists():
        return None
    try:
        info = json.loads(marker.read_text())
        if sha256_file(table) != info["parquet"]:
            logger.warning("cached run %s does not match its checksum", stem.name)
            return None
        return pd.read_parquet(table)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("cached run %s is unreadable (%s)", stem.name, exc)
        return None
