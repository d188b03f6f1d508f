"""Retrieval metrics: how well predicted latents pick out the seen image.

A brain module predicts one latent vector per MEG epoch. Retrieval ranks every candidate
image of a test set by the cosine similarity of its latent to the prediction and asks
where the true image lands (paper: top-5 accuracy and relative median rank).

Rank convention (used everywhere in this module), 0-based, 0 = best:
    better = #{candidates j : sim_j > sim_true + tol}
    tied   = #{candidates j != true : |sim_j - sim_true| <= tol}
    rank   = better + floor(u * (tied + 1)),   u ~ U[0, 1) per prediction, seeded
Ties are broken at random: the true image lands uniformly among the candidates it ties
with. Ties are real: a latent constant within a category (CLIP-Text of the category
name, the twin's category latent) ties every exemplar of the category, and an all-zero
prediction ties every candidate. Counting ties against the prediction would score such
latents top-5 = 0 by construction. The mean rank of a tied group is not used either: it
puts 12 tied exemplars at rank 5.5, outside the top 5, and an all-zero prediction at
the middle rank, top-k 0 next to a chance median rank. With one random integer rank per
prediction, top-k and median rank are read off the same ranks: a degenerate prediction
scores chance in both (expected top-k = k / n_candidates, relative median rank ~0.5) and
a perfect decoder of m-exemplar categories gets expected top-k = min(k, m) / m. u is
``numpy.random.default_rng(seed).random(N)[i]`` however the rows are chunked, so a seed
gives the same ranks on every call; tol absorbs rounding (identical candidate rows can
differ by an ulp after BLAS).

Relative median rank = median over predictions of rank / (n_candidates - 1): 0 when the
true image is always first, 1 when always last, 0.5 at chance (uniform ranks).
Top-k chance = k / n_candidates.

Test sets (the paper's, DESIGN §4):
    "small"              split "test": the 200 test images, each repeated 12 times per
                         subject; candidates = those images (chance top-5 5/200 = 2.5%).
    "large"              split "test_large": the 2,400 zero-shot exemplars removed from
                         training, each seen once per subject; candidates = those images
                         (chance 5/2400 = 0.21%).
    "large_distractors"  the large set's trials ranked against its images plus every
                         never-shown distractor in the latent table
                         (`megdecode.data.distractors`; THINGS: 3,659 more).
The candidates of a set are the unique image ids of its rows, pooled over subjects (plus
the distractors); chance = k / the number of candidates actually ranked.

Modes, named as the paper names them: "single-trial" scores each trial; "averaged" first
averages each image's predictions per subject (over its repetitions). Only the small set
has an averaged score: a large-set image is seen once per subject, so its average is the
single trial itself.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from megdecode.data.distractors import is_distractor

logger = logging.getLogger(__name__)

SINGLE, AVERAGED = "single-trial", "averaged"
MODES = (SINGLE, AVERAGED)
DISTRACTOR_SET = "large_distractors"  # the large set's trials against images + distractors
TEST_SPLITS: dict[str, tuple[str, ...]] = {
    "small": ("test",),
    "large": ("test_large",),
    DISTRACTOR_SET: ("test_large",),
}
# The modes each test set is scored in (module docstring: why "large" has no average).
TEST_SET_MODES: dict[str, tuple[str, ...]] = {
    "small": MODES,
    "large": (SINGLE,),
    DISTRACTOR_SET: (SINGLE,),
}

# Rows of the similarity matrix computed at once: bounds memory to chunk x M float64
# (18k single trials x 2,400 candidates would otherwise be a 350 MB matrix).
_CHUNK = 2048
# Similarities this close are one tie: far above the ~1e-16 rounding that separates
# identical candidate rows, and two distinct latents this close to a prediction are rare
# (and as good as a coin flip anyway).
TIE_TOL = 1e-9


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Cosine similarities between rows: a (N, F), b (M, F) -> (N, M) float64.

    Rows with norm < eps are left at zero (similarity 0 with everything) instead of
    dividing by zero; an all-zero prediction then ties every candidate and, with the
    random tie rule of the module docstring, scores chance.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, F) and (M, F) arrays, got {a.shape} and {b.shape}")
    a_n = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), eps)
    b_n = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), eps)
    return a_n @ b_n.T


def retrieval_ranks(
    pred: np.ndarray,
    candidates: np.ndarray,
    true_index: np.ndarray,
    *,
    seed: int = 0,
    tie_tol: float = TIE_TOL,
    chunk_size: int = _CHUNK,
) -> np.ndarray:
    """0-based rank of the true candidate for each prediction, ties broken at random.

    pred (N, F), candidates (M, F), true_index (N,) ints in [0, M) -> (N,) int64, by the
    rank convention of the module docstring (`seed` draws the tie-breaks, `tie_tol` is
    tol). `chunk_size` rows of the (N, M) similarity matrix are held at once; the ranks
    do not depend on it.
    """
    pred = np.asarray(pred)
    candidates = np.asarray(candidates)
    true_index = np.asarray(true_index, dtype=np.int64)
    if pred.ndim != 2 or candidates.ndim != 2:
        raise ValueError(f"pred and candidates must be 2-D, got {pred.shape}, {candidates.shape}")
    if true_index.shape != (pred.shape[0],):
        raise ValueError(f"true_index must have shape ({pred.shape[0]},), got {true_index.shape}")
    if len(true_index) and (true_index.min() < 0 or true_index.max() >= candidates.shape[0]):
        raise ValueError(f"true_index out of range [0, {candidates.shape[0]})")
    if not (np.isfinite(pred).all() and np.isfinite(candidates).all()):
        raise ValueError("pred and candidates must be finite (found NaN or inf)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not tie_tol >= 0:
        raise ValueError(f"tie_tol must be >= 0, got {tie_tol}")
    # one draw per prediction up front, so chunking never changes which u a row gets
    u = np.random.default_rng(seed).random((pred.shape[0],))
    ranks = np.empty(pred.shape[0], dtype=np.int64)
    for start in range(0, pred.shape[0], chunk_size):
        stop = min(start + chunk_size, pred.shape[0])
        sim = cosine_similarity_matrix(pred[start:stop], candidates)
        true_sim = sim[np.arange(stop - start), true_index[start:stop]][:, None]
        better = (sim > true_sim + tie_tol).sum(axis=1)
        # the true candidate ties with itself: subtract it
        tied = (np.abs(sim - true_sim) <= tie_tol).sum(axis=1) - 1
        ranks[start:stop] = better + np.floor(u[start:stop] * (tied + 1)).astype(np.int64)
    return ranks


def _scored(ranks: np.ndarray) -> np.ndarray:
    """The ranks as an array; an empty set has no score (a mean of nothing is not 0)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to score")
    return ranks


def topk_accuracy(ranks: np.ndarray, k: int) -> float:
    """Fraction of predictions whose true image is among the k best: mean(ranks < k)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.mean(_scored(ranks) < k))


def relative_median_rank(ranks: np.ndarray, n_candidates: int) -> float:
    """median(ranks / (n_candidates - 1)): 0 = always first, 1 = always last, 0.5 = chance."""
    if n_candidates < 2:
        raise ValueError(f"need at least 2 candidates, got {n_candidates}")
    return float(np.median(_scored(ranks) / (n_candidates - 1)))


def average_by_image(
    pred: np.ndarray, image_ids: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction per image (and per group, e.g. subject): the paper's "averaged" mode.

    pred (N, F), image_ids (N,), groups (N,) or None -> (ids (K,), averaged (K, F) float64),
    one row per (group, image) pair, sorted by group then image id. With groups, ids may
    repeat (one row per subject that saw the image); averaging never mixes subjects.
    """
    pred = np.asarray(pred, dtype=np.float64)
    image_ids = np.asarray(image_ids)
    if pred.ndim != 2 or image_ids.shape != (pred.shape[0],):
        raise ValueError(
            f"expected pred (N, F) and image_ids (N,), got {pred.shape}, {image_ids.shape}"
        )
    keys = pd.DataFrame({"image_id": image_ids})
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != image_ids.shape:
            raise ValueError(f"groups must have shape {image_ids.shape}, got {groups.shape}")
        keys.insert(0, "group", groups)
    by = list(keys.columns)
    codes = keys.groupby(by, sort=True).ngroup().to_numpy()
    n_keys = int(codes.max()) + 1 if len(codes) else 0
    sums = np.zeros((n_keys, pred.shape[1]))
    np.add.at(sums, codes, pred)
    counts = np.bincount(codes, minlength=n_keys)
    ids = np.empty(n_keys, dtype=image_ids.dtype)
    ids[codes] = image_ids
    return ids, sums / counts[:, None]


def postprocess_mse(
    pred: np.ndarray,
    train_mean: np.ndarray,
    train_std: np.ndarray,
    pred_mean: np.ndarray | None = None,
    pred_std: np.ndarray | None = None,
    eps: float = 1e-8,
) -> np.ndarray:
    """Map MSE-head outputs onto the training latents' statistics (paper, generation).

    Regression towards the mean shrinks MSE predictions; the generator expects latents
    with the training distribution's scale. Each dimension is z-scored over the predicted
    set, then rescaled: out = (pred - mean_pred) / std_pred * train_std + train_mean.
    pred (N, F) with N >= 2, train_mean/std (F,) -> (N, F) float64. A single prediction
    (serving) cannot be z-scored over itself: pass pred_mean/pred_std (F,) measured on a
    reference set of predictions, e.g. validation.
    """
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim != 2:
        raise ValueError(f"pred must be (N, F), got {pred.shape}")
    if pred_mean is None or pred_std is None:
        if pred.shape[0] < 2:
            raise ValueError("z-scoring needs >= 2 predictions; pass pred_mean and pred_std")
        pred_mean = pred.mean(axis=0) if pred_mean is None else pred_mean
        pred_std = pred.std(axis=0) if pred_std is None else pred_std
    z = (pred - np.asarray(pred_mean)) / np.maximum(np.asarray(pred_std), eps)
    return z * np.asarray(train_std) + np.asarray(train_mean)


@dataclasses.dataclass(frozen=True)
class RetrievalResult:
    """Scores of one (test set, mode) combination; ranks kept for further analysis."""

    test_set: str
    mode: str
    top1: float
    top5: float
    median_rank: float  # relative, see module docstring
    n_predictions: int
    n_candidates: int
    chance_top1: float
    chance_top5: float
    ranks: np.ndarray = dataclasses.field(repr=False, compare=False)

    def as_dict(self) -> dict[str, float | int | str]:
        """Scalar fields only (what goes to a table or MLflow)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ranks"
        }


def _lookup(latent_ids: np.ndarray, latents: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows of `latents` for `wanted` image ids; KeyError naming missing ids."""
    index = pd.Index(np.asarray(latent_ids))
    if not index.is_unique:
        raise ValueError("latent_ids contains duplicates")
    pos = index.get_indexer(wanted)
    if (pos < 0).any():
        missing = np.asarray(wanted)[pos < 0]
        raise KeyError(f"{len(missing)} image ids have no latent, e.g. {missing[:5].tolist()}")
    return np.asarray(latents)[pos]


def evaluate_retrieval(
    pred: np.ndarray,
    meta: pd.DataFrame,
    latent_ids: np.ndarray,
    latents: np.ndarray,
    test_set: str = "small",
    mode: str = SINGLE,
) -> RetrievalResult:
    """Score predictions on one test set in one mode (see the module docstring).

    pred (N, F): one prediction per row of `meta` (N rows with image_id, split, and
    subject for mode="averaged"); latent_ids (L,), latents (L, F). Rows whose split is
    not in the test set are ignored. mode="single-trial" scores each trial ("real-time");
    mode="averaged" first averages the predictions of each image per subject.
    """
    if test_set not in TEST_SPLITS:
        raise ValueError(f"test_set must be one of {sorted(TEST_SPLITS)}, got {test_set!r}")
    if mode not in TEST_SET_MODES[test_set]:
        raise ValueError(
            f"mode must be one of {TEST_SET_MODES[test_set]} for test set {test_set!r}, got "
            f"{mode!r} (a large-set image is seen once per subject: nothing to average)"
        )
    needed = ["image_id", "split"] + (["subject"] if mode == "averaged" else [])
    missing_cols = [c for c in needed if c not in meta.columns]
    if missing_cols:
        raise ValueError(f"meta is missing column(s) {missing_cols}")
    pred = np.asarray(pred)
    if pred.ndim != 2 or pred.shape[0] != len(meta):
        raise ValueError(f"pred must be (len(meta)={len(meta)}, F), got {pred.shape}")
    keep = meta["split"].isin(TEST_SPLITS[test_set]).to_numpy()
    if not keep.any():
        raise ValueError(f"no rows with split in {TEST_SPLITS[test_set]} for test set {test_set!r}")
    ids = meta["image_id"].to_numpy()[keep]
    scored = pred[keep]
    if mode == "averaged":
        ids, scored = average_by_image(scored, ids, meta["subject"].to_numpy()[keep])
    candidate_ids = np.unique(ids)
    if test_set == DISTRACTOR_SET:
        extra = np.asarray(latent_ids)[is_distractor(latent_ids)]
        if not len(extra):
            raise ValueError(
                f"test set {test_set!r} needs distractor latents, and the latent table has "
                "none (encode them with `megdecode latents`, `--distractors` for THINGS)"
            )
        candidate_ids = np.union1d(candidate_ids, extra)
    candidates = _lookup(latent_ids, latents, candidate_ids)
    ranks = retrieval_ranks(scored, candidates, np.searchsorted(candidate_ids, ids))
    n_cand = len(candidate_ids)
    return RetrievalResult(
        test_set=test_set,
        mode=mode,
        top1=topk_accuracy(ranks, 1),
        top5=topk_accuracy(ranks, 5),
        median_rank=relative_median_rank(ranks, n_cand),
        n_predictions=len(ranks),
        n_candidates=n_cand,
        chance_top1=min(1.0, 1 / n_cand),
        chance_top5=min(1.0, 5 / n_cand),
        ranks=ranks,
    )


def available_test_sets(latent_ids: np.ndarray) -> tuple[str, ...]:
    """small and large, plus large_distractors when the latent table holds distractors."""
    has_distractors = bool(is_distractor(np.asarray(latent_ids)).any())
    return ("small", "large") + ((DISTRACTOR_SET,) if has_distractors else ())


def evaluate_all(
    pred: np.ndarray,
    meta: pd.DataFrame,
    latent_ids: np.ndarray,
    latents: np.ndarray,
    test_sets: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
) -> pd.DataFrame:
    """The paper's table: one row per (test_set, mode), columns of `RetrievalResult.as_dict`.

    `test_sets` defaults to `available_test_sets`; each set is scored in those of `modes`
    it has (`TEST_SET_MODES`), so "large" gets no duplicate "averaged" row.
    """
    rows = []
    for test_set in available_test_sets(latent_ids) if test_sets is None else test_sets:
        for mode in [m for m in modes if m in TEST_SET_MODES.get(test_set, modes)]:
            result = evaluate_retrieval(pred, meta, latent_ids, latents, test_set, mode)
            logger.info(
                "retrieval %s/%s: top5=%.3f (chance %.3f) median_rank=%.3f n=%d",
                test_set,
                mode,
                result.top5,
                result.chance_top5,
                result.median_rank,
                result.n_predictions,
            )
            rows.append(result.as_dict())
    return pd.DataFrame(rows)
