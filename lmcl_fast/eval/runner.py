"""The evaluator: a QualityMetric's scores of a dataset (or of a checkpoint's test split), metrics per split and
their median/spread over K splits; a terminal table, metrics.json and a prediction-vs-MOS scatter PNG."""
from __future__ import annotations

import csv
import glob
import json
import math
import os

import numpy as np

from ..core import checkpoint as ckpt_io
from ..core.metric import QualityMetric
from ..data import IQADataset, make_loader
from .metrics import compute_metrics, format_table, scatter_plot, summarize


def evaluate(metric: QualityMetric, dataset, indices, batch_size: int | None = None,
             num_workers: int | None = None) -> dict:
    """Predict dataset[indices] and compute the metrics (against the larger-is-better MOS)."""
    cfg = metric.cfg
    loader = make_loader(dataset.subset([int(i) for i in indices]), batch_size or cfg.batch_size, shuffle=False,
                         seed=cfg.seed, num_workers=cfg.num_workers if num_workers is None else num_workers,
                         decoder=cfg.decoder, device=str(metric.device))
    res = metric.predict_loader(loader)
    if len(res["pred"]) < 3:
        raise ValueError(f"eval: {len(res['pred'])} readable test images; need at least 3 for the metrics")
    res["metrics"] = compute_metrics(res["pred"], res["mos"])
    return res


def json_safe(value):
    """NaN and infinities -> None (JSON null), recursively: metrics.json stays strict JSON that jq and
    JavaScript read (a failed fit gives NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as fh:
        json.dump(json_safe(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")


def write_result(out_dir: str, result: dict, title: str) -> None:
    """metrics.json, predictions.csv and scatter.png of one evaluation."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "metrics.json"), {"metrics": result["metrics"], "skipped": result["skipped"]})
    with open(os.path.join(out_dir, "predictions.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "mos", "pred"])
        w.writerows(zip(result["names"], result["mos"].tolist(), result["pred"].tolist()))
    scatter_plot(result["pred"], result["mos"], os.path.join(out_dir, "scatter.png"), title)


def summarize_results(out_dir: str, results: list, title: str, write: bool = True) -> dict:
    """Median and spread over the splits, with the table (as 'table', for printing); with `write`, also
    out_dir/metrics.json and a scatter.png of the test predictions of all splits."""
    per_split = [r["metrics"] for r in results]
    summary = summarize(per_split)
    skipped = sorted({n for r in results for n in r["skipped"]})
    table = format_table(summary)
    if not write:
        return {"summary": summary, "splits": per_split, "skipped": skipped, "table": table}
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "metrics.json"), {"splits": per_split, "summary": summary, "skipped": skipped})
    pred = np.concatenate([r["pred"] for r in results])
    mos = np.concatenate([r["mos"] for r in results])
    scatter_plot(pred, mos, os.path.join(out_dir, "scatter.png"), f"{title} ({len(results)} split(s), test images)")
    return {"summary": summary, "splits": per_split, "skipped": skipped, "table": table}


def evaluate_checkpoint(path: str, device: str = "auto", root: str | None = None, csv_path: str | None = None,
                        lower_is_better: bool | None = None, num_workers: int | None = None) -> dict:
    """Evaluate a checkpoint on its own test split, or, given root and csv_path, on that whole dataset."""
    ck = ckpt_io.load(path)
    metric = QualityMetric.from_state(ck, device)
    cfg = metric.cfg
    if root or csv_path:
        if not (root and csv_path):
            raise ValueError("eval: give both --root and --csv to evaluate on another dataset")
        lib = cfg.lower_is_better if lower_is_better is None else lower_is_better
        dataset = IQADataset(root, csv_path, lower_is_better=lib)
        return evaluate(metric, dataset, range(len(dataset.names)), num_workers=num_workers)
    dataset = IQADataset(cfg.root, cfg.csv, lower_is_better=cfg.lower_is_better)
    names = [dataset.names[i] for i in ck["split"]["test_idx"]]
    if names != ck["split"]["test_names"]:
        raise ValueError(f"eval: the dataset {cfg.csv} changed since {path} was trained (its test split no "
                         f"longer names the same images)")
    return evaluate(metric, dataset, ck["split"]["test_idx"], num_workers=num_workers)


def split_checkpoints(run_dir: str) -> list:
    return sorted(glob.glob(os.path.join(run_dir, "split_*", "last.pt")))
