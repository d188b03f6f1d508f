"""Zero-shot train / val / test splits and repetition counts on a hand-made THINGS-like table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_array_equal

from megdecode.config import ConfigError
from megdecode.data.splits import (
    SPLITS,
    SplitConfig,
    assign_splits,
    large_test_mask,
    recording_order,
    repetitions,
    small_test_mask,
    split_mask,
    val_images,
)

N_CATEGORIES, EXP_PER_CATEGORY, TEST_CATEGORIES, TEST_REPEATS = 12, 6, (0, 3, 7), 4


def things_like(subject: str = "BIGMEG1", seed: int = 0) -> pd.DataFrame:
    """Exp images shown once, one test image per test category shown TEST_REPEATS times
    (spread over sessions "1", "2" and "10" to check numeric ordering), two catch trials."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(N_CATEGORIES):
        rows += [("exp", 1000 + 10 * c + i, c) for i in range(EXP_PER_CATEGORY)]
    for c in TEST_CATEGORIES:
        rows += [("test", 5000 + c, c)] * TEST_REPEATS
    rows += [("catch", -1, 99), ("catch", -1, 99)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    sessions = np.array(["1", "2", "10"])[np.arange(len(rows)) * 3 // len(rows)]
    return pd.DataFrame(
        {
            "subject": subject,
            "session": sessions,
            "run": "01",
            "trial_index": np.arange(len(rows)),
            "image_id": [r[1] for r in rows],
            "category_id": [r[2] for r in rows],
            "category": [f"cat{r[2]}" for r in rows],
            "trial_type": [r[0] for r in rows],
        }
    )


@pytest.fixture
def meta() -> pd.DataFrame:
    return assign_splits(things_like(), SplitConfig(val_fraction=0.25, seed=0))


def test_columns_and_split_names(meta: pd.DataFrame) -> None:
    assert set(meta["split"]) == set(SPLITS) | {"catch"}
    assert meta["repetition"].dtype == np.int64
    assert len(meta) == len(things_like())
    assert (meta.loc[meta["trial_type"] == "test", "split"] == "test").all()
    assert (meta.loc[meta["trial_type"] == "catch", "split"] == "catch").all()


def test_zero_shot_no_test_category_in_train_or_val(meta: pd.DataFrame) -> None:
    fit = meta[split_mask(meta, "train", "val")]
    held = meta[large_test_mask(meta)]
    assert not set(fit["category"]) & set(held["category"])
    assert set(held["category"]) == {f"cat{c}" for c in TEST_CATEGORIES}
    large = meta[split_mask(meta, "test_large")]
    assert (large["trial_type"] == "exp").all()
    assert large["image_id"].nunique() == len(TEST_CATEGORIES) * EXP_PER_CATEGORY


def test_without_zero_shot_test_categories_stay_in_training() -> None:
    meta = assign_splits(things_like(), SplitConfig(zero_shot=False))
    assert not split_mask(meta, "test_large").any()
    assert "cat0" in set(meta.loc[split_mask(meta, "train", "val"), "category"])


def test_val_is_a_fraction_of_images_disjoint_from_train(meta: pd.DataFrame) -> None:
    train_ids = set(meta.loc[split_mask(meta, "train"), "image_id"])
    val_ids = set(meta.loc[split_mask(meta, "val"), "image_id"])
    assert not train_ids & val_ids
    n_train_images = (N_CATEGORIES - len(TEST_CATEGORIES)) * EXP_PER_CATEGORY
    assert len(val_ids) == round(0.25 * n_train_images)
    assert len(train_ids) + len(val_ids) == n_train_images


def test_val_keeps_all_trials_of_an_image_together() -> None:
    table = things_like()
    table = pd.concat([table, table.assign(session="11", trial_index=table["trial_index"] + 1000)])
    meta = assign_splits(table.reset_index(drop=True), SplitConfig(val_fraction=0.3))
    per_image = meta[meta["trial_type"] == "exp"].groupby("image_id")["split"].nunique()
    assert (per_image == 1).all()


def test_seeded_determinism_and_change_with_seed() -> None:
    a = assign_splits(things_like(), SplitConfig(val_fraction=0.25, seed=0))
    b = assign_splits(things_like(), SplitConfig(val_fraction=0.25, seed=0))
    c = assign_splits(things_like(), SplitConfig(val_fraction=0.25, seed=1))
    assert_array_equal(a["split"], b["split"])
    assert set(a.loc[split_mask(a, "val"), "image_id"]) != set(
        c.loc[split_mask(c, "val"), "image_id"]
    )
    assert split_mask(a, "val").sum() == split_mask(c, "val").sum()
    assert_array_equal(
        val_images(np.array([5, 3, 9, 3, 7]), 0.4, 2), val_images(np.array([9, 7, 5, 3]), 0.4, 2)
    )


def test_repetitions_follow_recording_order(meta: pd.DataFrame) -> None:
    test = meta[small_test_mask(meta)]
    assert test.groupby("image_id").size().tolist() == [TEST_REPEATS] * len(TEST_CATEGORIES)
    assert (meta.loc[meta["trial_type"] == "exp", "repetition"] == 0).all()
    for _, shows in test.groupby("image_id"):
        order = shows.assign(session=shows["session"].astype(int)).sort_values(
            ["session", "trial_index"]
        )
        assert_array_equal(order["repetition"], np.arange(TEST_REPEATS))  # "10" after "2"


def test_repetitions_by_hand() -> None:
    table = pd.DataFrame(
        {
            "subject": ["a", "a", "a", "b", "a"],
            "session": ["02", "01", "01", "01", "01"],
            "run": ["01", "02", "01", "01", "01"],
            "trial_index": [0, 0, 5, 0, 1],
            "image_id": [7, 7, 7, 7, 8],
            "trial_type": ["test"] * 5,
        }
    )
    assert_array_equal(repetitions(table), [2, 1, 0, 0, 0])


def test_recording_order_is_numeric_for_unpadded_labels() -> None:
    table = pd.DataFrame(
        {
            "session": ["10", "2", "2", "2", "1"],
            "run": ["1", "10", "2", "2", "3"],
            "trial_index": [0, 0, 1, 0, 0],
        }
    )
    # a string sort would put session "10" before "2" and run "10" before "2"
    assert_array_equal(recording_order(table), [4, 3, 2, 1, 0])
    padded = table.assign(session=table["session"].str.zfill(2), run=table["run"].str.zfill(2))
    assert_array_equal(recording_order(padded), [4, 3, 2, 1, 0])
    strings = padded.sort_values(["session", "run", "trial_index"], kind="stable").index
    assert_array_equal(recording_order(padded), strings)  # padded labels: the string order
    mixed = table.assign(run=["1", "10", "2", "2", "3a"])  # not all numbers: labels as text
    assert_array_equal(recording_order(mixed), [4, 1, 3, 2, 0])


def test_repetitions_count_run_2_before_run_10() -> None:
    table = pd.DataFrame(
        {
            "subject": "a",
            "session": "1",
            "run": ["10", "2", "1"],
            "trial_index": [0, 0, 0],
            "image_id": 7,
            "trial_type": "test",
        }
    )
    assert_array_equal(repetitions(table), [2, 1, 0])


def test_large_set_is_the_zero_shot_images_only(meta: pd.DataFrame) -> None:
    """Paper: the large set is the exp images of the test categories (200 x 12 on THINGS),
    each seen once; the repeated test images are the small set, never part of it."""
    small, large = small_test_mask(meta), large_test_mask(meta)
    assert small.any() and large.any() and not (small & large).any()
    assert meta.loc[small, "image_id"].nunique() == len(TEST_CATEGORIES)
    assert (meta.loc[large, "trial_type"] == "exp").all()
    assert meta.loc[large, "image_id"].nunique() == large.sum()  # each image seen once
    assert large.sum() == len(TEST_CATEGORIES) * EXP_PER_CATEGORY


def test_default_validation_share_is_the_papers_fifth() -> None:
    assert SplitConfig().val_fraction == 0.2
    meta = assign_splits(things_like())
    n_train_images = (N_CATEGORIES - len(TEST_CATEGORIES)) * EXP_PER_CATEGORY
    assert meta.loc[split_mask(meta, "val"), "image_id"].nunique() == round(0.2 * n_train_images)


def test_per_subject_equals_joint() -> None:
    s1, s2 = things_like("BIGMEG1", seed=0), things_like("BIGMEG2", seed=1)
    s2 = s2[s2["image_id"] != 1001]  # subjects need not see the same images
    cfg = SplitConfig(val_fraction=0.2, seed=3)
    joint = assign_splits(pd.concat([s1, s2], ignore_index=True), cfg)
    alone = pd.concat([assign_splits(s1, cfg), assign_splits(s2, cfg)], ignore_index=True)
    assert_array_equal(joint["split"], alone["split"])
    assert_array_equal(joint["repetition"], alone["repetition"])
    val = [set(m.loc[split_mask(m, "val"), "image_id"]) for _, m in joint.groupby("subject")]
    assert len(val[0] & val[1]) >= len(val[1]) - 1  # the same images are val for both subjects


def test_errors() -> None:
    with pytest.raises(ConfigError):
        SplitConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="category"):
        assign_splits(things_like().drop(columns="category"))
    with pytest.raises(ValueError, match="trial_type"):
        assign_splits(things_like().assign(trial_type="rest"))
    with pytest.raises(ValueError, match="split"):
        small_test_mask(things_like())
    with pytest.raises(ValueError, match="unknown split"):
        split_mask(assign_splits(things_like()), "training")


def test_config_flat_round_trip() -> None:
    cfg = SplitConfig(val_fraction=0.2, seed=7, zero_shot=False)
    assert SplitConfig.from_flat_dict(cfg.to_flat_dict()) == cfg


def test_validation_images_are_shared_across_subjects() -> None:
    """Subjects with different image sets: an image is val for every subject or for none."""
    rows = []
    for subject, images in (("S1", range(0, 30)), ("S2", range(5, 21)), ("S3", range(10, 13))):
        for trial, image in enumerate(images):
            rows.append(
                {
                    "subject": subject,
                    "session": "01",
                    "run": "01",
                    "trial_index": trial,
                    "image_id": image,
                    "category_id": image,
                    "category": f"c{image}",
                    "trial_type": "exp",
                }
            )
    meta = assign_splits(pd.DataFrame(rows), SplitConfig(val_fraction=0.3, seed=1))
    per_image = meta.groupby("image_id")["split"].nunique()
    assert (per_image == 1).all()
    assert (meta["split"] == "val").any()
