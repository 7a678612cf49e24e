"""The predictor: trained branches -> a score per image in MOS units (grid crops, crop scores, pooling,
averaged over the branches). Built from a Trainer's branches or loaded from a checkpoint."""
from __future__ import annotations

import numpy as np
import torch

from ..data import decode_image
from ..models import build_model
from . import checkpoint as ckpt_io
from .amp import amp_dtype, autocast
from .config import TrainConfig
from .dist import DistContext, resolve_device
from .pipeline import CropPipeline
from .scoring import crop_scores, image_quality


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
