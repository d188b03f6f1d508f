"""Writing the MEG twin as BIDS: runs via mne-bids, THINGS-style tables, the ground truth.

Layout (see notes/INTERFACES.md): sub-BIGMEG{n}/ses-{SS}/meg/*_task-main_run-{RR}_meg.fif
written by `mne_bids.write_raw_bids(format="FIF")`, then our own *_events.tsv (the THINGS
columns, which mne-bids would not produce); sourcedata/sample_attributes_P{n}.csv;
stimuli/...png (+ stimuli/distractors.tsv, the never-shown images);
sourcedata/twin/ground_truth.json + image/category tables (parquet).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pandas as pd

from megdecode.twin import design as twin_design
from megdecode.twin import stimuli
from megdecode.twin.config import TwinConfig
from megdecode.twin.helmet import SensorGeometry

logger = logging.getLogger(__name__)

TASK = "main"
TRUTH_DIR = Path("sourcedata") / "twin"
TRUTH_FILE = TRUTH_DIR / "ground_truth.json"
FORMAT = "megdecode-twin/1"
EVENTS_JSON = {
    "onset": {"Description": "image onset from the start of the file", "Units": "s"},
    "duration": {"Description": "image duration", "Units": "s"},
    "trial_type": {
        "Description": "exp: seen once; test: repeated once per session; catch: "
        "object-free image, n/a image and category numbers"
    },
    "things_category_nr": {"Description": "1-based category number (n/a for catch)"},
    "value": {"Description": "THINGS-like image number, unique per image (n/a for catch)"},
    "sample": {"Description": "onset sample index from the start of the file (first_samp = 0)"},
}


def bids_path(root: Path, subject: str, session: int, run: int) -> mne_bids.BIDSPath:
    return mne_bids.BIDSPath(
        subject=subject,
        session=f"{session:02d}",
        task=TASK,
        run=f"{run:02d}",
        datatype="meg",
        suffix="meg",
        extension=".fif",
        root=root,
    )


def write_run(
    root: Path,
    cfg: TwinConfig,
    info: mne.Info,
    data: np.ndarray,
    events: pd.DataFrame,
    subject: str,
    session: int,
    run: int,
) -> str:
    """Write one run (data: (C + 1, T) float32, T) and its events.tsv; returns the run name."""
    info = info.copy()
    with info._unlock():
        info["meas_date"] = dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            days=7 * session, hours=run
        )
        info["bads"] = [cfg.bad_channel] if cfg.mark_bad and cfg.bad_channel_mode != "none" else []
    raw = mne.io.RawArray(data, info, first_samp=0, verbose="error")
    raw.orig_format = "single"  # mne-bids saves in the raw's original format: float32 on disk
    path = bids_path(root, subject, session, run)
    mne_bids.write_raw_bids(
        raw, path, format="FIF", allow_preload=True, overwrite=True, verbose="error"
    )
    mne_bids.update_sidecar_json(
        path.copy().update(extension=".json"),
        {
            "Manufacturer": "CTF",
            "ManufacturersModelName": "CTF-275 (megdecode twin, simulated)",
            "DewarPosition": "upright",
        },
        verbose="error",
    )
    ev_path = path.copy().update(suffix="events", extension=".tsv")
    events.to_csv(ev_path.fpath, sep="\t", index=False, na_rep=twin_design.NA, float_format="%.6f")
    return path.basename.removesuffix("_meg.fif")


def write_sample_attributes(
    root: Path, subject_nr: int, trials: list[pd.DataFrame], images: pd.DataFrame
) -> Path:
    """sourcedata/sample_attributes_P{n}.csv, rows in events order (session, run, trial)."""
    table = twin_design.sample_attributes(pd.concat(trials, ignore_index=True), images)
    path = root / "sourcedata" / f"sample_attributes_P{subject_nr}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, na_rep=twin_design.NA, float_format="%.6f")
    return path


def write_ground_truth(
    root: Path,
    cfg: TwinConfig,
    categories: pd.DataFrame,
    images: pd.DataFrame,
    subjects: dict,
    runs: dict,
    geom: SensorGeometry,
) -> Path:
    """ground_truth.json (config, latencies, SNR, mixing, sources) + parquet tables.

    `images` holds every image the twin drew, its `shown` column False for the never-shown
    distractors, so the ground-truth latents cover the large set's extra candidates too."""
    out = root / TRUTH_DIR
    out.mkdir(parents=True, exist_ok=True)
    categories.to_parquet(out / "categories.parquet", index=False)
    images.merge(
        categories[["category_nr", "group", "family"]], on="category_nr", how="left"
    ).to_parquet(out / "image_factors.parquet", index=False)
    truth = {
        "format": FORMAT,
        "config": cfg.to_flat_dict(),
        "latencies_s": {
            "early": cfg.early_latency_s,
            "late": cfg.late_latency_s,
            "offset": cfg.image_duration_s + cfg.offset_latency_s,
            "offset_after_image_offset": cfg.offset_latency_s,
        },
        "snr": {
            "target": cfg.snr,
            "definition": "single-trial RMS of the stimulus-locked "
            "signal over all MEG channels in onset..offset+offset_latency+2*offset_width, "
            "divided by the RMS of brain background (1/f) + alpha",
        },
        "feature_mixing": {
            g: {
                "low": getattr(cfg, f"{g}_mix_low"),
                "sem": getattr(cfg, f"{g}_mix_sem"),
                "feature_gain": getattr(cfg, f"{g}_feature_gain"),
                "amp": getattr(cfg, f"{g}_amp"),
            }
            for g in ("early", "late", "offset")
        },
        "tuning": {"kind": cfg.tuning, "saturation": cfg.tuning_saturation},
        "low_level_features": list(stimuli.LOW_LEVEL),
        "semantic_columns": [f"sem_{d}" for d in range(cfg.semantic_dim)],
        "units": {"meg": "T", "source_rr": "m, head frame", "dev_head_t": "4x4, m"},
        "sensors": {
            "system": "CTF-275 layout + helmet shipped with mne (see megdecode.twin.helmet)",
            "ch_names": list(geom.ch_names),
            "coil_type": "FIFFV_COIL_CTF_GRAD",
            "sphere_origin_head_m": [0.0, 0.0, 0.04],
        },
        "subjects": subjects,
        "runs": runs,
        "tables": {"images": "image_factors.parquet", "categories": "categories.parquet"},
    }
    path = root / TRUTH_FILE
    path.write_text(json.dumps(truth, indent=1))
    return path


def read_ground_truth(root: str | Path) -> dict:
    """The twin's ground_truth.json; raises FileNotFoundError naming the path."""
    path = Path(root) / TRUTH_FILE
    if not path.exists():
        raise FileNotFoundError(f"no twin ground truth at {path} (not a megdecode twin?)")
    truth = json.loads(path.read_text())
    if truth.get("format") != FORMAT:
        raise ValueError(f"{path}: format {truth.get('format')!r}, expected {FORMAT!r}")
    return truth


def write_dataset_files(root: Path) -> None:
    """dataset_description.json and the shared task-main_events.json column descriptions."""
    mne_bids.make_dataset_description(
        path=root,
        name="megdecode MEG twin (simulated THINGS-MEG-like study)",
        dataset_type="raw",
        authors=["megdecode simulator"],
        overwrite=True,
        verbose="error",
    )
    (root / f"task-{TASK}_events.json").write_text(json.dumps(EVENTS_JSON, indent=1))
    ignore = root / ".bidsignore"
    ignore.write_text("stimuli/\nsourcedata/\n")


def bytes_under(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
