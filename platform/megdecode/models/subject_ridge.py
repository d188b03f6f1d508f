"""The paper's ridge protocol: one ridge per subject, alpha by CV over slices of sessions.

Why per subject: head position, anatomy and sensor noise differ between subjects, so a
linear map from sensors to latents differs too (the ConvNet has a subject layer for
this); a single ridge pooled over subjects averages maps that can cancel. Each subject's
train+val rows fit their own model and their own alpha, and each test row is predicted
by its subject's model, so the pooled predictions score exactly like the ConvNet's.

Why these folds: the test is within-subject on unseen images, so CV must hold out, for
one subject, images it has not trained on, recorded under the same conditions as those
it has. `session_folds` cuts every session of the subject, in recording order, into
cv_folds contiguous slices: fold k holds the k-th slice of every session. A fold is
never a whole session (nor a whole subject), so alpha is not tuned for a session's
drift or head position that training never saw, and contiguity keeps neighbouring
trials (shared drifts) mostly on one side. The unit dealt into slices is the image: all
repetitions of an image within the subject go to the fold of its first presentation,
because a repetition left in training would let the fit memorise that image's target and
score its held-out repetitions too well, which favours too small an alpha for unseen
images. (THINGS-MEG shows training images once, so this only bites on data with
repeated training images, like the twin and the tests.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from megdecode.data.splits import recording_order
from megdecode.models.ridge import RidgeConfig, RidgeModel, fit_ridge

logger = logging.getLogger(__name__)

# One block of rows: X (N, C, T), Y (N, F), meta (N rows: subject, image_id; optionally
# session, run, trial_index).
Block = tuple[np.ndarray, np.ndarray, pd.DataFrame]


def session_folds(meta: pd.DataFrame, n_folds: int) -> np.ndarray:
    """(N,) CV fold per row: each (subject, session)'s images, in recording order, cut into
    n_folds contiguous slices (see module docstring).

    meta needs `image_id`; `subject` and `session` are optional (missing: one of each);
    rows follow `megdecode.data.splits.recording_order` when session, run and trial_index
    are all present, else the given row order. A session with fewer images than folds
    cannot reach every fold: logged as a warning.
    """
    if "image_id" not in meta.columns:
        raise ValueError(f"session_folds: meta lacks column 'image_id' (has {list(meta.columns)})")
    if n_folds < 2:
        raise ValueError(f"session_folds: n_folds must be >= 2, got {n_folds}")
    n = len(meta)
    ordered_cols = {"session", "run", "trial_index"} <= set(meta.columns)
    order = recording_order(meta) if ordered_cols else np.arange(n)

    def column(name: str) -> np.ndarray:
        if name in meta.columns:
            return meta[name].astype(str).to_numpy()[order]
        return np.full(n, "", dtype=object)

    rows = pd.DataFrame(
        {
            "subject": column("subject"),
            "session": column("session"),
            "image": meta["image_id"].to_numpy()[order],
        }
    )
    units = rows.drop_duplicates(["subject", "image"])  # first presentation, in order
    by_session = units.groupby(["subject", "session"], sort=False)
    rank = by_session.cumcount().to_numpy()
    size = by_session["image"].transform("size").to_numpy()
    small = units.loc[size < n_folds, ["subject", "session"]].drop_duplicates()
    if len(small):
        logger.warning(
            "sessions %s have fewer images than %d folds: not every fold holds them",
            list(small.itertuples(index=False, name=None)),
            n_folds,
        )
    unit_fold = pd.Series(
        rank * n_folds // size, index=pd.MultiIndex.from_frame(units[["subject", "image"]])
    )
    fold = np.empty(n, dtype=np.int64)
    fold[order] = unit_fold.reindex(pd.MultiIndex.from_frame(rows[["subject", "image"]])).to_numpy()
    return fold


@dataclasses.dataclass
class SubjectRidge:
    """One fitted `RidgeModel` per subject; predict routes each row to its subject's."""

    models: dict[str, RidgeModel]

    @property
    def alphas(self) -> dict[str, float]:
        """The alpha each subject's CV chose."""
        return {subject: model.alpha for subject, model in self.models.items()}

    def predict(self, X: np.ndarray, subjects: np.ndarray) -> np.ndarray:
        """X (N, C, T), subjects (N,) -> (N, F) float32, row i from subjects[i]'s model."""
        subjects = np.asarray(subjects).astype(str)
        if len(subjects) != len(X):
            raise ValueError(f"{len(subjects)} subject labels for {len(X)} rows")
        unknown = sorted(set(subjects) - set(self.models))
        if unknown:
            raise KeyError(
                f"no ridge fitted for subject(s) {unknown}; fitted: {sorted(self.models)}"
            )
        first = next(iter(self.models.values()))
        out = np.empty((len(X), first.coef.shape[1]), dtype=np.float32)
        for subject, model in self.models.items():
            rows = np.flatnonzero(subjects == subject)
            if len(rows):
                out[rows] = model.predict(X[rows])
        return out


def fit_subject_ridges(blocks: Sequence[Block], cfg: RidgeConfig | None = None) -> SubjectRidge:
    """One ridge per subject on the rows of all `blocks` (e.g. train and val) pooled per
    subject, alpha by CV over `session_folds`.

    Only one subject's rows are gathered (copied) at a time: peak memory is that of the
    largest subject's fit (see `megdecode.models.ridge`), not of all subjects.
    """
    cfg = cfg or RidgeConfig()
    if not blocks:
        raise ValueError("fit_subject_ridges: no blocks of rows")
    for X, Y, meta in blocks:
        if not len(X) == len(Y) == len(meta):
            raise ValueError(f"block sizes differ: X {len(X)}, Y {len(Y)}, meta {len(meta)}")
        if "subject" not in meta.columns:
            raise ValueError("fit_subject_ridges: meta lacks column 'subject'")
    labels = [meta["subject"].astype(str).to_numpy() for _, _, meta in blocks]
    subjects = pd.unique(np.concatenate(labels))
    models: dict[str, RidgeModel] = {}
    for subject in subjects:
        masks = [label == subject for label in labels]
        X = np.concatenate([np.asarray(b[0])[m] for b, m in zip(blocks, masks, strict=True)])
        Y = np.concatenate([np.asarray(b[1])[m] for b, m in zip(blocks, masks, strict=True)])
        meta = pd.concat([b[2][m] for b, m in zip(blocks, masks, strict=True)], ignore_index=True)
        models[str(subject)] = fit_ridge(X, Y, cfg, folds=session_folds(meta, cfg.cv_folds))
        del X
        logger.info(
            "ridge for subject %s: %d rows, alpha %.3g", subject, len(Y), models[str(subject)].alpha
        )
    return SubjectRidge(models)
