"""The quality metric: trained branches -> one score per image in the labels' units (grid crops, the saliency
prior of each image at its own size, crop scores, pooling, averaged over the branches). Built from a Trainer's
branches, or read from a training checkpoint or an exported metric file with `load_metric`."""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import decode_image, pad_images
from ..models import CropOutputs, build_model
from . import checkpoint as ckpt_io
from .amp import amp_dtype, autocast
from .config import TrainConfig
from .dist import DistContext, resolve_device
from .pipeline import CropPipeline
from .scoring import crop_scores, image_quality

log = logging.getLogger("lmcl_fast.metric")


class FileScore(NamedTuple):
    path: str
    score: float | None  # in the labels' units; None when the file could not be read
    error: str | None


def _branch_keys(cfg: TrainConfig) -> tuple:
    """The networks whose predictions are averaged: both peers, or the EMA-mode student."""
    return ("a", "b") if cfg.mutual == "peer" else ("a",)


class QualityMetric(nn.Module):
    """`metric(images) -> float32 [B]` quality scores in the units of the labels the model was trained on
    (MOS; DMOS for a model trained with lower_is_better, see `lower_better`).

    `images`: float [B, 3, H, W] with values in 0..1, uint8 [B, H, W, 3], or a list of such images
    ([3, H, W] float or [H, W, 3] uint8) of different sizes. An image's score does not depend on the other
    images of the call: each image gets its own saliency map at its own size, and on the CPU the networks run
    one image at a time, so the score is bit-identical whatever the batch (on CUDA the batch runs as one and
    scores agree to float rounding). With `as_loss=True` the call keeps the autograd graph: gradients flow to
    float input images (use `-metric(x).mean()` as a loss for a larger-is-better model)."""

    def __init__(self, cfg: TrainConfig, branches: list, mos_mean: float, mos_std: float,
                 device: torch.device | None = None, as_loss: bool = False):
        super().__init__()
        self.cfg = cfg
        self.branches = nn.ModuleList(branches)
        self.mos_mean, self.mos_std = float(mos_mean), float(mos_std)
        self.device = device if device is not None else next(branches[0].parameters()).device
        self.as_loss = bool(as_loss)
        self.amp = amp_dtype(cfg.amp, self.device)
        self.pipeline = CropPipeline(cfg, self.device)

    @property
    def lower_better(self) -> bool:
        """True when the scores are DMOS-like (smaller = better quality)."""
        return self.cfg.lower_is_better

    @classmethod
    def from_state(cls, state: dict, device="auto", as_loss: bool = False) -> "QualityMetric":
        """From a loaded training checkpoint or exported metric file (dicts with config, models, mos_stats)."""
        cfg = TrainConfig.from_dict(state["config"])
        dev = resolve_device(str(device), DistContext())
        branches = []
        for key in _branch_keys(cfg):
            model = build_model(cfg.arch, cfg.embed_dim, cfg.proj_hidden, cfg.head_hidden)
            model.load_state_dict(state["models"][key])
            branches.append(model.to(dev).eval())
        return cls(cfg, branches, state["mos_stats"]["mean"], state["mos_stats"]["std"], dev, as_loss)

    def save(self, path: str) -> None:
        """Write the inference-only file load_metric reads (`lmcl export`): the config, the branches' weights and
        the MOS normalisation, as tensors and plain containers."""
        keys = _branch_keys(self.cfg)
        if len(keys) != len(self.branches):
            raise ValueError(f"QualityMetric.save: mutual={self.cfg.mutual} predicts with {len(keys)} branch(es), "
                             f"this metric has {len(self.branches)}")
        ckpt_io.save_atomic({"format": ckpt_io.METRIC_FORMAT, "config": self.cfg.to_dict(),
                             "models": {k: {n: t.detach().cpu() for n, t in m.state_dict().items()}
                                        for k, m in zip(keys, self.branches)},
                             "mos_stats": {"mean": self.mos_mean, "std": self.mos_std}}, path)

    # ------------------------------------------------------------------------------------------- scoring
    def _forward_branch(self, model: nn.Module, crops: torch.Tensor) -> CropOutputs:
        """crops [B, N, 3, S, S] -> per-crop outputs [B*N]. On the CPU one image's N crops per call: oneDNN and
        BLAS pick kernels by batch size, and a fixed call shape keeps each image's outputs bit-identical."""
        flat = crops.flatten(0, 1)
        with autocast(self.device, self.amp):
            if self.device.type != "cpu":
                return model(flat)
            outs = [model(chunk) for chunk in flat.split(crops.shape[1])]
        return CropOutputs(*(torch.cat(field) for field in zip(*outs)))

    def predict_batch(self, images: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Padded images (uint8 [B, H, W, 3] or float [B, 3, H, W] in 0..1) with their valid heights/widths
        (int64 [B], on the host) -> predicted MOS [B] (float32), oriented larger-is-better (a DMOS model's
        predictions are negated, as IQADataset.mos is). Keeps the graph only with as_loss."""
        was_training = [m.training for m in self.branches]
        self.branches.eval()
        try:
            with torch.set_grad_enabled(self.as_loss and torch.is_grad_enabled()):
                images = images.to(self.device, non_blocking=True)
                crops, prior = self.pipeline.eval_crops(images, heights, widths)
                scores = []
                for m in self.branches:
                    out = self._forward_branch(m, crops)
                    scores.append(image_quality(out, crop_scores(out, prior, self.cfg.prior_weight),
                                                self.cfg.pooling))
                pred = torch.stack(scores).mean(0)
        finally:
            for m, t in zip(self.branches, was_training):
                m.train(t)
        return pred * self.mos_std + self.mos_mean

    def to_label_units(self, pred: torch.Tensor) -> torch.Tensor:
        """predict_batch's larger-is-better prediction -> the labels' units (DMOS for a lower_better model)."""
        return -pred if self.lower_better else pred

    def forward(self, images) -> torch.Tensor:
        batch, heights, widths = self._as_batch(images)
        if batch.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float32, device=self.device)
        return self.to_label_units(self.predict_batch(batch, heights, widths))

    @staticmethod
    def _as_batch(images) -> tuple:
        """-> (padded batch, heights, widths) from a 4-D tensor or a list of 3-D images."""
        if isinstance(images, torch.Tensor):
            if images.dim() == 4 and images.dtype == torch.uint8 and images.shape[-1] == 3:
                h, w = images.shape[1:3]
            elif images.dim() == 4 and images.is_floating_point() and images.shape[1] == 3:
                h, w = images.shape[2:]
                images = images.float()
            else:
                raise ValueError(f"QualityMetric: images must be float [B, 3, H, W] (0..1), uint8 [B, H, W, 3] or a "
                                 f"list of images, got {images.dtype} {list(images.shape)}")
            B = images.shape[0]
            return images, torch.full((B,), h, dtype=torch.int64), torch.full((B,), w, dtype=torch.int64)
        if isinstance(images, (list, tuple)):
            items = list(images)
        else:
            raise TypeError(f"QualityMetric: images must be a tensor or a list of tensors, got {type(images).__name__}")
        if not items:
            return torch.zeros(0, 3, 1, 1), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        kinds = set()
        for i, im in enumerate(items):
            if not isinstance(im, torch.Tensor) or im.dim() != 3:
                raise ValueError(f"QualityMetric: images[{i}] must be a 3-D tensor, got "
                                 f"{getattr(im, 'shape', type(im).__name__)}")
            if im.dtype == torch.uint8 and im.shape[-1] == 3:
                kinds.add("uint8")
            elif im.is_floating_point() and im.shape[0] == 3:
                kinds.add("float")
            else:
                raise ValueError(f"QualityMetric: images[{i}] must be float [3, H, W] (0..1) or uint8 [H, W, 3], "
                                 f"got {im.dtype} {list(im.shape)}")
        if len(kinds) > 1:
            raise ValueError("QualityMetric: images mixes uint8 and float images; pass one kind")
        if kinds == {"uint8"}:
            return pad_images(items)
        heights = torch.tensor([im.shape[1] for im in items], dtype=torch.int64)
        widths = torch.tensor([im.shape[2] for im in items], dtype=torch.int64)
        H, W = int(heights.max()), int(widths.max())
        padded = torch.stack([F.pad(im.float(), (0, W - im.shape[2], 0, H - im.shape[1])) for im in items])
        return padded, heights, widths

    def file_scores(self, paths: list, batch_size: int = 8) -> list:
        """[FileScore(path, score in label units or None, error or None)], decoding with the dataset's decoder
        (same RGB conversion and EXIF orientation), `batch_size` images per call."""
        results, pending = [], []

        def flush():
            if pending:
                images, heights, widths = pad_images([im for _, im in pending])
                with torch.no_grad():
                    scores = self.to_label_units(self.predict_batch(images, heights, widths)).tolist()
                results.extend(FileScore(p, s, None) for (p, _), s in zip(pending, scores))
                pending.clear()

        for path in paths:
            try:
                pending.append((path, decode_image(path)))
            except Exception as exc:  # noqa: BLE001  (one unreadable file is reported, never a crash)
                flush()  # keep the results in the order of `paths`
                results.append(FileScore(path, None, f"{type(exc).__name__}: {exc}"))
            if len(pending) >= batch_size:
                flush()
        flush()
        return results

    def score_files(self, paths: list, batch_size: int = 8) -> torch.Tensor:
        """float32 [len(paths)] scores of image files in label units; NaN for a file that cannot be read (a
        warning on the lmcl_fast.metric logger names it and the reason)."""
        out = []
        for r in self.file_scores(paths, batch_size):
            if r.error is not None:
                log.warning("cannot score %s: %s", r.path, r.error)
            out.append(np.nan if r.score is None else r.score)
        return torch.tensor(out, dtype=torch.float32)

    def predict_loader(self, loader) -> dict:
        """Predictions (oriented larger-is-better) of every batch of a data loader, for evaluation."""
        preds, mos, names, skipped = [], [], [], []
        for batch in loader:
            skipped += list(batch["skipped"])
            if batch["images"].shape[0] == 0:
                continue
            with torch.no_grad():
                preds.append(self.predict_batch(batch["images"], batch["heights"], batch["widths"]))
            mos.append(batch["mos"])
            names += list(batch["names"])
        pred = torch.cat(preds).double().cpu().numpy() if preds else np.zeros(0)
        mos = torch.cat(mos).double().numpy() if mos else np.zeros(0)
        return {"pred": pred, "mos": mos, "names": names, "skipped": skipped}


def load_metric(path: str, device="auto", as_loss: bool = False) -> QualityMetric:
    """A QualityMetric from a training checkpoint (split_XX/last.pt) or a file written by `lmcl export`.
    Loaded with torch.load(weights_only=True): a file carrying pickled code is refused. Parameters are frozen
    (requires_grad False); with `as_loss=True` gradients still flow to the input images."""
    state = ckpt_io.load_safe(path, "load_metric")
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in (ckpt_io.FORMAT, ckpt_io.METRIC_FORMAT):
        raise ValueError(f"load_metric: {path} is neither an lmcl_fast checkpoint (format {ckpt_io.FORMAT}) nor an "
                         f"exported metric ({ckpt_io.METRIC_FORMAT!r}); found format {fmt!r}")
    metric = QualityMetric.from_state(state, device, as_loss)
    metric.requires_grad_(False)
    return metric.eval()


def export_metric(checkpoint: str, out: str) -> None:
    """Write the inference-only file of a training checkpoint: the predicting branches' weights, the config and
    the MOS normalisation (no optimizer, EMA teacher, RNG or history)."""
    QualityMetric.from_state(ckpt_io.load(checkpoint), "cpu").save(out)
