"""Ridge baseline: decimation, both solver forms against sklearn, CV behaviour, retrieval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from sklearn.linear_model import Ridge

from megdecode.config import ConfigError
from megdecode.evaluation.retrieval import evaluate_retrieval
from megdecode.models.ridge import RidgeConfig, decimate_flatten, fit_ridge


def _linear_problem(n: int, c: int, t: int, f: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, c, t)).astype(np.float32)
    W = rng.standard_normal((c * t, f))
    Y = X.reshape(n, -1) @ W + 1.5 + noise * rng.standard_normal((n, f))
    return X, Y, W


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1 - ((y - p) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_decimate_flatten_block_means_and_feature_count() -> None:
    X = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    Z = decimate_flatten(X, 2)
    assert Z.shape == (2, 3 * 3)  # ceil(5 / 2) = 3 blocks per channel
    assert_allclose(Z[0, :3], [0.5, 2.5, 4.0])  # (0+1)/2, (2+3)/2, last partial block = 4
    assert_allclose(decimate_flatten(X, 1), X.reshape(2, -1))
    assert decimate_flatten(np.zeros((1, 272, 181)), 2).shape == (1, 272 * 91)
    with pytest.raises(ValueError, match="decim"):
        decimate_flatten(X, 0)


@pytest.mark.parametrize("n", [300, 60])  # D = 80 features: primal form (D <= N), then dual
def test_fit_matches_sklearn_ridge_and_its_cross_validation(n: int) -> None:
    X, Y, _ = _linear_problem(n, 8, 10, 3, noise=2.0)
    alphas = (0.1, 10.0, 1000.0)
    model = fit_ridge(X, Y, RidgeConfig(alphas=alphas, cv_folds=3, decim=1))
    assert model.form == ("primal" if n >= 80 else "dual")
    Z = X.reshape(n, -1).astype(np.float64)
    Zs = (Z - Z.mean(0)) / Z.std(0)
    fold = np.minimum(np.arange(n) * 3 // n, 2)
    ref_err = []
    for a in alphas:
        err = 0.0
        for k in range(3):
            ref = Ridge(alpha=a).fit(Zs[fold != k], Y[fold != k])
            err += ((ref.predict(Zs[fold == k]) - Y[fold == k]) ** 2).sum()
        ref_err.append(err / Y.size)
    assert_allclose(model.cv_errors, ref_err, rtol=1e-4)
    assert model.alpha == alphas[int(np.argmin(ref_err))]
    ref = Ridge(alpha=model.alpha).fit(Zs, Y)
    assert_allclose(model.predict(X), ref.predict(Zs), rtol=1e-3, atol=1e-3)


def test_recovers_a_known_linear_map() -> None:
    X, Y, W = _linear_problem(600, 4, 10, 5, noise=0.5, seed=1)
    model = fit_ridge(X[:500], Y[:500], RidgeConfig(decim=1))
    assert _r2(Y[500:], model.predict(X[500:])) > 0.98
    assert_allclose(model.coef, W, atol=0.1)
    assert model.intercept == pytest.approx(np.full(5, 1.5), abs=0.1)


def test_noisier_targets_choose_a_larger_alpha() -> None:
    X, Y_clean, W = _linear_problem(200, 8, 10, 4, noise=0.1, seed=2)
    rng = np.random.default_rng(3)
    Y_noisy = Y_clean + 30.0 * rng.standard_normal(Y_clean.shape)
    cfg = RidgeConfig(alphas=tuple(np.logspace(-3, 5, 17)), decim=1)
    clean, noisy = fit_ridge(X, Y_clean, cfg), fit_ridge(X, Y_noisy, cfg)
    assert noisy.alpha > 10 * clean.alpha


def test_given_folds_are_used_and_checked() -> None:
    """Folds given by the caller replace the default contiguous blocks (checked against
    sklearn's CV on the same folds); malformed folds are refused."""
    X, Y, _ = _linear_problem(60, 4, 5, 2, noise=2.0, seed=5)
    fold = np.arange(60) % 3  # interleaved: not the default blocks
    alphas = (0.1, 10.0, 1000.0)
    model = fit_ridge(X, Y, RidgeConfig(alphas=alphas, cv_folds=3, decim=1), folds=fold)
    Z = X.reshape(60, -1).astype(np.float64)
    Zs = (Z - Z.mean(0)) / Z.std(0)
    ref_err = [
        sum(
            (
                (
                    Ridge(alpha=a).fit(Zs[fold != k], Y[fold != k]).predict(Zs[fold == k])
                    - Y[fold == k]
                )
                ** 2
            ).sum()
            for k in range(3)
        )
        / Y.size
        for a in alphas
    ]
    assert_allclose(model.cv_errors, ref_err, rtol=1e-4)
    cfg = RidgeConfig(alphas=alphas, cv_folds=3)
    with pytest.raises(ValueError, match="hold no rows"):
        fit_ridge(X, Y, cfg, folds=np.arange(60) % 2)
    with pytest.raises(ValueError, match="shape"):
        fit_ridge(X, Y, cfg, folds=np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        fit_ridge(X, Y, cfg, folds=np.full(60, 3))


def test_decim_default_is_the_papers_no_further_downsampling() -> None:
    """The paper's linear baseline regresses the 120 Hz window as is: 272 x 181 features."""
    assert RidgeConfig().decim == 1
    model = fit_ridge(*_linear_problem(30, 2, 7, 2, noise=1.0)[:2], RidgeConfig(alphas=(1.0,)))
    assert model.coef.shape == (2 * 7, 2)
    with pytest.raises(ConfigError, match="decim"):
        RidgeConfig(decim=0)
    with pytest.raises(ConfigError, match="cv_folds"):
        RidgeConfig(cv_folds=1)
    with pytest.raises(ConfigError, match="alphas"):
        RidgeConfig(alphas=(1.0, -1.0))


def test_fit_does_not_modify_its_input() -> None:
    X, Y, _ = _linear_problem(40, 3, 20, 2, noise=1.0)  # D = 60 > N: dual form, decim 1
    before = X.copy()
    fit_ridge(X, Y, RidgeConfig(alphas=(1.0, 10.0)))
    np.testing.assert_array_equal(X, before)


def test_rejects_bad_input_and_config_round_trips() -> None:
    X, Y, _ = _linear_problem(40, 2, 6, 2, noise=1.0)
    model = fit_ridge(X, Y, RidgeConfig(decim=2, alphas=(1.0, 10.0)))
    assert model.coef.shape == (2 * 3, 2)
    with pytest.raises(ValueError, match="shape"):
        model.predict(X[:, :, :5])
    X_bad = X.copy()
    X_bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_ridge(X_bad, Y)
    with pytest.raises(ValueError, match="too few"):
        fit_ridge(X[:6], Y[:6])
    cfg = RidgeConfig(alphas=(1.0, 100.0), cv_folds=4, decim=3, standardize=False)
    assert RidgeConfig.from_flat_dict(cfg.to_flat_dict()) == cfg
    assert RidgeConfig.from_flat_dict(RidgeConfig().to_flat_dict()) == RidgeConfig()


def test_ridge_retrieves_images_on_a_synthetic_linear_problem() -> None:
    """MEG = latent mixed into sensors over time + noise; ridge then retrieval."""
    rng = np.random.default_rng(4)
    n_img, f, c, t = 120, 12, 16, 20
    latents = rng.standard_normal((n_img, f))
    mixing = rng.standard_normal((f, c, t)) * np.hanning(t)  # a transient response
    train_img, test_img = np.arange(80), np.arange(80, 120)
    img = np.concatenate([np.repeat(train_img, 2), np.tile(test_img, 4)])
    split = np.where(img < 80, "train", "test")
    X = np.einsum("nf,fct->nct", latents[img], mixing) + 3.0 * rng.standard_normal((len(img), c, t))
    meta = pd.DataFrame({"subject": "S0", "image_id": img, "split": split})
    train = split == "train"
    model = fit_ridge(X[train], latents[img[train]], RidgeConfig(decim=2))
    res = evaluate_retrieval(
        model.predict(X), meta, np.arange(n_img), latents, "small", "single-trial"
    )
    assert res.n_candidates == 40
    assert res.top5 > 5 * res.chance_top5  # chance 0.125
    assert res.median_rank < 0.1
