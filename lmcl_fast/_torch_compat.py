"""The torch releases lmcl_fast supports (2.4 and newer) and the APIs that changed name within that range.

torch is deliberately not a pip dependency (an unpinned torch makes pip fetch a multi-GB CUDA build), so the
range is enforced here, at import (and by setup.py at build time), with a message instead of an obscure
symbol error. 2.4 is the floor because the ops' Python side needs `torch.library.register_fake`,
`register_autograd` and `opcheck` and `lmc_loss(group=)` needs a differentiable functional all-gather, all new
in 2.4. Every newer API is used through a feature check below, never a version comparison.
"""
from __future__ import annotations

import inspect
import re

import torch

MIN_TORCH = (2, 4)


def torch_version(version: str | None = None) -> tuple:
    """(major, minor) of a torch version string such as "2.13.0+cpu" or "2.11.0a0+git1234"."""
    text = torch.__version__ if version is None else version
    match = re.match(r"(\d+)\.(\d+)", str(text))
    if match is None:
        raise ImportError(f"lmcl_fast: cannot read the torch version {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_torch_version(version: str | None = None) -> None:
    """ImportError naming the installed and the required torch when it is older than MIN_TORCH."""
    text = torch.__version__ if version is None else version
    if torch_version(text) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(
            f"lmcl_fast needs torch >= {need} (torch.library.register_fake/register_autograd/opcheck and the "
            f"differentiable functional all-gather appeared in {need}); this environment has torch {text}. "
            f"Install a newer torch first (e.g. pip install torch=={need}.1 or later), then rebuild lmcl_fast."
        )


def all_gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-gather of `x` along dim 0 over `group` (traceable by torch.compile): the backward
    is a sum-reduce-scatter, so each rank gets the sum of every rank's gradient for its own rows.

    torch >= 2.13 names it `all_gather_single` (differentiable itself); 2.4 to 2.12 have
    `all_gather_tensor_autograd` (2.13 keeps it as a deprecated alias)."""
    from torch.distributed import _functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single", None)
    if gather is None:
        gather = funcol.all_gather_tensor_autograd
    return gather(x.contiguous(), 0, group)


def ddp_accepts_forward_sync_buffers(ddp_class=None) -> bool:
    """Whether DistributedDataParallel takes `forward_sync_buffers=` (torch >= 2.13, which deprecates
    `broadcast_buffers=`)."""
    if ddp_class is None:
        from torch.nn.parallel import DistributedDataParallel as ddp_class
    return "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters
