"""The evaluator: deterministic grid crops per image, crop predictions averaged, metrics per split and
their median/spread over K splits; a terminal table, metrics.json and a prediction-vs-MOS scatter PNG."""
from __future__ import annotations

import csv
import glob
import json
import os

import numpy as np
import torch

from ..data import IQADataset, decode_image, make_loader
from ..models import build_model
from ..train import checkpoint as ckpt_io
from ..train.amp import amp_dtype, autocast
from ..train.config import TrainConfig
from ..train.dist import DistContext, resolve_device
from ..train.objective import crop_scores, image_quality
from ..train.pipeline import CropPipeline
from .metrics import compute_metrics, format_table, scatter_plot, summarize


class Predictor:
    """Scores images with trained branches: the average over branches (both peers, or the EMA-mode
    student) of the image score pooled over the eval_grid^2 crops, in MOS units."""

    def __init__(self, cfg: TrainConfig, branches: list, mos_mean: float, mos_std: float, device: torch.device):
        self.cfg = cfg
        self.branches = branches
        self.mos_mean, self.mos_std = mos_mean, mos_std
        self.device = device
        self.amp = amp_dtype(cfg.amp, device)
        self.pipeline = CropPipeline(cfg, device)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto") -> tuple:
        ck = ckpt_io.load(path)
        cfg = TrainConfig.from_dict(ck["config"])
        dev = resolve_device(device, DistContext())
        branches = []
        for key in ("a", "b") if cfg.mutual == "peer" else ("a",):
            model = build_model(cfg.arch, cfg.embed_dim, cfg.proj_hidden, cfg.head_hidden)
            model.load_state_dict(ck["models"][key])
            branches.append(model.to(dev))
        return cls(cfg, branches, ck["mos_stats"]["mean"], ck["mos_stats"]["std"], dev), ck

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """images uint8 [B, H, W, 3] (padded), heights/widths int64 [B] -> predicted MOS [B] (float32)."""
        was_training = [m.training for m in self.branches]
        for m in self.branches:
            m.eval()
        try:
            images = images.to(self.device, non_blocking=True)
            crops, prior = self.pipeline.eval_crops(images, heights, widths)
            flat = crops.flatten(0, 1)
            scores = []
            for m in self.branches:
                with autocast(self.device, self.amp):
                    out = m(flat)
                scores.append(image_quality(out, crop_scores(out, prior, self.cfg.prior_weight), self.cfg.pooling))
            pred = torch.stack(scores).mean(0)
        finally:
            for m, t in zip(self.branches, was_training):
                m.train(t)
        return pred * self.mos_std + self.mos_mean

    def predict_loader(self, loader) -> dict:
        preds, mos, names, skipped = [], [], [], []
        for batch in loader:
            skipped += list(batch["skipped"])
            if batch["images"].shape[0] == 0:
                continue
            preds.append(self.predict_batch(batch["images"], batch["heights"], batch["widths"]))
            mos.append(batch["mos"])
            names += list(batch["names"])
        pred = torch.cat(preds).double().cpu().numpy() if preds else np.zeros(0)
        mos = torch.cat(mos).double().numpy() if mos else np.zeros(0)
        return {"pred": pred, "mos": mos, "names": names, "skipped": skipped}

    def predict_files(self, paths: list) -> list:
        """[(path, score or None, error or None)] for image files; unreadable files get an error."""
        results = []
        for path in paths:
            try:
                image = decode_image(path)  # the dataset's decoder: same RGB conversion, EXIF orientation
            except (OSError, ValueError) as exc:
                results.append((path, None, f"{type(exc).__name__}: {exc}"))
                continue
            img = image[None]
            h, w = torch.tensor([image.shape[0]]), torch.tensor([image.shape[1]])
            results.append((path, float(self.predict_batch(img, h, w)[0]), None))
        return results


def evaluate(predictor: Predictor, dataset, indices, batch_size: int | None = None,
             num_workers: int | None = None) -> dict:
    """Predict dataset[indices] and compute the metrics (against the larger-is-better MOS)."""
    cfg = predictor.cfg
    loader = make_loader(dataset.subset([int(i) for i in indices]), batch_size or cfg.batch_size, shuffle=False,
                         seed=cfg.seed, num_workers=cfg.num_workers if num_workers is None else num_workers,
                         decoder=cfg.decoder, device=str(predictor.device))
    res = predictor.predict_loader(loader)
    if len(res["pred"]) < 3:
        raise ValueError(f"eval: {len(res['pred'])} readable test images; need at least 3 for the metrics")
    res["metrics"] = compute_metrics(res["pred"], res["mos"])
    return res


def write_result(out_dir: str, result: dict, title: str) -> None:
    """metrics.json, predictions.csv and scatter.png of one evaluation."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump({"metrics": result["metrics"], "skipped": result["skipped"]}, fh, indent=2)
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
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump({"splits": per_split, "summary": summary, "skipped": skipped}, fh, indent=2)
    pred = np.concatenate([r["pred"] for r in results])
    mos = np.concatenate([r["mos"] for r in results])
    scatter_plot(pred, mos, os.path.join(out_dir, "scatter.png"), f"{title} ({len(results)} split(s), test images)")
    return {"summary": summary, "splits": per_split, "skipped": skipped, "table": table}


def evaluate_checkpoint(path: str, device: str = "auto", root: str | None = None, csv_path: str | None = None,
                        lower_is_better: bool | None = None, num_workers: int | None = None) -> dict:
    """Evaluate a checkpoint on its own test split, or, given root and csv_path, on that whole dataset."""
    predictor, ck = Predictor.from_checkpoint(path, device)
    cfg = predictor.cfg
    if root or csv_path:
        if not (root and csv_path):
            raise ValueError("eval: give both --root and --csv to evaluate on another dataset")
        lib = cfg.lower_is_better if lower_is_better is None else lower_is_better
        dataset = IQADataset(root, csv_path, lower_is_better=lib)
        return evaluate(predictor, dataset, range(len(dataset.names)), num_workers=num_workers)
    dataset = IQADataset(cfg.root, cfg.csv, lower_is_better=cfg.lower_is_better)
    names = [dataset.names[i] for i in ck["split"]["test_idx"]]
    if names != ck["split"]["test_names"]:
        raise ValueError(f"eval: the dataset {cfg.csv} changed since {path} was trained (its test split no "
                         f"longer names the same images)")
    return evaluate(predictor, dataset, ck["split"]["test_idx"], num_workers=num_workers)


def split_checkpoints(run_dir: str) -> list:
    return sorted(glob.glob(os.path.join(run_dir, "split_*", "last.pt")))
