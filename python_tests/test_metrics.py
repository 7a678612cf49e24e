"""lmcl_fast.eval.metrics: correlations vs known values and scipy, the logistic fit, summaries; and
lmcl_fast.data.random_splits."""
import numpy as np
import pytest
import torch
from scipy import stats

from lmcl_fast.data import random_splits
from lmcl_fast.eval import (
    compute_metrics,
    fit_logistic4,
    format_table,
    krcc,
    logistic4,
    plcc,
    plcc_logistic,
    rmse,
    scatter_plot,
    srcc,
    summarize,
)

# Correlations of a closed form computed by hand (the exact values are rational numbers): float64 round-off only.
EXACT = dict(rel=1e-12, abs=1e-12)


def test_known_values():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # y is a permutation of ranks: d = (1, -1, 1, -1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8 (= Pearson here);
    # 2 discordant pairs of 10: tau = (8 - 2) / 10 = 0.6.
    assert srcc(x, y) == pytest.approx(0.8, **EXACT)
    assert plcc(x, y) == pytest.approx(0.8, **EXACT)
    assert krcc(x, y) == pytest.approx(0.6, **EXACT)
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3), **EXACT)
    assert srcc(x, x[::-1]) == pytest.approx(-1.0, **EXACT)


def test_against_scipy_and_accepts_tensors():
    rng = np.random.default_rng(0)
    p, m = rng.normal(size=50), rng.normal(size=50)
    m[::7] = m[0]  # ties
    assert srcc(torch.tensor(p), m) == pytest.approx(stats.spearmanr(p, m).statistic, **EXACT)
    assert plcc(p, torch.tensor(m, dtype=torch.float64)) == pytest.approx(stats.pearsonr(p, m).statistic, **EXACT)
    assert krcc(p, m) == pytest.approx(stats.kendalltau(p, m).statistic, **EXACT)


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (1000.0, 5000.0), (1e-3, -2.0)])
def test_logistic_fit_recovers_known_mapping(scale, shift):
    beta = (80.0, 20.0, 0.3, 0.5)
    x = np.linspace(-2.0, 2.5, 60)
    mos = logistic4(x, *beta)
    fitted = fit_logistic4(x * scale + shift, mos)
    expected = (beta[0], beta[1], beta[2] * scale + shift, beta[3] * scale)
    # a noise-free fit: the optimiser's own tolerance (trf, ~1e-8 relative) bounds the error
    assert fitted == pytest.approx(expected, rel=1e-5, abs=1e-5 * scale)
    assert plcc_logistic(x * scale + shift, mos) == pytest.approx(1.0, abs=1e-9)


def test_logistic_map_is_monotone_increasing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=80)
    b1, b2, _, b4 = fit_logistic4(-x, x + 0.1 * rng.normal(size=80))  # anti-correlated predictor
    assert b1 >= b2 and b4 > 0
    b1, b2, _, b4 = fit_logistic4(x, 3 * x + 0.1 * rng.normal(size=80))
    assert b1 > b2 and b4 > 0
    xs = np.linspace(-3, 3, 100)
    assert np.all(np.diff(logistic4(xs, b1, b2, 0.0, b4)) >= 0)


def test_compute_metrics():
    rng = np.random.default_rng(2)
    x = rng.normal(size=100)
    mos = logistic4(x, 90, 10, 0.0, 0.7) + rng.normal(0, 2, size=100)
    res = compute_metrics(torch.tensor(x, dtype=torch.float32), mos)
    assert list(res) == ["srcc", "plcc", "plcc_logistic", "krcc", "rmse", "n"]
    assert res["n"] == 100
    assert res["srcc"] == pytest.approx(srcc(np.float32(x), mos), **EXACT)
    assert res["plcc_logistic"] > res["plcc"] > 0.8
    mapped = logistic4(np.float32(x), *fit_logistic4(np.float32(x), mos))
    assert res["rmse"] == pytest.approx(rmse(mapped, mos), **EXACT)
    assert res["rmse"] < 3.0  # close to the noise level 2 of the data


def test_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        compute_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="pred.*finite"):
        srcc([1, np.nan, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="mos.*finite"):
        plcc([1, 2, 3], [1, np.inf, 3])
    with pytest.raises(ValueError, match="at least 2"):
        compute_metrics([1], [1])


def test_random_splits_plain():
    splits = random_splits(50, k=10, train_frac=0.8, seed=3)
    assert len(splits) == 10
    for train, test in splits:
        assert train.dtype == test.dtype == np.int64
        assert len(train) == 40 and len(test) == 10
        assert not set(train) & set(test) and sorted(np.concatenate([train, test])) == list(range(50))
    assert len({tuple(t) for _, t in splits}) > 1
    again = random_splits(50, k=10, train_frac=0.8, seed=3)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    other = random_splits(50, k=10, train_frac=0.8, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(splits, other))


def test_random_splits_content_aware():
    groups = [f"ref{g}" for g in range(10) for _ in range(26)]  # 10 references x 26 images (synthetic layout)
    for train, test in random_splits(groups, k=5, seed=0):
        train_refs, test_refs = {groups[i] for i in train}, {groups[i] for i in test}
        assert not train_refs & test_refs
        assert len(train_refs) == 8 and len(test_refs) == 2 and len(train) == 208 and len(test) == 52


def test_random_splits_bad_arguments():
    with pytest.raises(ValueError, match="k"):
        random_splits(10, k=0)
    with pytest.raises(ValueError, match="train_frac"):
        random_splits(10, train_frac=1.0)
    with pytest.raises(ValueError, match="groups"):
        random_splits(["a", "a", "a"])


def test_summarize_and_table():
    runs = [dict(srcc=v, plcc=v / 2, n=10) for v in (0.5, 0.9, 0.7)]
    summary = summarize(runs)
    assert list(summary) == ["srcc", "plcc", "n"]
    assert summary["srcc"] == pytest.approx(dict(median=0.7, mean=0.7, std=np.std([0.5, 0.9, 0.7]), min=0.5,
                                                 max=0.9), **EXACT)
    assert summary["n"]["median"] == 10
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "median", "mean", "std", "min", "max"]
    assert lines[1].split()[:2] == ["srcc", "0.7000"] and lines[3].split() == ["n", "10", "10", "0", "10", "10"]
    with pytest.raises(ValueError, match="results"):
        summarize([])


def test_scatter_plot(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=40)
    path = scatter_plot(x, 2 * x + rng.normal(size=40), tmp_path / "scatter.png", title="test")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
