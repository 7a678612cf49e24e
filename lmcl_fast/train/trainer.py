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

from ..core import accel
from ..core import checkpoint as ckpt_io
from ..core.amp import amp_dtype, autocast
from ..core.config import ConfigMismatchError, TrainConfig
from ..core.dist import (
    DistContext,
    broadcast_buffers_,
    gather_objects,
    mean_over_ranks_,
    min_over_ranks,
    resolve_device,
    wrap_ddp,
)
from ..core.phases import NoPhases
from ..core.pipeline import CropPipeline
from ..core.progress import progress_bar
from ..data import make_loader
from ..models import IQANet, build_model, load_backbone_weights
from .elastic import elastic_seed, replan_schedule, resume_plan, saved_global_batch
from .mutual import ema_update
from .objective import LossTerms, compute_losses
from .schedule import make_scheduler
from .tb_log import TensorBoardLog
from .throughput import StepTimer, timed

LOSS_NAMES = LossTerms._fields


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only or vanished folder): training stops; the previous
    checkpoint is untouched."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the crops of training image `index` (its row in the training set) in `epoch`: an image gets
    the same crops whichever batch or rank it lands in, and a resumed epoch redraws them."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 17) % (2**63)


def batch_norm_mode(mode: str, device: torch.device, dist: DistContext) -> str:
    """Resolve cfg.batch_norm: "auto" is SyncBatchNorm for multi-process CUDA runs, else per-process BN."""
    if mode == "auto":
        return "sync" if dist.distributed and device.type == "cuda" else "local"
    if mode == "sync" and dist.distributed and device.type != "cuda":
        raise ValueError(f"train: batch_norm=sync needs CUDA devices (torch's SyncBatchNorm has no {device.type} "
                         f"implementation); use batch_norm=local or frozen")
    return mode


def common_batch(batch: dict, dist: DistContext) -> dict | None:
    """The batch every rank trains on at this step. lmc_loss(group=...) needs the same B on every rank, and
    every rank must enter the same collectives: after unreadable images were left out, each rank keeps the
    first min-over-ranks(B) images; below 2 (lmc_loss's minimum) every rank skips the step (None)."""
    n = batch["images"].shape[0]
    b = min_over_ranks(n, dist)
    if b < 2:
        return None
    if b == n:
        return batch
    tqdm.write(f"train: rank {dist.rank} leaves {', '.join(batch['names'][b:])} out of this step (another rank "
               f"skipped unreadable images; every rank needs the same batch size {b})", file=sys.stderr)
    return {k: v[:b] if isinstance(v, torch.Tensor) or k == "names" else v for k, v in batch.items()}


def trainable_names(models: dict) -> list:
    """The optimised branches: a and b (peer mode), or the student a alone (EMA mode)."""
    return [k for k in ("a", "b") if k in models]


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
        self.dist = dist or DistContext()
        ck = ckpt_io.load(resume, cfg) if resume else None
        plan = None
        if ck is not None and ck["epoch"] < cfg.epochs:
            # Elastic resume: the checkpoint's global batch decides this launch's per-process batch.
            plan = resume_plan(saved_global_batch(ck), ck["world_size"], self.dist.world_size, cfg.batch_size)
            if plan.message and self.dist.is_main:
                print(f"train: {plan.message}", file=sys.stderr, flush=True)
            cfg = cfg.replace(batch_size=plan.batch_size)
        self.cfg = cfg
        self.device = resolve_device(cfg.device, self.dist)
        self.run_dir = run_dir
        self.ckpt_path = os.path.join(run_dir, "last.pt")
        self.split_index = split_index
        self.train_idx = [int(i) for i in train_idx]
        self.test_idx = [int(i) for i in test_idx]
        self.dataset = dataset
        self.progress = progress and self.dist.is_main
        self.amp = amp_dtype(cfg.amp, self.device)

        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.models = {"a": self._build()}
        if cfg.mutual == "peer":
            self.models["b"] = self._build()
        elif cfg.mutual == "ema":
            teacher = copy.deepcopy(self.models["a"])
            teacher.requires_grad_(False)
            self.models["teacher"] = teacher
        trainable = [self.models[k] for k in trainable_names(self.models)]

        mos = np.asarray(dataset.mos, dtype=np.float64)[self.train_idx]
        self.mos_mean = float(mos.mean())
        self.mos_std = float(mos.std()) or 1.0

        # Host batches: the step copies them to the device itself (timed as "h2d"); DALI decodes on the device.
        self.loader = make_loader(dataset.subset(self.train_idx), cfg.batch_size, shuffle=True, seed=cfg.seed,
                                  num_workers=cfg.num_workers, decoder=cfg.decoder, device=str(self.device),
                                  rank=self.dist.rank, world_size=self.dist.world_size, drop_last=True,
                                  host_batches=True)
        self.global_batch = self.dist.world_size * cfg.batch_size
        self.steps_per_epoch = len(self.loader)  # = len(train_idx) // global_batch
        if self.steps_per_epoch == 0:
            W = self.dist.world_size
            raise ValueError(f"train: the global batch ({W} process(es) x batch_size {cfg.batch_size} = "
                             f"{W * cfg.batch_size} images) is larger than the {len(self.train_idx)} training "
                             f"images (every rank needs one full batch per step): lower --batch-size"
                             f"{' or launch fewer processes' if W > 1 else ''}")
        self.batch_norm = batch_norm_mode(cfg.batch_norm, self.device, self.dist)
        if self.batch_norm == "sync" and self.dist.distributed:
            for k in trainable_names(self.models):
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.models[k], self.dist.group)
        # CUDA: the fused AdamW kernel, which also takes GradScaler's inf/NaN flag on the device, so an fp16 step
        # does not read it on the host (GradScaler's plain path does, every step).
        self.optimizer = torch.optim.AdamW(param_groups(trainable, cfg.weight_decay), lr=cfg.lr,
                                           fused=self.device.type == "cuda")
        self.scheduler = make_scheduler(self.optimizer, cfg.epochs * self.steps_per_epoch, cfg.warmup_frac,
                                        cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.pipeline = CropPipeline(cfg, self.device)
        self.phases = NoPhases()  # a PhaseTimer times the step's phases (lmcl bench --step)

        self.epoch = 0  # epochs completed
        # Rows of the current epoch's order consumed by all ranks together (mid-epoch checkpoints; independent
        # of the world size, so a resume on another number of processes goes on at the same row).
        self.position = 0
        self.step = 0  # optimizer steps taken
        self.history: list = []  # one entry per log read: mean losses since the previous one
        self.skipped: list = []  # names of unreadable images, in the order met
        self._sums = torch.zeros(len(LOSS_NAMES), device=self.device)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._count = 0
        self._last_good = None  # where the last checkpoint was written, for the non-finite message
        self.timer = StepTimer(self.device)
        if ck is not None:
            self._load(ck, resume, plan)
        # The branches the step runs: DDP wrappers (gradients averaged over the ranks) of the same modules.
        # DDP broadcasts rank 0's weights at construction, so every rank starts from the same state.
        self.nets = dict(self.models)
        if self.dist.distributed:
            for k in trainable_names(self.models):
                self.nets[k] = wrap_ddp(self.models[k], self.dist, self.device,
                                        forward_sync_buffers=self.batch_norm == "local")
            if ck is None:
                seed_everything(cfg.seed + self.dist.rank)  # own random streams per rank from here on
        # What the step calls: compiled wrappers of the same modules (of the DDP wrappers under torchrun) when
        # the run is long enough to repay the compile time (cfg.compile), else the modules themselves.
        remaining = (cfg.epochs - self.epoch) * self.steps_per_epoch - (self.steps_per_epoch -
                                                                        self.loader.batches(self.position))
        self.compile_mode = accel.resolve_compile(cfg.compile, self.device, remaining)
        self.compiled = {k: accel.compile_branch(net, self.compile_mode) for k, net in self.nets.items()}
        if self.dist.is_main:
            os.makedirs(run_dir, exist_ok=True)
            self.cfg.to_json(os.path.join(run_dir, "config.json"))  # with the resume's batch size and lr
            # The logs hold exactly the checkpoint's history: steps logged after it (a killed run) go.
            with open(os.path.join(run_dir, "train_log.jsonl"), "w") as fh:
                fh.writelines(json.dumps(entry) + "\n" for entry in self.history)
            self._truncate_image_logs()
        self.tb = TensorBoardLog(os.path.join(run_dir, "tensorboard"), cfg.tensorboard and self.dist.is_main,
                                 purge_step=self.step + 1 if ck is not None else 0)

    def _build(self) -> IQANet:
        cfg = self.cfg
        model = build_model(cfg.arch, cfg.embed_dim, cfg.proj_hidden, cfg.head_hidden)
        if cfg.weights:
            load_backbone_weights(model, cfg.weights)
        return model.to(self.device, memory_format=accel.memory_format(cfg.memory_format))

    # ---------------------------------------------------------------------------------------- checkpoints
    def state(self, rng: list) -> dict:
        """Everything a resume needs; `rng` holds every rank's RNG states, in rank order."""
        return {
            "format": ckpt_io.FORMAT,
            "config": self.cfg.to_dict(),
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_position": self.position,
            "global_batch": self.global_batch,
            "world_size": self.dist.world_size,
            "rng": rng,
            "mos_stats": {"mean": self.mos_mean, "std": self.mos_std},
            "split": {"index": self.split_index, "train_idx": self.train_idx, "test_idx": self.test_idx,
                      "test_names": [self.dataset.names[i] for i in self.test_idx]},
            "history": self.history,
            "skipped": self.skipped,
        }

    def save(self) -> None:
        """Collective: every rank calls it at the same step; rank 0 writes."""
        if self.position:
            self._read_logs()  # a mid-epoch checkpoint's history runs up to its own step
        merged = []
        for names in gather_objects(self.skipped, self.dist):
            merged += [n for n in names if n not in merged]
        self.skipped = merged
        rng = gather_objects(ckpt_io.rng_state(), self.dist)
        if self.dist.is_main:
            try:
                ckpt_io.save_atomic(self.state(rng), self.ckpt_path)
            except OSError as e:
                if self._last_good is None:
                    kept = "no checkpoint was written yet"
                else:
                    kept = (f"the previous checkpoint {self.ckpt_path} ({self._last_good}) is kept: free space or "
                            f"fix the folder, then continue with --resume")
                raise CheckpointWriteError(
                    f"train: cannot write checkpoint {self.ckpt_path} at step {self.step}: {e.strerror or e}; "
                    f"training stopped and {kept}") from e
        self._last_good = self._position()

    def _load(self, ck: dict, path: str, plan) -> None:
        if ck["split"]["test_idx"] != self.test_idx or ck["split"]["train_idx"] != self.train_idx:
            raise ConfigMismatchError(
                f"checkpoint {path} was trained on another train/test split (dataset, split_seed, train_frac "
                f"or splits changed); refusing to resume it")
        for k, m in self.models.items():
            m.load_state_dict(ck["models"][k])
        self.optimizer.load_state_dict(ck["optimizer"])
        for group in self.optimizer.param_groups:  # the saved groups carry the saving device's kernel choice
            group["fused"] = self.device.type == "cuda"
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch = ck["step"], ck["epoch"]
        saved_global = saved_global_batch(ck)
        # Format-2 checkpoints before elastic resume counted batches of the saved global batch.
        self.position = ck.get("epoch_position", ck.get("batch_in_epoch", 0) * saved_global)
        self.history, self.skipped = ck["history"], ck["skipped"]
        self.mos_mean, self.mos_std = ck["mos_stats"]["mean"], ck["mos_stats"]["std"]
        if plan is not None and plan.global_batch != saved_global:
            replan_schedule(self.optimizer, self.scheduler, plan.lr_factor,
                            self.steps_per_epoch / (len(self.train_idx) // saved_global))
            self.cfg = self.cfg.replace(lr=self.scheduler.base_lrs[0])
        if ck["world_size"] == self.dist.world_size:
            ckpt_io.set_rng_state(ck["rng"][self.dist.rank])  # the same ranks go on with their own streams
        else:
            # Other ranks than the ones that saved these streams (or a finished run re-evaluated elsewhere).
            seed_everything(elastic_seed(self.cfg.seed, self.step, self.dist.rank))
        self._last_good = self._position()

    def _position(self) -> str:
        return (f"after epoch {self.epoch}" if not self.position
                else f"at step {self.step}, in epoch {self.epoch + 1}")

    # ------------------------------------------------------------------------------------------- training
    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def branches(self) -> list:
        """Networks whose predictions are averaged at test time: both peers, or the EMA-mode student."""
        return [self.models[k] for k in ("a", "b") if k in self.models]

    def train_step(self, batch: dict, seeds: list) -> None:
        """One optimizer step on `batch`; `seeds[b]` seeds image b's crops (see crop_seed). The phases are
        timed for the logs (self.timer: CUDA events on a GPU, no host sync) and, for `lmcl bench --step`, by
        self.phases (a PhaseTimer there; a no-op otherwise)."""
        cfg, phase = self.cfg, self.phases.phase
        # Enqueues work only on CUDA: the batch's sizes live on the host, the ops check values on the device.
        timer = self.timer
        timer.begin()
        accel.mark_step(self.compile_mode)
        images = batch["images"].to(self.device, non_blocking=True)
        mos = batch["mos"].to(self.device, non_blocking=True)
        timer.mark("h2d")
        crops, prior = self.pipeline.train_crops(images, batch["heights"], batch["widths"], seeds, self.phases)
        timer.mark("crops")
        target = (mos - self.mos_mean) / self.mos_std
        flat = crops.flatten(0, 1)  # channels-last crops give a channels-last view (no copy)
        # A short batch (after unreadable images were skipped) runs eagerly: no graph for a second shape.
        nets = self.compiled if images.shape[0] == cfg.batch_size else self.nets
        with phase("forward"), autocast(self.device, self.amp):
            out_a = nets["a"](flat)
            if "b" in self.models:
                out_b = nets["b"](flat)
            elif "teacher" in self.models:
                with torch.no_grad():
                    out_b = nets["teacher"](flat)
            else:
                out_b = None
        timer.mark("forward")
        with phase("loss"):
            losses = compute_losses(cfg, out_a, out_b, prior, target, self.dist.group)
        timer.mark("loss")
        with phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses.total).backward()
        timer.mark("backward")
        with phase("optimizer"):
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if "teacher" in self.models:
                # Identical weights on every rank (DDP) give an identical EMA; per-process BatchNorm statistics
                # do not, so the teacher takes rank 0's, as DDP's student does at its next forward.
                ema_update(self.models["teacher"], self.models["a"], cfg.ema_momentum)
                if self.batch_norm == "local":
                    broadcast_buffers_(self.models["teacher"], self.dist)
            # On-device running sums: read (one host sync) every log_every steps, never per step.
            self._sums += torch.stack([t.detach().float() for t in losses])
            self._nonfinite |= ~torch.isfinite(losses.total.detach())
        self._count += 1
        self.step += 1
        timer.mark("optimizer")
        timer.end(images.shape[0] * self.dist.world_size)  # every rank trains on the same B

    def _read_logs(self) -> None:
        if self._count == 0:
            return
        # Mean over the ranks of each rank's mean loss = the loss of the global batch (equal B per rank);
        # a non-finite value on any rank stops every rank at the same step.
        packed = mean_over_ranks_(torch.cat([self._sums, self._nonfinite.float().view(1)]), self.dist).tolist()
        sums, nonfinite = packed[:-1], packed[-1] != 0
        if nonfinite:
            if self._last_good is None:
                kept = "no checkpoint was written yet"
            else:
                kept = f"the last good checkpoint {self.ckpt_path} ({self._last_good}) is kept"
            raise NonFiniteLossError(
                f"train: non-finite loss (components since step {self.step - self._count + 1}: "
                f"{dict(zip(LOSS_NAMES, sums))}) at or before step {self.step}, epoch {self.epoch + 1}; "
                f"training stopped and {kept}. Lower --lr, keep --grad-clip on, or check the data."
            )
        entry = {"step": self.step, "epoch": self.epoch + 1, "lr": self.scheduler.get_last_lr()[0]}
        entry.update({k: v / self._count for k, v in zip(LOSS_NAMES, sums)})
        entry.update(self.timer.read() or {})  # rank 0's phases; images/s of all ranks together
        self.history.append(entry)
        if self.dist.is_main:
            with open(os.path.join(self.run_dir, "train_log.jsonl"), "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            self.tb.log_train(entry)
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
        if self.batch_norm == "frozen":
            for m in self.models.values():
                for mod in m.modules():
                    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                        mod.eval()
        ran = 0
        n_train = len(self.train_idx)
        self.timer.reset()  # the first log line's images/s counts from here
        while not self.finished and (max_epochs is None or ran < max_epochs):
            self.loader.set_epoch(self.epoch, start=self.position)
            bar = progress_bar(timed(self.loader, self.timer), total=self.steps_per_epoch,
                               initial=self.steps_per_epoch - self.loader.batches(self.position),
                               enabled=self.progress, unit="step",
                               desc=f"split {self.split_index} epoch {self.epoch + 1}/{cfg.epochs}")
            for batch in bar:
                if cfg.log_images:
                    self._log_images(batch)
                self.position += self.global_batch
                for name in batch["skipped"]:
                    if name not in self.skipped:
                        self.skipped.append(name)
                        tqdm.write(f"train: skipped unreadable image {name}", file=sys.stderr)
                batch = common_batch(batch, self.dist)
                if batch is None:
                    continue  # lmc_loss needs B >= 2 (only after skipped images)
                # The index is on the host (make_loader keeps the per-image values there): no GPU wait.
                self.train_step(batch, [crop_seed(cfg.seed, self.epoch, i) for i in batch["index"].tolist()])
                if self.step % cfg.log_every == 0:
                    entry = self._read_logs()
                    bar.set_postfix(loss=f"{entry['total']:.4f}", lr=f"{entry['lr']:.2e}",
                                    img_s=f"{entry['images_per_s']:.1f}")
                more = n_train - self.position >= self.global_batch
                if cfg.save_every and self.step % cfg.save_every == 0 and more:
                    self.save()
            bar.close()
            self._read_logs()
            self.epoch += 1
            self.position = 0
            ran += 1
            self.save()
        return ran

    # ------------------------------------------------------------------------------------ image audit log
    def _image_log(self, rank: int) -> str:
        return os.path.join(self.run_dir, f"images_rank{rank}.jsonl")

    def _log_images(self, batch: dict) -> None:
        """--log-images: the names this rank's loader delivered, with the epoch and the epoch's row the global
        batch starts at (one line per batch, images_rank<R>.jsonl)."""
        entry = {"epoch": self.epoch + 1, "position": self.position, "names": batch["names"] + batch["skipped"]}
        with open(self._image_log(self.dist.rank), "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _truncate_image_logs(self) -> None:
        """Drop the batches a killed run logged after its checkpoint, from every rank's file (the world size
        may have changed), so the files list each batch trained on exactly once."""
        def before_checkpoint(line: str) -> bool:
            entry = json.loads(line)
            return (entry["epoch"], entry["position"]) < (self.epoch + 1, self.position)

        for name in sorted(os.listdir(self.run_dir)):
            if name.startswith("images_rank") and name.endswith(".jsonl"):
                path = os.path.join(self.run_dir, name)
                with open(path) as fh:
                    lines = [line for line in fh if before_checkpoint(line)]
                with open(path, "w") as fh:
                    fh.writelines(lines)
