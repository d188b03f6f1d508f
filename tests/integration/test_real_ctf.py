"""The reader and the preprocessing on real CTF bytes (MNE's testing recordings).

Each ``.ds`` of ``<repo>/../shared/data/ctf`` is wrapped as a ds004212-named BIDS run
(sub-BIGMEG1/ses-01/meg/..._task-main_run-01_meg.ds, written by mne-bids) with our own
events.tsv and sample_attributes CSV, then read and preprocessed as THINGS-MEG would be.
The expected channels, positions and compensation come from ``mne.io.read_raw_ctf``, not
from our code. Skipped when the folder is absent (a user's clone).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import mne
import mne_bids
import numpy as np
import pandas as pd
import pytest

from megdecode.data import bids
from megdecode.data import store as epoch_store
from megdecode.data.build import build_epoch_store
from megdecode.data.preprocess import PreprocessConfig, preprocess_run
from megdecode.data.sensors import SensorMismatchError, sensor_name
from megdecode.data.splits import SplitConfig
from megdecode.predict import check_store_sensors
from megdecode.serve.errors import ApiError
from megdecode.serve.validate import align_channels

CTF_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ctf"
DISCONTINUOUS = "testdata_ctf_short_discontinuous.ds"  # CTF-275, 1200 Hz, two 1-s trials
# older CTF (MLC11-606 ...), 1250 Hz, grade 3; an averaged file of two 313-sample trials
# (0..312, 313..625), read back to back: the signal jumps ~70000x its median step at 313
OLD_SYSTEM = "somMDYO-18av.ds"
KEY = bids.RunKey("BIGMEG1", "01", "01")

# 1200 Hz file: trial 1 is samples 0..1200, trial 2 1201..2401. With a -0.1..0.3 s window
# and the resampler's padding (~100 input samples each side) 300, 600, 1700 and 1900 fit
# inside one trial, 1150 crosses the trial boundary, 2380 runs past the end.
SHORT = PreprocessConfig(tmin=-0.1, tmax=0.3, baseline=(-0.1, 0.0))
DISCONTINUOUS_ONSETS = (300, 600, 1150, 1700, 1900, 2380)
# At 250 Hz (ratio 1/5) the padding is ~50 input samples: a -0.04..0.1 s window needs
# 275 samples, so 120 and 430 fit one trial each, 300 crosses the boundary, 620 the end.
OLD_CFG = PreprocessConfig(sfreq=250.0, tmin=-0.04, tmax=0.1, baseline=(-0.04, 0.0))
OLD_ONSETS = (120, 300, 430, 620)


@pytest.fixture(scope="module")
def ctf_dir() -> Path:
    if not (CTF_DIR / DISCONTINUOUS).is_dir() or not (CTF_DIR / OLD_SYSTEM).is_dir():
        pytest.skip(f"real CTF test recordings not found at {CTF_DIR} (see DESIGN §5)")
    return CTF_DIR


def wrap_as_ds004212(ds: Path, root: Path, onsets: tuple[int, ...]) -> Path:
    """Write `ds` as run 1 of sub-BIGMEG1 ses-01 under `root`, one exp image per onset."""
    raw = mne.io.read_raw_ctf(ds, verbose=False)
    path = mne_bids.BIDSPath(
        subject=KEY.subject, session=KEY.session, task="main", run=KEY.run, datatype="meg",
        root=root,
    )  # fmt: skip
    with warnings.catch_warnings():  # "no events": our events.tsv replaces mne-bids' one
        warnings.simplefilter("ignore")
        mne_bids.write_raw_bids(raw, path, overwrite=True, verbose=False)
    sfreq, n = float(raw.info["sfreq"]), len(onsets)
    numbers = np.arange(1, n + 1)
    pd.DataFrame(
        {
            "onset": np.round(np.array(onsets) / sfreq, 6),
            "duration": 0.1,
            "trial_type": "exp",
            "things_category_nr": numbers,
            "value": numbers,
            "sample": onsets,
        }
    ).to_csv(path.copy().update(suffix="events", extension=".tsv").fpath, sep="\t", index=False)
    (root / "sourcedata").mkdir(exist_ok=True)
    pd.DataFrame(
        {
            "session_nr": 1,
            "run_nr": 1,
            "trial_type": "exp",
            "things_image_nr": numbers,
            "image_path": [f"images_meg/thing{i}/thing{i}_01b.jpg" for i in numbers],
        }
    ).to_csv(root / "sourcedata" / "sample_attributes_P1.csv", index=False)
    return root


def expected_meg(ds: Path) -> tuple[mne.io.BaseRaw, list[str]]:
    """MNE's own reading of the file and its MEG sensors (no refs), MRO11 left out."""
    raw = mne.io.read_raw_ctf(ds, verbose=False)
    picks = mne.pick_types(raw.info, meg=True, ref_meg=False, exclude=[])
    return raw, [raw.ch_names[i] for i in picks if sensor_name(raw.ch_names[i]) != "MRO11"]


@pytest.fixture(scope="module")
def ctf275(ctf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ctf275")
    return wrap_as_ds004212(ctf_dir / DISCONTINUOUS, root, DISCONTINUOUS_ONSETS)


@pytest.fixture(scope="module")
def ctf151(ctf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ctf151")
    return wrap_as_ds004212(ctf_dir / OLD_SYSTEM, root, OLD_ONSETS)


def test_reader_reads_the_real_ds(ctf275: Path, ctf_dir: Path) -> None:
    assert bids.find_runs(ctf275) == [KEY]
    assert bids.raw_path(ctf275, KEY).extension == ".ds"
    rec = bids.read_run(ctf275, KEY)
    truth = mne.io.read_raw_ctf(ctf_dir / DISCONTINUOUS, verbose=False)
    assert rec.raw.ch_names == truth.ch_names
    assert rec.raw.n_times == truth.n_times == 2402
    np.testing.assert_array_equal(rec.raw.get_data(picks=[10]), truth.get_data(picks=[10]))
    assert rec.events["sample"].tolist() == list(DISCONTINUOUS_ONSETS)


def test_preprocess_real_ctf275(ctf275: Path, ctf_dir: Path) -> None:
    truth, meg = expected_meg(ctf_dir / DISCONTINUOUS)
    block = preprocess_run(bids.read_run(ctf275, KEY), SHORT)
    # MEG sensors only: refs, EEG, stim and misc are out, and so is MRO11-4304, the
    # sensor of THINGS' broken MRO11-1609 under this system's serial.
    assert block.ch_names == meg and len(meg) == 272
    assert "MRO11-4304" in truth.ch_names and "MRO11-4304" not in block.ch_names
    types = set(truth.copy().pick(block.ch_names).get_channel_types())
    assert types == {"mag"}
    locs = np.array([truth.info["chs"][truth.ch_names.index(c)]["loc"][:3] for c in meg])
    np.testing.assert_allclose(block.pos3d, locs)
    assert np.isfinite(block.pos2d).all() and block.pos2d.min() >= 0 and block.pos2d.max() <= 1
    assert block.compensation_grade == truth.compensation_grade == 0
    # 1150 crosses the boundary of the two trials, 2380 runs past the end
    assert block.dropped == {"catch": 0, "edge": 1, "gap": 1}
    assert block.metadata["onset_sample"].tolist() == [300, 600, 1700, 1900]
    assert block.data.shape == (4, 272, 49)
    # tesla: CTF axial gradiometers see picotesla fields, far from volts or femtotesla units
    assert 1e-14 < np.abs(block.data).max() < 1e-9


def test_old_ctf_system_is_preprocessed_with_its_own_sensors(ctf151: Path, ctf_dir: Path) -> None:
    truth, meg = expected_meg(ctf_dir / OLD_SYSTEM)
    block = preprocess_run(bids.read_run(ctf151, KEY), OLD_CFG)
    assert block.ch_names == meg and all(c.endswith("-606") for c in meg)
    locs = np.array([truth.info["chs"][truth.ch_names.index(c)]["loc"][:3] for c in meg])
    np.testing.assert_allclose(block.pos3d, locs)
    assert len({tuple(p) for p in np.round(block.pos2d, 6)}) == len(meg)  # distinct 2-D spots
    assert block.compensation_grade == truth.compensation_grade == 3
    assert block.dropped == {"catch": 0, "edge": 1, "gap": 1}
    assert block.metadata["onset_sample"].tolist() == [120, 430]
    assert block.data.shape == (2, len(meg), 36)


def test_store_records_grade_and_dropped_epochs(ctf275: Path, tmp_path: Path) -> None:
    report = build_epoch_store(ctf275, tmp_path / "store", SHORT, SplitConfig(val_fraction=0.0))
    manifest = epoch_store.read_manifest(tmp_path / "store")
    assert manifest.compensation_grade == {"BIGMEG1": 0}
    assert manifest.dropped == {"BIGMEG1": {"catch": 0, "edge": 1, "gap": 1}}
    assert report.dropped == {"catch": 0, "edge": 1, "gap": 1} and report.n_epochs == 4
    assert len(manifest.ch_names) == 272 and "MRO11-4304" not in manifest.ch_names


def test_bundle_and_store_sensors_by_name(ctf275: Path, ctf151: Path, tmp_path: Path) -> None:
    """A bundle trained on THINGS names (-1609) takes the CTF-275 store (-4304) by sensor,
    and refuses the older system's store naming the missing and extra sensors."""
    stores = {}
    for name, root, cfg in (("275", ctf275, SHORT), ("151", ctf151, OLD_CFG)):
        build_epoch_store(root, tmp_path / name, cfg, SplitConfig(val_fraction=0.0))
        stores[name] = epoch_store.read_manifest(tmp_path / name).ch_names
    things = SimpleNamespace(ch_names=[f"{sensor_name(c)}-1609" for c in stores["275"]])
    check_store_sensors(things, stores["275"], tmp_path / "275")  # type: ignore[arg-type]
    with pytest.raises(SensorMismatchError, match=r"store .*151 .* lacks \d+ sensor") as info:
        check_store_sensors(things, stores["151"], tmp_path / "151")  # type: ignore[arg-type]
    missing = {sensor_name(c) for c in info.value.missing}
    assert missing == {sensor_name(c) for c in stores["275"]} - {
        sensor_name(c) for c in stores["151"]
    }
    assert missing and str(sorted(info.value.missing)[0]) in str(info.value)


def test_served_window_of_another_ctf275_is_reordered_by_sensor(ctf_dir: Path) -> None:
    """A window with this file's -4304 names, in the recording's order reversed, reaches the
    model in the -1609 bundle's order; one sensor short is a 422 naming it."""
    _, meg = expected_meg(ctf_dir / DISCONTINUOUS)
    bundle_names = [f"{sensor_name(c)}-1609" for c in meg]
    window = np.arange(len(meg), dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    sent = list(reversed(meg))
    aligned = align_channels(window[::-1], sent, bundle_names)
    np.testing.assert_array_equal(aligned, window)
    with pytest.raises(ApiError, match="MLC11") as info:
        align_channels(window[1:], meg[1:], bundle_names)
    assert info.value.status == 422 and info.value.error == "channel_mismatch"
