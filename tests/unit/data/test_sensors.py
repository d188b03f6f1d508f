"""Sensor-name matching across CTF serials, and the gap detection of the preprocessing."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from megdecode.data.gaps import crosses_gap, gaps
from megdecode.data.sensors import (
    SensorMismatchError,
    excluded,
    match_sensors,
    require_same_sensors,
    sensor_name,
)


def test_sensor_name_strips_the_serial() -> None:
    assert sensor_name("MLC11-1609") == "MLC11"
    assert sensor_name("MLC11-4304") == "MLC11"
    assert sensor_name("EEG057") == "EEG057"


def test_match_reorders_by_sensor() -> None:
    expected = ["MLC11-1609", "MRO12-1609", "MZO01-1609"]
    got = ["MZO01-4304", "MLC11-4304", "MRO12-4304"]
    order = match_sensors(expected, got)
    assert [got[i] for i in order] == ["MLC11-4304", "MRO12-4304", "MZO01-4304"]


def test_match_names_missing_and_extra() -> None:
    with pytest.raises(SensorMismatchError, match="lacks 1 sensor.*MRO12-1609.*MRT99-4304") as e:
        match_sensors(["MLC11-1609", "MRO12-1609"], ["MLC11-4304", "MRT99-4304"])
    assert e.value.missing == ["MRO12-1609"] and e.value.extra == ["MRT99-4304"]
    assert list(match_sensors(["MLC11-1"], ["X-2", "MLC11-3"], allow_extra=True)) == [1]
    with pytest.raises(SensorMismatchError, match="twice"):
        match_sensors(["MLC11-1609"], ["MLC11-1609", "MLC11-4304"])


def test_same_sensors_in_another_order_is_refused() -> None:
    require_same_sensors(["A-1", "B-1"], ["A-2", "B-2"], "the bundle", "the store")
    with pytest.raises(SensorMismatchError, match="another order"):
        require_same_sensors(["A-1", "B-1"], ["B-2", "A-2"], "the bundle", "the store")


def test_exclusion_matches_any_serial() -> None:
    assert excluded(["MRO11-4304", "MRO12-4304"], ["MRO11-1609"]) == ["MRO11-4304"]


def test_bad_acq_skip_annotation_is_a_gap() -> None:
    raw = mne.io.RawArray(np.zeros((1, 1000)), mne.create_info(1, 100.0, "mag"), verbose=False)
    raw.set_meas_date(1_500_000_000.0)
    raw.set_annotations(mne.Annotations([2.0, 5.0], [1.0, 0.5], ["BAD_ACQ_SKIP", "exp/1"]))
    assert gaps(raw) == [(200, 300)]
    hit = crosses_gap(np.array([50, 150, 250, 300, 600]), 100, gaps(raw))
    assert hit.tolist() == [False, True, True, False, False]
    assert crosses_gap(np.array([0, 50, 100]), 100, [(100, 100)]).tolist() == [False, True, False]
