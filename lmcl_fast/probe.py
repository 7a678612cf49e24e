"""`lmcl probe`: the linear-probe protocol on top of the split driver. A frozen backbone (a checkpoint of this
trainer, every split checkpoint of a run folder, or a weight file given with --weights) gives per-image
features; a ridge regressor fitted on each split's training part (penalty by grouped cross-validation on that
part) predicts the test part; the metrics are summarised over the splits as `lmcl train` reports them."""
from __future__ import annotations

import os
import sys

import numpy as np

from .core.config import TrainConfig
from .core.dist import DistContext, resolve_device
from .core.pipeline import CropPipeline
from .core import checkpoint as ckpt_io
from .core.metric import QualityMetric
from .data import IQADataset
from .eval.linear_probe import extract_features, probe_split
from .eval.runner import split_checkpoints, summarize_results, write_result
from .experiment import experiment_splits
from .models import build_backbone, load_backbone_weights


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _probe(model, cfg: TrainConfig, dataset, splits: list, device, out_dir: str, first: int, label: str) -> list:
    """Features of every row the splits use (once), then one ridge fit per split; writes split_XX results."""
    rows = sorted({int(i) for tr, te in splits for i in list(tr) + list(te)})
    extracted = extract_features(model, cfg, CropPipeline(cfg, device), dataset, rows, device)
    groups = dataset.group_keys()
    results = []
    for k, (train_idx, test_idx) in enumerate(splits):
        res = probe_split(extracted, train_idx, test_idx, groups, seed=cfg.seed)
        res["names"] = [dataset.names[i] for i in res["rows"]]
        res["skipped"] = extracted["skipped"]
        i = first + k
        write_result(os.path.join(out_dir, f"split_{i:02d}"), res, f"probe split {i} ({label})")
        m = res["metrics"]
        _log(f"probe split {i} ({label}): SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}  "
             f"(ridge alpha {res['alpha']:.3g} x n, {m['n']} test images)")
        results.append(res)
    return results


def run_probe(cfg: TrainConfig, path: str | None, out_dir: str, data_override: bool) -> dict:
    """`path` None: the `cfg.arch` backbone (initialised from cfg.weights) on cfg's dataset and splits.
    `path` a checkpoint or a run folder: each split checkpoint's branch-a backbone (frozen) on its own split, or
    with `data_override` (cfg.root/cfg.csv given) on cfg's splits of that dataset (checkpoint i probes split i,
    a single checkpoint every split). Returns the summary (as summarize_results)."""
    device = resolve_device(cfg.device, DistContext())
    results = []
    if path is None:
        if not cfg.root or not cfg.csv:
            raise ValueError("probe: --root and --csv are required with --weights (or without a checkpoint)")
        if not cfg.weights:
            _log(f"probe: no --weights: probing a randomly initialised {cfg.arch} backbone (a baseline)")
        backbone = build_backbone(cfg.arch)
        if cfg.weights:
            load_backbone_weights(backbone, cfg.weights)
        dataset = IQADataset(cfg.root, cfg.csv, lower_is_better=cfg.lower_is_better)
        results = _probe(backbone.to(device), cfg, dataset, experiment_splits(cfg, dataset), device, out_dir, 0,
                         os.path.basename(cfg.weights) or cfg.arch)
    else:
        ckpts = split_checkpoints(path) if os.path.isdir(path) else [path]
        if not ckpts:
            raise ValueError(f"probe: no split_*/last.pt checkpoints under {path}")
        other = None
        if data_override:
            other = IQADataset(cfg.root, cfg.csv, lower_is_better=cfg.lower_is_better)
            other_splits = experiment_splits(cfg, other)
        for j, ckpt in enumerate(ckpts):
            ck = ckpt_io.load(ckpt)
            metric = QualityMetric.from_state(ck, str(device))
            ck_cfg = metric.cfg.replace(num_workers=cfg.num_workers, batch_size=cfg.batch_size)
            model = metric.branches[0]
            if other is None:
                dataset = IQADataset(ck_cfg.root, ck_cfg.csv, lower_is_better=ck_cfg.lower_is_better)
                splits = [(np.asarray(ck["split"]["train_idx"]), np.asarray(ck["split"]["test_idx"]))]
                results += _probe(model, ck_cfg, dataset, splits, device, out_dir, j, ckpt)
            else:
                splits = other_splits if len(ckpts) == 1 else [other_splits[j % len(other_splits)]]
                results += _probe(model, ck_cfg, other, splits, device, out_dir, j if len(ckpts) > 1 else 0, ckpt)
    return summarize_results(out_dir, results, f"linear probe ({len(results)} split(s))")
