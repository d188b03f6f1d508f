"""Ridge baseline: a linear map from the flattened MEG window to the image latent.

The paper's reference baseline (the ConvNet beats it ~7x on retrieval). This module is
the solver for ONE model (one subject, in the paper's protocol: see
`megdecode.models.subject_ridge` for the per-subject fits and the session-aware folds).
One alpha is shared by all latent dimensions and chosen by K-fold cross-validation on
the summed squared error (like sklearn's RidgeCV with alpha_per_target=False).

Folds come from the caller (`folds`, one index per row); without them they are
contiguous blocks in row order, never shuffled: neighbouring trials share drifts and
head position, and a shuffled split would let them leak into validation. The input
standardisation is fitted once on all training rows (a small, documented leak into the
CV folds); the intercept is refitted inside each fold.

Cost: the solver works in whichever space is smaller. With N samples and D features,
D > N uses the kernel (dual) form: one N x N Gram matrix (N^2 D flops, float64
accumulated over feature chunks, the standardisation applied chunk by chunk so the input
is never copied whole) and one eigendecomposition per fold ((N (K-1)/K)^3 flops); D <= N
uses the D x D covariance the same way. Each alpha is then scored with one
(n_val x m) @ (m x F) product, m = N (K-1)/K or D.

Memory of the dual form (THINGS: one subject's N ~ 20k train+val rows, D = 272 x 181 =
49,232 at decim 1, F = 768, K = 5): the caller's float32 input N*C*T*4 bytes (3.9 GB),
plus the Gram 8 N^2 (3.2 GB), plus per fold its centred training block and the
eigenvectors, 2 x 8 (N (K-1)/K)^2 (4.1 GB): ~11.2 GB in all, the O(N^2) terms
dominating and D entering only through the input. `benchmarks/ridge_memory.py` measures
peak RSS and time at smaller N and projects them to N = 20k (README, "Ridge baseline").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator

import numpy as np
import scipy.linalg

from megdecode.config import ConfigError, FlatConfig

logger = logging.getLogger(__name__)

# Features per chunk when accumulating in float64 (bounds the float64 copy: N x 2048 x 8 B).
_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class RidgeConfig(FlatConfig):
    # Absolute penalties on standardised features. The best value grows with D and the
    # noise (3e3 on a synthetic N=3000, D=24,752 problem), so the grid spans 10 decades in
    # half-decade steps; a choice at either edge logs a warning.
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 8, 21))
    cv_folds: int = 5
    # Block-average every `decim` time samples before flattening (anti-aliased
    # downsampling): T samples -> ceil(T / decim), so D = C * ceil(T / decim). Default 1:
    # the paper's linear baseline (Benchetrit et al. 2023, after Défossez et al. 2022)
    # regresses the flattened window at the preprocessing rate (120 Hz) and describes no
    # further downsampling; larger values trade fidelity for speed (window curves).
    decim: int = 1
    standardize: bool = True  # z-score every (channel, time) feature on the training set

    def __post_init__(self) -> None:
        if self.decim < 1:
            raise ConfigError(f"decim: must be >= 1, got {self.decim}")
        if self.cv_folds < 2:
            raise ConfigError(f"cv_folds: must be >= 2, got {self.cv_folds}")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ConfigError(f"alphas: must be positive and non-empty, got {self.alphas}")


def decimate_flatten(X: np.ndarray, decim: int) -> np.ndarray:
    """X (N, C, T) -> (N, C * ceil(T / decim)) float32, block means over time.

    The last block averages the remaining T % decim samples when T is not a multiple.
    With decim 1 and a contiguous float32 X the result is a view of X (no copy of the
    largest array of the fit): callers must not modify it in place.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"expected X of shape (N, C, T), got {X.shape}")
    if decim < 1:
        raise ValueError(f"decim must be >= 1, got {decim}")
    n, c, t = X.shape
    if decim == 1:
        return X.reshape(n, c * t)
    full = t // decim
    parts = [X[:, :, : full * decim].reshape(n, c, full, decim).mean(axis=-1)]
    if t % decim:
        parts.append(X[:, :, full * decim :].mean(axis=-1, keepdims=True))
    return np.concatenate(parts, axis=-1).reshape(n, -1).astype(np.float32, copy=False)


@dataclasses.dataclass
class RidgeModel:
    """A fitted ridge map; predict(X (N, C, T)) -> (N, F) float32."""

    coef: np.ndarray  # (D, F) float32, standardisation folded in
    intercept: np.ndarray  # (F,) float32
    alpha: float
    cv_errors: np.ndarray  # (n_alphas,) CV MSE, in sorted(config.alphas) order
    config: RidgeConfig
    input_shape: tuple[int, int]  # (C, T) seen at fit time
    form: str  # "dual" (kernel, D > N) or "primal" (covariance): which solver ran

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 3 or tuple(X.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected X of shape (N, {self.input_shape[0]}, {self.input_shape[1]}), got {X.shape}"
            )
        Z = decimate_flatten(X, self.config.decim)
        return Z @ self.coef + self.intercept


def _gram(A: np.ndarray) -> np.ndarray:
    """A (n, D) float32 -> A A^T float64, accumulated over feature chunks."""
    out = np.zeros((A.shape[0], A.shape[0]))
    for j in range(0, A.shape[1], _CHUNK):
        a = A[:, j : j + _CHUNK].astype(np.float64)
        out += a @ a.T
    return out


def _feature_stats(Z: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale (D,) float64, one chunk at a time; checks finiteness.

    np.std on the whole (N, D) array would allocate an N x D float64 temporary (7.9 GB at
    THINGS size); chunks bound it to N x _CHUNK.
    """
    mean, scale = np.zeros(Z.shape[1]), np.ones(Z.shape[1])
    for j in range(0, Z.shape[1], _CHUNK):
        c = Z[:, j : j + _CHUNK].astype(np.float64)
        # Checked after decimation: any NaN/inf in a block survives the block mean.
        if not np.isfinite(c).all():
            raise ValueError("X and Y must be finite (found NaN or inf)")
        mean[j : j + _CHUNK] = c.mean(axis=0)
        if standardize:
            scale[j : j + _CHUNK] = c.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant features stay constant (zero after centring)
    return mean, scale


def _standard_chunks(
    Z: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> Iterator[tuple[slice, np.ndarray]]:
    """(feature slice, standardised float64 block (N, <= _CHUNK)) over Z's columns."""
    for j in range(0, Z.shape[1], _CHUNK):
        sl = slice(j, j + _CHUNK)
        c = Z[:, sl].astype(np.float64)
        c -= mean[sl]
        c /= scale[sl]
        yield sl, c


def _contiguous_folds(n: int, folds: int) -> np.ndarray:
    """(n,) fold index per row: contiguous blocks in row order."""
    return np.minimum(np.arange(n) * folds // n, folds - 1)


def _check_folds(fold: np.ndarray, n: int, k: int) -> np.ndarray:
    """The caller's fold indices as int64, refused unless every fold 0..k-1 holds rows."""
    fold = np.asarray(fold)
    if fold.shape != (n,):
        raise ValueError(f"folds must have shape ({n},), got {fold.shape}")
    if not np.issubdtype(fold.dtype, np.integer) or fold.min() < 0 or fold.max() >= k:
        raise ValueError(f"folds must be integers in 0..{k - 1}, got {np.unique(fold)}")
    empty = np.flatnonzero(np.bincount(fold, minlength=k) == 0)
    if len(empty):
        raise ValueError(f"{k}-fold CV: fold(s) {empty.tolist()} hold no rows")
    return fold.astype(np.int64)


def _fold_errors_dual(
    K: np.ndarray, Y: np.ndarray, tr: np.ndarray, va: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """Summed squared validation error per alpha, kernel form (K = Z Z^T, N x N).

    Memory: the fold's training block and its eigenvectors (2 x 8 n_tr^2 bytes) beside K;
    the centring is in place and eigh overwrites the block (passed Fortran-ordered, as its
    transpose, so LAPACK does not copy it).
    """
    K_tr = K[np.ix_(tr, tr)]
    K_va = K[np.ix_(va, tr)]
    # Centre the kernel on the fold's training mean (the intercept is fitted per fold).
    col = K_tr.mean(axis=0)
    total = float(col.mean())
    K_va -= K_va.mean(axis=1, keepdims=True)
    K_va -= col
    K_va += total
    K_tr -= col[:, None]
    K_tr -= col[None, :]
    K_tr += total
    lam, V = scipy.linalg.eigh(K_tr.T, overwrite_a=True, check_finite=False)
    del K_tr
    y_mean = Y[tr].mean(axis=0)
    A = K_va @ V  # (n_va, n_tr)
    del K_va
    B = V.T @ (Y[tr] - y_mean)  # (n_tr, F)
    del V
    return _score(A, np.clip(lam, 0, None), B, Y[va] - y_mean, alphas)


def _fold_errors_primal(
    Z: np.ndarray, Y: np.ndarray, tr: np.ndarray, va: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """Summed squared validation error per alpha, covariance form (D x D)."""
    z_mean = Z[tr].mean(axis=0, dtype=np.float64)
    y_mean = Y[tr].mean(axis=0)
    Z_tr = Z[tr] - z_mean.astype(np.float32)
    C = _gram(Z_tr.T)
    lam, U = scipy.linalg.eigh(C, overwrite_a=True, check_finite=False)
    A = (Z[va] - z_mean) @ U  # (n_va, D)
    B = U.T @ (Z_tr.T.astype(np.float64) @ (Y[tr] - y_mean))  # (D, F)
    return _score(A, np.clip(lam, 0, None), B, Y[va] - y_mean, alphas)


def _score(
    A: np.ndarray, lam: np.ndarray, B: np.ndarray, Y_va: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """Squared validation errors (n_alphas,) of P(alpha) = A diag(1 / (lam + alpha)) B.

    A (n_va, m), lam (m,), B (m, F), Y_va (n_va, F). One product per alpha, O(n_va m F):
    the closed form d^T [(A^T A) * (B B^T)] d costs the same flops at THINGS size but
    holds two more m x m float64 matrices (2 x 2 GB at m = 16k).
    """
    out = np.empty(len(alphas))
    for i, alpha in enumerate(alphas):
        P = (A / (lam + alpha)) @ B
        P -= Y_va
        out[i] = np.einsum("ij,ij->", P, P)
    return out


def fit_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    cfg: RidgeConfig | None = None,
    folds: np.ndarray | None = None,
) -> RidgeModel:
    """Fit ridge from X (N, C, T) to Y (N, F), alpha by K-fold CV (see module docstring).

    folds (N,) optional: the CV fold (0..cv_folds-1) of each row, e.g.
    `megdecode.models.subject_ridge.session_folds`; default contiguous blocks in row order.
    X is read, never modified.
    """
    cfg = cfg or RidgeConfig()
    started = time.perf_counter()
    X = np.asarray(X)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 3 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"expected X (N, C, T) and Y (N, F), got {X.shape} and {Y.shape}")
    n = X.shape[0]
    if n < 2 * cfg.cv_folds:
        raise ValueError(f"{n} samples are too few for {cfg.cv_folds}-fold CV")
    alphas = np.asarray(sorted(cfg.alphas), dtype=np.float64)
    fold = (
        _contiguous_folds(n, cfg.cv_folds)
        if folds is None
        else _check_folds(folds, n, cfg.cv_folds)
    )

    Z = decimate_flatten(X, cfg.decim)
    x_mean, x_scale = _feature_stats(Z, cfg.standardize)
    if not np.isfinite(Y).all():
        raise ValueError("X and Y must be finite (found NaN or inf)")
    y_mean = Y.mean(axis=0)
    dual = Z.shape[1] > n
    K: np.ndarray | None = None
    Zs: np.ndarray | None = None
    if dual:
        K = np.zeros((n, n))
        for _, c in _standard_chunks(Z, x_mean, x_scale):
            K += c @ c.T
    else:  # D <= N: a standardised float32 copy is at most N^2 * 4 bytes
        Zs = np.empty(Z.shape, dtype=np.float32)
        for sl, c in _standard_chunks(Z, x_mean, x_scale):
            Zs[:, sl] = c

    errors = np.zeros(len(alphas))
    for k in range(cfg.cv_folds):
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if K is not None:
            errors += _fold_errors_dual(K, Y, tr, va, alphas)
        else:
            assert Zs is not None
            errors += _fold_errors_primal(Zs, Y, tr, va, alphas)
    errors /= Y.size
    best = int(np.argmin(errors))
    alpha = float(alphas[best])
    if best in (0, len(alphas) - 1) and len(alphas) > 1:
        logger.warning(
            "ridge alpha %.3g is at the edge of the grid %s; widen it", alpha, cfg.alphas
        )

    Yc = Y - y_mean
    if K is not None:
        K[np.diag_indices(n)] += alpha  # K is not needed afterwards: solve in place
        dual_coef = scipy.linalg.solve(
            K.T, Yc, assume_a="pos", overwrite_a=True, check_finite=False
        )
        del K
        coef_std = np.empty((Z.shape[1], Y.shape[1]))
        for sl, c in _standard_chunks(Z, x_mean, x_scale):
            coef_std[sl] = c.T @ dual_coef
    else:
        assert Zs is not None
        C = _gram(Zs.T)
        C[np.diag_indices(C.shape[0])] += alpha
        coef_std = scipy.linalg.solve(
            C, Zs.T.astype(np.float64) @ Yc, assume_a="pos", overwrite_a=True
        )
    coef = coef_std / x_scale[:, None]
    intercept = y_mean - x_mean @ coef
    logger.info(
        "ridge fit: N=%d D=%d F=%d (%s form) alpha=%.3g cv_mse=%.4g in %.1f s",
        n,
        Z.shape[1],
        Y.shape[1],
        "dual" if dual else "primal",
        alpha,
        errors[best],
        time.perf_counter() - started,
    )
    return RidgeModel(
        coef=coef.astype(np.float32),
        intercept=intercept.astype(np.float32),
        alpha=alpha,
        cv_errors=errors,
        config=cfg,
        input_shape=(int(X.shape[1]), int(X.shape[2])),
        form="dual" if dual else "primal",
    )
