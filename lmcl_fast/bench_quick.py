"""`lmcl bench`: a quick wall-clock timing of the ops and of one training step on random inputs (no
dataset, no pytest needed). The full comparison against eager and torch.compile references lives in the
repository's bench/ (pytest-benchmark), see bench/RESULTS.md."""
from __future__ import annotations

import os
import platform
import time

import torch

from . import ops
from .core.config import TrainConfig
from .core.dist import DistContext, resolve_device


def _time(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up run (CUDA synchronised)."""
    def once():
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    once()
    times = sorted(once() for _ in range(repeats))
    return times[len(times) // 2]


def run_quick_bench(device: str = "auto", repeats: int = 5, B: int = 8, N: int = 8, H: int = 384,
                    S: int = 96, D: int = 128) -> str:
    from .models import build_model
    from .train.objective import compute_losses

    dev = resolve_device(device, DistContext())
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, H, H, 3), dtype=torch.uint8, generator=g).to(dev)
    hw = torch.full((B,), H, dtype=torch.int64)
    boxes = ops.sample_boxes(hw, hw, N, generator=g).to(dev)
    sal = ops.spectral_residual(images)
    z = torch.randn(B * 64, N, D, device=dev, requires_grad=True)
    anchor = torch.zeros(B * 64, dtype=torch.int64, device=dev)

    cfg = TrainConfig(arch="tiny", crop_size=S, n_crops=N, batch_size=B, mutual="peer")
    models = [build_model("tiny").to(dev) for _ in range(2)]
    opt = torch.optim.AdamW([p for m in models for p in m.parameters()], lr=1e-4)
    target = torch.randn(B, device=dev)

    def train_step():
        crops = ops.multi_crop(images, boxes, S, mean=cfg.mean, std=cfg.std).flatten(0, 1)
        prior = torch.zeros(B, N, device=dev)
        loss = compute_losses(cfg, models[0](crops), models[1](crops), prior, target).total
        opt.zero_grad()
        loss.backward()
        opt.step()

    rows = [
        (f"multi_crop uint8 [{B},{H},{H},3] -> [{B},{N},3,{S},{S}]",
         lambda: ops.multi_crop(images, boxes, S, mean=cfg.mean, std=cfg.std)),
        (f"spectral_residual [{B},{H},{H},3]", lambda: ops.spectral_residual(images)),
        (f"crop_saliency [{B},{H},{H}] x {N} boxes", lambda: ops.crop_saliency(sal, boxes)),
        (f"lmc_loss fwd+bwd M={B * 64 * N} D={D}", lambda: ops.lmc_loss(z, anchor).backward()),
        (f"train step (tiny, peer) B={B} N={N} S={S}", train_step),
    ]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    lines = [f"lmcl bench on {name} (median of {repeats})"]
    for label, fn in rows:
        lines.append(f"  {label:<48s} {_time(fn, dev, repeats) * 1e3:9.2f} ms")
    return "\n".join(lines)
