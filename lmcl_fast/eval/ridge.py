"""Ridge regression for linear probes: closed form through the SVD, the penalty chosen by (group) K-fold
cross-validation on the training data only."""
from __future__ import annotations

import numpy as np

# Penalties tried, as multiples of the number of training rows (features are standardised, so this grid
# means the same at any n and any feature scale).
DEFAULT_ALPHAS = tuple(np.logspace(-6, 2, 17))


def _standardise(X: np.ndarray):
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0  # constant features: centred to 0, not divided
    return mu, sd


def _svd_solutions(Xs: np.ndarray, yc: np.ndarray, penalties: np.ndarray) -> np.ndarray:
    """Ridge weights [len(penalties), d] for standardised X and centred y: V diag(s / (s^2 + a)) U^T y."""
    U, s, Vt = np.linalg.svd(Xs, full_matrices=False)
    uty = U.T @ yc
    return (s[None, :] / (s[None, :] ** 2 + penalties[:, None]) * uty[None, :]) @ Vt


def _folds(n: int, k: int, groups, seed: int) -> list:
    """k disjoint validation index sets; all rows of one group fall in the same fold."""
    keys = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    order = np.random.default_rng(seed).permutation(keys.max() + 1)
    fold_of_key = np.empty_like(order)
    fold_of_key[order] = np.arange(order.size) % k
    fold = fold_of_key[keys]
    return [np.flatnonzero(fold == f) for f in range(k)]


class RidgeProbe:
    """y ~ X w + b with an L2 penalty alpha * |w|^2 on standardised features.

    `fit(X, y, groups)` picks alpha from `alphas` (multiples of n) by `folds`-fold cross-validation (mean squared
    error; folds keep each group, e.g. a reference content, together), then refits on all of X."""

    def __init__(self, alphas=DEFAULT_ALPHAS, folds: int = 5, seed: int = 0):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        if self.alphas.ndim != 1 or self.alphas.size == 0 or (self.alphas <= 0).any():
            raise ValueError(f"RidgeProbe: alphas must be a non-empty list of positive values, got {alphas}")
        if int(folds) < 2:
            raise ValueError(f"RidgeProbe: folds must be >= 2, got {folds}")
        self.folds, self.seed = int(folds), int(seed)

    def fit(self, X, y, groups=None) -> "RidgeProbe":
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if X.ndim != 2 or X.shape[0] != y.size:
            raise ValueError(f"RidgeProbe.fit: X must be [n, d] with n = len(y), got {X.shape} and {y.size}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("RidgeProbe.fit: X and y must be finite")
        n_groups = y.size if groups is None else len(set(np.asarray(groups).tolist()))
        k = min(self.folds, n_groups)
        if k < 2:
            raise ValueError(f"RidgeProbe.fit: cross-validation needs at least 2 groups, got {n_groups}")
        errors = np.zeros(self.alphas.size)
        for val in _folds(y.size, k, groups, self.seed):
            tr = np.setdiff1d(np.arange(y.size), val)
            mu, sd = _standardise(X[tr])
            W = _svd_solutions((X[tr] - mu) / sd, y[tr] - y[tr].mean(), self.alphas * tr.size)
            pred = ((X[val] - mu) / sd) @ W.T + y[tr].mean()
            errors += ((pred - y[val][:, None]) ** 2).sum(axis=0)
        self.cv_mse = errors / y.size
        best = int(np.argmin(self.cv_mse))
        self.alpha = float(self.alphas[best])
        self.mu, self.sd = _standardise(X)
        self.y_mean = float(y.mean())
        self.w = _svd_solutions((X - self.mu) / self.sd, y - self.y_mean, np.array([self.alpha * y.size]))[0]
        return self

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return ((X - self.mu) / self.sd) @ self.w + self.y_mean

    def coef(self) -> tuple:
        """(weights, intercept) on the original feature scale."""
        w = self.w / self.sd
        return w, self.y_mean - float(self.mu @ w)
