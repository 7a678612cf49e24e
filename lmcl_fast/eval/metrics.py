"""IQA evaluation metrics (SRCC, PLCC, KRCC, RMSE, PLCC after the 4-parameter logistic), their summary over
splits, a text table and a prediction-vs-MOS scatter plot."""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize, stats

METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse", "n")
_STATS = ("median", "mean", "std", "min", "max")


def _pair(pred, mos, fn: str):
    p = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred, dtype=np.float64).reshape(-1)
    m = np.asarray(mos.detach().cpu() if hasattr(mos, "detach") else mos, dtype=np.float64).reshape(-1)
    if p.shape != m.shape:
        raise ValueError(f"{fn}: pred and mos must have the same length, got {p.size} and {m.size}")
    if p.size < 2:
        raise ValueError(f"{fn}: pred needs at least 2 values, got {p.size}")
    if not np.isfinite(p).all():
        raise ValueError(f"{fn}: pred must be finite, got {int((~np.isfinite(p)).sum())} non-finite values")
    if not np.isfinite(m).all():
        raise ValueError(f"{fn}: mos must be finite, got {int((~np.isfinite(m)).sum())} non-finite values")
    return p, m


def srcc(pred, mos) -> float:
    """Spearman rank-order correlation."""
    p, m = _pair(pred, mos, "srcc")
    return float(stats.spearmanr(p, m).statistic)


def plcc(pred, mos) -> float:
    """Pearson linear correlation."""
    p, m = _pair(pred, mos, "plcc")
    return float(stats.pearsonr(p, m).statistic)


def krcc(pred, mos) -> float:
    """Kendall rank correlation (tau-b, which handles ties)."""
    p, m = _pair(pred, mos, "krcc")
    return float(stats.kendalltau(p, m).statistic)


def rmse(pred, mos) -> float:
    """Root mean squared error between pred and mos (on whatever scale they come)."""
    p, m = _pair(pred, mos, "rmse")
    return float(np.sqrt(np.mean((p - m) ** 2)))


def logistic4(x, beta1, beta2, beta3, beta4):
    """The VQEG 4-parameter logistic: (beta1 - beta2) / (1 + exp(-(x - beta3) / |beta4|)) + beta2.

    beta1 / beta2: upper / lower asymptote, beta3: midpoint, beta4: slope scale. Increasing when beta1 >= beta2.
    """
    z = -(np.asarray(x, dtype=np.float64) - beta3) / abs(beta4)
    return (beta1 - beta2) * 0.5 * (1.0 - np.tanh(z / 2.0)) + beta2  # = 1 / (1 + e^z), no overflow


def fit_logistic4(pred, mos) -> tuple:
    """Least-squares fit of `logistic4` mapping pred to mos; returns (beta1, beta2, beta3, beta4).

    The mapping is constrained to be monotonically non-decreasing (beta1 >= beta2, beta4 > 0), so it can
    never turn an anti-correlated predictor into a correlated one. Robust start: asymptotes at the MOS range,
    midpoint at the mean prediction, scale at the prediction spread; the fit runs on standardised predictions
    (so any scale of pred works) with bounds (scipy's trf). A constant pred maps to the mean MOS.
    """
    p, m = _pair(pred, mos, "fit_logistic4")
    mu, sd = p.mean(), p.std()
    if sd == 0.0 or not np.isfinite(sd):
        return (float(m.mean()), float(m.mean()), float(mu), 1.0)
    x = (p - mu) / sd

    def model(x, low, span, mid, scale):
        return logistic4(x, low + span, low, mid, scale)

    span0 = max(m.max() - m.min(), 1e-12)
    best = None
    for scale0 in (1.0, 0.3, 3.0):  # a few starts: steep and flat maps converge from different sides
        start = (m.min(), span0, 0.0, scale0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                params, _ = optimize.curve_fit(model, x, m, p0=start, method="trf", maxfev=20000,
                                               bounds=([-np.inf, 0.0, -np.inf, 1e-6], np.inf))
        except RuntimeError:  # no convergence from this start
            continue
        sse = float(np.sum((model(x, *params) - m) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params)
    if best is None:
        raise RuntimeError("fit_logistic4: the logistic fit did not converge from any start")
    low, span, mid, scale = best[1]
    return (float(low + span), float(low), float(mid * sd + mu), float(scale * sd))


def plcc_logistic(pred, mos) -> float:
    """PLCC between the logistic-mapped predictions and mos (the standard IQA protocol)."""
    p, m = _pair(pred, mos, "plcc_logistic")
    mapped = logistic4(p, *fit_logistic4(p, m))
    if np.ptp(mapped) == 0.0:
        return float("nan")
    return float(stats.pearsonr(mapped, m).statistic)


def compute_metrics(pred, mos) -> dict:
    """dict(srcc, plcc, plcc_logistic, krcc, rmse, n). `rmse` is measured after the logistic mapping (VQEG),
    so it is in MOS units whatever the scale of pred; `plcc` is on the raw predictions."""
    p, m = _pair(pred, mos, "compute_metrics")
    mapped = logistic4(p, *fit_logistic4(p, m))
    return dict(
        srcc=srcc(p, m),
        plcc=plcc(p, m),
        plcc_logistic=float(stats.pearsonr(mapped, m).statistic) if np.ptp(mapped) > 0 else float("nan"),
        krcc=krcc(p, m),
        rmse=rmse(mapped, m),
        n=int(p.size),
    )


def summarize(results: list) -> dict:
    """{metric: {median, mean, std, min, max}} over a list of `compute_metrics` dicts (std with ddof=0;
    NaNs ignored). Metrics are ordered as in METRICS, then any others in first-seen order."""
    if not results:
        raise ValueError("summarize: results must hold at least one metrics dict, got none")
    names = [k for k in METRICS if k in results[0]] + [k for k in results[0] if k not in METRICS]
    summary = {}
    for name in names:
        values = np.asarray([float(r[name]) for r in results], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            summary[name] = {s: float("nan") for s in _STATS}
            continue
        summary[name] = dict(median=float(np.median(finite)), mean=float(finite.mean()), std=float(finite.std()),
                             min=float(finite.min()), max=float(finite.max()))
    return summary


def format_table(summary: dict) -> str:
    """A fixed-width text table of `summarize` output: one row per metric, columns median mean std min max."""
    width = max([len("metric")] + [len(k) for k in summary])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>9}" for s in _STATS)]
    for name, row in summary.items():
        cells = []
        for s in _STATS:
            v = row[s]
            cells.append(f"{int(v):>9d}" if name == "n" and math.isfinite(v) and v == int(v) else f"{v:>9.4f}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def scatter_plot(pred, mos, path, title=None) -> str:
    """Save a prediction-vs-MOS scatter plot (with the fitted logistic curve and SRCC/PLCC in the legend) as a
    PNG at `path`; returns the path. Uses matplotlib's Agg canvas directly (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p, m = _pair(pred, mos, "scatter_plot")
    fig = Figure(figsize=(5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(p, m, s=10, alpha=0.6, edgecolors="none", label=f"SRCC {srcc(p, m):.3f}, PLCC {plcc(p, m):.3f}")
    xs = np.linspace(p.min(), p.max(), 200)
    ax.plot(xs, logistic4(xs, *fit_logistic4(p, m)), color="C3", lw=1.5, label="4-parameter logistic fit")
    ax.set_xlabel("prediction")
    ax.set_ylabel("MOS")
    ax.set_title(title if title is not None else f"prediction vs MOS (n = {p.size})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return str(path)
