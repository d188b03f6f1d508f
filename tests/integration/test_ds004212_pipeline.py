"""The preprocessing stage on a hand-made folder with OpenNeuro ds004212's exact names.

tests/fixtures/ds004212_mini.py -> build_epoch_store (local, no Ray) -> verify_store ->
handcrafted latents of the fixture's JPEG stimuli. The twin tests cover the same stage on
simulated data; this one checks that the real dataset's names, events columns, CTF
channel names and the broken channel get through it. Expectations come from the
fixture's hand-written tables (`mini.TRIALS`, `mini.IMAGES`), not from the code under test.
"""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fixtures import ds004212_mini as mini
from megdecode.data import store as epoch_store
from megdecode.data.build import BuildReport, build_epoch_store
from megdecode.latents.cache import load_latents
from megdecode.latents.encoders.handcrafted import HandcraftedEncoder
from megdecode.latents.stage import LatentsReport, build_latents
from megdecode.twin import helmet

BROKEN_CHANNEL = "MRO11-1609"
KEPT_CHANNELS = [c for c in mini.MEG_CHANNELS if c != BROKEN_CHANNEL]
ZERO_SHOT = "images_meg/hot_dog/hot_dog_02s.jpg"  # exp image of a test category
# The store's default preset has no band-pass, only the resampler's anti-aliasing below
# the 60 Hz Nyquist of 120 Hz: the naive reference is low-passed well inside that band.
LOWPASS_HZ = 50.0  # min correlation 0.989 (0.875 at 40 Hz, 0.997 at 55 Hz)


def expected_trials() -> pd.DataFrame:
    """The non-catch trials of the fixture in recording order, with their expected split.

    Split is "val" or "train" for the ordinary exp images (which one goes to val is the
    splitter's seeded choice); repetition counts earlier presentations in the subject.
    """
    rows, seen = [], Counter()
    for key in sorted(mini.TRIALS):
        events = mini.expected_events(key)
        for row in events[events.trial_type != "catch"].itertuples():
            subject = key[0]
            split = {"test": "test", "exp": "train|val"}[row.trial_type]
            if row.image_path == ZERO_SHOT:
                split = "test_large"
            rows.append(
                {
                    "subject": subject,
                    "session": key[1],
                    "run": key[2],
                    "trial_index": row.trial_index,
                    "image_id": row.image_id,
                    "category": row.category,
                    "trial_type": row.trial_type,
                    "image_path": row.image_path,
                    "onset_sample": row.sample,
                    "expected_split": split,
                    "repetition": seen[(subject, row.image_path)],
                }
            )
            seen[(subject, row.image_path)] += 1
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, BuildReport]:
    tmp = tmp_path_factory.mktemp("ds004212_pipeline")
    root = mini.build(tmp / "bids").root
    report = build_epoch_store(root, tmp / "store", use_ray=False)
    return root, tmp / "store", report


@pytest.fixture(scope="module")
def latents(built: tuple[Path, Path, BuildReport]) -> LatentsReport:
    root, store, _ = built
    return build_latents(store, root, store.parent / "latents", HandcraftedEncoder())


def test_store_holds_every_non_catch_trial_with_its_metadata(
    built: tuple[Path, Path, BuildReport],
) -> None:
    _, store, report = built
    truth = expected_trials()
    assert report.n_runs == len(mini.TRIALS)
    assert report.n_epochs == len(truth) == 17
    _, meta = epoch_store.load_epochs(store)
    assert "catch" not in set(meta["trial_type"])
    columns = ["subject", "session", "run", "trial_index", "image_id", "category",
               "trial_type", "image_path", "onset_sample", "repetition"]  # fmt: skip
    got = meta[columns].astype({"trial_index": "int64", "onset_sample": "int64"})
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), truth[columns].reset_index(drop=True), check_dtype=False
    )


def test_broken_channel_is_excluded_and_the_grid_is_120_hz(
    built: tuple[Path, Path, BuildReport],
) -> None:
    _, store, report = built
    manifest = epoch_store.read_manifest(store)
    assert manifest.ch_names == KEPT_CHANNELS
    assert (report.n_channels, report.n_times) == (4, 181)
    assert manifest.sfreq == 120.0
    np.testing.assert_allclose(manifest.times, np.arange(-60, 121) / 120.0, atol=1e-9)
    X, meta = epoch_store.load_epochs(store)
    assert X.shape == (len(meta), 4, 181) and X.dtype == np.float32
    assert np.isfinite(X).all() and np.abs(X).max() <= 20.0
    assert (X.std(axis=(0, 2)) > 0.1).all()  # no channel came out flat


def test_sensor_positions_are_the_ctf_geometry_of_the_kept_channels(
    built: tuple[Path, Path, BuildReport],
) -> None:
    """Locations travel raw -> FIF -> BIDS -> store in the device frame, unchanged."""
    _, store, _ = built
    manifest = epoch_store.read_manifest(store)
    geom = helmet.ctf272_geometry()
    rows = [geom.ch_names.index(c) for c in KEPT_CHANNELS]
    np.testing.assert_allclose(manifest.pos3d, geom.pos[rows], atol=1e-6)
    pos2d = np.asarray(manifest.pos2d)
    assert pos2d.shape == (4, 2) and pos2d.min() >= 0 and pos2d.max() <= 1
    assert len({tuple(p) for p in pos2d.round(6)}) == 4
    assert pos2d[KEPT_CHANNELS.index("MLC11-1609"), 1] > pos2d[KEPT_CHANNELS.index("MZO01-1609"), 1]


def test_splits_follow_the_design_and_the_scaler_saw_train_only(
    built: tuple[Path, Path, BuildReport],
) -> None:
    _, store, report = built
    X, meta = epoch_store.load_epochs(store)
    truth = expected_trials()
    for got, want in zip(meta["split"], truth["expected_split"], strict=True):
        assert got in want.split("|")
    per_subject = meta.groupby("subject")["split"].agg(set).to_dict()
    assert per_subject["BIGMEG1"] >= {"train", "test", "test_large"}
    assert per_subject["BIGMEG2"] >= {"train", "test"}
    val = meta[meta.split == "val"]
    assert (
        val["image_id"].nunique() == 1
    )  # round(0.2 x the 7 distinct training images of both subjects)
    # validation images are shared: every trial of a val image, in any subject, is val
    assert set(meta.loc[meta.image_id.isin(val.image_id), "split"]) == {"val"}
    # 10 ordinary exp trials (8 of BIGMEG1, 2 of BIGMEG2) share train and val
    assert report.split_counts == {"train": 10 - len(val), "val": len(val), "test": 6,
                                   "test_large": 1}  # fmt: skip
    for subject in ("BIGMEG1", "BIGMEG2"):
        train = X[((meta.subject == subject) & (meta.split == "train")).to_numpy()]
        values = train.transpose(1, 0, 2).reshape(4, -1)
        q25, q50, q75 = np.percentile(values, [25, 50, 75], axis=1)
        np.testing.assert_allclose(q50, 0.0, atol=1e-4)
        np.testing.assert_allclose(q75 - q25, 1.0, atol=1e-4)


def test_epochs_are_the_raw_signal_at_the_photodiode_onsets(
    built: tuple[Path, Path, BuildReport],
) -> None:
    """Each stored epoch matches a naive cut of the raw at its onset sample.

    Naive = every 10th native sample of the raw low-passed at LOWPASS_HZ (nothing left to
    alias at 120 Hz), baselined; correlation is per channel, so the robust scaling does
    not matter.
    """
    root, store, _ = built
    X, meta = epoch_store.load_epochs(store, subjects=["BIGMEG1"])
    key = mini.BROKEN_RUN
    path = root / f"sub-{key[0]}" / f"ses-{key[1]}" / "meg"
    raw = mne.io.read_raw_fif(path / f"sub-{key[0]}_ses-{key[1]}_task-main_run-{key[2]}_meg.fif",
                              verbose=False)  # fmt: skip
    data = raw.get_data(picks=KEPT_CHANNELS)
    with warnings.catch_warnings():  # a long FIR on a short run
        warnings.simplefilter("ignore")
        data = mne.filter.filter_data(data, mini.SFREQ, None, LOWPASS_HZ, verbose=False)
    offsets = np.arange(-60, 121) * 10

    def naive(onset: int) -> np.ndarray:
        cut = data[:, onset + offsets]
        return cut - cut[:, :61].mean(axis=1, keepdims=True)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))

    rows = np.flatnonzero(((meta.session == key[1]) & (meta.run == key[2])).to_numpy())
    onsets = meta["onset_sample"].to_numpy()[rows]
    assert len(rows) == 4
    for row, onset in zip(rows, onsets, strict=True):
        assert corr(X[row], naive(onset)).min() > 0.95
        assert np.abs(corr(X[row], naive(onset + mini.TRIGGER_STEP))).max() < 0.5


def test_verify_store_passes_and_catches_a_corrupt_shard(
    built: tuple[Path, Path, BuildReport], tmp_path: Path
) -> None:
    _, store, report = built
    manifest = epoch_store.verify_store(store)
    assert manifest.subjects == ["BIGMEG1", "BIGMEG2"]
    assert manifest.row_counts == {"BIGMEG1": 14, "BIGMEG2": 3}
    assert manifest.n_epochs == report.n_epochs
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    shard = copy / manifest.files[0].path
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(epoch_store.StoreError, match="corrupt"):
        epoch_store.verify_store(copy)


def test_handcrafted_latents_encode_each_stored_jpeg_once(
    built: tuple[Path, Path, BuildReport], latents: LatentsReport
) -> None:
    root, _, _ = built
    encoder = HandcraftedEncoder()
    ids, vectors = load_latents(latents.path)
    by_id = {v[0]: p for p, v in mini.IMAGES.items() if v[0] >= 0}
    assert latents.n_images == len(by_id) == 10  # catch images are not encoded
    assert ids.tolist() == sorted(by_id)
    assert vectors.shape == (10, encoder.dim) and np.isfinite(vectors).all()
    assert len(np.unique(vectors.round(5), axis=0)) == 10
    for image_id, vector in zip(ids, vectors, strict=True):
        path = root / "stimuli" / by_id[int(image_id)]
        assert path.suffix == ".jpg"
        with Image.open(path) as image:
            direct = encoder.encode([image.convert("RGB")])[0]
        np.testing.assert_allclose(vector, direct, rtol=1e-6, atol=1e-6)
