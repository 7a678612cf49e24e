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
import torch.distributed as dist

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


class _AllGatherRows(torch.autograd.Function):
    """Eager all-gather along dim 0 with the plain c10d collectives; backward: the sum-reduce-scatter."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.new_empty((dist.get_world_size(group) * x.shape[0],) + tuple(x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group),) + tuple(grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad, group=ctx.group)
        return out, None


def functional_all_gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """The differentiable functional all-gather, waited for (traceable by torch.compile): torch >= 2.13 names it
    `all_gather_single` (differentiable itself); 2.4 to 2.12 have `all_gather_tensor_autograd` (2.13 keeps it
    as a deprecated alias)."""
    from torch.distributed import _functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single", None)
    if gather is None:
        gather = funcol.all_gather_tensor_autograd
    # Waited at once: with gloo, two functional all-gathers in flight together corrupt the heap (see below).
    return funcol.wait_tensor(gather(x.contiguous(), 0, group))


def all_gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-gather of `x` along dim 0 over `group`: the backward is a sum-reduce-scatter, so each
    rank gets the sum of every rank's gradient for its own rows.

    Eager calls use the plain c10d collectives (`all_gather_into_tensor`, `reduce_scatter_tensor`). With gloo,
    two functional all-gathers in flight at once (`all_gather_single` of the keys and of the teacher, each
    waited only when used) corrupt the heap in torch 2.13: a 2-rank loop of them and their backward died in 3
    of 3 runs of 3000 steps ("malloc(): unaligned tcache chunk detected", SIGSEGV), and it was the rare rank
    crash of the 2-rank training tests in CI; the same loop through this function ran clean 6 times. Under
    torch.compile the functional form is needed (it is traceable); it is waited for at once, which ran clean
    4 times."""
    if torch.compiler.is_compiling():
        return functional_all_gather_rows(x, group)
    return _AllGatherRows.apply(x.contiguous(), group)


def ddp_accepts_forward_sync_buffers(ddp_class=None) -> bool:
    """Whether DistributedDataParallel takes `forward_sync_buffers=` (torch >= 2.13, which deprecates
    `broadcast_buffers=`)."""
    if ddp_class is None:
        from torch.nn.parallel import DistributedDataParallel as ddp_class
    return "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters
