"""Where the process sits in a (possibly distributed) run: the one place that knows rank and world size.

Single-process runs use the defaults. A torchrun launch sets RANK / WORLD_SIZE / LOCAL_RANK; `from_env`
reads them (process-group setup and DDP wrapping belong to the distributed launcher)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object = None  # torch.distributed process group handed to lmc_loss(group=...)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistContext":
        """The launch's position from torchrun's variables; a multi-process launch needs an initialised
        default process group (its handle goes to lmc_loss)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(f"distributed launch (WORLD_SIZE={world}) but no torch.distributed process group "
                               f"is initialised: call torch.distributed.init_process_group first")
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                   torch.distributed.group.WORLD)


def resolve_device(name: str, dist: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.world_size > 1:
        name = f"cuda:{dist.local_rank}"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name} requested but torch.cuda.is_available() is False")
    return dev
