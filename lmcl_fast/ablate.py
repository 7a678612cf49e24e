"""`lmcl ablate`: named variants of one training configuration, each trained and evaluated on the same K
content-aware splits with the same seeds; per variant the median and spread of SRCC/PLCC, and against the full
method the per-split differences with a paired test over the splits (Wilcoxon signed-rank and sign test).

Layout of OUT_DIR: `config.json` (the base configuration), `<variant>/split_XX/` (one training run each:
checkpoint, log, metrics.json, predictions), `ablation.json` (everything below), `ablation.md` (the table)
and `ablation.png` (bar chart: median over splits with the min-max range). A run whose metrics.json exists is
skipped on the next invocation; an unfinished one continues from its checkpoint."""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

# Variant name -> TrainConfig fields changed from the base configuration.
VARIANTS = {
    "full": {},
    "no_lmc": {"lambda_lmc": 0.0},
    "no_intra": {"intra_weight": 0.0},
    "no_manifold": {"manifold_weight": 0.0},
    "random_anchor": {"anchor": "random"},
    "no_prior": {"prior_weight": 0.0},
    "single_branch": {"mutual": "none"},
    "ema_teacher": {"mutual": "ema"},
}
VARIANT_HELP = {
    "full": "the configuration as given",
    "no_lmc": "no lmc_loss (lambda_lmc = 0)",
    "no_intra": "no intra-class negatives (intra_weight = 0)",
    "no_manifold": "no local-manifold term (manifold_weight = 0)",
    "random_anchor": "a uniformly random crop as the anchor instead of the most salient one",
    "no_prior": "no spectral-residual saliency prior (prior_weight = 0)",
    "single_branch": "one network, no mutual learning (mutual = none)",
    "ema_teacher": "an EMA teacher instead of the peer network (mutual = ema)",
}
REFERENCE = "full"
METRICS = ("srcc", "plcc", "plcc_logistic")


def parse_variants(text: str | None) -> list:
    """'a,b' -> ['full', 'a', 'b'] (the reference always runs first); None or '' -> every variant."""
    if not text:
        return list(VARIANTS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"ablate: variants {unknown} are unknown; choose from {list(VARIANTS)}")
    return [REFERENCE] + [n for n in dict.fromkeys(names) if n != REFERENCE]


def paired_test(diffs) -> dict:
    """Paired comparison over splits of variant - reference differences: median difference, wins (> 0),
    losses (< 0), ties, two-sided Wilcoxon signed-rank p (exact for small K; NaN when every difference is 0)
    and two-sided sign-test p (binomial on wins vs losses)."""
    from scipy import stats

    d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], dtype=np.float64)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    out = {"n": int(d.size), "median_diff": float(np.median(d)) if d.size else float("nan"),
           "mean_diff": float(d.mean()) if d.size else float("nan"), "wins": wins, "losses": losses,
           "ties": int(d.size - wins - losses), "wilcoxon_p": float("nan"), "sign_p": float("nan")}
    if wins + losses:
        out["sign_p"] = float(stats.binomtest(wins, wins + losses, 0.5).pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(d[d != 0]).pvalue)
    return out


def summarize_ablation(results: dict, splits: int) -> dict:
    """`results[variant][i]`: split i's metrics dict (or None if not run). Returns per variant the summary of
    each metric over its finished splits and, for every variant but the reference, the paired test on the
    splits both have finished."""
    out = {}
    ref = results.get(REFERENCE, [None] * splits)
    for name, per_split in results.items():
        done = [m for m in per_split if m is not None]
        entry = {"splits_done": len(done), "summary": {}, "paired": {}}
        for metric in METRICS:
            vals = np.asarray([m[metric] for m in done], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            entry["summary"][metric] = (
                {"median": float(np.median(vals)), "mean": float(vals.mean()), "std": float(vals.std()),
                 "min": float(vals.min()), "max": float(vals.max()), "values": vals.tolist()}
                if vals.size else None)
            if name != REFERENCE:
                diffs = [None if (a is None or b is None) else float(a[metric] - b[metric])
                         for a, b in zip(per_split, ref)]
                entry["paired"][metric] = dict(paired_test(diffs), diffs=diffs)
        out[name] = entry
    return out


def _fmt(v, spec=".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_markdown(summary: dict, splits: int) -> str:
    """The ablation table: per variant median [min, max] of SRCC and PLCC over the splits, the per-split SRCC
    differences against the reference, their median, wins/losses and the paired tests' p-values."""
    lines = ["| variant | splits | SRCC median [min, max] | PLCC median [min, max] | ΔSRCC per split vs full | "
             "median ΔSRCC | better/worse | Wilcoxon p | sign p | median ΔPLCC | Wilcoxon p (PLCC) |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in summary.items():
        cells = [f"`{name}`", f"{e['splits_done']}/{splits}"]
        for metric in ("srcc", "plcc"):
            s = e["summary"][metric]
            cells.append("–" if s is None else f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]")
        if name == REFERENCE:
            cells += ["(reference)", "", "", "", "", "", ""]
        else:
            p, q = e["paired"]["srcc"], e["paired"]["plcc"]
            cells += [" ".join("·" if d is None else f"{d:+.3f}" for d in p["diffs"]),
                      _fmt(p["median_diff"], "+.3f"), f"{p['wins']}/{p['losses']}", _fmt(p["wilcoxon_p"]),
                      _fmt(p["sign_p"]), _fmt(q["median_diff"], "+.3f"), _fmt(q["wilcoxon_p"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summary: dict, path: str, title: str) -> str:
    """PNG: per variant the median SRCC and PLCC over the splits, whiskers from min to max, dots per split."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(summary)
    fig = Figure(figsize=(max(6.0, 1.0 * len(names) + 2), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for j, metric in enumerate(("srcc", "plcc")):
        xs = np.arange(len(names)) + (j - 0.5) * width
        rows = [summary[n]["summary"][metric] for n in names]
        med = np.array([r["median"] if r else np.nan for r in rows])
        lo = np.array([r["median"] - r["min"] if r else 0.0 for r in rows])
        hi = np.array([r["max"] - r["median"] if r else 0.0 for r in rows])
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, color=f"C{j}", alpha=0.8, label=f"{metric.upper()} median")
        for x, r in zip(xs, rows):
            if r:
                ax.plot([x] * len(r["values"]), r["values"], ".", color="k", ms=3)
    finite = [v for n in names for m in ("srcc", "plcc") if summary[n]["summary"][m]
              for v in summary[n]["summary"][m]["values"]]
    if finite:
        ax.set_ylim(max(-1.0, min(finite) - 0.05), min(1.0, max(finite) + 0.05))
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("test correlation")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_report(out_dir: str, base_config: dict, variants: list, results: dict, splits: int) -> dict:
    """ablation.json / .md / .png from the per-split results; returns the summary with the table."""
    summary = summarize_ablation(results, splits)
    table = format_markdown(summary, splits)
    report = {"base_config": base_config, "splits": splits,
              "variants": {n: {"changes": VARIANTS[n], "meaning": VARIANT_HELP[n]} for n in variants},
              "results": results, "summary": summary, "table": table}
    with open(os.path.join(out_dir, "ablation.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(out_dir, "ablation.md"), "w") as fh:
        fh.write(table + "\n")
    bar_chart(summary, os.path.join(out_dir, "ablation.png"), f"ablation over {splits} splits (test set)")
    return report


# Fields that change where or how fast a run goes, not its numbers: they may differ when an ablation resumes.
_OPERATIONAL = ("out_dir", "num_workers", "decoder", "device", "log_every", "save_every")


def _check_same_base(saved: dict, base: dict, path: str) -> None:
    diffs = sorted(k for k in base if k not in _OPERATIONAL and saved.get(k) != base[k])
    if diffs:
        raise ValueError(f"ablate: {path} holds an ablation of another configuration (fields {diffs} differ); "
                         f"give the same options to resume it, or another --out-dir")


def run_ablation(base, variants: list | None = None, progress: bool = True, max_runs: int | None = None) -> dict:
    """Train and evaluate every (variant, split) of the base TrainConfig under base.out_dir, split by split (so
    an interrupted ablation already has complete pairs), skipping runs whose metrics.json exists and continuing
    unfinished ones from their checkpoints. `max_runs` bounds the runs trained in this call. Returns the
    report (see write_report), written after every run."""
    from tqdm import tqdm

    from .core import checkpoint as ckpt_io
    from .core.config import check_compatible
    from .data import IQADataset
    from .experiment import experiment_splits, run_split

    variants = list(variants or VARIANTS)
    out = base.out_dir
    os.makedirs(out, exist_ok=True)
    cfg_path = os.path.join(out, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as fh:
            _check_same_base(json.load(fh), json.loads(json.dumps(base.to_dict())), cfg_path)
    base.to_json(cfg_path)
    dataset = IQADataset(base.root, base.csv, lower_is_better=base.lower_is_better)
    splits = experiment_splits(base, dataset)
    K = len(splits)

    def run_dir(v, i):
        return os.path.join(out, v, f"split_{i:02d}")

    results = {v: [None] * K for v in variants}
    for v in variants:
        for i in range(K):
            path = os.path.join(run_dir(v, i), "metrics.json")
            if os.path.isfile(path):
                with open(path) as fh:
                    results[v][i] = json.load(fh)["metrics"]
    done = sum(m is not None for per in results.values() for m in per)
    bar = tqdm(total=len(variants) * K, initial=done, desc="ablation", disable=not progress, file=sys.stderr)
    ran = 0
    for i, (train_idx, test_idx) in enumerate(splits):
        for v in variants:
            if results[v][i] is not None:
                continue
            if max_runs is not None and ran >= max_runs:
                bar.close()
                return write_report(out, base.to_dict(), variants, results, K)
            cfg = base.replace(**VARIANTS[v], out_dir=os.path.join(out, v))
            ckpt = os.path.join(run_dir(v, i), "last.pt")
            if os.path.exists(ckpt):
                check_compatible(cfg, ckpt_io.load(ckpt)["config"], f"existing checkpoint {ckpt}")
            bar.set_postfix_str(f"split {i} {v}")
            result, _ = run_split(cfg, dataset, i, train_idx, test_idx, run_dir(v, i), resume=True, progress=False)
            results[v][i] = result["metrics"]
            ran += 1
            write_report(out, base.to_dict(), variants, results, K)
            bar.update(1)
    bar.close()
    return write_report(out, base.to_dict(), variants, results, K)
