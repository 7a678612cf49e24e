"""K train/test runs (content-aware random splits), each trained then evaluated on its test part, and
the summary over the splits (median and spread), as the IQA literature reports it."""
from __future__ import annotations

import os
import sys

from .core import checkpoint as ckpt_io
from .core.config import TrainConfig, check_compatible
from .core.dist import DistContext
from .core.metric import QualityMetric
from .data import IQADataset, random_splits
from .data.holdout import holdout_split, row_types
from .eval.runner import evaluate, summarize_results, write_result
from .train.trainer import Trainer


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def experiment_splits(cfg: TrainConfig, dataset: IQADataset) -> list:
    """The cfg.splits content-aware (train, test) index splits of `dataset`; with cfg.holdout_types, training
    keeps the other distortion types and the test part only the held-out types and the pristine images."""
    splits = random_splits(dataset.group_keys(), k=cfg.splits, train_frac=cfg.train_frac, seed=cfg.split_seed)
    if not cfg.holdout_types:
        return splits
    types = row_types(cfg.csv, dataset.names)
    return [holdout_split(train_idx, test_idx, types, cfg.holdout_types) for train_idx, test_idx in splits]


def run_split(cfg: TrainConfig, dataset: IQADataset, index: int, train_idx, test_idx, run_dir: str,
              resume: bool = False, max_epochs: int | None = None, dist: DistContext | None = None,
              progress: bool = True) -> tuple:
    """Train split `index` in run_dir (continuing from run_dir/last.pt with `resume`) and evaluate it on its
    test part. Returns (result, epochs run); result is None when `max_epochs` stopped training early."""
    dist = dist or DistContext()
    ckpt = os.path.join(run_dir, "last.pt")
    trainer = Trainer(cfg, dataset, train_idx, test_idx, run_dir, split_index=index, dist=dist,
                      resume=ckpt if resume and os.path.exists(ckpt) else None, progress=progress)
    ran = trainer.fit(max_epochs)
    if not trainer.finished:
        trainer.tb.close()
        if dist.is_main:
            _log(f"train: stopped after epoch {trainer.epoch} of split {index} (checkpoint {ckpt}); "
                 f"resume with --resume")
        return None, ran
    # Every rank evaluates (identical weights, identical result); rank 0 writes.
    metric = QualityMetric(cfg, trainer.branches(), trainer.mos_mean, trainer.mos_std, trainer.device)
    result = evaluate(metric, dataset, test_idx)
    result["skipped"] = sorted(set(result["skipped"]) | set(trainer.skipped))
    if dist.is_main:
        write_result(run_dir, result, f"split {index}")
        m = result["metrics"]
        trainer.tb.log_test(m, trainer.step)
        _log(f"split {index}: SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}  ({m['n']} test images)")
    trainer.tb.close()
    return result, ran


def train_splits(cfg: TrainConfig, resume: bool = False, max_epochs: int | None = None,
                 dist: DistContext | None = None, progress: bool = True) -> dict | None:
    """Train and evaluate every split under cfg.out_dir/split_XX. With `resume`, each split continues from
    its last.pt (finished splits are only re-evaluated). `max_epochs` bounds the epochs trained in this
    call (over all splits); returns None when it stops the run early, else the summary (see
    lmcl_fast.eval.runner.summarize_results)."""
    dist = dist or DistContext()
    dataset = IQADataset(cfg.root, cfg.csv, lower_is_better=cfg.lower_is_better)
    splits = experiment_splits(cfg, dataset)
    ckpts = [os.path.join(cfg.out_dir, f"split_{i:02d}", "last.pt") for i in range(len(splits))]
    for ckpt in ckpts:
        # Refuse before writing anything: resuming needs the same model, and a fresh run must not
        # silently overwrite another model's checkpoints.
        if os.path.exists(ckpt):
            check_compatible(cfg, ckpt_io.load(ckpt)["config"], f"existing checkpoint {ckpt}")
    if dist.is_main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        cfg.to_json(os.path.join(cfg.out_dir, "config.json"))
    results, budget = [], max_epochs
    for i, ((train_idx, test_idx), ckpt) in enumerate(zip(splits, ckpts)):
        result, ran = run_split(cfg, dataset, i, train_idx, test_idx, os.path.dirname(ckpt), resume=resume,
                                max_epochs=budget, dist=dist, progress=progress)
        if budget is not None:
            budget -= ran
        if result is None:
            return None
        results.append(result)
    summary = summarize_results(cfg.out_dir, results, os.path.basename(os.path.normpath(cfg.out_dir)),
                                write=dist.is_main)
    if summary["skipped"] and dist.is_main:
        _log(f"train: skipped {len(summary['skipped'])} unreadable image(s): {', '.join(summary['skipped'])}")
    return summary
