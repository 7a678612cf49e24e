"""One training run (one train/test split): the mutual-learning loop, checkpoints and resume."""
from __future__ import annotations

import copy
import json
import os
import random
import sys

import numpy as np
import torch
from tqdm import tqdm

from ..data import make_loader
from ..models import IQANet, build_model, load_backbone_weights
from . import checkpoint as ckpt_io
from .amp import amp_dtype, autocast
from .config import ConfigMismatchError, TrainConfig
from .dist import DistContext, resolve_device
from .mutual import ema_update
from .objective import LossTerms, compute_losses
from .pipeline import CropPipeline
from .schedule import make_scheduler

LOSS_NAMES = LossTerms._fields


class NonFiniteLossError(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def crop_seed(seed: int, epoch: int) -> int:
    """Seed of the crop generator of an epoch: resuming at an epoch boundary redraws the same crops."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


def param_groups(models: list, weight_decay: float) -> list:
    """AdamW groups: no weight decay on biases and normalisation weights (1-D parameters)."""
    decay, no_decay = [], []
    for m in models:
        for p in m.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Trains branch `a` (and peer `b`, or keeps the EMA teacher `teacher`) on the training part of a split.

    `dataset` is an lmcl_fast.data.IQADataset; `train_idx` / `test_idx` index it. Call `fit()`."""

    def __init__(self, cfg: TrainConfig, dataset, train_idx, test_idx, run_dir: str, split_index: int = 0,
                 dist: DistContext | None = None, resume: str | None = None, progress: bool = True):
        self.cfg = cfg
        self.dist = dist or DistContext()
        self.device = resolve_device(cfg.device, self.dist)
        self.run_dir = run_dir
        self.ckpt_path = os.path.join(run_dir, "last.pt")
        self.split_index = split_index
        self.train_idx = [int(i) for i in train_idx]
        self.test_idx = [int(i) for i in test_idx]
        self.dataset = dataset
        self.progress = progress and self.dist.is_main
        self.amp = amp_dtype(cfg.amp, self.device)

        seed_everything(cfg.seed)
        self.models = {"a": self._build()}
        if cfg.mutual == "peer":
            self.models["b"] = self._build()
        else:
            teacher = copy.deepcopy(self.models["a"])
            teacher.requires_grad_(False)
            self.models["teacher"] = teacher
        trainable = [self.models[k] for k in ("a", "b") if k in self.models]

        mos = np.asarray(dataset.mos, dtype=np.float64)[self.train_idx]
        self.mos_mean = float(mos.mean())
        self.mos_std = float(mos.std()) or 1.0

        self.loader = make_loader(dataset.subset(self.train_idx), cfg.batch_size, shuffle=True, seed=cfg.seed,
                                  num_workers=cfg.num_workers, decoder=cfg.decoder, device=str(self.device),
                                  rank=self.dist.rank, world_size=self.dist.world_size, drop_last=True)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"train: batch_size {cfg.batch_size} is larger than this rank's share of the "
                             f"{len(self.train_idx)} training images (batches are full: drop_last)")
        self.optimizer = torch.optim.AdamW(param_groups(trainable, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = make_scheduler(self.optimizer, cfg.epochs * self.steps_per_epoch, cfg.warmup_frac,
                                        cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.pipeline = CropPipeline(cfg, self.device)

        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.history: list = []  # one entry per log read: mean losses since the previous one
        self.skipped: list = []  # names of unreadable images, in the order met
        self._sums = torch.zeros(len(LOSS_NAMES), device=self.device)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._count = 0
        self._last_good_epoch = None
        if resume:
            self._load(resume)
        if self.dist.is_main:
            os.makedirs(run_dir, exist_ok=True)
            cfg.to_json(os.path.join(run_dir, "config.json"))

    def _build(self) -> IQANet:
        cfg = self.cfg
        model = build_model(cfg.arch, cfg.embed_dim, cfg.proj_hidden, cfg.head_hidden)
        if cfg.weights:
            load_backbone_weights(model, cfg.weights)
        return model.to(self.device)

    # ---------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "format": ckpt_io.FORMAT,
            "config": self.cfg.to_dict(),
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "rng": ckpt_io.rng_state(),
            "mos_stats": {"mean": self.mos_mean, "std": self.mos_std},
            "split": {"index": self.split_index, "train_idx": self.train_idx, "test_idx": self.test_idx,
                      "test_names": [self.dataset.names[i] for i in self.test_idx]},
            "history": self.history,
            "skipped": self.skipped,
        }

    def save(self) -> None:
        if self.dist.is_main:
            ckpt_io.save_atomic(self.state(), self.ckpt_path)
        self._last_good_epoch = self.epoch

    def _load(self, path: str) -> None:
        ck = ckpt_io.load(path, self.cfg)
        if ck["split"]["test_idx"] != self.test_idx or ck["split"]["train_idx"] != self.train_idx:
            raise ConfigMismatchError(
                f"checkpoint {path} was trained on another train/test split (dataset, split_seed, train_frac "
                f"or splits changed); refusing to resume it")
        for k, m in self.models.items():
            m.load_state_dict(ck["models"][k])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch = ck["step"], ck["epoch"]
        self.history, self.skipped = ck["history"], ck["skipped"]
        self.mos_mean, self.mos_std = ck["mos_stats"]["mean"], ck["mos_stats"]["std"]
        ckpt_io.set_rng_state(ck["rng"])
        self._last_good_epoch = self.epoch

    # ------------------------------------------------------------------------------------------- training
    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def branches(self) -> list:
        """Networks whose predictions are averaged at test time: both peers, or the EMA-mode student."""
        return [self.models[k] for k in ("a", "b") if k in self.models]

    def train_step(self, batch: dict, generator: torch.Generator) -> None:
        cfg = self.cfg
        images = batch["images"].to(self.device, non_blocking=True)
        crops, prior = self.pipeline.train_crops(images, batch["heights"], batch["widths"], generator)
        target = (batch["mos"].to(self.device, non_blocking=True) - self.mos_mean) / self.mos_std
        flat = crops.flatten(0, 1)
        with autocast(self.device, self.amp):
            out_a = self.models["a"](flat)
            if "b" in self.models:
                out_b = self.models["b"](flat)
            else:
                with torch.no_grad():
                    out_b = self.models["teacher"](flat)
        losses = compute_losses(cfg, out_a, out_b, prior, target, self.dist.group)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if "teacher" in self.models:
            ema_update(self.models["teacher"], self.models["a"], cfg.ema_momentum)
        # On-device running sums: read (one host sync) every log_every steps, never per step.
        self._sums += torch.stack([t.detach().float() for t in losses])
        self._nonfinite |= ~torch.isfinite(losses.total.detach())
        self._count += 1
        self.step += 1

    def _read_logs(self) -> None:
        if self._count == 0:
            return
        sums = self._sums.tolist()
        if bool(self._nonfinite):
            if self._last_good_epoch is None:
                kept = "no checkpoint was written yet"
            else:
                kept = f"the last good checkpoint {self.ckpt_path} (after epoch {self._last_good_epoch}) is kept"
            raise NonFiniteLossError(
                f"train: non-finite loss (components since step {self.step - self._count + 1}: "
                f"{dict(zip(LOSS_NAMES, sums))}) at or before step {self.step}, epoch {self.epoch + 1}; "
                f"training stopped and {kept}. Lower --lr, keep --grad-clip on, or check the data."
            )
        entry = {"step": self.step, "epoch": self.epoch + 1, "lr": self.scheduler.get_last_lr()[0]}
        entry.update({k: v / self._count for k, v in zip(LOSS_NAMES, sums)})
        self.history.append(entry)
        if self.dist.is_main:
            with open(os.path.join(self.run_dir, "train_log.jsonl"), "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        self._sums.zero_()
        self._count = 0
        return entry

    def fit(self, max_epochs: int | None = None) -> int:
        """Train until cfg.epochs (or `max_epochs` more epochs in this call); checkpoint after every epoch.
        Returns the number of epochs run."""
        cfg = self.cfg
        for m in self.models.values():
            m.train()
        if "teacher" in self.models:
            self.models["teacher"].eval()
        ran = 0
        while not self.finished and (max_epochs is None or ran < max_epochs):
            self.loader.set_epoch(self.epoch)
            generator = torch.Generator().manual_seed(crop_seed(cfg.seed, self.epoch))
            bar = tqdm(self.loader, total=self.steps_per_epoch, disable=not self.progress, file=sys.stderr,
                       desc=f"split {self.split_index} epoch {self.epoch + 1}/{cfg.epochs}", leave=False)
            for batch in bar:
                for name in batch["skipped"]:
                    if name not in self.skipped:
                        self.skipped.append(name)
                        if self.dist.is_main:
                            tqdm.write(f"train: skipped unreadable image {name}", file=sys.stderr)
                if batch["images"].shape[0] < 2:
                    continue  # lmc_loss needs B >= 2 (only after skipped images)
                self.train_step(batch, generator)
                if self.step % cfg.log_every == 0:
                    entry = self._read_logs()
                    bar.set_postfix(loss=f"{entry['total']:.4f}", lr=f"{entry['lr']:.2e}")
            bar.close()
            self._read_logs()
            self.epoch += 1
            ran += 1
            self.save()
        return ran
