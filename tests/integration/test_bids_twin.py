"""The THINGS-MEG reader on the tiny MEG twin: the simulator's output must read like ds004212."""

from __future__ import annotations

import re
from pathlib import Path

import mne
import numpy as np
import pytest

from megdecode.data import bids
from megdecode.twin import simulate

CTF_MEG_NAME = re.compile(r"^M[LRZ][CFOPT]\d\d-\d{4}$")


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("twin") / "bids"
    simulate.simulate(simulate.TwinConfig.preset("tiny"), root)
    return root


def test_twin_runs_are_found_and_sorted(twin: Path) -> None:
    keys = bids.find_runs(twin)
    assert keys and keys == sorted(keys, key=bids.RunKey.sort_key)
    assert all(re.fullmatch(r"BIGMEG\d+", k.subject) for k in keys)
    assert bids.raw_path(twin, keys[0]).extension == ".fif"


def test_twin_run_reads_with_typed_events(twin: Path) -> None:
    key = bids.find_runs(twin)[0]
    rec = bids.read_run(twin, key)
    events = rec.events
    assert str(events["sample"].dtype) == "int64" and str(events["image_id"].dtype) == "int64"
    assert set(events["trial_type"]) <= {"exp", "test", "catch"}
    assert (events.loc[events.trial_type == "catch", "image_id"] == -1).all()
    assert (events.loc[events.trial_type != "catch", "image_id"] >= 0).all()
    assert np.all(np.diff(events["sample"]) > 0)
    meg = [rec.raw.ch_names[i] for i in mne.pick_types(rec.raw.info, meg=True)]
    assert meg and all(CTF_MEG_NAME.match(name) for name in meg)
    assert "UPPT001" in rec.raw.ch_names
    triggers = mne.find_events(rec.raw, stim_channel="UPPT001", verbose=False)
    assert int((triggers[:, 2] == 64).sum()) == len(events)


def test_twin_image_table_points_at_real_files(twin: Path) -> None:
    table = bids.read_image_table(twin)
    assert table["image_path"].is_unique
    assert table.loc[table.image_id >= 0, "image_id"].is_unique
    assert {"exp", "test"} <= set(table["trial_type"])
    for image_path in table["image_path"]:
        assert bids.image_file(twin, image_path).is_file()
