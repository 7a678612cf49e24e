"""From a decoded batch to the network input: crop boxes, fused crops (multi_crop) and the saliency prior
(crop_saliency of each image's spectral-residual map). Shared by training, evaluation and scoring."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..data.loader import to_device
from . import accel
from .config import TrainConfig
from .phases import NoPhases
from .scoring import prior_logits

_NO_PHASES = NoPhases()


def grid_boxes(heights: torch.Tensor, widths: torch.Tensor, grid: int, scale: float, min_size: int) -> torch.Tensor:
    """Deterministic evaluation boxes: a grid x grid lattice of square boxes of side
    round(scale * min(h, w)) (clipped to [min_size, min(h, w)]), spread evenly from corner to corner
    (one centred box for grid = 1). int64 [B, grid*grid, 4] of (top, left, height, width)."""
    B = heights.shape[0]
    m = torch.minimum(heights, widths).long()
    side = torch.round(scale * m.double()).long().clamp_min(min_size)
    side = torch.minimum(side, m)
    if grid == 1:
        frac = torch.full((1,), 0.5, dtype=torch.float64)
    else:
        frac = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    tops = torch.round(frac[None, :] * (heights - side)[:, None].double()).long()
    lefts = torch.round(frac[None, :] * (widths - side)[:, None].double()).long()
    top = tops[:, :, None].expand(B, grid, grid).reshape(B, grid * grid)
    left = lefts[:, None, :].expand(B, grid, grid).reshape(B, grid * grid)
    s = side[:, None].expand(B, grid * grid)
    return torch.stack([top, left, s, s], dim=-1)


def saliency_maps(images: torch.Tensor, heights, widths) -> torch.Tensor:
    """Spectral-residual map of every image at its own valid size (the padding never enters an image's map),
    zero-padded to the batch: float32 [B, H, W]. `images`: padded uint8 [B, H, W, 3] or float [B, 3, H, W];
    heights/widths on the host. On the CPU one call per image, so a map (and a score) is bit-identical
    whatever the batch; on CUDA images of equal size share one call (fewer launches)."""
    channels_last = images.dtype == torch.uint8
    H, W = (images.shape[1], images.shape[2]) if channels_last else (images.shape[2], images.shape[3])
    groups: dict = {}
    for b, (h, w) in enumerate(zip(heights.tolist(), widths.tolist())):
        groups.setdefault((h, w) if images.device.type == "cuda" else (h, w, b), []).append(b)
    maps = [None] * images.shape[0]
    for key, rows in groups.items():
        h, w = key[0], key[1]
        valid = [images[b:b + 1, :h, :w] if channels_last else images[b:b + 1, :, :h, :w] for b in rows]
        sal = ops.spectral_residual(valid[0] if len(valid) == 1 else torch.cat(valid))
        for j, b in enumerate(rows):
            maps[b] = F.pad(sal[j], (0, W - w, 0, H - h))
    return torch.stack(maps)


class CropPipeline:
    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device

    def _crops(self, images: torch.Tensor, heights, widths, boxes: torch.Tensor, flip: torch.Tensor | None,
               phases=_NO_PHASES):
        cfg = self.cfg
        with phases.phase("crops"):
            boxes = to_device(boxes, self.device)
            crops = ops.multi_crop(images, boxes, cfg.crop_size, mean=cfg.mean, std=cfg.std, flip=flip,
                                   memory_format=accel.memory_format(cfg.memory_format))
        with phases.phase("saliency prior"):
            prior = prior_logits(ops.crop_saliency(saliency_maps(images, heights, widths), boxes))
        return crops, prior

    def train_crops(self, images, heights, widths, seeds, phases=_NO_PHASES):
        """Random multi-scale boxes (and flips) of image b drawn from a CPU generator seeded with `seeds[b]`:
        an image's crops depend on its seed only, not on the batch (or rank) it lands in, so a run on K
        processes crops exactly as one process with a K times larger batch. Returns crops [B, N, 3, S, S]
        (with cfg.memory_format = channels_last a strided view of [B, N, S, S, 3] memory, so that
        crops.flatten(0, 1) is a channels-last [B*N, 3, S, S] batch) and prior logits [B, N].

        heights, widths: int64 [B] on the host, as the loader hands them over. Box sampling runs on the host
        (sample_boxes validates the sizes there) and the boxes go to the device with one non-blocking copy,
        so nothing here waits for the GPU. Sizes on a GPU are read back first, which waits for it."""
        cfg = self.cfg
        with phases.phase("boxes"):
            heights, widths = heights.cpu(), widths.cpu()
            boxes, flips = [], []
            for b, seed in enumerate(seeds):
                g = torch.Generator().manual_seed(int(seed))
                boxes.append(ops.sample_boxes(heights[b:b + 1], widths[b:b + 1], cfg.n_crops,
                                              scales=(cfg.crop_scale_min, cfg.crop_scale_max),
                                              min_size=cfg.min_crop, generator=g))
                if cfg.hflip:
                    flips.append(torch.rand((1, cfg.n_crops), generator=g) < 0.5)
            flip = to_device(torch.cat(flips), self.device) if cfg.hflip else None
        return self._crops(images, heights, widths, torch.cat(boxes), flip, phases)

    def eval_crops(self, images, heights, widths):
        """The eval_grid^2 grid boxes of every image (heights, widths on the host, as in train_crops)."""
        cfg = self.cfg
        heights, widths = heights.cpu(), widths.cpu()
        boxes = grid_boxes(heights, widths, cfg.eval_grid, cfg.eval_scale, cfg.min_crop)
        return self._crops(images, heights, widths, boxes, None)
