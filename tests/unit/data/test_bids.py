"""The THINGS-MEG reader against a hand-made miniature of ds004212 (tests/fixtures).

The miniature's recordings are FIF (nothing can write CTF), so the ``.ds`` path is tested
up to file selection and hand-over to MNE's CTF reader, not on real CTF bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest

from fixtures import ds004212_mini as mini
from megdecode.data import bids
from megdecode.data.bids import RunKey
from megdecode.data.bids_events import BidsFormatError, image_category

KEYS = [RunKey(*key) for key in sorted(mini.TRIALS)]
BROKEN_KEY = RunKey(*mini.BROKEN_RUN)
EVENT_DTYPES = {
    "trial_index": "int64",
    "onset": "float64",
    "sample": "int64",
    "duration": "float64",
    "trial_type": "str",
    "image_id": "int64",
    "category_id": "int64",
    "category": "str",
    "image_path": "str",
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mini.build(tmp_path_factory.mktemp("ds004212") / "bids").root


def broken(clean: Path, tmp_path: Path, how: str) -> Path:
    return mini.copy(clean, tmp_path / how, broken=how).root


def test_find_runs_lists_every_run_in_order(clean: Path) -> None:
    assert bids.find_runs(clean) == KEYS


def test_find_runs_filters_by_subject_and_session(clean: Path) -> None:
    assert bids.find_runs(clean, subjects="BIGMEG2") == [RunKey("BIGMEG2", "01", "01")]
    assert bids.find_runs(clean, subjects=["sub-BIGMEG1"], sessions=["ses-02"]) == [
        RunKey("BIGMEG1", "02", "01"),
        RunKey("BIGMEG1", "02", "02"),
    ]
    assert [k.subject for k in bids.find_runs(clean, sessions="01")] == ["BIGMEG1"] * 2 + [
        "BIGMEG2"
    ]


def test_find_runs_names_a_subject_without_runs(clean: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"subject \['BIGMEG9'\]"):
        bids.find_runs(clean, subjects=["BIGMEG1", "BIGMEG9"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bids.find_runs(clean / "nope")


def test_run_keys_sort_naturally() -> None:
    keys = [RunKey("BIGMEG10", "1", "1"), RunKey("BIGMEG2", "1", "10"), RunKey("BIGMEG2", "1", "9")]
    assert sorted(keys, key=RunKey.sort_key) == [keys[2], keys[1], keys[0]]
    assert str(keys[0]) == "sub-BIGMEG10_ses-1_task-main_run-1"


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_read_events_matches_the_hand_written_truth(clean: Path, key: RunKey) -> None:
    events = bids.read_events(clean, key)
    truth = mini.expected_events((key.subject, key.session, key.run))
    assert {c: str(t) for c, t in events.dtypes.items()} == EVENT_DTYPES
    assert list(events.columns) == list(EVENT_DTYPES)
    np.testing.assert_allclose(events["onset"], truth["onset"], atol=1e-6)
    for column in (
        "trial_index",
        "sample",
        "duration",
        "trial_type",
        "image_id",
        "category_id",
        "category",
        "image_path",
    ):
        assert events[column].tolist() == truth[column].tolist(), column


def test_catch_trials_have_no_image_id_and_categories_keep_underscores(clean: Path) -> None:
    events = bids.read_events(clean, KEYS[0])
    assert events.loc[events.trial_type == "catch", ["image_id", "category_id"]].eq(-1).all().all()
    assert "ice_cream" in set(events.category)
    assert image_category("images_test_meg/hot_dog/hot_dog_13s.jpg") == "hot_dog"


def test_read_run_returns_all_channels_and_photodiode_aligned_events(clean: Path) -> None:
    rec = bids.read_run(clean, BROKEN_KEY)
    assert rec.key == BROKEN_KEY
    assert rec.raw.ch_names == [*mini.MEG_CHANNELS, mini.STIM_CHANNEL, mini.PHOTODIODE]
    assert rec.raw.info["sfreq"] == mini.SFREQ and rec.raw.n_times == mini.N_TIMES
    assert rec.raw.preload
    pd.testing.assert_frame_equal(rec.events, bids.read_events(clean, BROKEN_KEY))
    triggers = mne.find_events(rec.raw, stim_channel=mini.STIM_CHANNEL, verbose=False)
    assert triggers[:, 2].tolist() == [64] * len(rec.events) + [32]
    # `sample` is the photodiode onset, not the trigger: the diode rises exactly there.
    assert (rec.events["sample"].to_numpy() - triggers[:-1, 0] == mini.PHOTODIODE_DELAY).all()
    diode = rec.raw.get_data(picks=[mini.PHOTODIODE])[0]
    onsets = np.flatnonzero(np.diff(diode) > 0.5) + 1
    assert onsets.tolist() == rec.events["sample"].tolist()


def test_read_run_can_leave_data_on_disk(clean: Path) -> None:
    assert not bids.read_run(clean, KEYS[-1], preload=False).raw.preload


def test_read_image_table_has_each_image_once(clean: Path) -> None:
    table = bids.read_image_table(clean)
    assert list(table.columns) == bids.IMAGE_TABLE_COLUMNS
    assert table["image_path"].is_unique
    assert table.loc[table.image_id >= 0, "image_id"].is_unique
    truth = {p: v for p, v in mini.IMAGES.items()}
    assert set(table["image_path"]) == set(truth)
    for row in table.itertuples():
        assert (row.image_id, row.category_id, row.category) == truth[row.image_path]
        assert row.trial_type == mini.trial_type(row.image_path)


def test_image_table_refuses_one_id_for_two_images(clean: Path, tmp_path: Path) -> None:
    """Latents are keyed by image_id, so an id shared by two image files must not pass."""
    root = mini.copy(clean, tmp_path / "clash").root
    csv = bids.attributes_path(root, "BIGMEG2")
    attributes = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert attributes.loc[3, "image_path"] == "images_meg/bean_bag/bean_bag_01b.jpg"
    attributes.loc[3, "image_path"] = "images_meg/bean_bag/bean_bag_02s.jpg"  # still nr 1100
    attributes.to_csv(csv, index=False)
    with pytest.raises(BidsFormatError, match="image_id 1100 has conflicting rows"):
        bids.read_image_table(root)


def test_image_file_resolves_both_layouts_and_names_a_missing_image(
    clean: Path, tmp_path: Path
) -> None:
    rel = "images_meg/ice_cream/ice_cream_01b.jpg"
    assert bids.image_file(clean, rel) == clean / "stimuli" / rel
    things = tmp_path / "object_images" / "ice_cream"  # THINGS-images download layout
    things.mkdir(parents=True)
    (things / "ice_cream_01b.jpg").write_bytes((clean / "stimuli" / rel).read_bytes())
    assert bids.image_file(clean, rel, images_root=tmp_path / "object_images") == (
        things / "ice_cream_01b.jpg"
    )
    with pytest.raises(FileNotFoundError, match="zebra_03n.jpg"):
        bids.image_file(broken(clean, tmp_path, "missing_image"), "images_meg/zebra/zebra_03n.jpg")


@pytest.mark.parametrize(
    ("how", "error", "message"),
    [
        (
            "missing_events_column",
            BidsFormatError,
            "sub-BIGMEG1_ses-01_task-main_run-01_events.tsv is missing column 'sample'",
        ),
        (
            "missing_events_file",
            FileNotFoundError,
            "no sub-BIGMEG1/ses-01/meg/sub-BIGMEG1_ses-01_task-main_run-01_events.tsv under",
        ),
        ("missing_sourcedata", FileNotFoundError, "no sourcedata/sample_attributes_P1.csv under"),
        (
            "missing_attributes_column",
            BidsFormatError,
            "sourcedata/sample_attributes_P1.csv is missing column 'image_path'",
        ),
        (
            "count_mismatch",
            BidsFormatError,
            "sub-BIGMEG1_ses-01_task-main_run-01_events.tsv has 5 trials but "
            "sourcedata/sample_attributes_P1.csv has 4 rows with session_nr=1, run_nr=1",
        ),
        ("misaligned", BidsFormatError, "disagree on trial_type at trial 0"),
    ],
)
def test_errors_name_the_file_and_column(
    clean: Path, tmp_path: Path, how: str, error: type[Exception], message: str
) -> None:
    root = broken(clean, tmp_path, how)
    with pytest.raises(error) as info:
        bids.read_events(root, BROKEN_KEY)
    assert message in str(info.value)
    if how == "missing_sourcedata":
        assert str(root) in str(info.value)
    if how in ("missing_events_column", "missing_events_file", "count_mismatch", "misaligned"):
        # the damage is local to one run: the others still read
        assert len(bids.read_events(root, RunKey("BIGMEG1", "01", "02"))) == 4


def test_a_few_image_number_mismatches_warn_more_fail(
    clean: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = broken(clean, tmp_path, "image_nr_mismatch")
    with caplog.at_level(logging.WARNING, logger="megdecode.data.bids_events"):
        events = bids.read_events(root, BROKEN_KEY)
    assert "differs from sourcedata/sample_attributes_P1.csv 'things_image_nr' on 1" in caplog.text
    assert events["image_id"].iloc[0] == 1  # the number on the image_path's own row
    with pytest.raises(BidsFormatError, match="differ on 1 trials"):
        bids.read_events(root, BROKEN_KEY, max_image_nr_mismatches=0)


def test_a_channels_tsv_mismatch_keeps_the_recordings_channels(
    clean: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = broken(clean, tmp_path, "channels_mismatch")
    with caplog.at_level(logging.WARNING, logger="megdecode.data.bids"):
        rec = bids.read_run(root, BROKEN_KEY, preload=False)
    assert "Channel mismatch" in caplog.text
    assert rec.raw.ch_names[0] == mini.MEG_CHANNELS[0]


def test_out_of_range_sample_is_an_error(clean: Path, tmp_path: Path) -> None:
    root = mini.copy(clean, tmp_path / "late").root
    tsv = bids.events_path(root, BROKEN_KEY)
    table = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    table.loc[4, "sample"] = str(mini.N_TIMES + 5)
    table.to_csv(tsv, sep="\t", index=False)
    message = rf"column 'sample' has {mini.N_TIMES + 5}, outside .*{mini.N_TIMES} samples"
    with pytest.raises(BidsFormatError, match=message):
        bids.read_run(root, BROKEN_KEY, preload=False)


def test_ds_recording_is_preferred_and_handed_to_the_ctf_reader(
    clean: Path, tmp_path: Path
) -> None:
    """A ``_meg.ds`` folder wins over ``.fif``; the run is still listed once.

    The folder is empty (no CTF writer exists), so reading it must fail inside MNE's CTF
    reader, asking for the ``.res4`` header: proof the .ds went to read_raw_ctf.
    """
    root = broken(clean, tmp_path, "fake_ds")
    assert bids.find_runs(root) == KEYS
    path = bids.raw_path(root, BROKEN_KEY)
    assert path.extension == ".ds" and Path(path.fpath).is_dir()
    assert bids.raw_path(root, RunKey("BIGMEG1", "01", "02")).extension == ".fif"
    with pytest.raises(OSError, match=r"_meg\.res4"):
        bids.read_run(root, BROKEN_KEY)


def test_missing_recording_and_subject_numbers(clean: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"sub-BIGMEG1_ses-03_task-main_run-01_meg\{\.ds,\.fif\}"
    ):
        bids.raw_path(clean, RunKey("BIGMEG1", "03", "01"))
    assert bids.attributes_path(clean, "BIGMEG12").name == "sample_attributes_P12.csv"
    with pytest.raises(ValueError, match="'emptyroom' has no trailing number"):
        bids.attributes_path(clean, "emptyroom")
