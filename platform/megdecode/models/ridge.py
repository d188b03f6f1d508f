"""Ridge baseline: a linear map from the flattened MEG window to the image latent.

The paper's reference baseline (the ConvNet beats it ~7x on retrieval). One alpha is
shared by all latent dimensions and chosen by K-fold cross-validation on the summed
squared error (like sklearn's RidgeCV with alpha_per_target=False).

Folds are contiguous blocks in the given row order (or whole `groups`, e.g. runs, when
passed), never shuffled: neighbouring trials share drifts and head position, and a
shuffled split would let them leak into validation. The input standardisation is fitted
once on all training rows (a small, documented leak into the CV folds); the intercept
is refitted inside each fold.

Cost: the solver works in whichever space is smaller. With N samples and D features,
D > N uses the kernel (dual) form: one N x N Gram matrix (N^2 D flops, float64 accumulated
over feature chunks) and one eigendecomposition per fold ((N (K-1)/K)^3); D <= N uses the
D x D covariance the same way. Every alpha is then scored in O(m^2) (see `_score`), so a
wide grid is nearly free. N=3000, D=272*91, F=768, 5 folds, 21 alphas on the 2-core dev
VM: ~20 s from uncontended component timings (Gram 3.5 s, 5 eigh of 2400^2 at ~2 s, final
solve + weights 1.5 s, rest ~3 s); 106-126 s when other jobs loaded the same 2 cores (load
2.5-5); peak RSS 1.7 GB including the 1 GB float32 input. The eigendecompositions dominate.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import scipy.linalg

from megdecode.config import FlatConfig

logger = logging.getLogger(__name__)

# Features per chunk when accumulating Gram matrices in float64 (bounds the float64 copy).
_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class RidgeConfig(FlatConfig):
    # Absolute penalties on standardised features. The best value grows with D and the
    # noise (3e3 on a synthetic N=3000, D=24,752 problem), so the grid spans 10 decades in
    # half-decade steps; a choice at either edge logs a warning.
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 8, 21))
    cv_folds: int = 5
    # Block-average every `decim` time samples before flattening (anti-aliased
    # downsampling): T samples -> ceil(T / decim), so D = C * ceil(T / decim).
    decim: int = 2
    standardize: bool = True  # z-score every (channel, time) feature on the training set


def decimate_flatten(X: np.ndarray, decim: int) -> np.ndarray:
    """X (N, C, T) -> (N, C * ceil(T / decim)) float32, block means over time.

    The last block averages the remaining T % decim samples when T is not a multiple.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"expected X of shape (N, C, T), got {X.shape}")
    if decim < 1:
        raise ValueError(f"decim must be >= 1, got {decim}")
    n, c, t = X.shape
    if decim == 1:
        return X.reshape(n, c * t).copy()
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


def _gram(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """A (n, D) float32 -> A B^T float64 (B defaults to A), accumulated over feature chunks."""
    B = A if B is None else B
    out = np.zeros((A.shape[0], B.shape[0]))
    for j in range(0, A.shape[1], _CHUNK):
        a = A[:, j : j + _CHUNK].astype(np.float64)
        b = a if B is A else B[:, j : j + _CHUNK].astype(np.float64)
        out += a @ b.T
    return out


def _fold_ids(n: int, folds: int, groups: np.ndarray | None) -> np.ndarray:
    """(n,) fold index per row: contiguous blocks, or whole groups dealt in order."""
    if groups is None:
        return np.minimum(np.arange(n) * folds // n, folds - 1)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    _, first, codes = np.unique(groups, return_index=True, return_inverse=True)
    if len(first) < folds:
        raise ValueError(f"{len(first)} groups cannot make {folds} folds")
    order = np.argsort(np.argsort(first))  # group rank by first appearance
    return (order[codes] * folds // len(first)).astype(np.int64)


def _fold_errors_dual(
    K: np.ndarray, Y: np.ndarray, tr: np.ndarray, va: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """Summed squared validation error per alpha, kernel form (K = Z Z^T, N x N)."""
    K_tr = K[np.ix_(tr, tr)]
    K_va = K[np.ix_(va, tr)]
    # Centre the kernel on the fold's training mean (the intercept is fitted per fold).
    col = K_tr.mean(axis=0)
    K_va = K_va - K_va.mean(axis=1, keepdims=True) - col + K_tr.mean()
    K_tr = K_tr - col[:, None] - col[None, :] + K_tr.mean()
    y_mean = Y[tr].mean(axis=0)
    lam, V = scipy.linalg.eigh(K_tr)
    A = K_va @ V  # (n_va, n_tr)
    B = V.T @ (Y[tr] - y_mean)  # (n_tr, F)
    return _score(A, np.clip(lam, 0, None), B, Y[va] - y_mean, alphas)


def _fold_errors_primal(
    Z: np.ndarray, Y: np.ndarray, tr: np.ndarray, va: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """Summed squared validation error per alpha, covariance form (D x D)."""
    z_mean = Z[tr].mean(axis=0, dtype=np.float64)
    y_mean = Y[tr].mean(axis=0)
    Z_tr = Z[tr] - z_mean.astype(np.float32)
    C = _gram(Z_tr.T)
    lam, U = scipy.linalg.eigh(C)
    A = (Z[va] - z_mean) @ U  # (n_va, D)
    B = U.T @ (Z_tr.T.astype(np.float64) @ (Y[tr] - y_mean))  # (D, F)
    return _score(A, np.clip(lam, 0, None), B, Y[va] - y_mean, alphas)


def _score(
    A: np.ndarray, lam: np.ndarray, B: np.ndarray, Y_va: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """Squared validation errors (n_alphas,) of P(alpha) = A diag(d) B, d = 1 / (lam + alpha).

    A (n_va, m), lam (m,), B (m, F), Y_va (n_va, F). Expanding
    ||P - Y||^2 = d^T [(A^T A) * (B B^T)] d - 2 d . rowsum(B * (A^T Y)) + ||Y||^2
    costs three products once, then O(m^2) per alpha instead of an (n_va, m, F) product.
    """
    M = (A.T @ A) * (B @ B.T)  # (m, m)
    c = np.einsum("jf,jf->j", B, A.T @ Y_va)  # (m,)
    yy = float(np.sum(Y_va**2))
    d = 1.0 / (lam[None, :] + alphas[:, None])  # (n_alphas, m)
    return ((d @ M) * d).sum(axis=1) - 2 * d @ c + yy


def fit_ridge(
    X: np.ndarray, Y: np.ndarray, cfg: RidgeConfig | None = None, groups: np.ndarray | None = None
) -> RidgeModel:
    """Fit ridge from X (N, C, T) to Y (N, F), alpha by K-fold CV (see module docstring).

    groups (N,) optional: rows sharing a group (run, session) stay in one fold.
    """
    cfg = cfg or RidgeConfig()
    started = time.perf_counter()
    X = np.asarray(X)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 3 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"expected X (N, C, T) and Y (N, F), got {X.shape} and {Y.shape}")
    if cfg.cv_folds < 2:
        raise ValueError(f"cv_folds must be >= 2, got {cfg.cv_folds}")
    n = X.shape[0]
    if n < 2 * cfg.cv_folds:
        raise ValueError(f"{n} samples are too few for {cfg.cv_folds}-fold CV")
    alphas = np.asarray(sorted(cfg.alphas), dtype=np.float64)
    if alphas.size == 0 or (alphas <= 0).any():
        raise ValueError(f"alphas must be positive and non-empty, got {cfg.alphas}")

    Z = decimate_flatten(X, cfg.decim)
    # Checked after decimation: any NaN/inf in a block survives the block mean.
    if not (np.isfinite(Z).all() and np.isfinite(Y).all()):
        raise ValueError("X and Y must be finite (found NaN or inf)")
    x_mean = Z.mean(axis=0, dtype=np.float64)
    x_scale = Z.std(axis=0, dtype=np.float64) if cfg.standardize else np.ones(Z.shape[1])
    x_scale[x_scale < 1e-12] = 1.0  # constant features stay constant (zero after centring)
    Z -= x_mean.astype(np.float32)
    Z /= x_scale.astype(np.float32)
    y_mean = Y.mean(axis=0)
    dual = Z.shape[1] > n
    K = _gram(Z) if dual else None

    fold = _fold_ids(n, cfg.cv_folds, groups)
    errors = np.zeros(len(alphas))
    for k in range(cfg.cv_folds):
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if K is not None:
            errors += _fold_errors_dual(K, Y, tr, va, alphas)
        else:
            errors += _fold_errors_primal(Z, Y, tr, va, alphas)
    errors /= Y.size
    best = int(np.argmin(errors))
    alpha = float(alphas[best])
    if best in (0, len(alphas) - 1) and len(alphas) > 1:
        logger.warning(
            "ridge alpha %.3g is at the edge of the grid %s; widen it", alpha, cfg.alphas
        )

    Yc = Y - y_mean
    if K is not None:
        dual_coef = scipy.linalg.solve(K + alpha * np.eye(n), Yc, assume_a="pos")
        coef_std = Z.T @ dual_coef.astype(np.float32)  # (D, F)
    else:
        C = _gram(Z.T)
        coef_std = scipy.linalg.solve(
            C + alpha * np.eye(C.shape[0]), Z.T.astype(np.float64) @ Yc, assume_a="pos"
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
