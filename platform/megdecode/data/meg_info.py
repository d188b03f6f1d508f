"""Which MEG channels a run keeps, where its sensors sit, and its CTF compensation grade.

The reads of `mne.Info` that the offline preprocessing (`megdecode.data.preprocess`) and
the live stream (`megdecode.serve`) must agree on: the same picks give the same channel
list for a recording and for a window of its acquisition.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import mne
import numpy as np

from megdecode.data.sensors import excluded

if TYPE_CHECKING:
    from megdecode.data.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)

# PreprocessConfig.picks -> mne.pick_types(meg=...)
MEG_PICKS: dict[str, str | bool] = {"mag": "mag", "grad": "grad", "meg": True}


def pick_meg(info: mne.Info, cfg: PreprocessConfig) -> np.ndarray:
    """Indices of the MEG channels to keep; bads are kept so every run has the same list.

    Reference sensors (CTF's ref_meg), EEG, stim and misc channels are never picked. The
    channels of `cfg.exclude` are matched by sensor name (`megdecode.data.sensors`), so the
    broken THINGS sensor is dropped from any CTF system's recording whatever its serial.
    """
    drop = excluded(info.ch_names, cfg.exclude)
    picks = mne.pick_types(info, meg=MEG_PICKS[cfg.picks], ref_meg=False, exclude=drop)
    if len(picks) == 0:
        types = sorted(set(info.get_channel_types()))
        raise ValueError(
            f"no MEG channels left after picks={cfg.picks!r} and exclude={list(cfg.exclude)}; "
            f"channel types in the recording: {types}"
        )
    return picks


def sensor_positions(info: mne.Info) -> tuple[np.ndarray, np.ndarray]:
    """(pos2d (C, 2) in [0, 1], pos3d (C, 3) metres, device frame) for every channel of info.

    2-D comes from MNE's layout for the system (CTF-275 for THINGS and the twin, matched
    on the name before the serial suffix, e.g. "MLC11" of "MLC11-1609"): it is in the
    device frame, so it does not move with the head between sessions. Systems without a
    matching layout fall back to MNE's topomap projection of the 3-D locations.
    """
    pos3d = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=np.float64)
    if not np.isfinite(pos3d).all() or not np.abs(pos3d).any():
        logger.warning("channel locations are missing; pos3d are zeros and pos2d needs a layout")
        pos3d = np.nan_to_num(pos3d)
    xy = _layout_xy(info)
    if xy is None:
        if not np.abs(pos3d).any():
            raise ValueError("no sensor positions: no matching MNE layout and no channel locations")
        from mne.channels.layout import _find_topomap_coords  # MNE's topomap projection

        xy = _find_topomap_coords(info, picks=np.arange(info["nchan"]))
    span = np.ptp(xy, axis=0)
    pos2d = (xy - xy.min(axis=0)) / np.where(span > 0, span, 1.0)
    return pos2d, pos3d


def _layout_xy(info: mne.Info) -> np.ndarray | None:
    try:
        layout = mne.channels.find_layout(info)
    except (RuntimeError, ValueError):
        return None
    index = {name.split("-")[0]: i for i, name in enumerate(layout.names)}
    rows = [index.get(name.split("-")[0]) for name in info.ch_names]
    if any(row is None for row in rows):
        return None
    boxes = layout.pos[np.array(rows)]
    return boxes[:, :2] + boxes[:, 2:4] / 2  # box centres


def compensation_grade(raw: mne.io.BaseRaw) -> int | None:
    """The CTF gradient compensation grade the data carries, or None without compensators.

    The pipeline keeps the data at the grade it was recorded with and does not apply
    grade 3: the model's input must be what a real-time stream delivers, which is the
    acquisition's own grade, and the served window (MEG channels only) lacks the
    reference channels that a change of grade needs. The grade is recorded in the store
    manifest per subject, and runs recorded at different grades are never stacked.
    """
    if not raw.info["comps"]:
        return None
    return int(raw.compensation_grade or 0)
