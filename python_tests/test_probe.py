"""Linear probe: the ridge regressor (closed form, penalty by group cross-validation on the training data)."""
import numpy as np
import pytest

from lmcl_fast.eval.ridge import RidgeProbe


def linear_data(n=300, d=12, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=d) + rng.normal(size=d) * 5  # any scale, offset
    w = rng.normal(size=d)
    y = X @ w + 3.0 + noise * rng.normal(size=n)
    return X, y, w


def test_ridge_recovers_a_linear_relation():
    X, y, w = linear_data()
    groups = np.arange(len(y)) // 5  # 60 groups of 5 rows
    probe = RidgeProbe().fit(X[:200], y[:200], groups[:200])
    coef, intercept = probe.coef()
    np.testing.assert_allclose(coef, w, rtol=0, atol=0.02)
    assert intercept == pytest.approx(3.0, abs=0.2)
    assert probe.alpha <= 1e-3  # almost no noise: cross-validation keeps the penalty small
    resid = probe.predict(X[200:]) - y[200:]
    assert np.sqrt(np.mean(resid ** 2)) < 0.1  # held-out rows: the noise level


def test_ridge_penalises_pure_noise():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 40)), rng.normal(size=60)
    probe = RidgeProbe().fit(X, y)
    assert probe.alpha >= 1.0  # nothing to learn: cross-validation shrinks towards the mean
    assert np.abs(probe.predict(X) - y.mean()).max() < 0.5 * np.abs(y - y.mean()).max()


def test_ridge_folds_keep_groups_together_and_bad_input():
    X, y, _ = linear_data(n=40)
    with pytest.raises(ValueError, match="2 groups"):
        RidgeProbe().fit(X, y, groups=np.zeros(40))
    with pytest.raises(ValueError, match="X must be"):
        RidgeProbe().fit(X[:10], y)
    with pytest.raises(ValueError, match="alphas"):
        RidgeProbe(alphas=[0.0])
