"""Per-subject ridge: folds over slices of every session, one model per subject."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from megdecode.models.ridge import RidgeConfig
from megdecode.models.subject_ridge import fit_subject_ridges, session_folds


def _meta(subjects: int = 2, sessions: int = 3, runs: int = 2, trials: int = 10) -> pd.DataFrame:
    """Recording-ordered rows; every image shown once except image 7 of each session,
    shown again at the end of the session (a repetition)."""
    rows = []
    for s in range(subjects):
        for ses in range(1, sessions + 1):
            for run in range(1, runs + 1):
                for t in range(trials):
                    image = 1000 * ses + 100 * run + t
                    rows.append((f"S{s}", f"{ses:02d}", f"{run:02d}", t, image))
            rows.append((f"S{s}", f"{ses:02d}", f"{runs:02d}", trials, 1000 * ses + 107))
    return pd.DataFrame(rows, columns=["subject", "session", "run", "trial_index", "image_id"])


def test_every_fold_holds_a_slice_of_every_session() -> None:
    meta = _meta()
    fold = session_folds(meta, 3)
    for (_, _), part in meta.assign(fold=fold).groupby(["subject", "session"]):
        assert sorted(part["fold"].unique()) == [0, 1, 2]
        # contiguous in recording order: fold never decreases (the repetition aside)
        first = part[~part.duplicated("image_id")]
        assert (np.diff(first["fold"].to_numpy()) >= 0).all()
    # the default contiguous blocks of the old solver hold whole sessions out: with rows
    # sorted by session and as many folds as sessions, fold k is exactly session k
    old = np.minimum(np.arange(len(meta)) * 6 // len(meta), 5)
    assert meta.assign(fold=old).groupby(["subject", "session"])["fold"].nunique().max() == 1


def test_repetitions_of_an_image_share_a_fold() -> None:
    meta = _meta()
    fold = session_folds(meta, 4)
    per_image = meta.assign(fold=fold).groupby(["subject", "image_id"])["fold"].nunique()
    assert per_image.max() == 1
    assert meta.duplicated(["subject", "image_id"]).sum() == 6  # the test does test repeats


def test_folds_follow_recording_order_not_row_order() -> None:
    meta = _meta()
    shuffled = meta.sample(frac=1.0, random_state=0)
    expected = pd.Series(session_folds(meta, 3), index=meta.index)
    got = pd.Series(session_folds(shuffled, 3), index=shuffled.index)
    pd.testing.assert_series_equal(got.sort_index(), expected)


def test_session_folds_needs_image_ids_and_warns_on_tiny_sessions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match="image_id"):
        session_folds(pd.DataFrame({"subject": ["S0"]}), 2)
    tiny = pd.DataFrame({"session": ["01", "01", "02"], "image_id": [1, 2, 3]})
    fold = session_folds(tiny, 2)  # no run/trial_index: row order; no subject: one subject
    assert fold.tolist() == [0, 1, 0]
    assert "fewer images than 2 folds" in caplog.text


def _opposite_subjects(n: int = 240, c: int = 6, t: int = 5, f: int = 3, seed: int = 0):
    """Two subjects see the same images; subject S1's sensors carry the latent with the
    opposite sign (a flipped field map): a pooled linear map averages to zero."""
    W = np.random.default_rng(0).standard_normal((f, c * t))  # shared by train and test
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n, f))
    blocks = []
    for s, sign in ((0, 1.0), (1, -1.0)):
        X = (sign * Y @ W + 0.3 * rng.standard_normal((n, c * t))).reshape(n, c, t)
        meta = _meta(subjects=1, sessions=4, runs=2, trials=n // 8).iloc[:n]
        meta = meta.assign(subject=f"S{s}", image_id=np.arange(n))
        blocks.append((X.astype(np.float32), Y, meta))
    return blocks


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1 - ((y - p) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_per_subject_fits_recover_opposite_maps_a_pooled_fit_cannot() -> None:
    train = _opposite_subjects(seed=1)
    test = _opposite_subjects(n=80, seed=2)
    model = fit_subject_ridges(train, RidgeConfig(alphas=tuple(np.logspace(-2, 4, 7))))
    assert set(model.alphas) == {"S0", "S1"}
    for X, Y, meta in test:
        assert _r2(Y, model.predict(X, meta["subject"].to_numpy())) > 0.9
    # the same solver pooled over both subjects (one "subject") learns nothing
    pooled_blocks = [(X, Y, meta.assign(subject="all")) for X, Y, meta in train]
    pooled = fit_subject_ridges(pooled_blocks, RidgeConfig(alphas=tuple(np.logspace(-2, 4, 7))))
    for X, Y, _ in test:
        assert _r2(Y, pooled.predict(X, np.full(len(X), "all"))) < 0.1


def test_predictions_follow_each_rows_subject_and_refuse_unknown_ones() -> None:
    blocks = _opposite_subjects(n=80)
    model = fit_subject_ridges(blocks, RidgeConfig(alphas=(1.0,)))
    X = np.concatenate([blocks[0][0][:3], blocks[1][0][:3]])
    subjects = np.array(["S0"] * 3 + ["S1"] * 3)
    both = model.predict(X, subjects)
    np.testing.assert_allclose(both[:3], model.models["S0"].predict(X[:3]), rtol=1e-6)
    np.testing.assert_allclose(both[3:], model.models["S1"].predict(X[3:]), rtol=1e-6)
    with pytest.raises(KeyError, match="S9"):
        model.predict(X[:1], np.array(["S9"]))
    with pytest.raises(ValueError, match="subject labels"):
        model.predict(X, subjects[:2])
