"""Resuming a run on another number of processes: the per-process batch that keeps the global batch, the
learning-rate rule when it cannot be kept, and the random streams of the new ranks."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResumePlan:
    batch_size: int  # per process, in the resumed launch
    global_batch: int  # world_size x batch_size
    lr_factor: float  # peak learning rate multiplier (linear scaling rule: new global batch / old)
    message: str | None  # what changed, for stderr; None when nothing did


def saved_global_batch(ck: dict) -> int:
    """The global batch a checkpoint was trained with (older checkpoints: world size x per-process batch)."""
    return ck.get("global_batch", ck["world_size"] * ck["config"]["batch_size"])


def resume_plan(saved_global: int, saved_world: int, world: int, batch_size: int) -> ResumePlan:
    """How a checkpoint written with global batch `saved_global` by `saved_world` processes continues on
    `world` processes launched with per-process `batch_size`.

    The checkpoint's global batch wins: each process takes saved_global / world images (`batch_size` is
    ignored when it differs). When world does not divide it, each process takes round(saved_global / world)
    (at least 2) images, the global batch changes, and the peak learning rate is scaled by new / old global
    batch (linear scaling rule, Goyal et al. 2017); the schedule keeps its shape over the images still to come
    (see replan_schedule)."""
    if saved_global % world == 0:
        per_rank = saved_global // world
    else:
        per_rank = max(2, round(saved_global / world))
    new_global = per_rank * world
    factor = new_global / saved_global
    if per_rank == batch_size and world == saved_world:
        return ResumePlan(per_rank, new_global, factor, None)
    msg = (f"resuming a run of {saved_world} process(es) x {saved_global // saved_world} images on {world} "
           f"process(es) x {per_rank} images")
    if factor == 1:
        msg += f": global batch {saved_global} kept"
    else:
        msg += (f": {world} does not divide the global batch {saved_global}, so it becomes {new_global}; the peak "
                f"learning rate is scaled by {new_global}/{saved_global} (linear scaling rule) and the schedule "
                f"continues over the remaining images")
    if batch_size != per_rank:
        msg += f" (--batch-size {batch_size} ignored: the checkpoint's global batch decides)"
    return ResumePlan(per_rank, new_global, factor, msg)


def replan_schedule(optimizer, scheduler, factor: float, steps_ratio: float) -> None:
    """After loading a LambdaLR state written with another global batch: scale the peak learning rates by
    `factor` and move the schedule to the step that has seen the same fraction of the run's images
    (`steps_ratio` = new steps per epoch / old), so the learning-rate curve goes on where it was."""
    scheduler.last_epoch = round(scheduler.last_epoch * steps_ratio)
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group, base, lam in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * lam(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def elastic_seed(seed: int, step: int, rank: int) -> int:
    """Seed of rank `rank`'s torch/numpy/python generators after an elastic resume at optimizer step `step`:
    the saved per-rank states belong to another set of ranks, so every rank derives fresh, distinct,
    reproducible streams from the run's seed and position. (Crops and data order use their own seeds.)"""
    return (seed * 1_000_003 + step * 8_191 + rank * 131_071 + 7) % (2**32)
