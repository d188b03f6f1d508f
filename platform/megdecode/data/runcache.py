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

from megdecode.data.bids import RunKey
from megdecode.data.preprocess import EpochBlock, PreprocessConfig

logger = logging.getLogger(__name__)


def config_hash(cfg: PreprocessConfig) -> str:
    """Short digest of the preprocessing config: a changed config never reuses a cache."""
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:12]


def cache_stem(cache_dir: Path, key: RunKey, cfg: PreprocessConfig) -> Path:
    return Path(cache_dir) / f"{key.basename}-{config_hash(cfg)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_block(block: EpochBlock, stem: Path) -> None:
    """Write arrays and metadata, then the marker; a crash before the marker leaves no cache."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    marker = stem.with_suffix(".json")
    marker.unlink(missing_ok=True)
    arrays, table = stem.with_suffix(".npz"), stem.with_suffix(".parquet")
    with open(arrays, "wb") as handle:
        np.savez(handle, data=block.data, pos2d=block.pos2d, pos3d=block.pos3d,
                 ch_names=np.asarray(block.ch_names), sfreq=block.sfreq, tmin=block.tmin)
    block.metadata.to_parquet(table, index=False)
    info = {"npz": _sha256(arrays), "parquet": _sha256(table), "dropped": block.dropped}
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, marker)


def load_block(stem: Path) -> EpochBlock | None:
    """The cached block, or None when absent, partial or corrupt (then it must be rebuilt)."""
    marker, arrays, table = stem.with_suffix(".json"), stem.with_suffix(".npz"), stem.with_suffix(".parquet")
    if not marker.exists():
        return None
    try:
        info = json.loads(marker.read_text())
        if _sha256(arrays) != info["npz"] or _sha256(table) != info["parquet"]:
            logger.warning("cached run %s does not match its checksum; rebuilding it", stem.name)
            return None
        with np.load(arrays) as npz:
            return EpochBlock(
                data=npz["data"], metadata=pd.read_parquet(table), ch_names=[str(c) for c in npz["ch_names"]],
                sfreq=float(npz["sfreq"]), tmin=float(npz["tmin"]), pos2d=npz["pos2d"], pos3d=npz["pos3d"],
                dropped=dict(info.get("dropped", {})),
            )
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("cached run %s is unreadable (%s); rebuilding it", stem.name, exc)
        return None
