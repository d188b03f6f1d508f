"""Retrieval metrics against plain-loop references, hand-computed cases and chance levels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from megdecode.data.distractors import DISTRACTOR_ID_BASE
from megdecode.evaluation.retrieval import (
    average_by_image,
    cosine_similarity_matrix,
    evaluate_all,
    evaluate_retrieval,
    postprocess_mse,
    relative_median_rank,
    retrieval_ranks,
    topk_accuracy,
)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    nu = math.sqrt(sum(float(x) ** 2 for x in u))
    nv = math.sqrt(sum(float(x) ** 2 for x in v))
    if nu == 0.0 or nv == 0.0:
        return 0.0  # a zero vector is similar to nothing (the documented rule)
    return sum(float(x) * float(y) for x, y in zip(u, v, strict=True)) / (nu * nv)


def _reference_ranks(
    pred: np.ndarray, cand: np.ndarray, true: np.ndarray, seed: int = 0, tol: float = 1e-9
) -> list[int]:
    """Plain loops: candidates strictly more similar, plus a uniform place among the ties.

    The true image takes place floor(u * (ties + 1)) among the `ties` other candidates
    within `tol` of its similarity, with u = default_rng(seed).random(N)[i].
    """
    u = np.random.default_rng(seed).random(len(pred))
    ranks = []
    for i in range(len(pred)):
        s_true = _cos(pred[i], cand[true[i]])
        better = ties = 0
        for j in range(len(cand)):
            s = _cos(pred[i], cand[j])
            if s > s_true + tol:
                better += 1
            elif j != true[i] and abs(s - s_true) <= tol:
                ties += 1
        ranks.append(better + math.floor(float(u[i]) * (ties + 1)))
    return ranks


def _category_latents(
    n_categories: int, per_category: int, dim: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(category of each image, image latents): every exemplar gets its category's vector."""
    category = np.repeat(np.arange(n_categories), per_category)
    return category, rng.standard_normal((n_categories, dim))[category]


def _meta(
    n_subjects: int = 2, n_test: int = 10, reps: int = 3, n_large: int = 15, n_train: int = 20
) -> pd.DataFrame:
    """Epoch table: repeated test images, single-shot test_large and train images per subject."""
    rows = []
    for s in range(n_subjects):
        for r in range(reps):
            rows += [(f"S{s}", 100 + i, "test", r) for i in range(n_test)]
        rows += [(f"S{s}", 200 + i, "test_large", 0) for i in range(n_large)]
        rows += [(f"S{s}", 300 + i, "train", 0) for i in range(n_train)]
    return pd.DataFrame(rows, columns=["subject", "image_id", "split", "repetition"])


def _latents(
    meta: pd.DataFrame, dim: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(meta["image_id"].to_numpy())[::-1].copy()  # unsorted on purpose
    return ids, rng.standard_normal((len(ids), dim))


def test_cosine_similarity_matches_loops_and_zero_rows() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    sim = cosine_similarity_matrix(a, b)
    assert sim.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            assert sim[i, j] == pytest.approx(_cos(a[i], b[j]))
    assert_allclose(cosine_similarity_matrix(np.zeros((1, 4)), b), 0.0)


def test_ranks_match_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(1)
    pred, cand = rng.standard_normal((40, 6)), rng.standard_normal((25, 6))
    true = rng.integers(0, 25, size=40)
    assert retrieval_ranks(pred, cand, true).tolist() == _reference_ranks(pred, cand, true)


def test_ranks_hand_computed_and_duplicate_candidates_tie() -> None:
    cand = np.eye(3)
    pred = np.array([[1.0, 0.5, 0.0]] * 3)  # similarities: e1 > e2 > e3
    assert retrieval_ranks(pred, cand, np.array([0, 1, 2])).tolist() == [0, 1, 2]
    # Duplicate candidates tie: the true one lands first or second, by the seed.
    dup = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    seen = {
        int(retrieval_ranks(np.array([[1.0, 0.0]]), dup, np.array([0]), seed=s)[0])
        for s in range(20)
    }
    assert seen == {0, 1}


def test_rows_equal_up_to_rounding_tie() -> None:
    """Identical latents can differ by an ulp after BLAS; they must still tie."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal(8)
    cand = np.stack([base, base * (1 + 4e-16), base + 1e-15, rng.standard_normal(8)])
    pred = np.tile(base, (400, 1))
    ranks = np.concatenate([retrieval_ranks(pred, cand, np.full(400, t), seed=t) for t in range(3)])
    # three tied rows: each place 0, 1, 2 about a third of the time, never behind row 3
    counts = np.bincount(ranks, minlength=4)
    assert counts[3] == 0
    assert (np.abs(counts[:3] / len(ranks) - 1 / 3) < 0.05).all()


def test_all_zero_prediction_scores_chance_not_best_nor_worst() -> None:
    rng = np.random.default_rng(12)
    n_cand, n_pred = 50, 4000
    cand = rng.standard_normal((n_cand, 16))
    true = rng.integers(0, n_cand, size=n_pred)
    ranks = retrieval_ranks(np.zeros((n_pred, 16)), cand, true)
    # chance: top-5 = 5/50 (binomial std 0.005 at n=4000), median rank 0.5
    assert abs(topk_accuracy(ranks, 5) - 5 / n_cand) < 0.02
    assert abs(topk_accuracy(ranks, 1) - 1 / n_cand) < 0.01
    assert abs(relative_median_rank(ranks, n_cand) - 0.5) < 0.04


def test_category_constant_latents_score_above_chance() -> None:
    """A perfect category decoder against category-level latents (CLIP-Text of the
    category name): the true image ties its 11 category mates, so top-5 ~ 5/12."""
    rng = np.random.default_rng(13)
    per_category, n_categories = 12, 50
    category, cand = _category_latents(n_categories, per_category, 32, rng)
    n = len(cand)
    true = np.arange(n)
    ranks = retrieval_ranks(cand[true], cand, true)
    assert ranks.max() < per_category  # never behind another category
    top5 = topk_accuracy(ranks, 5)
    assert abs(top5 - 5 / per_category) < 0.08  # binomial std 0.02 at n=600
    assert top5 > 5 * 5 / n  # chance is 5/600
    # ranks uniform on 0..11: median ~5.5 of 599, where chance is 0.5
    assert relative_median_rank(ranks, n) == pytest.approx(5.5 / (n - 1), abs=1.5 / (n - 1))
    # the same seed gives the same ranks; another seed breaks the ties differently
    assert retrieval_ranks(cand[true], cand, true).tolist() == ranks.tolist()
    assert retrieval_ranks(cand[true], cand, true, seed=1).tolist() != ranks.tolist()


def test_ranks_over_chunks_match_brute_force() -> None:
    """Several chunks (chunk sizes that do not divide N) give the reference's ranks,
    ties included, with one tie-break per prediction whatever the chunking."""
    rng = np.random.default_rng(14)
    category, cand = _category_latents(8, 4, 6, rng)
    cand[::3] = rng.standard_normal((len(cand[::3]), 6))  # some candidates tie nobody
    n = 45
    true = rng.integers(0, len(cand), size=n)
    pred = cand[true] + 0.8 * rng.standard_normal((n, 6))
    pred[::5] = cand[true[::5]]  # exact category hits: ties with the category mates
    pred[7] = 0.0  # ties with everything
    ref = _reference_ranks(pred, cand, true, seed=3)
    for chunk_size in (1, 4, 7, n, 1000):
        got = retrieval_ranks(pred, cand, true, seed=3, chunk_size=chunk_size)
        assert got.tolist() == ref, chunk_size
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_ranks(pred, cand, true, chunk_size=0)


def test_ranks_beyond_the_default_chunk_match_brute_force() -> None:
    """More rows than one default chunk (2048): the second chunk is checked too."""
    rng = np.random.default_rng(15)
    category, cand = _category_latents(6, 3, 4, rng)
    n = 2100
    true = rng.integers(0, len(cand), size=n)
    pred = cand[true] + 0.5 * rng.standard_normal((n, 4))
    pred[::4] = cand[true[::4]]
    got = retrieval_ranks(pred, cand, true, seed=5)
    assert got.tolist() == _reference_ranks(pred, cand, true, seed=5)


def test_ranks_reject_bad_input() -> None:
    cand = np.eye(3)
    with pytest.raises(ValueError, match="out of range"):
        retrieval_ranks(np.ones((1, 3)), cand, np.array([3]))
    with pytest.raises(ValueError, match="finite"):
        retrieval_ranks(np.full((1, 3), np.nan), cand, np.array([0]))


def test_topk_and_median_rank_hand_computed() -> None:
    ranks = np.array([0, 1, 4, 5, 10])
    assert topk_accuracy(ranks, 1) == pytest.approx(0.2)
    assert topk_accuracy(ranks, 5) == pytest.approx(0.6)
    assert relative_median_rank(np.array([0, 2, 4]), 5) == pytest.approx(0.5)
    assert relative_median_rank(np.array([0, 1, 3, 4]), 5) == pytest.approx(0.5)  # (1+3)/2 / 4
    assert relative_median_rank(np.array([0, 0, 9]), 10) == 0.0
    with pytest.raises(ValueError):
        relative_median_rank(np.array([0]), 1)


def test_average_by_image_per_group_matches_loops() -> None:
    rng = np.random.default_rng(2)
    ids = np.array([5, 3, 5, 3, 5, 7])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    pred = rng.standard_normal((6, 4))
    out_ids, avg = average_by_image(pred, ids, groups)
    assert out_ids.tolist() == [3, 5, 3, 5, 7]  # group a: 3, 5; group b: 3, 5, 7
    expected = [pred[1], (pred[0] + pred[2]) / 2, pred[3], pred[4], pred[5]]
    assert_allclose(avg, np.stack(expected))
    ids_all, avg_all = average_by_image(pred, ids)
    assert ids_all.tolist() == [3, 5, 7]
    assert_allclose(avg_all[1], (pred[0] + pred[2] + pred[4]) / 3)


def test_postprocess_mse_maps_to_train_statistics() -> None:
    rng = np.random.default_rng(3)
    pred = 0.1 * rng.standard_normal((200, 5)) + 2.0  # shrunk towards a wrong mean
    mean, std = np.arange(5.0), np.linspace(0.5, 3.0, 5)
    out = postprocess_mse(pred, mean, std)
    assert_allclose(out.mean(axis=0), mean, atol=1e-10)
    assert_allclose(out.std(axis=0), std, rtol=1e-6)
    # Correlation with the raw prediction is kept (an affine map per dimension).
    assert np.corrcoef(out[:, 2], pred[:, 2])[0, 1] == pytest.approx(1.0)
    one = postprocess_mse(pred[:1], mean, std, pred_mean=pred.mean(0), pred_std=pred.std(0))
    assert_allclose(one, out[:1])
    with pytest.raises(ValueError, match="pred_mean"):
        postprocess_mse(pred[:1], mean, std)


def test_perfect_predictions_score_perfectly_in_every_setting() -> None:
    rng = np.random.default_rng(4)
    meta = _meta()
    ids, lat = _latents(meta, 16, rng)
    pred = lat[pd.Index(ids).get_indexer(meta["image_id"])]
    table = evaluate_all(pred, meta, ids, lat)
    assert list(zip(table["test_set"], table["mode"], strict=True)) == [
        ("small", "single-trial"),
        ("small", "averaged"),
        ("large", "single-trial"),  # seen once per subject: no "averaged" duplicate
    ]
    assert (table["top1"] == 1.0).all() and (table["top5"] == 1.0).all()
    assert (table["median_rank"] == 0.0).all()
    # the large set is the 15 zero-shot images only, not the 10 repeated test images too
    assert table["n_candidates"].tolist() == [10, 10, 15]
    # 2 subjects x (10 images x 3 reps) single; averaged = one row per (subject, image).
    assert table["n_predictions"].tolist() == [60, 20, 30]
    assert table["chance_top5"].tolist() == pytest.approx([0.5, 0.5, 5 / 15])


def test_large_set_ranks_the_zero_shot_images_only_and_refuses_averaging() -> None:
    """A test image's latent next to a large-set image must not count as a candidate."""
    meta = _meta(n_subjects=1, n_test=3, reps=2, n_large=4, n_train=0)
    ids = np.array([100, 101, 102, 200, 201, 202, 203])
    lat = np.eye(7)
    lat[:3] = lat[3:6] + 0.01 * np.eye(7)[:3]  # each test image almost equals a large one
    pred = lat[pd.Index(ids).get_indexer(meta["image_id"])]
    pred[meta["split"].to_numpy() == "test"] = 0.0
    large = evaluate_retrieval(pred, meta, ids, lat, "large", "single-trial")
    assert large.top1 == 1.0 and large.n_candidates == 4 and large.n_predictions == 4
    assert large.chance_top5 == 1.0 and large.chance_top1 == pytest.approx(0.25)
    with pytest.raises(ValueError, match="seen once"):
        evaluate_retrieval(pred, meta, ids, lat, "large", "averaged")


def test_distractors_extend_the_large_candidates_only() -> None:
    rng = np.random.default_rng(9)
    meta = _meta()
    ids, lat = _latents(meta, 16, rng)
    extra_ids = DISTRACTOR_ID_BASE + np.arange(35)
    all_ids = np.concatenate([ids, extra_ids])
    all_lat = np.concatenate([lat, rng.standard_normal((35, 16))])
    pred = lat[pd.Index(ids).get_indexer(meta["image_id"])] + rng.standard_normal((len(meta), 16))
    assert evaluate_all(pred, meta, ids, lat)["test_set"].tolist() == ["small"] * 2 + ["large"]
    table = evaluate_all(pred, meta, all_ids, all_lat).set_index(["test_set", "mode"])
    assert table.index.tolist()[-1] == ("large_distractors", "single-trial")
    plain, hard = (
        table.loc[("large", "single-trial")],
        table.loc[("large_distractors", "single-trial")],
    )
    assert plain["n_candidates"] == 15 and hard["n_candidates"] == 15 + 35
    assert hard["chance_top5"] == pytest.approx(5 / 50) and plain["chance_top5"] == pytest.approx(
        5 / 15
    )
    assert hard["n_predictions"] == plain["n_predictions"] == 30
    # more candidates can only push the true image down
    ranks = {
        name: evaluate_retrieval(pred, meta, all_ids, all_lat, name, "single-trial").ranks
        for name in ("large", "large_distractors")
    }
    assert (ranks["large_distractors"] >= ranks["large"]).all()
    assert table.loc[("small", "single-trial"), "n_candidates"] == 10  # the small set: untouched
    with pytest.raises(ValueError, match="distractor"):
        evaluate_retrieval(pred, meta, ids, lat, "large_distractors")


def test_evaluate_retrieval_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(5)
    meta = _meta(n_test=8, reps=2, n_large=6)
    ids, lat = _latents(meta, 5, rng)
    pred = rng.standard_normal((len(meta), 5))
    res = evaluate_retrieval(pred, meta, ids, lat, test_set="large", mode="single-trial")
    keep = meta["split"].isin(["test_large"]).to_numpy()
    cand_ids = sorted(set(meta.loc[keep, "image_id"]))
    cand = np.stack([lat[list(ids).index(c)] for c in cand_ids])
    true = np.array([cand_ids.index(i) for i in meta.loc[keep, "image_id"]])
    ref = _reference_ranks(pred[keep], cand, true)
    assert res.ranks.tolist() == ref
    assert res.top5 == pytest.approx(sum(r < 5 for r in ref) / len(ref))
    assert res.median_rank == pytest.approx(float(np.median(np.array(ref) / (len(cand_ids) - 1))))


def test_shuffled_predictions_are_near_chance() -> None:
    rng = np.random.default_rng(6)
    n_images, reps = 500, 10
    meta = pd.DataFrame(
        {
            "subject": "S0",
            "image_id": np.tile(np.arange(n_images), reps),
            "split": "test",
        }
    )
    ids, lat = np.arange(n_images), rng.standard_normal((n_images, 32))
    pred = lat[rng.permutation(meta["image_id"].to_numpy())]  # right latents, wrong trials
    res = evaluate_retrieval(pred, meta, ids, lat, "small", "single-trial")
    assert res.chance_top5 == pytest.approx(0.01)
    assert abs(res.top5 - 0.01) < 0.006  # ~4 binomial std at n=5000
    assert abs(res.median_rank - 0.5) < 0.03


def test_averaging_repetitions_helps_noisy_predictions() -> None:
    rng = np.random.default_rng(7)
    meta = _meta(n_subjects=1, n_test=50, reps=12, n_large=0, n_train=0)
    ids, lat = _latents(meta, 16, rng)
    pred = lat[pd.Index(ids).get_indexer(meta["image_id"])] + 3.0 * rng.standard_normal(
        (len(meta), 16)
    )
    single = evaluate_retrieval(pred, meta, ids, lat, "small", "single-trial")
    averaged = evaluate_retrieval(pred, meta, ids, lat, "small", "averaged")
    assert averaged.top5 > single.top5 + 0.2
    assert averaged.median_rank < single.median_rank


def test_evaluate_retrieval_reports_missing_inputs() -> None:
    rng = np.random.default_rng(8)
    meta = _meta()
    ids, lat = _latents(meta, 4, rng)
    pred = rng.standard_normal((len(meta), 4))
    with pytest.raises(KeyError, match="no latent"):
        evaluate_retrieval(pred, meta, ids[ids != 100], lat[ids != 100], "small")
    with pytest.raises(ValueError, match="subject"):
        evaluate_retrieval(pred, meta.drop(columns="subject"), ids, lat, "small", "averaged")
    with pytest.raises(ValueError, match="test_set"):
        evaluate_retrieval(pred, meta, ids, lat, "huge")
    with pytest.raises(ValueError, match="len\\(meta\\)"):
        evaluate_retrieval(pred[:-1], meta, ids, lat)
