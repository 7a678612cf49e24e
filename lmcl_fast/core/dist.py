"""Where the process sits in a (possibly distributed) run, and the few collectives the trainer needs.

Single-process runs use the defaults. Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set), `init_distributed`
initialises torch.distributed (NCCL on CUDA, gloo on CPU) and `from_env` describes the launch. Everything
here is plain torch.distributed: DistributedDataParallel for the gradients, all-gathers for lmc_loss's keys,
all-reduces for the logged losses."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .._torch_compat import ddp_accepts_forward_sync_buffers


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object = None  # torch.distributed process group handed to lmc_loss(group=...) and DDP
    # gloo group for small host-side agreements (batch sizes, RNG states, names): no device sync under NCCL
    host_group: object = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistContext":
        """The launch's position from torchrun's variables; a multi-process launch needs an initialised
        default process group (its handle goes to lmc_loss)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not (tdist.is_available() and tdist.is_initialized()):
            raise RuntimeError(f"distributed launch (WORLD_SIZE={world}) but no torch.distributed process group "
                               f"is initialised: call torch.distributed.init_process_group first")
        group = tdist.group.WORLD
        host = group if tdist.get_backend(group) == "gloo" else tdist.new_group(backend="gloo")
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), group, host)


def init_distributed(device: str) -> DistContext:
    """Initialise the default process group of a torchrun launch (env:// rendezvous; NCCL when `device`
    resolves to CUDA, gloo otherwise) and return its DistContext. A single-process launch returns the
    default context and initialises nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if on_cuda:
            torch.cuda.set_device(local_rank)
            tdist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            tdist.init_process_group("gloo")
    return DistContext.from_env()


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def resolve_device(name: str, dist: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.world_size > 1:
        name = f"cuda:{dist.local_rank}"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name} requested but torch.cuda.is_available() is False")
    return dev


def min_over_ranks(value: int, dist: DistContext) -> int:
    """The smallest of every rank's `value` (a host-side all-reduce over the gloo group)."""
    if not dist.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN, group=dist.host_group)
    return int(t[0])


def gather_objects(obj, dist: DistContext) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not dist.distributed:
        return [obj]
    out = [None] * dist.world_size
    tdist.all_gather_object(out, obj, group=dist.host_group)
    return out


def mean_over_ranks_(t: torch.Tensor, dist: DistContext) -> torch.Tensor:
    """In place: the mean of `t` over the ranks (on the device group)."""
    if dist.distributed:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM, group=dist.group)
        t /= dist.world_size
    return t


def broadcast_buffers_(module: torch.nn.Module, dist: DistContext, src: int = 0) -> None:
    """Copy rank `src`'s buffers (e.g. BatchNorm running statistics) into every rank's `module`."""
    if not dist.distributed:
        return
    by_dtype: dict = {}
    for b in module.buffers():
        by_dtype.setdefault(b.dtype, []).append(b)
    for bufs in by_dtype.values():  # one broadcast per dtype, not per buffer
        flat = _flatten_dense_tensors(bufs)
        tdist.broadcast(flat, src=src, group=dist.group)
        for b, v in zip(bufs, _unflatten_dense_tensors(flat, bufs)):
            b.copy_(v)


def wrap_ddp(module: torch.nn.Module, dist: DistContext, device: torch.device,
             forward_sync_buffers: bool) -> torch.nn.Module:
    """DistributedDataParallel over `dist.group`: rank 0's parameters and buffers at construction, and rank 0's
    buffers again before every forward only when `forward_sync_buffers` (per-process BatchNorm statistics).

    torch >= 2.13 says "no forward sync" with `forward_sync_buffers=False`; older releases only have
    `broadcast_buffers=False`, which also leaves the buffers out of the construction-time sync, so there the
    buffers are broadcast here first. The forward-sync case is every release's default and passes neither."""
    from torch.nn.parallel import DistributedDataParallel

    kwargs = dict(device_ids=[device.index] if device.type == "cuda" else None, process_group=dist.group)
    if not forward_sync_buffers:
        if ddp_accepts_forward_sync_buffers(DistributedDataParallel):
            kwargs["forward_sync_buffers"] = False
        else:
            broadcast_buffers_(module, dist)
            kwargs["broadcast_buffers"] = False
    return DistributedDataParallel(module, **kwargs)
