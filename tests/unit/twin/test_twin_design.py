"""THINGS-like design: exp once, test once per session, catch share, timing, tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from megdecode.twin import design as twin_design


def _images(n_exp: int = 40, n_test: int = 5, n_catch: int = 3) -> pd.DataFrame:
    kinds = ["exp"] * n_exp + ["test"] * n_test + ["catch"] * n_catch
    return pd.DataFrame(
        {
            "trial_type": kinds,
            "image_id": [i + 1 if k != "catch" else -1 for i, k in enumerate(kinds)],
            "category_nr": [i % 7 + 1 if k != "catch" else 0 for i, k in enumerate(kinds)],
            "image_nr": 1,
            "image_path": [f"x/c/c_{i:02d}b.png" for i in range(len(kinds))],
        }
    )


def test_schedule_shows_exp_once_and_test_once_per_session() -> None:
    images = _images()
    sched = twin_design.schedule_subject(images, 3, 2, 0.1, np.random.default_rng(0))
    kinds = images["trial_type"].to_numpy()[sched["image_index"]]
    exp = sched[kinds == "exp"]
    assert exp["image_index"].is_unique and len(exp) == 40
    test = sched[kinds == "test"]
    assert (
        test.groupby("image_index")["session_nr"].apply(sorted)
        == pd.Series([[1, 2, 3]] * 5, index=sorted(test["image_index"].unique()))
    ).all()
    share = (kinds == "catch").mean()
    assert 0.05 < share < 0.2
    for _, run in sched.groupby(["session_nr", "run_nr"]):
        assert run["trial_nr"].tolist() == list(range(1, len(run) + 1))


def test_schedule_refuses_runs_without_trials() -> None:
    with pytest.raises(ValueError, match="no trials"):
        twin_design.schedule_subject(_images(2, 0, 0), 2, 2, 0.0, np.random.default_rng(0))


def test_timing_uses_whole_samples_and_jittered_fixation() -> None:
    trials = pd.DataFrame({"image_index": range(50)})
    timed, n_samples = twin_design.add_timing(
        trials, 300.0, 0.5, 1.0, 0.2, 2.0, 1.5, np.random.default_rng(0)
    )
    np.testing.assert_allclose(timed["onset"] * 300.0, timed["sample"])
    soa = np.diff(timed["onset"])
    assert soa.min() >= 1.3 - 1e-2 and soa.max() <= 1.7 + 1e-2 and soa.std() > 0.05
    assert timed["onset"].iloc[0] == pytest.approx(2.0)
    assert n_samples / 300.0 == pytest.approx(timed["offset"].iloc[-1] + 1.5, abs=0.01)


def test_events_and_attributes_tables() -> None:
    images = _images()
    sched = twin_design.schedule_subject(images, 1, 1, 0.1, np.random.default_rng(1))
    timed, _ = twin_design.add_timing(
        sched, 200.0, 0.5, 1.0, 0.2, 2.0, 2.0, np.random.default_rng(2)
    )
    events = twin_design.events_table(timed, images, 0.5)
    assert list(events.columns) == list(twin_design.EVENT_COLUMNS)
    catch = events["trial_type"] == "catch"
    assert (events.loc[catch, "value"] == "n/a").all() and (
        events.loc[catch, "things_category_nr"] == "n/a"
    ).all()
    attrs = twin_design.sample_attributes(timed, images)
    assert attrs["things_image_nr"].tolist() == events["value"].tolist()
    np.testing.assert_allclose(attrs["image_off"] - attrs["image_on"], 0.5)
